"""A small client for the pipelines this project serves, over Triton's own protocol.

    from triton_embeddings.client import EmbeddingClient

    with EmbeddingClient("localhost:8001") as client:             # gRPC; or ("localhost:8000", "http")
        vectors = client.embed_text("all-MiniLM-L6-v2", texts)     # np.ndarray [n, d]
        pictures = client.embed_image("clip_image", ["cat.jpg"])   # paths, bytes or PIL images
        label, scores = client.classify("clip_classify", ["cat.jpg"])[0]

What it does for you: reads each pipeline's input and output names, batch size and labels
from the server once; splits long lists into requests of at most `max_batch_size` and sends
them concurrently, keeping the order; uses binary tensors over HTTP; turns server errors into
one exception type, `EmbeddingError`, with the model, the index of the bad item in your list
where the server named one, and the server's message. `AsyncEmbeddingClient` is the same on
asyncio. Needs only tritonclient, numpy and Pillow.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image
from tritonclient.utils import InferenceServerException

ImageInput = str | os.PathLike | bytes | Image.Image
PROTOCOLS = ("grpc", "http")
_ITEM_IN_MESSAGE = re.compile(r"\b[A-Za-z_]\w*\[(\d+)\]")  # "TEXT[3] is an empty string"


class EmbeddingError(Exception):
    """The server refused or failed a request: `model`, `index` of the item in the caller's
    list when the server named one, and the server's `message`."""

    def __init__(self, model: str, message: str, index: int | None = None) -> None:
        self.model, self.message, self.index = model, message, index
        where = f" (item {index})" if index is not None else ""
        super().__init__(f"{model}{where}: {message}")


@dataclass(frozen=True)
class Pipeline:
    """What the server says about a model: one BYTES input, its outputs, its batch limit."""

    name: str
    input: str
    max_batch_size: int
    outputs: dict[str, tuple[str, tuple[int, ...]]]  # name -> (data type, dims)
    labels: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Pipeline:
        inputs = config.get("input", [])
        if len(inputs) != 1 or inputs[0].get("data_type") != "TYPE_STRING":
            raise EmbeddingError(config.get("name", "?"), "not an embedding pipeline: expected one BYTES input")
        outputs = {o["name"]: (o["data_type"], tuple(int(d) for d in o.get("dims", []))) for o in config["output"]}
        labels = config.get("parameters", {}).get("labels", {}).get("string_value")
        return cls(
            name=config["name"],
            input=inputs[0]["name"],
            max_batch_size=max(1, int(config.get("max_batch_size", 1))),
            outputs=outputs,
            labels=tuple(json.loads(labels)) if labels else (),
        )

    def output(self, data_type: str) -> str:
        """The one output of `data_type` (TYPE_FP32: the embedding or scores; TYPE_STRING: the label)."""
        names = [name for name, (kind, _) in self.outputs.items() if kind == data_type]
        if len(names) != 1:
            raise EmbeddingError(self.name, f"expected one {data_type} output, the model has {list(self.outputs)}")
        return names[0]

    def chunks(self, count: int) -> Iterator[slice]:
        for start in range(0, count, self.max_batch_size):
            yield slice(start, min(start + self.max_batch_size, count))


