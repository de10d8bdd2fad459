"""Batching settings of the text pipeline, measured: throughput and latency per setting.

For each dynamic-batching delay, exports the default model with it, starts the bundled
Triton, and sends one-text requests over gRPC (asyncio client) at concurrency 1 and 32.
In the same run, onnxruntime in-process on the same ONNX file (tokenization included) at
batch 1 and 32 gives the ceiling. Prints a markdown table.

    .venv/bin/python -m benchmarks.text_batching [--delays 0 1000 4000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import onnx_text_encoder, time_calls, triton
from export.runtimes import ServingOptions
from export.text.default_model import default_model_path
from export.text.pipeline import TextExportOptions, export_text
from export.tools.payloads import short_texts
from triton_embeddings import AsyncEmbeddingClient
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, TextPipelineNames


async def load(url: str, texts: list[str], concurrency: int, seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) for one-text requests at a fixed concurrency."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(client: AsyncEmbeddingClient, offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            start = time.perf_counter()
            await client.embed_text(DEFAULT_TEXT_PIPELINE, [texts[i % len(texts)]])
            latencies.append(time.perf_counter() - start)
            i += concurrency

    async with AsyncEmbeddingClient(url) as client:
        await client.pipeline(DEFAULT_TEXT_PIPELINE)  # metadata once, outside the timing
        began = time.perf_counter()
        await asyncio.gather(*(worker(client, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    ms = sorted(x * 1000 for x in latencies)
    return len(ms) / elapsed, statistics.median(ms), ms[int(0.99 * (len(ms) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", type=int, nargs="+", default=[0, 1000, 4000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    texts = short_texts(2000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for delay in args.delays:
            repo = Path(tmp) / f"delay-{delay}"
            serving = ServingOptions(max_queue_delay_us=delay)
            options = TextExportOptions(str(default_model_path()), DEFAULT_TEXT_PIPELINE, repo, serving=serving)
            export_text(options)
            with triton(repo, Path(tmp) / f"log-{delay}") as server:
                asyncio.run(load(server.options.grpc_url, texts, 8, 3))  # warm-up
                for concurrency in args.concurrency:
                    rps, p50, p99 = asyncio.run(load(server.options.grpc_url, texts, concurrency, args.seconds))
                    rows.append((f"Triton gRPC, delay {delay} us", concurrency, rps, p50, p99))
        names = TextPipelineNames(DEFAULT_TEXT_PIPELINE)
        encode = onnx_text_encoder(repo / names.tokenizer, repo / names.encoder)
        for batch in (1, 32):
            call = lambda i, batch=batch: encode([texts[(i * batch + k) % len(texts)] for k in range(batch)])  # noqa: E731
            rate, p50, p99 = time_calls(call, batch, args.seconds)
            rows.append((f"onnxruntime in-process, batch {batch}", "-", rate, p50, p99))
    print("| system | concurrency | texts/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for name, concurrency, rate, p50, p99 in rows:
        print(f"| {name} | {concurrency} | {rate:.0f} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
