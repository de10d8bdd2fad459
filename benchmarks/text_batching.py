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
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from benchmarks.common import triton
from export.runtimes import ServingOptions
from export.text.default_model import default_model_path
from export.text.pipeline import TextExportOptions, export_text
from triton_embeddings.client import AsyncEmbeddingClient
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, TextPipelineNames

WORDS = "the a cat dog server model embedding request fast batch token text vector query answer".split()


def short_texts(count: int, seed: int = 0) -> list[str]:
    """8-20 token sentences, like search queries and short passages."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))) for _ in range(count)]


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


def in_process(onnx_file: Path, tokenizer_file: Path, texts: list[str], batch: int, seconds: float) -> float:
    """Texts/s of tokenizers + onnxruntime in this process, 2 threads, no server."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()
    names = [i.name for i in session.get_inputs()]
    done, i, stop = 0, 0, time.perf_counter() + seconds
    began = time.perf_counter()
    while time.perf_counter() < stop:
        encodings = tokenizer.encode_batch([texts[(i + k) % len(texts)] for k in range(batch)])
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        feeds = {n: np.array([getattr(e, fields[n]) for e in encodings], dtype=np.int64) for n in names}
        session.run(None, feeds)
        done, i = done + batch, i + batch
    return done / (time.perf_counter() - began)


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
        version = repo / names.encoder / "1"
        tokenizer_file = repo / names.tokenizer / "1" / "tokenizer.json"
        for batch in (1, 32):
            rate = in_process(version / "model.onnx", tokenizer_file, texts, batch, args.seconds)
            rows.append((f"onnxruntime in-process, batch {batch}", "-", rate, 1000 * batch / rate, float("nan")))
    print("| system | concurrency | texts/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for name, concurrency, rate, p50, p99 in rows:
        print(f"| {name} | {concurrency} | {rate:.0f} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