def image_bytes(image: ImageInput) -> bytes:
    """An encoded image file: bytes as given, a file read, a PIL image saved as PNG (lossless)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        (image if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16") else image.convert("RGB")).save(
            buffer, format="PNG"
        )
        return buffer.getvalue()
    with open(image, "rb") as file:
        return file.read()


def _error(model: str, error: InferenceServerException, offset: int) -> EmbeddingError:
    message = error.message() or str(error)
    named = _ITEM_IN_MESSAGE.search(message)
    return EmbeddingError(model, message, offset + int(named.group(1)) if named else None)


def _protocol(protocol: str, aio: bool) -> ModuleType:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "grpc":
        import tritonclient.grpc as grpc
        import tritonclient.grpc.aio as grpc_aio

        return grpc_aio if aio else grpc
    import tritonclient.http as http
    import tritonclient.http.aio as http_aio

    return http_aio if aio else http


# gRPC waits longer and longer between attempts to reach a server that is down (up to two
# minutes), so after a restart a client could stay disconnected long after the server is back.
# A cap of 1 s costs a local server nothing.
RECONNECT_BACKOFF_MS = 1000


def _grpc_channel_args(module: ModuleType) -> list[tuple[str, int]]:
    """tritonclient's own channel options (channel_args replaces them: unlimited message sizes,
    its keepalive defaults), plus the reconnect backoff cap."""
    keepalive = module.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_receive_message_length", 2**31 - 1),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ]


class _Requests:
    """What both clients share: building requests and reading replies."""

    def __init__(self, protocol: str, module: ModuleType) -> None:
        self.protocol, self.module = protocol, module
        self._pipelines: dict[str, Pipeline] = {}

    def _pipeline_from(self, model: str, reply: Any) -> Pipeline:
        config = reply["config"] if self.protocol == "grpc" else reply
        self._pipelines[model] = Pipeline.from_config(config)
        return self._pipelines[model]

    def _request(self, pipeline: Pipeline, items: list[bytes], outputs: list[str]) -> dict[str, Any]:
        binary = {"binary_data": True} if self.protocol == "http" else {}
        tensor = self.module.InferInput(pipeline.input, [len(items), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(items, dtype=np.object_).reshape(-1, 1), **binary)
        requested = [self.module.InferRequestedOutput(name, **binary) for name in outputs]
        return {"model_name": pipeline.name, "inputs": [tensor], "outputs": requested}

    @staticmethod
    def _empty(pipeline: Pipeline, output: str) -> np.ndarray:
        return np.zeros((0, *pipeline.outputs[output][1]), dtype=np.float32)

    @staticmethod
    def _classes(labels: np.ndarray, scores: np.ndarray) -> list[tuple[str, np.ndarray]]:
        return [(label.decode(), row) for label, row in zip(labels.reshape(-1), scores, strict=True)]


def _texts(texts: Sequence[str | bytes]) -> list[bytes]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("pass a list of texts, not a single string")
    return [text.encode() if isinstance(text, str) else text for text in texts]


class EmbeddingClient(_Requests):
    """Blocking client. `concurrency`: requests in flight when a list needs several;
    `timeout`: seconds per request."""

    def __init__(
        self, url: str = "localhost:8001", protocol: str = "grpc", *, concurrency: int = 4, timeout: float | None = None
    ) -> None:
        super().__init__(protocol, _protocol(protocol, aio=False))
        self.timeout = timeout
        if protocol == "http":
            self.client = self.module.InferenceServerClient(
                url, concurrency=concurrency, network_timeout=timeout or 60.0
            )
        else:
            self.client = self.module.InferenceServerClient(url, channel_args=_grpc_channel_args(self.module))
        self._pool = ThreadPoolExecutor(concurrency) if protocol == "grpc" else None

    def pipeline(self, model: str) -> Pipeline:
        """The model's input, outputs, batch size and labels, asked once."""
        if model not in self._pipelines:
            try:
                extra = {"as_json": True} if self.protocol == "grpc" else {}
                return self._pipeline_from(model, self.client.get_model_config(model, **extra))
            except InferenceServerException as error:
                raise _error(model, error, 0) from None
        return self._pipelines[model]

    def embed_text(self, model: str, texts: Sequence[str | bytes]) -> np.ndarray:
        """[len(texts), d] float32, in order."""
        pipeline = self.pipeline(model)
        output = pipeline.output("TYPE_FP32")
        return self._run(pipeline, _texts(texts), [output])[0] if texts else self._empty(pipeline, output)

    def embed_image(self, model: str, images: Sequence[ImageInput]) -> np.ndarray:
        pipeline = self.pipeline(model)
        output = pipeline.output("TYPE_FP32")
        items = [image_bytes(image) for image in images]
        return self._run(pipeline, items, [output])[0] if items else self._empty(pipeline, output)

    def classify(self, model: str, images: Sequence[ImageInput]) -> list[tuple[str, np.ndarray]]:
        """(best label, scores in `labels(model)` order) per image."""
        pipeline = self.pipeline(model)
        outputs = [pipeline.output("TYPE_STRING"), pipeline.output("TYPE_FP32")]
        if not images:
            return []
        labels, scores = self._run(pipeline, [image_bytes(image) for image in images], outputs)
        return self._classes(labels, scores)

    def labels(self, model: str) -> tuple[str, ...]:
        return self.pipeline(model).labels

    def _run(self, pipeline: Pipeline, items: list[bytes], outputs: list[str]) -> list[np.ndarray]:
        chunks = list(pipeline.chunks(len(items)))
        requests = [self._request(pipeline, items[chunk], outputs) for chunk in chunks]
        if self._pool is not None:  # gRPC: the client is thread-safe
            futures = [self._pool.submit(self.client.infer, **r, client_timeout=self.timeout) for r in requests]
            waits = [future.result for future in futures]
        else:  # HTTP: tritonclient's own greenlet pool, `concurrency` wide
            waits = [self.client.async_infer(**r).get_result for r in requests]
        results = [self._result(pipeline, wait, chunk) for wait, chunk in zip(waits, chunks, strict=True)]
        return [np.concatenate([result.as_numpy(name) for result in results]) for name in outputs]

    @staticmethod
    def _result(pipeline: Pipeline, wait, chunk: slice):
        try:
            return wait()
        except InferenceServerException as error:
            raise _error(pipeline.name, error, chunk.start) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self.client.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEmbeddingClient(_Requests):
    """The same on asyncio (tritonclient's aio clients). `concurrency`: requests in flight per call."""

    def __init__(
        self, url: str = "localhost:8001", protocol: str = "grpc", *, concurrency: int = 4, timeout: float | None = None
    ) -> None:
        super().__init__(protocol, _protocol(protocol, aio=True))
        grpc = {"channel_args": _grpc_channel_args(self.module)} if protocol == "grpc" else {}
        self.client = self.module.InferenceServerClient(url, **grpc)
        self.concurrency, self.timeout = concurrency, timeout

    async def pipeline(self, model: str) -> Pipeline:
        if model not in self._pipelines:
            try:
                extra = {"as_json": True} if self.protocol == "grpc" else {}
                return self._pipeline_from(model, await self.client.get_model_config(model, **extra))
            except InferenceServerException as error:
                raise _error(model, error, 0) from None
        return self._pipelines[model]

    async def embed_text(self, model: str, texts: Sequence[str | bytes]) -> np.ndarray:
        pipeline = await self.pipeline(model)
        output = pipeline.output("TYPE_FP32")
        return (await self._run(pipeline, _texts(texts), [output]))[0] if texts else self._empty(pipeline, output)

    async def embed_image(self, model: str, images: Sequence[ImageInput]) -> np.ndarray:
        pipeline = await self.pipeline(model)
        output = pipeline.output("TYPE_FP32")
        items = [image_bytes(image) for image in images]
        return (await self._run(pipeline, items, [output]))[0] if items else self._empty(pipeline, output)

    async def classify(self, model: str, images: Sequence[ImageInput]) -> list[tuple[str, np.ndarray]]:
        pipeline = await self.pipeline(model)
        outputs = [pipeline.output("TYPE_STRING"), pipeline.output("TYPE_FP32")]
        if not images:
            return []
        labels, scores = await self._run(pipeline, [image_bytes(image) for image in images], outputs)
        return self._classes(labels, scores)

    async def labels(self, model: str) -> tuple[str, ...]:
        return (await self.pipeline(model)).labels

    async def _run(self, pipeline: Pipeline, items: list[bytes], outputs: list[str]) -> list[np.ndarray]:
        slots = asyncio.Semaphore(self.concurrency)

        async def one(chunk: slice):
            request = self.client.infer(**self._request(pipeline, items[chunk], outputs))
            async with slots:
                try:
                    return await asyncio.wait_for(request, self.timeout)
                except InferenceServerException as error:
                    raise _error(pipeline.name, error, chunk.start) from None
                except TimeoutError:
                    raise EmbeddingError(pipeline.name, f"no reply within {self.timeout} s", None) from None

        results = await asyncio.gather(*(one(chunk) for chunk in pipeline.chunks(len(items))))
        return [np.concatenate([result.as_numpy(name) for result in results]) for name in outputs]

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
