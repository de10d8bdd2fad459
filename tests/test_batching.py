"""Dynamic batching really merges requests, read from Triton's statistics API."""

from __future__ import annotations

import asyncio

import numpy as np
import tritonclient.grpc.aio as aioclient

from export.tools.corpus import corpus
from tests.helpers import counts, embed_grpc, text_array
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, EMBEDDING, TEXT, TextPipelineNames

CONCURRENCY = 32
REQUESTS = 320


async def _send_concurrently(url: str, texts: list[str]) -> list[np.ndarray]:
    """One text per request, CONCURRENCY requests in flight at any time."""
    client = aioclient.InferenceServerClient(url)
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(text: str) -> np.ndarray:
        tensor = aioclient.InferInput(TEXT.name, [1, 1], TEXT.datatype)
        tensor.set_data_from_numpy(text_array([text]))
        async with slots:
            result = await client.infer(DEFAULT_TEXT_PIPELINE, [tensor])
        return result.as_numpy(EMBEDDING.name)[0]

    try:
        return await asyncio.gather(*(one(text) for text in texts))
    finally:
        await client.close()


def test_concurrent_single_text_requests_are_batched(server, grpc_client) -> None:
    encoder = TextPipelineNames(DEFAULT_TEXT_PIPELINE).encoder
    pool = corpus(80)
    texts = [pool[i % len(pool)] for i in range(REQUESTS)]
    inferences_before, executions_before = counts(grpc_client, encoder)

    served = asyncio.run(_send_concurrently(server.options.grpc_url, texts))

    inferences, executions = counts(grpc_client, encoder)
    inferences, executions = inferences - inferences_before, executions - executions_before
    assert inferences == REQUESTS
    # Texts of different lengths merge too (ragged inputs); one execution per request would
    # mean no batching at all.
    assert executions <= REQUESTS / 2, f"{executions} executions for {inferences} inferences"
    # Batched with strangers, each text still gets its own embedding.
    alone = embed_grpc(grpc_client, DEFAULT_TEXT_PIPELINE, pool[:10])
    np.testing.assert_allclose(np.stack(served[:10]), alone, atol=1e-6, rtol=0)
