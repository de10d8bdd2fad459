"""CLIP models for the tests, with random weights saved to disk (no CLIP weights exist offline).

The exporter and the torch reference load the same weights from the same file, through
open_clip's own loaders: ViT-B-32 from a checkpoint file (`--pretrained PATH`), and a tiny
custom architecture from a `local-dir:` folder whose config sets a non-default preprocessing
(non-square input, letterboxing resize with a fill colour, bilinear, its own mean and std) and
a case-keeping text cleaning, so that nothing read from a config can hide behind a default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

TINY_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": [64, 96], "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {
            "context_length": 32,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
            "tokenizer_kwargs": {"clean": "whitespace"},
        },
    },
    "preprocess_cfg": {
        "mean": [0.5, 0.45, 0.4],
        "std": [0.25, 0.3, 0.35],
        "interpolation": "bilinear",
        "resize_mode": "longest",
        "fill_color": 127,
    },
}


@dataclass(frozen=True)
class ClipReference:
    """What to export (`arch`, `pretrained`) and open_clip's own model, transform, tokenizer."""

    arch: str
    pretrained: str | None
    model: torch.nn.Module
    preprocess: object
    tokenizer: object


def _load(arch: str, pretrained: str | None) -> ClipReference:
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    return ClipReference(arch, pretrained, model.eval(), preprocess, open_clip.get_tokenizer(arch))


def vit_b_32(folder: Path) -> ClipReference:
    torch.manual_seed(10)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "vit-b-32-random.pt"
    torch.save(model.state_dict(), checkpoint)
    return _load("ViT-B-32", str(checkpoint))


def tiny_custom(folder: Path) -> ClipReference:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CONFIG))
    torch.manual_seed(11)
    model = open_clip.create_model(f"local-dir:{folder}")
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return _load(f"local-dir:{folder}", None)
