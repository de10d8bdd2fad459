"""Tail latency at concurrency 1: does any request stall?

    python -m benchmarks.tail_latency --repository model_repository --models NAME [NAME ...]

One client sends one-query requests back to back over gRPC (10,000 by default, after 200 of
warm-up), to each text pipeline named in turn on one bundled Triton. Per pipeline: p50, p99,
p99.9 and the slowest request, p99 / p50, and how many requests took longer than 100 ms.

Why: with a queue policy on a step that has one instance, Triton 2.51's dynamic batcher
sleeps its 500 ms idle wait now and then instead of taking a request that arrived just as
the instance finished (docs/performance.md, "The 500 ms stall"). Export one pipeline with the
defaults and one as before (`--max-wait-ms 0 --instances 1`: a policy on the encoder) to see
both side by side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import triton
from export.tools import payloads
from triton_embeddings.client import EmbeddingClient, Retry

SLOW_MS = 100.0


def latencies_ms(client: EmbeddingClient, model: str, requests: int, warmup: int = 200) -> np.ndarray:
    texts = payloads.short_texts(512, seed=21)
    for index in range(warmup):
        client.embed_text(model, [texts[index % len(texts)]])
    took = np.empty(requests)
    for index in range(requests):
        began = time.perf_counter()
        client.embed_text(model, [texts[index % len(texts)]])
        took[index] = time.perf_counter() - began
    return took * 1000


HEADER = (
    "| pipeline | requests | p50 ms | p99 ms | p99.9 ms | max ms | p99 / p50 | over 100 ms |\n"
    "|---|---|---|---|---|---|---|---|"
)


def row(model: str, ms: np.ndarray) -> str:
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    return (
        f"| {model} | {len(ms)} | {p50:.2f} | {p99:.2f} | {p999:.2f} | {ms.max():.1f} | {p99 / p50:.2f} "
        f"| {int((ms > SLOW_MS).sum())} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--models", nargs="+", required=True, help="text pipelines in the repository")
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    rows = []
    with triton(args.repository, Path("/tmp/tail-latency.log")) as server:
        client = EmbeddingClient(server.options.grpc_url, retry=Retry(attempts=1))
        for model in args.models:
            rows.append(row(model, latencies_ms(client, model, args.requests)))
            print(rows[-1], flush=True)
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
