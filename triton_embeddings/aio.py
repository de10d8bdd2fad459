"""The client on asyncio: the same methods as `EmbeddingClient`, as coroutines.

    import asyncio
    from triton_embeddings import AsyncEmbeddingClient

    async def main() -> None:
        async with AsyncEmbeddingClient("localhost:8001") as client:   # or ("localhost:8000", "http")
            vectors = await client.embed_text("all-MiniLM-L6-v2", ["a cat", "a dog"])

    asyncio.run(main())

tritonclient's asyncio clients underneath; the calls themselves are `triton_embeddings.core`'s
jobs, shared with the blocking client. `timeout` bounds each request, and a request that gets
no reply in time raises `EmbeddingError` like any other failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from triton_embeddings.core import (
    ImageInput,
    Job,
    Jobs,
    Pipeline,
    Request,
    grpc_channel_args,
    server_errors,
    transport,
)

T = TypeVar("T")


class AsyncEmbeddingClient:
    """Asyncio client. `concurrency`: requests in flight per call; `timeout`: seconds per request."""

    def __init__(
        self, url: str = "localhost:8001", protocol: str = "grpc", *, concurrency: int = 4, timeout: float | None = None
    ) -> None:
        module = transport(protocol, aio=True)
        self._jobs, self.protocol = Jobs(protocol), protocol
        grpc = {"channel_args": grpc_channel_args()} if protocol == "grpc" else {}
        self.client: Any = module.InferenceServerClient(url, **grpc)
        self.concurrency, self.timeout = concurrency, timeout

    async def pipeline(self, model: str) -> Pipeline:
        """The model's inputs, outputs, batch size and labels, asked once."""
        if model not in self._jobs.pipelines:
            with server_errors(model):
                self._jobs.remember(model, await self.client.get_model_config(model, **self._jobs.config_options))
        return self._jobs.pipelines[model]

    async def embed_text(self, model: str, texts: Sequence[str | bytes]) -> np.ndarray:
        """[len(texts), d] float32, in order."""
        return await self._send(self._jobs.embed_text(await self.pipeline(model), texts))

    async def embed_image(self, model: str, images: Sequence[ImageInput]) -> np.ndarray:
        """[len(images), d] float32, in order; an image is a file path, the file's bytes or a PIL image."""
        return await self._send(self._jobs.embed_image(await self.pipeline(model), images))

    async def classify(self, model: str, images: Sequence[ImageInput]) -> list[tuple[str, np.ndarray]]:
        """(best label, scores in `labels(model)` order) per image."""
        return await self._send(self._jobs.classify(await self.pipeline(model), images))

    async def labels(self, model: str) -> tuple[str, ...]:
        return (await self.pipeline(model)).labels

    async def _send(self, job: Job[T]) -> T:
        slots = asyncio.Semaphore(self.concurrency)

        async def reply(request: Request) -> Any:
            async with slots:
                with job.errors(request):
                    try:
                        return await asyncio.wait_for(self.client.infer(**request.kwargs), self.timeout)
                    # Not the builtin TimeoutError: on Python 3.10 wait_for raises asyncio's own
                    # class (the builtin's alias from 3.11 on).
                    except asyncio.TimeoutError:
                        raise job.no_reply(self.timeout) from None

        return job.finish(list(await asyncio.gather(*(reply(request) for request in job.requests))))

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
