"""The two towers of an open_clip model as ONNX graphs, L2-normalized, dynamic batch.

Text: int32 token ids [batch, context] -> EMBEDDING. Image: pixels [batch, 3, H, W] ->
EMBEDDING. Before the files are accepted, the served steps are checked end to end against
open_clip: our tokenizer against its tokenizer (identical ids), our preprocessing against its
transform (identical pixels), and onnxruntime against torch on both towers.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.clip.model import ClipModel
from export.steps.image_preprocess.image_processing import preprocess
from export.validation import DEFAULT_OPSET, VALIDATION_TEXTS, Agreement, ExportValidationError, require_agreement
from triton_embeddings.names import CLIP_INPUT_IDS, EMBEDDING, PIXEL_VALUES, TensorSpec

# Beyond the sentence-transformers texts: what CLIP's text cleaning acts on.
CLIP_VALIDATION_TEXTS = (*VALIDATION_TEXTS, "Fish &amp; chips &lt;3", "caf\u00c3\u00a9 mojibake", "It'S   a\tTEST")


class _Tower(torch.nn.Module):
    """One tower of the model as a module of its own: `encode_text` or `encode_image`."""

    def __init__(self, model: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method
        # The exporter restores the wrapper's own mode after tracing, recursively: a wrapper
        # left in training mode would put the model there too, and every BatchNorm (ResNet,
        # MobileCLIP towers) would then normalize by batch statistics and overwrite its own.
        self.train(model.training)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(inputs, normalize=True)


@contextmanager
def _exportable():
    """No gradients, tracer warnings quiet, and torch's fused attention fast path off: the
    ONNX exporter has no symbolic for `_native_multi_head_attention`."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export_tower(
    model: torch.nn.Module,
    method: str,
    sample: torch.Tensor,
    inputs: TensorSpec,
    output: TensorSpec,
    path: Path,
    opset: int = DEFAULT_OPSET,
) -> None:
    """One tower (`encode_text` or `encode_image`) traced on `sample`, batch dynamic."""
    with _exportable():
        torch.onnx.export(
            _Tower(model, method),
            (sample,),
            str(path),
            input_names=[inputs.name],
            output_names=[output.name],
            dynamic_axes={spec.name: spec.dynamic_axes() for spec in (inputs, output)},
            opset_version=opset,
            dynamo=False,
        )


def export_clip_onnx(clip: ClipModel, text_path: Path, image_path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """Trace both towers on two-item batches."""
    ids = torch.from_numpy(_served_ids(clip, list(VALIDATION_TEXTS[:2])))
    height, width = clip.preprocess.size
    pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    export_tower(clip.model, "encode_text", ids, clip.text_input, clip.embedding, text_path, opset)
    export_tower(clip.model, "encode_image", pixels, clip.image_input, clip.embedding, image_path, opset)


def _served_ids(clip: ClipModel, texts: list[str]) -> np.ndarray:
    return clip.tokenizer.tokenize(texts, [CLIP_INPUT_IDS])[CLIP_INPUT_IDS.name]


def sample_images(seed: int = 0) -> list[bytes]:
    """Two small non-square images (PNG, JPEG) with smooth content and noise."""
    rng = np.random.default_rng(seed)
    images = []
    for (width, height), fmt in (((320, 200), "PNG"), ((150, 260), "JPEG")):
        y, x = np.mgrid[0:height, 0:width] / max(width, height)
        pixels = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], axis=-1)
        pixels = (pixels + 1) * 110 + rng.normal(0, 8, size=pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format=fmt)
        images.append(buffer.getvalue())
    return images


def check_clip_onnx(
    clip: ClipModel, text_path: Path, image_path: Path, **tolerance: float
) -> tuple[Agreement, Agreement]:
    """Served tokenizer, preprocessing and both ONNX towers against open_clip in torch."""
    import onnxruntime as ort

    texts = list(CLIP_VALIDATION_TEXTS)
    ids = _served_ids(clip, texts)
    reference_ids = clip.reference_tokenizer(texts)
    if not np.array_equal(ids, reference_ids.numpy()):
        raise ExportValidationError("the served tokenizer's ids differ from open_clip's tokenizer")

    images = sample_images()
    pixels = np.stack([preprocess(image, clip.preprocess) for image in images])
    reference_pixels = torch.stack([clip.reference_preprocess(Image.open(io.BytesIO(image))) for image in images])
    require_agreement("served image preprocessing vs open_clip's transform", pixels, reference_pixels.numpy())

    with torch.no_grad():
        text_expected = clip.model.encode_text(reference_ids, normalize=True).numpy()
        image_expected = clip.model.encode_image(reference_pixels, normalize=True).numpy()
    text_session = ort.InferenceSession(str(text_path), providers=["CPUExecutionProvider"])
    image_session = ort.InferenceSession(str(image_path), providers=["CPUExecutionProvider"])
    (text_got,) = text_session.run([EMBEDDING.name], {CLIP_INPUT_IDS.name: ids})
    (image_got,) = image_session.run([EMBEDDING.name], {PIXEL_VALUES.name: pixels})
    return (
        require_agreement("text tower: served tokenizer + ONNX vs open_clip", text_got, text_expected, **tolerance),
        require_agreement(
            "image tower: served preprocessing + ONNX vs open_clip", image_got, image_expected, **tolerance
        ),
    )


def calibration_feeds(clip: ClipModel, texts: int = 256, images: int = 64, batch: int = 16):
    """For int8: feeds of each tower's graph that set its activation scales, generated texts of
    every length as the served tokenizer gives them, and photo-like JPEGs of several sizes as
    the served preprocessing gives them. Returns (text feeds, image feeds), each a callable."""
    from export.tools import payloads

    def text_feeds() -> Iterator[dict[str, np.ndarray]]:
        generated = payloads.texts(texts - texts // 8, seed=7) + payloads.odd_texts(texts // 8, seed=7)
        for start in range(0, len(generated), batch):
            yield {CLIP_INPUT_IDS.name: _served_ids(clip, generated[start : start + batch])}

    def image_feeds() -> Iterator[dict[str, np.ndarray]]:
        generated = payloads.images(images, seed=7)
        for start in range(0, len(generated), batch):
            pixels = [preprocess(image, clip.preprocess) for image in generated[start : start + batch]]
            yield {PIXEL_VALUES.name: np.stack(pixels)}

    return text_feeds, image_feeds


def label_embeddings(clip: ClipModel, labels: list[str], templates: list[str]) -> np.ndarray:
    """One unit vector per label: the mean of its prompts' text embeddings, renormalized (the
    usual CLIP prompt ensemble; with one template, just that prompt's embedding)."""
    rows = []
    with torch.no_grad():
        for label in labels:
            prompts = clip.reference_tokenizer([template.format(label) for template in templates])
            mean = clip.model.encode_text(prompts, normalize=True).mean(dim=0)
            rows.append(torch.nn.functional.normalize(mean, dim=0))
    return torch.stack(rows).numpy().astype(np.float32)
