"""`--precision int8` for CLIP: both towers quantized (export/precision/int8.py), served.

Bars (issue 17): cosine >= 0.99 to open_clip's fp32 embedding for every image and every text,
and zero-shot argmax agreement >= 0.98 with the fp32 pipeline on generated images. Random
weights (no CLIP weights offline): the towers' arithmetic is the real model's, the labels'
separation is not, which makes the agreement bar harder here than with trained weights
(random label embeddings sit close together). Speed is a benchmark (docs/performance.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.repository.layout import version_dir
from export.runtimes import ONNX_FILE
from export.tools import payloads
from export.tools.compare import cosine
from tests.conftest import CLIP_INT8, CLIP_LABELS
from tests.helpers import embed_many, infer_bytes
from tests.test_clip import CLIP_TEXTS, image_cases, reference_images, reference_texts
from triton_embeddings.names import EMBEDDING, IMAGE, LABEL, SCORES, ClipPipelineNames

MIN_COSINE = 0.99
MIN_ARGMAX_AGREEMENT = 0.98
FP32, INT8 = ClipPipelineNames("clip-vit-b-32"), ClipPipelineNames(CLIP_INT8)


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Generated photo-like JPEGs of several sizes, none used in calibration (seed 7 is)."""
    return payloads.images(100, seed=1000)


def in_batches(grpc_client, model: str, items: list[bytes], outputs: list[str], batch: int = 16) -> list[np.ndarray]:
    starts = range(0, len(items), batch)
    parts = [infer_bytes(grpc_client, model, IMAGE.name, items[i : i + batch], outputs) for i in starts]
    return [np.concatenate(column) for column in zip(*parts, strict=True)]


def test_every_image_keeps_cosine_099(grpc_client, clip_models, photos) -> None:
    items = [*image_cases("clip-vit-b-32").values(), *photos[:40]]
    (served,) = in_batches(grpc_client, INT8.image, items, [EMBEDDING.name])
    similarity = cosine(served, reference_images(clip_models["clip-vit-b-32"], items))
    assert similarity.min() >= MIN_COSINE, f"image cosine {similarity.min():.4f}"
    assert similarity.mean() < 0.99999  # lossy: if identical, the graph was not quantized


def test_every_text_keeps_cosine_099(grpc_client, clip_models) -> None:
    served = embed_many(grpc_client, INT8.text, CLIP_TEXTS)
    similarity = cosine(served, reference_texts(clip_models["clip-vit-b-32"], CLIP_TEXTS))
    worst = int(np.argmin(similarity))
    assert similarity.min() >= MIN_COSINE, f"text cosine {similarity[worst]:.4f} for {CLIP_TEXTS[worst][:50]!r}"


def test_zero_shot_labels_agree_with_fp32(grpc_client, photos) -> None:
    int8_labels, int8_scores = in_batches(grpc_client, INT8.classify, photos, [LABEL.name, SCORES.name])
    fp32_labels, _ = in_batches(grpc_client, FP32.classify, photos, [LABEL.name, SCORES.name])
    agreement = float(np.mean(int8_labels[:, 0] == fp32_labels[:, 0]))
    assert agreement >= MIN_ARGMAX_AGREEMENT, f"argmax agreement {agreement:.3f}"
    assert int8_scores.shape == (len(photos), len(CLIP_LABELS))


def test_the_image_tower_is_quantized(repository) -> None:
    """The served graph holds integer matrix products (a fp32 graph would pass the bars too)."""
    for encoder in (INT8.image_encoder, INT8.text_encoder):
        graph = onnx.load(str(version_dir(repository / encoder) / ONNX_FILE), load_external_data=False).graph
        assert sum(node.op_type == "MatMulIntegerToFloat" for node in graph.node) >= 48, encoder
