"""A small client for the pipelines this project serves, over Triton's own protocol (KServe v2).

    from triton_embeddings import EmbeddingClient

    with EmbeddingClient("localhost:8001") as client:             # gRPC; or ("localhost:8000", "http")
        vectors = client.embed_text("all-MiniLM-L6-v2", texts)     # np.ndarray [n, d], float32
        pictures = client.embed_image("clip_image", ["cat.jpg"])   # paths, bytes or PIL images
        label, scores = client.classify("clip_classify", ["cat.jpg"])[0]
        client.labels("clip_classify")                             # the order of `scores`
        client.upsert("docs", ["a text", "another"], ids=[1, 2], payloads=[{"lang": "en"}, {}])
        hits = client.search("docs", ["a query"], top_k=5, filter={"must": [{"key": "lang", "match": "en"}]})
        hits[0][0].id, hits[0][0].score, hits[0][0].payload        # closest first
        client.delete("docs", ids=[2]); client.count("docs")

What it does for you: reads each pipeline's input and output names, dims, batch size and
labels from the server once; splits long lists into requests of at most `max_batch_size` and
sends them concurrently, keeping the order; uses binary tensors over HTTP; over gRPC,
reconnects at least every second after the server went away; asks again, within a budget,
when the server could not serve a request for now (a model reloading after a crash, a full
queue, the server restarting: `Retry`, never for delete); turns server errors into one
exception type, `EmbeddingError`, with the model, the index of the bad item in your list
where the server named one, and the server's message. `AsyncEmbeddingClient` (aio.py) is the
same on asyncio. Both send the jobs of `triton_embeddings.core`, where the calls are defined.
Needs only tritonclient, numpy and Pillow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from triton_embeddings.aio import AsyncEmbeddingClient
from triton_embeddings.core import (
    RECONNECT_BACKOFF_MS,
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
# AsyncEmbeddingClient and the core's names stay importable from here, as before the split.
__all__ = [
    "RECONNECT_BACKOFF_MS", "AsyncEmbeddingClient", "EmbeddingClient", "EmbeddingError", "Hit", "Pipeline", "Retry",
]  # fmt: skip


class EmbeddingClient:
    """Blocking client. `concurrency`: requests in flight when a list needs several;
    `timeout`: seconds per request; `retry`: asking again while the server recovers (core.Retry)."""

    def __init__(
        self,
        url: str = "localhost:8001",
        protocol: str = "grpc",
        *,
        concurrency: int = 4,
        timeout: float | None = None,
        retry: Retry = Retry(),  # noqa: B008 (frozen: one shared default is fine)
    ) -> None:
        module = transport(protocol, aio=False)
        self._jobs, self.protocol, self.timeout, self.retry = Jobs(protocol), protocol, timeout, retry
        self.client: Any
        if protocol == "http":
            self.client = module.InferenceServerClient(url, concurrency=concurrency, network_timeout=timeout or 60.0)
        else:
            self.client = module.InferenceServerClient(url, channel_args=grpc_channel_args())
        self._pool = ThreadPoolExecutor(concurrency) if protocol == "grpc" else None

    def pipeline(self, model: str) -> Pipeline:
        """The model's inputs, outputs, batch size and labels, asked once."""
        if model not in self._jobs.pipelines:
            with server_errors(model):
                self._jobs.remember(model, self.client.get_model_config(model, **self._jobs.config_options))
        return self._jobs.pipelines[model]

    def embed_text(self, model: str, texts: Sequence[str | bytes]) -> np.ndarray:
        """[len(texts), d] float32, in order."""
        return self._send(self._jobs.embed_text(self.pipeline(model), texts))

    def embed_image(self, model: str, images: Sequence[ImageInput]) -> np.ndarray:
        """[len(images), d] float32, in order; an image is a file path, the file's bytes or a PIL image."""
        return self._send(self._jobs.embed_image(self.pipeline(model), images))

    def classify(self, model: str, images: Sequence[ImageInput]) -> list[tuple[str, np.ndarray]]:
        """(best label, scores in `labels(model)` order) per image."""
        return self._send(self._jobs.classify(self.pipeline(model), images))

    def caption(self, model: str, images: Sequence[ImageInput]) -> list[str]:
        """A caption per image, in order (CoCa pipelines: NAME_caption)."""
        return self._send(self._jobs.caption(self.pipeline(model), images))

    def labels(self, model: str) -> tuple[str, ...]:
        return self.pipeline(model).labels

    def search(
        self, collection: str, items: Sequence[Any], top_k: int | None = None, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """The `top_k` nearest points (default: the collection's) of each text (str) or image
        (path, bytes, PIL image), closest first, among those `filter` selects (docs/search.md)."""
        pipeline = self._first(collection, self._jobs.search_models(collection, items))
        return self._send(self._jobs.search(pipeline, items, top_k, filter))

    def upsert(self, collection: str, items: Any, ids: Sequence[int], payloads: Sequence[Any] | None = None) -> int:
        """Store texts, images or vectors (an [n, d] float array) under `ids` (integers >= 0),
        replacing points of the same id; `payloads`: a dict each. Returns how many were stored."""
        model = self._jobs.upsert_model(collection, items)
        return self._send(self._jobs.upsert(self.pipeline(model), items, ids, payloads))

    def delete(self, collection: str, ids: Sequence[int] | None = None, filter: Filter | None = None) -> int:
        """Delete points by id or by filter; returns how many were deleted."""
        return self._send(self._jobs.delete(self.pipeline(CollectionNames(collection).index), ids, filter))

    def count(self, collection: str, filter: Filter | None = None) -> int:
        """How many points the collection holds, or how many `filter` selects."""
        return self._send(self._jobs.count(self.pipeline(CollectionNames(collection).index), filter))

    def exists(self, collection: str, ids: Sequence[int]) -> list[bool]:
        """Whether each id is stored."""
        return self._send(self._jobs.exists(self.pipeline(CollectionNames(collection).index), ids))

    def _first(self, collection: str, models: list[str]) -> Pipeline:
        """The first of `models` the server has."""
        for model in (m for m in models if m not in self._jobs.unknown):
            try:
                return self.pipeline(model)
            except EmbeddingError as error:
                if not is_unknown_model(error):
                    raise
                self._jobs.unknown.add(model)  # asked once, like the models found
        raise EmbeddingError(collection, f"no search model for these items on the server (tried {', '.join(models)})")

    def _send(self, job: Job[T]) -> T:
        waits = [self._submit(request) for request in job.requests]  # all in flight, then in order
        return job.finish([self._reply(job, request, wait) for request, wait in zip(job.requests, waits, strict=True)])

    def _submit(self, request: Request) -> Callable[[], Any]:
        """Send `request`; returns what waits for its reply."""
        if self._pool is not None:  # gRPC: the client is thread-safe
            return self._pool.submit(self.client.infer, **request.kwargs, client_timeout=self.timeout).result
        return self.client.async_infer(**request.kwargs).get_result  # HTTP: tritonclient's greenlet pool

    def _reply(self, job: Job[T], request: Request, wait: Callable[[], Any]) -> Any:
        started, tries = time.monotonic(), 1
        while True:
            try:
                with job.errors(request):
                    return wait()
            except EmbeddingError as error:
                delay = self.retry.delay(error, tries, time.monotonic() - started) if job.idempotent else None
                if delay is None:
                    raise
            time.sleep(delay)
            wait, tries = self._submit(request), tries + 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self.client.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
