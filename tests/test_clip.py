"""CLIP pipelines against open_clip in torch, same (random) weights, through the real server.

Tolerances: text cosine >= 0.9999 and image cosine >= 0.999 per item (onnxruntime vs torch
differ by ~1e-7 here; the bounds leave room for other CPUs). The preprocess step alone makes
the same Pillow calls in the same order and the same float32 arithmetic as open_clip's
transform, so its pixels must be identical (tolerance 0), except where JPEGs are decoded at a
reduced scale on purpose (checked separately, cosine >= 0.999 against the full decode).
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from tritonclient.utils import InferenceServerException

from export.tools.compare import cosine
from export.tools.corpus import corpus, long_texts
from tests import images
from tests.clip_models import ClipReference
from tests.conftest import CLIP_LABELS, CLIP_TEMPLATES
from tests.helpers import embed_many, infer_bytes, post_infer
from triton_embeddings.names import (
    CLIP_INPUT_IDS,
    EMBEDDING,
    IMAGE,
    LABEL,
    PIXEL_VALUES,
    SCORES,
    TEXT,
    ClipPipelineNames,
)

PIPELINES = ["clip-vit-b-32", "clip-tiny"]
CLIP_TEXTS = [*corpus(100), *long_texts(), "Fish &amp; chips &lt;3", "caf\u00c3\u00a9", "IT'S LOUD", "<end_of_text> x"]
# Letterboxing a 30x4000 image into 64x96 rounds its width to 0 pixels: open_clip fails there
# (we keep one pixel and serve it, see test_extreme_aspect_ratio_is_served_where_open_clip_fails).
OPEN_CLIP_FAILS = {"clip-tiny": {"30x4000"}}


def open_image(data: bytes) -> Image.Image:
    """As a careful open_clip user would: decoded, EXIF orientation applied."""
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data)))


def reference_pixels(reference: ClipReference, items: list[bytes]) -> torch.Tensor:
    return torch.stack([reference.preprocess(open_image(data)) for data in items])


def reference_images(reference: ClipReference, items: list[bytes]) -> np.ndarray:
    with torch.no_grad():
        return reference.model.encode_image(reference_pixels(reference, items), normalize=True).numpy()


def reference_texts(reference: ClipReference, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        return reference.model.encode_text(reference.tokenizer(texts), normalize=True).numpy()


def image_cases(name: str) -> dict[str, bytes]:
    return {case: data for case, data in images.parity_cases().items() if case not in OPEN_CLIP_FAILS.get(name, ())}


def decoded_at_reduced_scale(data: bytes, target: tuple[int, int]) -> bool:
    """The documented rule: JPEGs at least twice the target's largest side on both sides."""
    image = Image.open(io.BytesIO(data))
    return image.format == "JPEG" and min(image.size) >= 2 * max(target)


@pytest.mark.parametrize("name", PIPELINES)
def test_text_embeddings_match_open_clip(grpc_client, clip_models, name: str) -> None:
    served = embed_many(grpc_client, ClipPipelineNames(name).text, CLIP_TEXTS)
    similarity = cosine(served, reference_texts(clip_models[name], CLIP_TEXTS))
    worst = int(np.argmin(similarity))
    assert similarity.min() >= 0.9999, f"cosine {similarity[worst]:.6f} for {CLIP_TEXTS[worst][:50]!r}"


@pytest.mark.parametrize("name", PIPELINES)
def test_served_token_ids_equal_open_clip(grpc_client, clip_models, name: str) -> None:
    """Cleaning (ftfy, HTML entities, case), BPE, truncation keeping the end token, padding."""
    tokenizer = ClipPipelineNames(name).text_tokenizer
    served = np.concatenate(
        [
            infer_bytes(grpc_client, tokenizer, TEXT.name, CLIP_TEXTS[i : i + 32], [CLIP_INPUT_IDS.name])[0]
            for i in range(0, len(CLIP_TEXTS), 32)
        ]
    )
    assert served.dtype == np.int32
    np.testing.assert_array_equal(served, clip_models[name].tokenizer(CLIP_TEXTS).numpy())


@pytest.mark.parametrize("name", PIPELINES)
def test_image_embeddings_match_open_clip(grpc_client, clip_models, name: str) -> None:
    cases = image_cases(name)
    items = list(cases.values())
    (served,) = infer_bytes(grpc_client, ClipPipelineNames(name).image, IMAGE.name, items, [EMBEDDING.name])
    similarity = cosine(served, reference_images(clip_models[name], items))
    failures = {case: round(float(s), 6) for case, s in zip(cases, similarity, strict=True) if s < 0.999}
    assert not failures


@pytest.mark.parametrize("name", PIPELINES)
def test_preprocess_step_alone_equals_open_clip_transform(grpc_client, clip_models, name: str) -> None:
    """Identical pixels; JPEGs large enough to be decoded at a reduced scale are left to
    test_large_jpegs_decode_at_reduced_scale_and_still_agree."""
    target = tuple(clip_models[name].model.visual.preprocess_cfg["size"])
    cases = {case: data for case, data in image_cases(name).items() if not decoded_at_reduced_scale(data, target)}
    assert len(cases) >= 12  # every mode and format at least
    preprocess = ClipPipelineNames(name).image_preprocess
    (served,) = infer_bytes(grpc_client, preprocess, IMAGE.name, list(cases.values()), [PIXEL_VALUES.name])
    expected = reference_pixels(clip_models[name], list(cases.values())).numpy()
    assert served.shape == expected.shape
    for case, got, want in zip(cases, served, expected, strict=True):
        np.testing.assert_array_equal(got, want, err_msg=case)


