"""The CLIP exporter's refusals and its checks against open_clip, without a server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

from export.clip.model import UnsupportedClipModelError, load_clip_model, tokenizer_settings
from export.clip.pipeline import ClipExportOptions, export_clip, read_labels
from export.clip.trace import CLIP_VALIDATION_TEXTS, check_clip_onnx, export_clip_onnx
from export.errors import InvalidArgumentError, UserError
from export.text.default_model import default_model_path
from export.validation import ExportValidationError
from triton_embeddings.names import CLIP_INPUT_IDS


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, clip_models):
    """The tiny model loaded as the exporter loads it, and its two ONNX files."""
    folder = tmp_path_factory.mktemp("tiny-onnx")
    clip = load_clip_model(clip_models["clip-tiny"].arch, None)
    export_clip_onnx(clip, folder / "text.onnx", folder / "image.onnx")
    return clip, folder / "text.onnx", folder / "image.onnx"


def test_built_in_architectures_need_weights_said_explicitly(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="pass --pretrained TAG, a checkpoint file, or none"):
        export_clip(ClipExportOptions(arch="ViT-B-32", name="x", pretrained=None, repository=tmp_path))


def test_models_open_clip_cannot_find_are_said_so_before_loading(tmp_path: Path) -> None:
    """An unknown architecture, tag or folder: one sentence naming it, not open_clip's list of
    150 names or a traceback; every one a UserError, raised before any weights are built."""
    errors = {
        ("ViT-B-33", "none"): r"ViT-B-33: unknown open_clip architecture; close matches: ViT-B-32.*list_models\(\)",
        ("vit-b-32", "none"): r"vit-b-32: unknown open_clip architecture; close matches: ViT-B-32",
        ("ViT-B-32", "nopenai"): r"ViT-B-32: --pretrained 'nopenai' is neither a pretrained tag of it \(tags: .*openai",
        (f"local-dir:{tmp_path / 'none'}", None): r"local-dir:.*none: no such folder",
        (f"local-dir:{tmp_path}", None): r"local-dir:.*: no open_clip_config.json in it",
    }
    for (arch, pretrained), message in errors.items():
        with pytest.raises(UserError, match=message):
            load_clip_model(arch, pretrained)


def test_templates_need_one_placeholder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"exactly one \{\}"):
        export_clip(ClipExportOptions("ViT-B-32", "x", "none", tmp_path, labels=("cat",), templates=("a photo",)))


def test_labels_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\n  dog  \n\nZürich\n", encoding="utf-8")
    assert read_labels(path) == ("cat", "dog", "Zürich")
    path.write_text("cat\ndog\ncat\n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match=r"duplicate labels \['cat'\]"):
        read_labels(path)
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="holds no labels"):
        read_labels(path)


def test_hugging_face_tokenizers_are_served_with_open_clips_settings() -> None:
    """A Hugging Face tokenizer (here a BERT WordPiece: lower-casing, [CLS]/[SEP], [PAD] = 0)
    gives open_clip's ids: its cleaning first, truncation and padding to the context."""
    reference = HFTokenizer(str(default_model_path()), context_length=24, clean="whitespace")
    served = tokenizer_settings("bert-clip", reference)
    texts = [*CLIP_VALIDATION_TEXTS, "IT'S   LOUD &amp; clear", "word " * 40]
    np.testing.assert_array_equal(served.tokenize(texts, [CLIP_INPUT_IDS])["input_ids"], reference(texts).numpy())


def test_tokenizers_we_cannot_reproduce_are_refused() -> None:
    bert = str(default_model_path())
    with pytest.raises(UnsupportedClipModelError, match="strip the separator token"):
        tokenizer_settings("ViT-H-14-CLIPA", HFTokenizer(bert, strip_sep_token=True))
    with pytest.raises(UnsupportedClipModelError, match="tokenizer_mode 'clips'"):
        tokenizer_settings("clips", HFTokenizer(bert, tokenizer_mode="clips"))
    with pytest.raises(UnsupportedClipModelError, match="reduction mask"):
        tokenizer_settings("masked", SimpleTokenizer(reduction_mask="simple"))
    with pytest.raises(UnsupportedClipModelError, match="tokenizer str is not supported yet"):
        tokenizer_settings("odd", "not a tokenizer")


def test_the_checks_pass_on_a_faithful_export(tiny_export) -> None:
    text, image = check_clip_onnx(*tiny_export)
    assert text.min_cosine > 0.99999 and image.min_cosine > 0.99999


def test_the_tokenizer_check_catches_different_cleaning(tiny_export) -> None:
    clip, text_path, image_path = tiny_export
    lowercasing = replace(clip, tokenizer=replace(clip.tokenizer, clean="lower"))  # the model keeps case
    with pytest.raises(ExportValidationError, match="tokenizer's ids differ from open_clip's"):
        check_clip_onnx(lowercasing, text_path, image_path)


def test_the_preprocess_check_catches_a_different_transform(tiny_export) -> None:
    clip, text_path, image_path = tiny_export
    squashing = replace(clip, preprocess=replace(clip.preprocess, resize_mode="squash"))
    with pytest.raises(ExportValidationError, match="image preprocessing vs open_clip's transform differs"):
        check_clip_onnx(squashing, text_path, image_path)


def test_the_tower_check_catches_a_graph_that_drifted(tiny_export, clip_models) -> None:
    _, text_path, image_path = tiny_export
    drifted = load_clip_model(clip_models["clip-tiny"].arch, None)
    with torch.no_grad():
        drifted.model.visual.conv1.weight.mul_(1.5)
    with pytest.raises(ExportValidationError, match="image tower"):
        check_clip_onnx(drifted, text_path, image_path)
