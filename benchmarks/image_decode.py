"""JPEG decoding at a reduced DCT scale (Pillow `draft`) vs full decoding, per image size.

Times the served preprocessing (decode, resize, crop, normalize; image_processing.py) on
photo-like JPEGs with and without draft, and open_clip's own transform on the full decode,
for ViT-B-32's settings (224x224, bicubic). One process, one core. Prints a markdown table.

    .venv/bin/python -m benchmarks.image_decode [--seconds 5]
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from dataclasses import replace

from PIL import Image

from export.steps.image_preprocess.image_processing import PreprocessSettings, preprocess
from export.tools.payloads import jpeg

VIT_B_32 = PreprocessSettings(
    size=(224, 224),
    mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711),
)


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second, after one warm-up call."""
    work()
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        work()
        count += 1
    return count / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    import open_clip

    _, _, reference = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    print("| JPEG | full decode, images/s | draft, images/s | speedup | open_clip transform, images/s |")
    print("|---|---|---|---|---|")
    for width, height in ((640, 480), (1920, 1080), (4032, 3024)):
        data = jpeg(width, height, seed=1, quality=90)
        full = rate(lambda d=data: preprocess(d, replace(VIT_B_32, draft=False)), args.seconds)
        drafted = rate(lambda d=data: preprocess(d, VIT_B_32), args.seconds)
        theirs = rate(lambda d=data: reference(Image.open(io.BytesIO(d))), args.seconds)
        print(f"| {width}x{height} | {full:.0f} | {drafted:.0f} | {drafted / full:.1f}x | {theirs:.0f} |")


if __name__ == "__main__":
    main()
