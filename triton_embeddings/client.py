"""A small client for the pipelines this project serves, over Triton's own protocol (KServe v2).

    from triton_embeddings import EmbeddingClient

    with EmbeddingClient("localhost:8001") as client:             # gRPC; or ("localhost:8000", "http")
        vectors = client.embed_text("all-MiniLM-L6-v2", texts)     # np.ndarray [n, d], float32
        pictures = client.embed_image("clip_image", ["cat.jpg"])   # paths, bytes or PIL images
        label, scores = client.classify("clip_classify", ["cat.jpg"])[0]
        client.labels("clip_classify")                             # the order of `scores`

What it does for you: reads each pipeline's input and output names, dims, batch size and
labels from the server once; splits long lists into requests of at most `max_batch_size` and
sends them concurrently, keeping the order; uses binary tensors over HTTP; over gRPC,
reconnects at least every second after the server went away; turns server errors into one
exception type, `EmbeddingError`, with the model, the index of the bad item in your list
where the server named one, and the server's message. `AsyncEmbeddingClient` (aio.py) is the
same on asyncio. Both send the jobs of `triton_embeddings.core`, where the calls are defined.
Needs only tritonclient, numpy and Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from triton_embeddings.aio import AsyncEmbeddingClient
from triton_embeddings.core import (
    RECONNECT_BACKOFF_MS,
    EmbeddingError,
    ImageInput,
    Job,
    Jobs,
    Pipeline,
    grpc_channel_args,
    server_errors,
    transport,
)

T = TypeVar("T")
# AsyncEmbeddingClient and the core's names stay importable from here, as before the split.
__all__ = ["RECONNECT_BACKOFF_MS", "AsyncEmbeddingClient", "EmbeddingClient", "EmbeddingError", "Pipeline"]


class EmbeddingClient:
    """Blocking client. `concurrency`: requests in flight when a list needs several;
    `timeout`: seconds per request."""

    def __init__(
        self, url: str = "localhost:8001", protocol: str = "grpc", *, concurrency: int = 4, timeout: float | None = None
    ) -> None:
        module = transport(protocol, aio=False)
        self._jobs, self.protocol, self.timeout = Jobs(protocol), protocol, timeout
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

    def labels(self, model: str) -> tuple[str, ...]:
        return self.pipeline(model).labels

    def _send(self, job: Job[T]) -> T:
        if self._pool is not None:  # gRPC: the client is thread-safe
            futures = [
                self._pool.submit(self.client.infer, **r.kwargs, client_timeout=self.timeout) for r in job.requests
            ]
            waits = [future.result for future in futures]
        else:  # HTTP: tritonclient's own greenlet pool, `concurrency` wide
            waits = [self.client.async_infer(**request.kwargs).get_result for request in job.requests]
        replies = []
        for request, wait in zip(job.requests, waits, strict=True):
            with job.errors(request):
                replies.append(wait())
        return job.finish(replies)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self.client.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
