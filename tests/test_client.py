"""triton_embeddings.client against the real server: both protocols, sync and async, splitting, errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import images
from tests.conftest import CLIP_LABELS
from tests.helpers import embed_grpc, infer_bytes
from tests.texts import corpus
from triton_embeddings.client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, EMBEDDING, IMAGE, ClipPipelineNames

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


def test_the_client_needs_no_torch() -> None:
    code = "import sys, triton_embeddings.client; assert not {'torch', 'onnxruntime'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