def test_extreme_aspect_ratio_is_served_where_open_clip_fails(grpc_client, clip_models) -> None:
    data = images.parity_cases()["30x4000"]
    with pytest.raises(ValueError, match="height and width must be > 0"):
        reference_pixels(clip_models["clip-tiny"], [data])
    (served,) = infer_bytes(grpc_client, ClipPipelineNames("clip-tiny").image, IMAGE.name, [data], [EMBEDDING.name])
    assert served.shape == (1, 32) and np.isfinite(served).all()


def test_raw_base64_and_data_uri_over_every_transport_agree(server, http_client, grpc_client) -> None:
    import tritonclient.http as httpclient

    model = ClipPipelineNames("clip-vit-b-32").image
    data = images.jpeg(320, 240, seed=20)
    (over_grpc,) = infer_bytes(grpc_client, model, IMAGE.name, [data], [EMBEDDING.name])

    tensor = httpclient.InferInput(IMAGE.name, [1, 1], IMAGE.datatype)
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_).reshape(1, 1), binary_data=True)
    over_http_binary = http_client.infer(model, [tensor]).as_numpy(EMBEDDING.name)

    encoded = base64.b64encode(data).decode()
    for value in (encoded, f"data:image/jpeg;base64,{encoded}"):
        body = {"inputs": [{"name": IMAGE.name, "datatype": IMAGE.datatype, "shape": [1, 1], "data": [value]}]}
        status, reply = post_infer(server, model, json.dumps(body).encode())
        assert status == 200, reply
        over_json = np.array(reply["outputs"][0]["data"], dtype=np.float32).reshape(1, -1)
        np.testing.assert_array_equal(over_json, over_grpc)
    np.testing.assert_array_equal(over_http_binary, over_grpc)


def test_zero_shot_classification_matches_torch(grpc_client, clip_models) -> None:
    names, reference = ClipPipelineNames("clip-vit-b-32"), clip_models["clip-vit-b-32"]
    cases = list(images.parity_cases().values())[:8]
    label, scores = infer_bytes(grpc_client, names.classify, IMAGE.name, cases, [LABEL.name, SCORES.name])

    with torch.no_grad():  # the prompt ensemble: mean of each label's prompt embeddings, renormalized
        rows = []
        for name in CLIP_LABELS:
            prompts = reference.tokenizer([template.format(name) for template in CLIP_TEMPLATES])
            mean = reference.model.encode_text(prompts, normalize=True).mean(0)
            rows.append(torch.nn.functional.normalize(mean, dim=0))
        image_embeddings = torch.from_numpy(reference_images(reference, cases))
        logits = reference.model.logit_scale.exp() * image_embeddings @ torch.stack(rows).T
        expected = logits.softmax(dim=-1).numpy()

    assert scores.shape == (len(cases), len(CLIP_LABELS)) and label.shape == (len(cases), 1)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)
    assert [value.decode() for value in label[:, 0]] == [CLIP_LABELS[i] for i in expected.argmax(axis=1)]


def test_labels_are_readable_from_the_configs(grpc_client) -> None:
    names = ClipPipelineNames("clip-vit-b-32")
    config = grpc_client.get_model_config(names.classify).config
    assert json.loads(config.parameters["labels"].string_value) == list(CLIP_LABELS)


@pytest.mark.parametrize(("width", "height"), [(640, 480), (1920, 1080)])
def test_large_jpegs_decode_at_reduced_scale_and_still_agree(grpc_client, clip_models, width, height) -> None:
    names, reference = ClipPipelineNames("clip-vit-b-32"), clip_models["clip-vit-b-32"]
    data = images.jpeg(width, height, seed=30)
    (pixels,) = infer_bytes(grpc_client, names.image_preprocess, IMAGE.name, [data], [PIXEL_VALUES.name])
    assert not np.array_equal(pixels, reference_pixels(reference, [data]).numpy())  # the draft path was taken
    (served,) = infer_bytes(grpc_client, names.image, IMAGE.name, [data], [EMBEDDING.name])
    assert cosine(served, reference_images(reference, [data]))[0] >= 0.999


def _huge_png() -> bytes:
    return images.encode(Image.new("1", (10_000, 9_000)), "PNG")  # 90 M pixels, a few kB


BAD_IMAGES = {
    "a URL": (b"https://example.com/cat.jpg", "URLs are not fetched"),
    "not an image": (b"hello world", "is not an image file"),
    "truncated JPEG": (images.jpeg(200, 200)[:400], "could not be decoded"),
    "empty": (b"", "is empty"),
    "data URI of text": (b"data:text/plain;base64,aGk=", "data:image/<type>;base64"),
    "data URI with bad base64": (b"data:image/png;base64,@@@@", "not valid base64"),
    "too many pixels": (_huge_png(), "more than the limit"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_image_gets_a_clear_error_and_the_server_keeps_serving(grpc_client, case: str) -> None:
    names = ClipPipelineNames("clip-vit-b-32")
    data, message = BAD_IMAGES[case]
    with pytest.raises(InferenceServerException) as caught:
        infer_bytes(grpc_client, names.image, IMAGE.name, [images.jpeg(64, 64), data], [EMBEDDING.name])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "IMAGE[1] " in caught.value.message() and message in caught.value.message()
    (served,) = infer_bytes(grpc_client, names.image, IMAGE.name, [images.jpeg(64, 64)], [EMBEDDING.name])
    assert served.shape == (1, 512)
