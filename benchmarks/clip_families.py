"""What one image and one text cost per open_clip family: each tower at full size (random
weights, the real FLOPs), traced as the exporter traces it, run by onnxruntime in process.

The encoder is what a CPU spends its time on (docs/benchmarks.md: the served pipeline is
within 0.8-1.05x of in-process onnxruntime), so these are the figures to plan CPU capacity
per family with. Images at batch 8, texts at batch 32, `--threads` intra-op threads.
Multilingual (XLM-RoBERTa) CLIP is missing: building its text tower needs the hub.
Prints a markdown table.

    .venv/bin/python -m benchmarks.clip_families [--seconds 5] [--threads 2] [--only RN50 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from export.clip.trace import export_tower
from triton_embeddings.names import CLIP_INPUT_IDS, EMBEDDING, PIXEL_VALUES

FAMILIES = {
    "ViT-B-32": "ViT",
    "ViT-B-16": "ViT",
    "RN50": "ResNet",
    "convnext_base": "ConvNeXt",
    "EVA02-B-16": "EVA",
    "PE-Core-B-16": "PE-Core",
    "MobileCLIP-S1": "MobileCLIP",
    "ViT-B-16-SigLIP": "SigLIP",
    "ViT-B-16-SigLIP2": "SigLIP2",
    "coca_ViT-B-32": "CoCa",
}


def per_second(run, items: int, seconds: float) -> float:
    """Items per second over `seconds`, after one warm-up call."""
    run()
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        run()
        calls += 1
    return calls * items / (time.perf_counter() - began)


def measure(arch: str, folder: Path, seconds: float, threads: int) -> tuple[int, float, float]:
    """(image side, images/s, texts/s) for one architecture."""
    import onnxruntime as ort
    import open_clip
    import torch

    model = open_clip.create_model(arch, pretrained=None, pretrained_text=False).eval()
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    height, width = (size, size) if isinstance(size, int) else size
    context = model.context_length if hasattr(model, "context_length") else 77
    pixels = torch.randn(8, 3, height, width)
    ids = torch.randint(1, 1000, (32, context), dtype=torch.int32)
    export_tower(model, "encode_image", pixels, PIXEL_VALUES.with_dims(3, height, width), EMBEDDING, folder / "i.onnx")
    export_tower(model, "encode_text", ids, CLIP_INPUT_IDS.with_dims(context), EMBEDDING, folder / "t.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    rates = []
    for path, name, batch in (("i.onnx", PIXEL_VALUES.name, pixels), ("t.onnx", CLIP_INPUT_IDS.name, ids)):
        session = ort.InferenceSession(str(folder / path), options, providers=["CPUExecutionProvider"])
        feed = {name: batch.numpy() if batch.dtype != torch.int32 else batch.numpy().astype(np.int32)}
        rates.append(per_second(lambda s=session, f=feed: s.run(None, f), len(batch), seconds))
    return height, rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=list(FAMILIES))
    args = parser.parse_args()
    print("| family | architecture | image side | images/s (batch 8) | texts/s (batch 32) |")
    print("|---|---|---|---|---|")
    for arch in args.only:
        with tempfile.TemporaryDirectory() as folder:
            side, images, texts = measure(arch, Path(folder), args.seconds, args.threads)
        print(f"| {FAMILIES.get(arch, '?')} | {arch} | {side} | {images:.1f} | {texts:.0f} |", flush=True)


if __name__ == "__main__":
    main()
