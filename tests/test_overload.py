"""Overload in time: past what the pipeline sustains, a request is served within its wait
budget or refused at once as overloaded, with a retryable error, and nothing served is wrong.

The default (export/runtimes/options.py): the entry step admits each request by its work
(tokens, images) against what the encoder has queued, and refuses it if it would wait
longer than 2 s (export/steps/admission.py). Stated bounds, for the default pipeline, with
every refusal "server overloaded" with gRPC UNAVAILABLE (HTTP 503), nothing served wrong,
the server ready throughout:
- 10x its capacity with 8 long passages per request (about 50 requests/s: the client keeps
  up): served p99 within the budget times 1.25 (this shared 2-core machine drifts; the
  benchmark's figures, within the budget, are in docs/reliability.md), refusals p50 within
  100 ms and all within 1 s;
- 2x with one short query per request (about 1,100 requests/s): the Python client sending
  them takes a core from the server and queues on its own side, adding up to a second seen
  from here (served p99 1.7-2.8 s while the encoder's queue plus run averaged 1.2 s in the
  server's statistics). Served p99 within the budget times 1.5, refusals p50 within 250 ms
  and all within 2 s.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from benchmarks.overload import capacity, requests_of
from export.runtimes import DEFAULTS
from export.tools import payloads
from tests.conftest import IMPATIENT, IMPATIENT_TIMEOUT_MS
from tests.helpers import embed_grpc
from triton_embeddings.client import AsyncEmbeddingClient, EmbeddingError, Retry
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, TEXT, TextPipelineNames

MODEL = DEFAULT_TEXT_PIPELINE
BUDGET_S = DEFAULTS["python"].max_wait_ms / 1000
SECONDS = 8
OVERLOADED = "server overloaded"
# What the server does is measured here, so the client must not send refused requests again
# (by default it would, within its budget: triton_embeddings.Retry).
NO_RETRY = Retry(attempts=1)


async def open_loop(client: AsyncEmbeddingClient, requests: list[list[str]], rate: float) -> list:
    """Send at `rate` requests/s whatever happens to earlier ones; (index, result, latency)."""
    results = []

    async def one(index: int) -> None:
        began = time.monotonic()
        try:
            result = await client.embed_text(MODEL, requests[index % len(requests)])
        except EmbeddingError as error:
            result = error
        results.append((index, result, time.monotonic() - began))

    tasks, start, index = [], time.monotonic(), 0
    while time.monotonic() - start < SECONDS:
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
        index += 1
    await asyncio.gather(*tasks)
    return results


class Watcher(threading.Thread):
    """Beside the flood, every 200 ms: is the server ready, and what does one HTTP request get?"""

    def __init__(self, http_url: str, texts: list[str]) -> None:
        super().__init__(daemon=True)
        self.base, self.stopping = f"http://{http_url}", threading.Event()
        inputs = [{"name": TEXT.name, "shape": [len(texts), 1], "datatype": TEXT.datatype, "data": texts}]
        self.body = json.dumps({"inputs": inputs}).encode()
        self.not_ready = 0
        self.http: list[tuple[int, str]] = []  # (status, error message)

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            try:
                with urllib.request.urlopen(f"{self.base}/v2/health/ready", timeout=5) as response:
                    self.not_ready += response.status != 200
            except OSError:
                self.not_ready += 1
            request = urllib.request.Request(f"{self.base}/v2/models/{MODEL}/infer", data=self.body)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    self.http.append((response.status, ""))
            except urllib.error.HTTPError as error:
                self.http.append((error.code, json.load(error).get("error", "")))


@pytest.mark.parametrize(
    ("kind", "multiple", "served_factor", "refusal_p50_s", "refusal_max_s"),
    [("long", 10, 1.25, 0.1, 1.0), ("short", 2, 1.5, 0.25, 2.0)],  # bounds: see the module's docstring
)
def test_overload_is_served_within_the_budget_or_refused_at_once(
    server, grpc_client, kind: str, multiple: int, served_factor: float, refusal_p50_s: float, refusal_max_s: float
) -> None:
    requests = requests_of(kind)
    expected = [embed_grpc(grpc_client, MODEL, texts) for texts in requests]  # alone, before the load
    watcher = Watcher(server.options.http_url, requests[0])
    # The session's reference models make this process's heap large: a full garbage
    # collection then stalls the client for a noticeable time, counted as the server's
    # latency. Objects alive now are left out of collections for the test.
    gc.collect()
    gc.freeze()

    async def run():
        async with AsyncEmbeddingClient(server.options.grpc_url, timeout=120, retry=NO_RETRY) as client:
            sustained = await capacity(client, MODEL, requests)  # 64 clients in a closed loop
            watcher.start()
            try:
                return sustained, await open_loop(client, requests, multiple * sustained)
            finally:
                watcher.stopping.set()
                watcher.join()

    try:
        sustained, results = asyncio.run(run())
    finally:
        gc.unfreeze()
    served = [(i, r, t) for i, r, t in results if not isinstance(r, EmbeddingError)]
    refused = [(i, r, t) for i, r, t in results if isinstance(r, EmbeddingError)]
    assert len(results) >= 0.8 * multiple * sustained * SECONDS  # the client did offer about that much
    assert served and refused

    for index, embeddings, _ in served:  # never a wrong embedding
        np.testing.assert_allclose(embeddings, expected[index % len(requests)], atol=1e-5, rtol=0)
    for _, error, _ in refused:
        assert OVERLOADED in error.message and "retry later" in error.message, error.message
        assert error.status == "StatusCode.UNAVAILABLE", error.status

    latencies = sorted(t for _, _, t in served)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    refusals = sorted(t for _, _, t in refused)
    print(
        f"{kind}: capacity {sustained:.1f}/s, offered {len(results)} at {multiple}x, served {len(served)}, "
        f"p99 {p99:.2f} s (budget {BUDGET_S:.1f} s), refusals p50 {1000 * refusals[len(refusals) // 2]:.0f} ms, "
        f"max {1000 * refusals[-1]:.0f} ms, HTTP {sorted({status for status, _ in watcher.http})}"
    )
    assert p99 <= served_factor * BUDGET_S
    assert refusals[len(refusals) // 2] <= refusal_p50_s and refusals[-1] <= refusal_max_s
    assert watcher.not_ready == 0 and watcher.http
    for status, message in watcher.http:  # over HTTP: served, or 503 saying why
        assert status == 200 or (status == 503 and OVERLOADED in message), (status, message)

    began = time.monotonic()  # and afterwards it serves as before
    np.testing.assert_allclose(embed_grpc(grpc_client, MODEL, requests[0]), expected[0], atol=1e-5, rtol=0)
    assert time.monotonic() - began < 2.0


def test_a_short_query_batched_with_long_passages_leaves_first(server, grpc_client) -> None:
    """The encoder answers each request when its own rows are done, shortest first: a query
    merged into one batch with long passages does not wait for them. It leaves ahead of them by
    at least half the time the passages take alone (measured first: a fixed margin in seconds
    failed on a faster CPU, where four passages take under 50 ms). The request ahead that keeps
    the encoder busy while the two queue is sized from that measurement too, to about 0.6 s.
    Whether the two queued requests are merged is Triton's batcher's choice, not ours: on the
    faster CPU the tokenizer step often passes them on separately, and the batcher, which
    prepares its next batch while the encoder is busy, then sometimes runs them apart (2 of 4
    fresh runs). So the scenario is repeated, up to five times, until they are merged; what
    is asserted is how a merged batch answers, and a merge must happen at all."""
    encoder = TextPipelineNames(MODEL).encoder
    passages = [text for text in payloads.texts(600, seed=13) if len(text.split()) > 300]
    query = payloads.short_texts(1, seed=3)
    expected = embed_grpc(grpc_client, MODEL, query)
    embed_grpc(grpc_client, MODEL, passages[8:12])  # warm
    began = time.monotonic()
    embed_grpc(grpc_client, MODEL, passages[8:12])
    alone = time.monotonic() - began
    blocking = passages[12:][: max(8, min(48, int(np.ceil(0.6 / (alone / 4)))))]

    def executions() -> int:
        return grpc_client.get_inference_statistics(encoder).model_stats[0].execution_count

    async def run() -> tuple[float, float, int]:
        async with AsyncEmbeddingClient(server.options.grpc_url, timeout=120, retry=NO_RETRY) as client:

            async def timed(texts: list[str]) -> tuple[np.ndarray, float]:
                embeddings = await client.embed_text(MODEL, texts)
                return embeddings, time.monotonic()

            before = executions()
            blocker = asyncio.create_task(timed(blocking))  # keeps the encoder busy...
            await asyncio.sleep(0.1)  # ...while the two below queue behind it, to be merged
            long, short = await asyncio.gather(timed(passages[8:12]), timed(query))
            await blocker
            np.testing.assert_allclose(short[0], expected, atol=1e-5, rtol=0)
            return short[1], long[1], executions() - before

    attempts = []
    for _ in range(5):
        short_done, long_done, runs = asyncio.run(run())
        attempts.append(runs)
        if runs <= 2:
            break
    assert attempts[-1] <= 2, f"encoder executions per attempt {attempts}: the query was never merged with passages"
    ahead = long_done - short_done
    assert ahead > alone / 2, f"the query left {ahead:.3f} s before the passages, which take {alone:.3f} s alone"


def test_a_request_that_waits_past_an_asked_for_queue_timeout_is_rejected(server, grpc_client) -> None:
    """--queue-timeout-ms still bounds a pipeline's first step, in Triton's own terms. A
    pipeline exported with a 50 ms timeout, and a burst of 64-text requests."""
    config = grpc_client.get_model_config(TextPipelineNames(IMPATIENT).tokenizer).config
    policy = config.dynamic_batching.default_queue_policy
    assert policy.default_timeout_microseconds == IMPATIENT_TIMEOUT_MS * 1000

    batches = [payloads.texts(64, seed=seed) for seed in range(48)]
    expected = [embed_grpc(grpc_client, IMPATIENT, texts) for texts in batches]  # one at a time: no waiting

    async def burst() -> list:
        async with AsyncEmbeddingClient(server.options.grpc_url, retry=NO_RETRY) as client:

            async def one(texts: list[str]):
                try:
                    return await client.embed_text(IMPATIENT, texts)
                except EmbeddingError as error:
                    return error

            return await asyncio.gather(*(one(texts) for texts in batches))

    outcomes = asyncio.run(burst())
    rejected = [outcome for outcome in outcomes if isinstance(outcome, EmbeddingError)]
    assert rejected and len(rejected) < len(outcomes)
    assert any("Request timeout expired" in outcome.message for outcome in rejected)
    for outcome, want in zip(outcomes, expected, strict=True):
        if isinstance(outcome, EmbeddingError):  # past the timeout, or refused by admission
            assert "Request timeout expired" in outcome.message or OVERLOADED in outcome.message, outcome.message
        else:
            np.testing.assert_allclose(outcome, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(embed_grpc(grpc_client, IMPATIENT, batches[0]), expected[0], atol=1e-5, rtol=0)
