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
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from triton_embeddings.core import (
    EmbeddingError,
    Filter,
    Hit,
    ImageInput,
    Job,
    Jobs,
    Pipeline,
    Request,
    Retry,
    grpc_channel_args,
    is_unknown_model,
    server_errors,
    transport,
)
from triton_embeddings.names import CollectionNames

T = TypeVar("T")


class AsyncEmbeddingClient:
    """Asyncio client. `concurrency`: requests in flight per call; `timeout`: seconds per request;
    `retry`: asking again while the server recovers (core.Retry)."""

    def __init__(
        self,
        url: str = "localhost:8001",
        protocol: str = "grpc",
        *,
        concurrency: int = 4,
        timeout: float | None = None,
        retry: Retry = Retry(),  # noqa: B008 (frozen: one shared default is fine)
    ) -> None:
        module = transport(protocol, aio=True)
        self._jobs, self.protocol, self.retry = Jobs(protocol), protocol, retry
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

    async def caption(self, model: str, images: Sequence[ImageInput]) -> list[str]:
        """A caption per image, in order (CoCa pipelines: NAME_caption)."""
        return await self._send(self._jobs.caption(await self.pipeline(model), images))

    async def labels(self, model: str) -> tuple[str, ...]:
        return (await self.pipeline(model)).labels

    async def search(
        self, collection: str, items: Sequence[Any], top_k: int | None = None, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """The `top_k` nearest points of each text (str) or image (path, bytes, PIL image)."""
        pipeline = await self._first(collection, self._jobs.search_models(collection, items))
        return await self._send(self._jobs.search(pipeline, items, top_k, filter))

    async def upsert(
        self, collection: str, items: Any, ids: Sequence[int], payloads: Sequence[Any] | None = None
    ) -> int:
        """Store texts, images or vectors under `ids`; returns how many were stored."""
        model = self._jobs.upsert_model(collection, items)
        return await self._send(self._jobs.upsert(await self.pipeline(model), items, ids, payloads))

    async def delete(self, collection: str, ids: Sequence[int] | None = None, filter: Filter | None = None) -> int:
        return await self._send(self._jobs.delete(await self.pipeline(CollectionNames(collection).index), ids, filter))

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        return await self._send(self._jobs.count(await self.pipeline(CollectionNames(collection).index), filter))

    async def exists(self, collection: str, ids: Sequence[int]) -> list[bool]:
        return await self._send(self._jobs.exists(await self.pipeline(CollectionNames(collection).index), ids))

    async def _first(self, collection: str, models: list[str]) -> Pipeline:
        for model in (m for m in models if m not in self._jobs.unknown):
            try:
                return await self.pipeline(model)
            except EmbeddingError as error:
                if not is_unknown_model(error):
                    raise
                self._jobs.unknown.add(model)  # asked once, like the models found
        raise EmbeddingError(collection, f"no search model for these items on the server (tried {', '.join(models)})")

    async def _send(self, job: Job[T]) -> T:
        slots = asyncio.Semaphore(self.concurrency)

        async def attempt(request: Request) -> Any:
            async with slots:
                with job.errors(request):
                    try:
                        return await asyncio.wait_for(self.client.infer(**request.kwargs), self.timeout)
                    # Not the builtin TimeoutError: on Python 3.10 wait_for raises asyncio's own
                    # class (the builtin's alias from 3.11 on).
                    except asyncio.TimeoutError:
                        raise job.no_reply(self.timeout) from None

        async def reply(request: Request) -> Any:
            started, tries = time.monotonic(), 1
            while True:
                try:
                    return await attempt(request)
                except EmbeddingError as error:
                    delay = self.retry.delay(error, tries, time.monotonic() - started) if job.idempotent else None
                    if delay is None:
                        raise
                await asyncio.sleep(delay)  # its slot is free meanwhile
                tries += 1

        return job.finish(list(await asyncio.gather(*(reply(request) for request in job.requests))))

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
