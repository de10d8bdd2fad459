"""triton_embeddings against the real server: both protocols, sync and async, splitting, errors;
and its core (requests built from a model config, no server)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from export.tools.corpus import corpus
from tests import images
from tests.conftest import CLIP_LABELS
from tests.helpers import embed_grpc, infer_bytes
from triton_embeddings import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError
from triton_embeddings.core import CONNECTION_LOST, Jobs, Pipeline, Retry, is_retryable, is_unknown_model
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, EMBEDDING, IMAGE, TEXT, ClipPipelineNames

CLIP = ClipPipelineNames("clip-vit-b-32")
FAST = "tiny-xlm-roberta"  # a tiny model, for the calls that send thousands of requests


def url(server, protocol: str) -> str:
    return server.options.grpc_url if protocol == "grpc" else server.options.http_url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_texts_round_trip(server, grpc_client, protocol: str) -> None:
    texts = corpus(150)  # more than max_batch_size (64): three requests
    with EmbeddingClient(url(server, protocol), protocol) as client:
        served = client.embed_text(DEFAULT_TEXT_PIPELINE, texts)
        assert client.pipeline(DEFAULT_TEXT_PIPELINE).max_batch_size == 64  # read from the server
        assert client.embed_text(DEFAULT_TEXT_PIPELINE, []).shape == (0, 384)
    expected = np.concatenate([embed_grpc(grpc_client, DEFAULT_TEXT_PIPELINE, texts[i : i + 64]) for i in (0, 64, 128)])
    assert served.shape == (150, 384) and served.dtype == np.float32
    np.testing.assert_allclose(served, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_images_as_paths_bytes_and_pil_images(server, grpc_client, tmp_path: Path, protocol: str) -> None:
    data = [images.jpeg(320, 240, seed=s) for s in range(3)]
    paths = []
    for index, item in enumerate(data):
        paths.append(tmp_path / f"{index}.jpg")
        paths[-1].write_bytes(item)
    (expected,) = infer_bytes(grpc_client, CLIP.image, IMAGE.name, data, [EMBEDDING.name])
    with EmbeddingClient(url(server, protocol), protocol) as client:
        np.testing.assert_array_equal(client.embed_image(CLIP.image, data), expected)
        np.testing.assert_array_equal(client.embed_image(CLIP.image, paths), expected)
        np.testing.assert_array_equal(client.embed_image(CLIP.image, [str(p) for p in paths]), expected)
        # A PIL image travels as lossless PNG: the same pixels as the decoded JPEG.
        decoded = [Image.open(p) for p in paths]
        as_png = client.embed_image(CLIP.image, [images.encode(image.convert("RGB"), "PNG") for image in decoded])
        np.testing.assert_array_equal(client.embed_image(CLIP.image, decoded), as_png)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classify(server, grpc_client, protocol: str) -> None:
    data = [images.jpeg(300, 200, seed=s) for s in range(4)]
    label, scores = infer_bytes(grpc_client, CLIP.classify, IMAGE.name, data, ["LABEL", "SCORES"])
    with EmbeddingClient(url(server, protocol), protocol) as client:
        assert client.labels(CLIP.classify) == CLIP_LABELS
        results = client.classify(CLIP.classify, data)
    assert [name for name, _ in results] == [value.decode() for value in label[:, 0]]
    np.testing.assert_array_equal(np.stack([row for _, row in results]), scores)


def test_ten_thousand_texts_in_one_call_equal_one_by_one(server) -> None:
    texts = corpus(10_000, seed=99)
    with EmbeddingClient(server.options.grpc_url, concurrency=8) as client:
        at_once = client.embed_text(FAST, texts)

    async def one_by_one() -> np.ndarray:
        async with AsyncEmbeddingClient(server.options.grpc_url, concurrency=64) as client:
            slots = asyncio.Semaphore(64)

            async def single(text: str) -> np.ndarray:
                async with slots:
                    return await client.embed_text(FAST, [text])

            return np.concatenate(await asyncio.gather(*(single(text) for text in texts)))

    singles = asyncio.run(one_by_one())
    assert at_once.shape == singles.shape == (10_000, 32)
    np.testing.assert_allclose(at_once, singles, atol=1e-5, rtol=0)  # batch padding differs: float32 rounding


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_errors_carry_model_index_and_server_message(server, protocol: str) -> None:
    texts = ["fine"] * 70 + [""] + ["fine"]  # the empty one is item 6 of the second request
    with EmbeddingClient(url(server, protocol), protocol) as client:
        with pytest.raises(EmbeddingError) as caught:
            client.embed_text(DEFAULT_TEXT_PIPELINE, texts)
        assert caught.value.model == DEFAULT_TEXT_PIPELINE and caught.value.index == 70
        assert "TEXT[6] is an empty string" in caught.value.message
        with pytest.raises(EmbeddingError, match="no-such-model"):
            client.embed_text("no-such-model", ["x"])
        with pytest.raises(EmbeddingError) as caught:
            client.embed_image(CLIP.image, [images.jpeg(64, 64), b"not an image"])
        assert caught.value.index == 1 and "is not an image file" in caught.value.message


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_client_under_64_concurrent_calls(server, grpc_client, protocol: str) -> None:
    batches = [corpus(5, seed=s) for s in range(64)]
    expected = [embed_grpc(grpc_client, DEFAULT_TEXT_PIPELINE, texts) for texts in batches]

    async def calls() -> list[np.ndarray]:
        async with AsyncEmbeddingClient(url(server, protocol), protocol) as client:
            return await asyncio.gather(*(client.embed_text(DEFAULT_TEXT_PIPELINE, texts) for texts in batches))

    for got, want in zip(asyncio.run(calls()), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_async_errors_and_images(server) -> None:
    async def calls():
        async with AsyncEmbeddingClient(server.options.grpc_url) as client:
            embeddings = await client.embed_image(CLIP.image, [images.jpeg(100, 80)])
            results = await client.classify(CLIP.classify, [images.jpeg(100, 80)])
            with pytest.raises(EmbeddingError) as caught:
                await client.embed_text(DEFAULT_TEXT_PIPELINE, ["ok", b"\xff"])
            return embeddings, results, caught.value

    embeddings, results, error = asyncio.run(calls())
    assert embeddings.shape == (1, 512) and results[0][0] in CLIP_LABELS
    assert error.index == 1 and "not valid UTF-8" in error.message


def test_async_timeout_is_an_embedding_error_on_python_3_10(server, monkeypatch: pytest.MonkeyPatch) -> None:
    """On 3.10 `asyncio.wait_for` raises `asyncio.TimeoutError`, not the builtin TimeoutError
    (they are one class from 3.11 on). Recreate 3.10 in asyncio: a distinct class, raised by the wait."""

    class Python310TimeoutError(Exception):
        pass

    async def wait_for(awaitable, timeout):
        awaitable.close()  # never sent: the reply "did not come"
        raise Python310TimeoutError

    async def call() -> None:
        async with AsyncEmbeddingClient(server.options.grpc_url, timeout=0.25) as client:
            await client.pipeline(DEFAULT_TEXT_PIPELINE)  # read before the patch: only the infer waits
            monkeypatch.setattr(asyncio, "TimeoutError", Python310TimeoutError)
            monkeypatch.setattr(asyncio, "wait_for", wait_for)
            await client.embed_text(DEFAULT_TEXT_PIPELINE, ["a cat", "a dog"])

    with pytest.raises(EmbeddingError) as caught:
        asyncio.run(call())
    assert caught.value.model == DEFAULT_TEXT_PIPELINE and caught.value.message == "no reply within 0.25 s"


# The model config as the server gives it: HTTP's JSON has numbers, gRPC's (protobuf JSON) int64 dims as strings.
def text_config(input_dims: list) -> dict:
    return {
        "name": "text",
        "max_batch_size": 64,
        "input": [{"name": TEXT.name, "data_type": "TYPE_STRING", "dims": input_dims}],
        "output": [{"name": EMBEDDING.name, "data_type": "TYPE_FP32", "dims": ["384"]}],
    }


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("dims", [[1], ["1"], ["-1"]])
def test_requests_are_shaped_by_the_config_and_split_by_max_batch_size(protocol: str, dims: list) -> None:
    pipeline = Pipeline.from_config(text_config(dims))
    job = Jobs(protocol).embed_text(pipeline, [f"text {i}" for i in range(150)])
    assert [request.offset for request in job.requests] == [0, 64, 128]
    for request, size in zip(job.requests, [64, 64, 22], strict=True):
        (tensor,) = request.kwargs["inputs"]
        assert (request.kwargs["model_name"], tensor.name(), tensor.datatype()) == ("text", TEXT.name, "BYTES")
        assert tensor.shape() == [size, 1]
        if protocol == "http":  # binary tensors both ways, not JSON
            body, json_size = httpclient.InferenceServerClient.generate_request_body(
                request.kwargs["inputs"], outputs=request.kwargs["outputs"]
            )
            header = json.loads(body[:json_size])
            assert "binary_data_size" in header["inputs"][0]["parameters"]
            assert header["outputs"] == [{"name": EMBEDDING.name, "parameters": {"binary_data": True}}]
    empty = Jobs(protocol).embed_text(pipeline, [])
    assert empty.requests == [] and empty.finish([]).shape == (0, 384)


def test_core_refusals() -> None:
    with pytest.raises(EmbeddingError, match="expected one value per item"):
        Jobs("grpc").embed_text(Pipeline.from_config(text_config([2])), ["a", "b"])
    with pytest.raises(TypeError, match="a list of texts"):
        Jobs("grpc").embed_text(Pipeline.from_config(text_config([1])), "a cat")
    config = {**text_config([1]), "input": [{"name": "ids", "data_type": "TYPE_INT64", "dims": ["-1"]}]}
    with pytest.raises(EmbeddingError, match="not an embedding pipeline"):
        Jobs("grpc").embed_text(Pipeline.from_config(config), ["a cat"])
    with pytest.raises(ValueError, match="protocol must be one of"):
        EmbeddingClient("localhost:1", "websocket")


def test_retry_waits_doubling_within_its_budget_and_only_for_what_the_server_could_not_serve() -> None:
    retry = Retry(attempts=6, first_delay=0.1, max_delay=0.5, budget=2.0)
    stub_died = EmbeddingError("m", "in ensemble 'm', Stub process 'm_tokenizer_0_0' is not healthy.", None, "500")
    waits = [retry.delay(stub_died, tries, elapsed=0.0) for tries in range(1, 7)]
    for wait, cap in zip(waits[:5], [0.1, 0.2, 0.4, 0.5, 0.5], strict=True):
        assert wait is not None and cap / 2 <= wait <= cap  # doubling, capped, shortened by up to half
    assert waits[5] is None  # six tries made
    assert retry.delay(stub_died, 1, elapsed=1.95) is None  # the next try would start past the budget
    for retryable in (
        EmbeddingError("m", "Exceeds maximum queue size", None, "StatusCode.UNAVAILABLE"),
        EmbeddingError("m", "failed to connect to all addresses", None, "StatusCode.UNAVAILABLE"),
        EmbeddingError("m", "Exceeds maximum queue size", None, "503"),
        EmbeddingError("m", "Request for unknown model: 'm' has no available versions", None, "StatusCode.NOT_FOUND"),
    ):
        assert is_retryable(retryable), retryable
    not_found = "StatusCode.NOT_FOUND"
    loading = EmbeddingError("m", "Request for unknown model: 'm' has no available versions", None, not_found)
    absent = EmbeddingError("m", "Request for unknown model: 'm' is not found", None, not_found)
    assert is_unknown_model(absent) and not is_unknown_model(loading)  # search does not remember a loading model
    for refused in (
        EmbeddingError("m", "TEXT[0] is an empty string", 0, "StatusCode.INVALID_ARGUMENT"),
        EmbeddingError("m", "Request for unknown model: 'm' is not found", None, "StatusCode.NOT_FOUND"),
        EmbeddingError("m", "no reply within 1 s"),
    ):
        assert not is_retryable(refused) and Retry().delay(refused, 1, 0.0) is None
    index = Pipeline.from_config(
        {"name": "c_index", "max_batch_size": 8, "input": [
            {"name": "ID", "data_type": "TYPE_INT64", "dims": ["1"]},
            {"name": "ACTION", "data_type": "TYPE_STRING", "dims": ["1"]},
        ], "output": [{"name": "COUNT", "data_type": "TYPE_INT64", "dims": ["1"]}]}
    )  # fmt: skip
    assert not Jobs("grpc").delete(index, [1, 2], None).idempotent  # its count would change if resent
    assert Jobs("grpc").exists(index, [1, 2]).idempotent


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_refused_request_is_sent_once(server, grpc_client, protocol: str) -> None:
    """Bad input is the caller's to fix: no retry. Counted by the server's failure count, against
    one request sent by hand (Triton 2.51 counts an ensemble's failure twice)."""

    def failures() -> int:
        stats = server.repository_api.statistics(DEFAULT_TEXT_PIPELINE)
        return int(stats["model_stats"][0]["inference_stats"]["fail"]["count"])

    before = failures()
    empty = grpcclient.InferInput(TEXT.name, [1, 1], "BYTES")
    empty.set_data_from_numpy(np.array([[b""]], dtype=object))
    with pytest.raises(InferenceServerException):
        grpc_client.infer(DEFAULT_TEXT_PIPELINE, [empty])
    one_request = failures() - before
    assert one_request > 0
    before = failures()
    with EmbeddingClient(url(server, protocol), protocol) as client, pytest.raises(EmbeddingError):
        client.embed_text(DEFAULT_TEXT_PIPELINE, [""])
    assert failures() - before == one_request


def test_the_client_needs_no_torch_and_nothing_of_export() -> None:
    code = (
        "import sys, triton_embeddings, triton_embeddings.client, triton_embeddings.aio\n"
        "assert not {'torch', 'onnxruntime', 'tokenizers'} & set(sys.modules)\n"
        "assert not [m for m in sys.modules if m == 'export' or m.startswith('export.')]\n"
        # Imports from before the split keep working.
        "from triton_embeddings.client import RECONNECT_BACKOFF_MS, AsyncEmbeddingClient, EmbeddingError\n"
        "assert AsyncEmbeddingClient is triton_embeddings.AsyncEmbeddingClient"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


class DroppingProxy(ThreadingHTTPServer):
    """An HTTP proxy to the real server that closes the connection of the first `drops` infer
    requests without a reply, as a replica dying under a load balancer does."""

    def __init__(self, upstream: str, drops: int) -> None:
        self.upstream, self.drops, self.posts = upstream, drops, 0
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: DroppingProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts += 1
        if self.server.posts <= self.server.drops:
            self.close_connection = True  # no status line, nothing: the connection just ends
            return
        self._forward(body)

    def _forward(self, body: bytes | None) -> None:
        headers = {key: value for key, value in self.headers.items() if key.lower() not in ("host", "connection")}
        target = f"http://{self.server.upstream}{self.path}"
        request = urllib.request.Request(target, body, headers, method=self.command)
        try:
            reply = urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as error:
            reply = error
        data = reply.read()
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.parametrize("aio", [False, True])
def test_a_connection_closed_before_a_reply_is_retried_for_idempotent_calls(server, aio: bool) -> None:
    """What a client sees through a load balancer when the replica holding its request dies."""
    texts = ["one", "two"]
    with DroppingProxy(server.options.http_url, drops=2) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        retry = Retry(first_delay=0.01)
        if aio:

            async def embed() -> np.ndarray:
                async with AsyncEmbeddingClient(proxy.url, "http", retry=retry) as client:
                    return await client.embed_text(FAST, texts)

            served = asyncio.run(embed())
        else:
            with EmbeddingClient(proxy.url, "http", retry=retry) as client:
                served = client.embed_text(FAST, texts)
        assert proxy.posts == 3  # dropped twice, answered the third time
        with EmbeddingClient(server.options.http_url, "http") as direct:
            np.testing.assert_allclose(served, direct.embed_text(FAST, texts), atol=1e-6)
        # Not retried: an error that says so, with the status is_retryable knows.
        proxy.drops, proxy.posts = 1, 0
        once = Retry(attempts=1)
        with EmbeddingClient(proxy.url, "http", retry=once) as client, pytest.raises(EmbeddingError) as raised:
            client.embed_text(FAST, texts)
        assert "closed before a reply" in raised.value.message, raised.value
        assert raised.value.status == CONNECTION_LOST and is_retryable(raised.value)
        proxy.shutdown()
