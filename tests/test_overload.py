"""Overload: at about 10x what the pipeline sustains, bounded queues reject what they cannot
serve in time, with a clear error, and everything accepted is still right.

The default bounds (export/runtimes.py): each step queues at most 4 batches and rejects a
request that waited 2 s. Stated bound for any answer, accepted or rejected: the queue
timeout of each of the two steps, plus one full batch at the measured capacity (the batch a
request joins), plus 1 s.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from export import payloads
from export.client import AsyncEmbeddingClient, EmbeddingError
from export.names import DEFAULT_TEXT_PIPELINE
from export.runtimes import DEFAULTS
from tests.helpers import embed_grpc

MODEL = DEFAULT_TEXT_PIPELINE
SECONDS = 6
REJECTIONS = ("Request timeout expired", "Exceeds maximum queue size")


async def capacity(client: AsyncEmbeddingClient, texts: list[str], seconds: float = 3, concurrency: int = 16) -> float:
    """Requests per second the pipeline sustains, closed loop."""
    done, stop = 0, time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        index = offset
        while time.monotonic() < stop:
            await client.embed_text(MODEL, [texts[index % len(texts)]])
            done, index = done + 1, index + concurrency

    began = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done / (time.monotonic() - began)


async def open_loop(client: AsyncEmbeddingClient, texts: list[str], rate: float, seconds: float) -> list:
    """Send at `rate` requests/s whatever happens to earlier ones; (index, result, latency)."""
    results = []

    async def one(index: int) -> None:
        began = time.monotonic()
        try:
            result = (await client.embed_text(MODEL, [texts[index % len(texts)]]))[0]
        except EmbeddingError as error:
            result = error
        results.append((index, result, time.monotonic() - began))

    tasks, start, index = [], time.monotonic(), 0
    while time.monotonic() - start < seconds:
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
        index += 1
    await asyncio.gather(*tasks)
    return results


def test_ten_times_capacity_is_rejected_fast_and_clearly(server, grpc_client) -> None:
    # Passages past max_length: the slowest requests, so 10x stays within what the client can send.
    texts = [text for text in payloads.texts(400, seed=5) if len(text.split()) > 250][:20]
    expected = np.concatenate([embed_grpc(grpc_client, MODEL, [text]) for text in texts])

    async def run():
        async with AsyncEmbeddingClient(server.options.grpc_url, timeout=120) as client:
            sustained = await capacity(client, texts)
            return sustained, await open_loop(client, texts, 10 * sustained, SECONDS)

    sustained, results = asyncio.run(run())
    accepted = [(i, r, t) for i, r, t in results if not isinstance(r, EmbeddingError)]
    rejected = [(i, r, t) for i, r, t in results if isinstance(r, EmbeddingError)]
    assert len(results) >= 8 * sustained * SECONDS  # the client did offer about 10x
    assert accepted and rejected

    for index, embedding, _ in accepted:  # never a wrong embedding
        np.testing.assert_allclose(embedding, expected[index % len(texts)], atol=1e-5, rtol=0)
    for _, error, _ in rejected:
        assert any(reason in error.message for reason in REJECTIONS), error.message

    defaults = DEFAULTS["python"]
    bound = 2 * defaults.queue_timeout_ms / 1000 + defaults.max_batch_size / sustained + 1.0
    latencies = sorted(t for _, _, t in accepted)
    assert latencies[int(0.99 * (len(latencies) - 1))] <= bound
    assert max(t for _, _, t in rejected) <= bound

    began = time.monotonic()  # and afterwards it serves as before
    np.testing.assert_allclose(embed_grpc(grpc_client, MODEL, [texts[0]])[0], expected[0], atol=1e-5, rtol=0)
    assert time.monotonic() - began < 2.0
