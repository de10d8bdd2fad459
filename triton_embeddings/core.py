"""What a client call means on the wire, shared by the blocking and the asyncio client; no I/O.

Every public method of `EmbeddingClient` (client.py) and `AsyncEmbeddingClient` (aio.py) is a
`Job`: the infer requests to send, and a function that turns their replies, in order, into
the method's result. This module builds jobs from the pipeline's metadata (read from the
model config once), splits lists into requests of at most `max_batch_size` items, shapes
tensors from the config's dims, reads replies and maps server errors to `EmbeddingError`.
The clients only send. A new method is a `Jobs` method here plus one line in each client:

    def embed_text(self, model, texts):                        # client.py
        return self._send(self._jobs.embed_text(self.pipeline(model), texts))

    async def embed_text(self, model, texts):                  # aio.py
        return await self._send(self._jobs.embed_text(await self.pipeline(model), texts))
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from triton_embeddings import names

T = TypeVar("T")
ImageInput = str | os.PathLike | bytes | Image.Image
PROTOCOLS = ("grpc", "http")
_ITEM_IN_MESSAGE = re.compile(r"\b[A-Za-z_]\w*\[(\d+)\]")  # "TEXT[3] is an empty string"

# gRPC waits longer and longer between attempts to reach a server that is down (up to two
# minutes), so after a restart a client could stay disconnected long after the server is back.
# A cap of 1 s costs a local server nothing.
RECONNECT_BACKOFF_MS = 1000


class EmbeddingError(Exception):
    """The server refused or failed a request: `model`, `index` of the item in the caller's
    list when the server named one, the server's `message`, and the `status` it came with
    (gRPC: "StatusCode.UNAVAILABLE"...; HTTP: "503"...; CONNECTION_LOST when an HTTP connection
    failed or closed before any reply; None when no reply came in time)."""

    def __init__(self, model: str, message: str, index: int | None = None, status: str | None = None) -> None:
        self.model, self.message, self.index, self.status = model, message, index, status
        where = f" (item {index})" if index is not None else ""
        super().__init__(f"{model}{where}: {message}")


# The status of an HTTP request whose connection closed before any reply: a replica (or the
# server behind a load balancer) died or went away with it; the request may or may not have run.
CONNECTION_LOST = "connection lost"
# What the server says while it recovers or sheds load: worth asking again a little later.
RETRYABLE_STATUSES = ("StatusCode.UNAVAILABLE", "503", CONNECTION_LOST)  # queue full, server going or not up yet
RETRYABLE_MESSAGES = (
    "is not healthy",  # a Python-backend stub died; the watchdog is reloading its model
    "has no available version",  # a model (re)loading
    "is not ready",
)


def is_retryable(error: EmbeddingError) -> bool:
    """Whether the server could not serve the request for now (as opposed to: refused it)."""
    return error.status in RETRYABLE_STATUSES or any(text in error.message for text in RETRYABLE_MESSAGES)


@dataclass(frozen=True)
class Retry:
    """How the clients ask again when the server could not serve a request for now
    (is_retryable): only for calls that mean the same when repeated (all but delete, whose
    count would change). Waits double from `first_delay` up to `max_delay`, each shortened by up
    to half at random so that many clients do not come back at once; no try starts more than
    `budget` seconds after the first, and at most `attempts` are made in all.

    The default budget covers a stub's recovery with margin: the watchdog notices a dead stub
    within 0.5 s and its model serves again 2-6 s after the kill (docs/reliability.md).
    `Retry(attempts=1)` never retries."""

    attempts: int = 10
    first_delay: float = 0.1
    max_delay: float = 2.0
    budget: float = 15.0

    def delay(self, error: EmbeddingError, tries: int, elapsed: float) -> float | None:
        """Seconds to wait before try `tries + 1`, `elapsed` seconds after the first; None: give up."""
        if tries >= self.attempts or not is_retryable(error):
            return None
        wait = min(self.max_delay, self.first_delay * 2 ** (tries - 1)) * random.uniform(0.5, 1.0)
        return wait if elapsed + wait <= self.budget else None


Tensors = dict[str, tuple[str, tuple[int, ...]]]  # name -> (ModelConfig data type, dims without the batch axis)


def wire_type(data_type: str) -> str:
    """The KServe v2 datatype of a ModelConfig data type: TYPE_STRING -> BYTES, TYPE_FP32 -> FP32."""
    return "BYTES" if data_type == "TYPE_STRING" else data_type.removeprefix("TYPE_")


def _tensors(config: dict[str, Any], key: str) -> Tensors:
    # dims arrive as strings over gRPC (protobuf's JSON for int64) and as numbers over HTTP.
    return {t["name"]: (t["data_type"], tuple(int(d) for d in t.get("dims", []))) for t in config.get(key, [])}


@dataclass(frozen=True)
class Pipeline:
    """What the server says about a model: its inputs, outputs, batch limit and labels."""

    name: str
    max_batch_size: int
    inputs: Tensors
    outputs: Tensors
    labels: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Pipeline:
        """From the model config as JSON (HTTP's reply, or gRPC's with `as_json=True`)."""
        labels = config.get("parameters", {}).get("labels", {}).get("string_value")
        return cls(
            name=config["name"],
            max_batch_size=max(1, int(config.get("max_batch_size", 1))),
            inputs=_tensors(config, "input"),
            outputs=_tensors(config, "output"),
            labels=tuple(json.loads(labels)) if labels else (),
        )

    @property
    def input(self) -> str:
        """The one BYTES input every embedding pipeline has (TEXT or IMAGE)."""
        if len(self.inputs) != 1 or next(iter(self.inputs.values()))[0] != "TYPE_STRING":
            raise EmbeddingError(self.name, "not an embedding pipeline: expected one BYTES input")
        return next(iter(self.inputs))

    def output(self, data_type: str) -> str:
        """The one output of `data_type` (TYPE_FP32: the embedding or scores; TYPE_STRING: the label)."""
        names = [name for name, (kind, _) in self.outputs.items() if kind == data_type]
        if len(names) != 1:
            raise EmbeddingError(self.name, f"expected one {data_type} output, the model has {list(self.outputs)}")
        return names[0]

    def rows(self, name: str, items: Sequence[Any]) -> np.ndarray:
        """`items` as input `name`'s tensor: one item per row, shaped by the config's dims
        (the pipelines' BYTES inputs have dims [1]; a dynamic axis holds the one value)."""
        data_type, dims = self.inputs[name]
        shape = tuple(1 if dim < 0 else dim for dim in dims)
        if math.prod(shape) != 1:
            raise EmbeddingError(self.name, f"input {name} has dims {list(dims)}: expected one value per item")
        return np.array(items, dtype=triton_to_np_dtype(wire_type(data_type))).reshape(len(items), *shape)

    def empty(self, name: str) -> np.ndarray:
        """What output `name` of no items looks like: [0, *dims]."""
        data_type, dims = self.outputs[name]
        return np.zeros((0, *(max(dim, 0) for dim in dims)), dtype=triton_to_np_dtype(wire_type(data_type)))

    def chunks(self, count: int) -> Iterator[slice]:
        for start in range(0, count, self.max_batch_size):
            yield slice(start, min(start + self.max_batch_size, count))


@dataclass(frozen=True)
class Hit:
    """One search result: the point's id, its score (higher is closer, whatever the metric)
    and the payload stored with it ({} when none was)."""

    id: int
    score: float
    payload: Any


Filter = str | bytes | dict[str, Any]  # the JSON filter of docs/search.md, as text or as a dict


def is_text(item: Any) -> bool:
    """Search and upsert take texts as `str`; an image as a path (os.PathLike), bytes or a PIL image."""
    return isinstance(item, str)


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


def images_bytes(images: Sequence[ImageInput]) -> list[bytes]:
    return [image_bytes(image) for image in images]


def _item_bytes(input_name: str, items: Sequence[Any]) -> list[bytes]:
    return text_bytes(items) if input_name == names.TEXT.name else images_bytes(items)


def _filter_bytes(filter: Filter) -> bytes:
    if isinstance(filter, dict):
        return json.dumps(filter, ensure_ascii=False).encode()
    return filter.encode() if isinstance(filter, str) else filter


def _id_rows(ids: Sequence[int]) -> np.ndarray:
    """Point ids as an [n, 1] INT64 tensor; refuses what is not an integer rather than rounding it."""
    array = np.asarray(ids)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got {array.dtype} values")
    return array.astype(np.int64).reshape(-1, 1)


def is_unknown_model(error: EmbeddingError) -> bool:
    """The server does not have that model (as opposed to: it could not be reached, or the model
    is loading: "unknown model: 'x' has no available versions", which passes)."""
    return "unknown model" in error.message.lower() and not is_retryable(error)


def text_bytes(texts: Sequence[str | bytes]) -> list[bytes]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("pass a list of texts, not a single string")
    return [text.encode() if isinstance(text, str) else text for text in texts]


@contextmanager
def server_errors(model: str, offset: int = 0) -> Iterator[None]:
    """Raise the server's errors as `EmbeddingError`; an item the message names ("TEXT[3]")
    becomes an index into the caller's list, `offset` being the request's first item there."""
    try:
        yield
    except InferenceServerException as error:
        message = error.message() or str(error)
        named = _ITEM_IN_MESSAGE.search(message)
        index = offset + int(named.group(1)) if named else None
        raise EmbeddingError(model, message, index, error.status()) from None
    except _lost_connection() as error:
        message = f"the connection failed or closed before a reply: {error!r}"
        raise EmbeddingError(model, message, None, CONNECTION_LOST) from None


def _lost_connection() -> tuple[type[BaseException], ...]:
    """What the HTTP libraries raise when a connection closes before a reply (a server, or the
    replica behind a load balancer, went away): the standard errors (geventhttpclient's
    HTTPConnectionClosed is an http.client.HTTPException), and aiohttp's once the asyncio
    client has loaded it. gRPC reports the same as UNAVAILABLE itself."""
    errors: tuple[type[BaseException], ...] = (ConnectionError, http.client.HTTPException)
    aiohttp = sys.modules.get("aiohttp")
    return (*errors, aiohttp.ClientConnectionError) if aiohttp is not None else errors


@dataclass(frozen=True)
class Request:
    """One infer call: tritonclient's `infer` keyword arguments, and the index of its first
    item in the caller's list."""

    kwargs: dict[str, Any]
    offset: int


@dataclass(frozen=True)
class Job(Generic[T]):
    """A call as the clients send it: `requests` (any order, concurrently), then `finish` on
    their replies in the order of `requests`. No requests: `finish([])` (an empty list in)."""

    model: str
    requests: list[Request]
    finish: Callable[[list[Any]], T]
    idempotent: bool = True  # the same result if a request is sent again: Retry may resend it

    def errors(self, request: Request):
        """Context manager around waiting for `request`'s reply."""
        return server_errors(self.model, request.offset)

    def no_reply(self, timeout: float | None) -> EmbeddingError:
        return EmbeddingError(self.model, f"no reply within {timeout} s", None)


def transport(protocol: str, aio: bool) -> ModuleType:
    """tritonclient's module for `protocol`, blocking or asyncio; only that one is imported."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "grpc":
        import tritonclient.grpc as grpc
        import tritonclient.grpc.aio as grpc_aio

        return grpc_aio if aio else grpc
    import tritonclient.http as http
    import tritonclient.http.aio as http_aio

    return http_aio if aio else http


def grpc_channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel options (channel_args replaces them: unlimited message sizes,
    its keepalive defaults), plus the reconnect backoff cap."""
    from tritonclient.grpc import KeepAliveOptions

    keepalive = KeepAliveOptions()
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


class Jobs:
    """One client's protocol and the pipelines it has read; builds its jobs."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.module = transport(protocol, aio=False)  # InferInput and InferRequestedOutput, also for aio
        self.pipelines: dict[str, Pipeline] = {}
        self.unknown: set[str] = set()  # search candidates the server said it does not have
        # gRPC answers get_model_config with a protobuf unless asked for JSON; HTTP always sends JSON.
        self.config_options: dict[str, Any] = {"as_json": True} if protocol == "grpc" else {}

    def remember(self, model: str, reply: dict[str, Any]) -> Pipeline:
        """The pipeline from `model`'s get_model_config reply, kept for the client's later calls."""
        self.pipelines[model] = Pipeline.from_config(reply["config"] if self.protocol == "grpc" else reply)
        return self.pipelines[model]

    def embed_text(self, pipeline: Pipeline, texts: Sequence[str | bytes]) -> Job[np.ndarray]:
        return self._embed(pipeline, text_bytes, texts)

    def embed_image(self, pipeline: Pipeline, images: Sequence[ImageInput]) -> Job[np.ndarray]:
        return self._embed(pipeline, images_bytes, images)

    def classify(self, pipeline: Pipeline, images: Sequence[ImageInput]) -> Job[list[tuple[str, np.ndarray]]]:
        name, (label, scores) = self._signature(pipeline, "TYPE_STRING", "TYPE_FP32")

        def finish(replies: list[Any]) -> list[tuple[str, np.ndarray]]:
            labels, rows = self._concatenate(pipeline, replies, label), self._concatenate(pipeline, replies, scores)
            return [(text.decode(), row) for text, row in zip(labels.reshape(-1), rows, strict=True)]

        return self._job(pipeline, name, images_bytes(images), [label, scores], finish)

    def caption(self, pipeline: Pipeline, images: Sequence[ImageInput]) -> Job[list[str]]:
        """CAPTION per image (a CoCa `_caption` or `_classify_caption` ensemble)."""
        output = names.CAPTION.name
        if output not in pipeline.outputs:
            raise EmbeddingError(pipeline.name, f"not a caption pipeline: no {output} output, {list(pipeline.outputs)}")

        def finish(replies: list[Any]) -> list[str]:
            return [text.decode() for text in self._concatenate(pipeline, replies, output).reshape(-1)]

        return self._job(pipeline, pipeline.input, images_bytes(images), [output], finish)

    # Search (docs/search.md): which model a call goes to, then the job.

    @staticmethod
    def search_models(collection: str, items: Sequence[Any]) -> list[str]:
        """The ensembles that can search `items` in `collection`, in order of preference; the
        first the server has is used. A model name works too (the last candidate)."""
        collection_names = names.CollectionNames(collection)
        if items and not is_text(items[0]):
            return [collection_names.image_search, collection]
        return [collection_names.search, collection_names.text_search, collection]

    @staticmethod
    def upsert_model(collection: str, items: Any) -> str:
        """Vectors go to the index step, texts to COLLECTION_upsert, images to COLLECTION_image_upsert."""
        collection_names = names.CollectionNames(collection)
        if isinstance(items, np.ndarray) and items.dtype.kind == "f":
            return collection_names.index
        return (
            collection_names.upsert
            if items is not None and len(items) and is_text(items[0])
            else (collection_names.image_upsert)
        )

    def search(
        self, pipeline: Pipeline, items: Sequence[Any], top_k: int | None, filter: Filter | None
    ) -> Job[list[list[Hit]]]:
        item = self._item_input(pipeline, items)
        rows = len(items)
        inputs = {item: pipeline.rows(item, _item_bytes(item, items))}
        if top_k is not None:  # else the collection's default
            inputs[names.TOP_K.name] = np.full((rows, 1), int(top_k))
        if filter is not None:
            inputs[names.FILTER.name] = np.full((rows, 1), _filter_bytes(filter), dtype=object)
        outputs = [names.IDS.name, names.SCORES.name, names.PAYLOADS.name]

        def finish(replies: list[Any]) -> list[list[Hit]]:
            if not replies:
                return []
            ids, scores, payloads = (np.concatenate([r.as_numpy(name) for r in replies]) for name in outputs)
            return [
                [Hit(int(i), float(s), json.loads(p)) for i, s, p in zip(*row, strict=True) if i >= 0]
                for row in zip(ids, scores, payloads, strict=True)
            ]

        return self._rows_job(pipeline, inputs, outputs, finish)

    def upsert(self, pipeline: Pipeline, items: Any, ids: Sequence[int], payloads: Sequence[Any] | None) -> Job[int]:
        """Store `items` (texts, images or vectors) under `ids`, with `payloads` (dicts)."""
        if len(ids) != len(items) or (payloads is not None and len(payloads) != len(items)):
            raise ValueError(f"{len(items)} items, {len(ids)} ids and {len(payloads or ())} payloads: give one each")
        if len(items) == 0:
            return Job(pipeline.name, [], self._total)
        if isinstance(items, np.ndarray) and items.dtype.kind == "f":
            inputs = {names.EMBEDDING.name: np.ascontiguousarray(items, dtype=np.float32)}
        else:
            item = self._item_input(pipeline, items)
            inputs = {item: pipeline.rows(item, _item_bytes(item, items))}
        inputs[names.ID.name] = _id_rows(ids)
        if payloads is not None:
            encoded = [json.dumps(p, ensure_ascii=False, allow_nan=False).encode() for p in payloads]
            inputs[names.PAYLOAD.name] = np.array(encoded, dtype=object).reshape(-1, 1)
        return self._rows_job(pipeline, inputs, [names.COUNT.name], self._total)

    def delete(self, index: Pipeline, ids: Sequence[int] | None, filter: Filter | None) -> Job[int]:
        """How many points were deleted: by ids, or by a filter."""
        if (ids is None) == (filter is None):
            raise ValueError("delete takes ids or a filter, one of the two")
        if filter is not None:
            inputs = {names.FILTER.name: np.array([[_filter_bytes(filter)]], dtype=object)}
        else:
            inputs = {names.ID.name: _id_rows(ids)}
        return replace(self._action(index, "delete", inputs, self._total), idempotent=False)

    def count(self, index: Pipeline, filter: Filter | None) -> Job[int]:
        """How many points the collection holds (that `filter` selects)."""
        inputs = {} if filter is None else {names.FILTER.name: np.array([[_filter_bytes(filter)]], dtype=object)}
        return self._action(index, "count", inputs, self._total, rows=1)

    def exists(self, index: Pipeline, ids: Sequence[int]) -> Job[list[bool]]:
        """Whether each id is stored."""
        inputs = {names.ID.name: _id_rows(ids)}
        return self._action(index, "exists", inputs, lambda replies: [bool(c) for c in self._counts(replies)])

    def _action(
        self,
        index: Pipeline,
        action: str,
        inputs: dict[str, np.ndarray],
        finish: Callable[[list[Any]], T],
        rows: int = 0,
    ) -> Job[T]:
        rows = rows or len(next(iter(inputs.values())))
        inputs[names.ACTION.name] = np.full((rows, 1), action.encode(), dtype=object)
        return self._rows_job(index, inputs, [names.COUNT.name], finish)

    def _rows_job(
        self, pipeline: Pipeline, inputs: dict[str, np.ndarray], outputs: list[str], finish: Callable[[list[Any]], T]
    ) -> Job[T]:
        """Tensors of one row per item, split into requests of at most `max_batch_size` rows."""
        if missing := [name for name in inputs if name not in pipeline.inputs]:
            raise EmbeddingError(
                pipeline.name, f"has no input {', '.join(missing)}: not a model of a search collection"
            )
        count = len(next(iter(inputs.values())))
        requests = [
            Request(self._infer(pipeline, {name: array[chunk] for name, array in inputs.items()}, outputs), chunk.start)
            for chunk in pipeline.chunks(count)
        ]
        return Job(pipeline.name, requests, finish)

    @staticmethod
    def _item_input(pipeline: Pipeline, items: Sequence[Any]) -> str:
        """The ensemble's TEXT or IMAGE input."""
        found = [name for name in (names.TEXT.name, names.IMAGE.name) if name in pipeline.inputs]
        if len(found) != 1:
            raise EmbeddingError(
                pipeline.name, f"expected a TEXT or an IMAGE input, the model has {list(pipeline.inputs)}"
            )
        return found[0]

    @staticmethod
    def _counts(replies: list[Any]) -> list[int]:
        return [int(c) for reply in replies for c in reply.as_numpy(names.COUNT.name).reshape(-1)]

    def _total(self, replies: list[Any]) -> int:
        return sum(self._counts(replies))

    def _embed(self, pipeline: Pipeline, encode: Callable[[Any], list[bytes]], values: Any) -> Job[np.ndarray]:
        name, (output,) = self._signature(pipeline, "TYPE_FP32")
        return self._job(
            pipeline, name, encode(values), [output], lambda replies: self._concatenate(pipeline, replies, output)
        )

    @staticmethod
    def _signature(pipeline: Pipeline, *data_types: str) -> tuple[str, list[str]]:
        """The pipeline's BYTES input and its output of each data type, checked before any
        input is read: a call to the wrong model fails on that first."""
        return pipeline.input, [pipeline.output(data_type) for data_type in data_types]

    def _job(
        self, pipeline: Pipeline, name: str, items: list[bytes], outputs: list[str], finish: Callable[[list[Any]], T]
    ) -> Job[T]:
        """`items` into input `name`, split into requests of at most `max_batch_size`."""
        requests = [
            Request(self._infer(pipeline, {name: pipeline.rows(name, items[chunk])}, outputs), chunk.start)
            for chunk in pipeline.chunks(len(items))
        ]
        return Job(pipeline.name, requests, finish)

    def _infer(self, pipeline: Pipeline, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, Any]:
        """Keyword arguments of tritonclient's `infer`; binary tensors over HTTP (JSON is the default)."""
        binary = {"binary_data": True} if self.protocol == "http" else {}
        tensors = []
        for name, array in inputs.items():
            wire = wire_type(pipeline.inputs[name][0])
            if wire != "BYTES":  # a number becomes the config's type (TOP_K is INT32, ids INT64)
                array = np.asarray(array, dtype=triton_to_np_dtype(wire))
            tensors.append(self.module.InferInput(name, list(array.shape), wire))
            tensors[-1].set_data_from_numpy(array, **binary)
        requested = [self.module.InferRequestedOutput(name, **binary) for name in outputs]
        return {"model_name": pipeline.name, "inputs": tensors, "outputs": requested}

    @staticmethod
    def _concatenate(pipeline: Pipeline, replies: list[Any], output: str) -> np.ndarray:
        if not replies:
            return pipeline.empty(output)
        return np.concatenate([reply.as_numpy(output) for reply in replies])
