"""Generated test images: every format and mode, EXIF orientations, odd shapes.

The photo-like content itself comes from export.tools.payloads (shared with load tests). No downloads.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from export.tools.payloads import jpeg, photo_like

EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def with_orientation(width: int, height: int, orientation: int, seed: int = 0) -> bytes:
    """A JPEG whose EXIF says to rotate/flip it (orientations 2-8) for display."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(photo_like(width, height, seed), "JPEG", quality=90, exif=exif)


def in_mode(mode: str, width: int = 160, height: int = 120, seed: int = 0) -> bytes:
    """An image stored in `mode`, in a format that keeps that mode."""
    rgb = photo_like(width, height, seed)
    if mode == "RGBA":  # a real alpha gradient, so transparency handling shows
        alpha = Image.linear_gradient("L").resize((width, height))
        image = rgb.copy()
        image.putalpha(alpha)
        return encode(image, "PNG")
    if mode == "LA":
        image = rgb.convert("L")
        image.putalpha(Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((width, height)))
        return encode(image.convert("LA"), "PNG")
    if mode == "P":
        return encode(rgb.quantize(64), "PNG")
    if mode == "L":
        return encode(rgb.convert("L"), "PNG")
    if mode == "I;16":
        wide = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        return encode(Image.fromarray(wide), "PNG")  # uint16 arrays become I;16
    if mode == "CMYK":
        return encode(rgb.convert("CMYK"), "JPEG", quality=92)
    if mode == "1":
        return encode(rgb.convert("1"), "PNG")
    raise ValueError(mode)


def in_format(format: str, width: int = 150, height: int = 100, seed: int = 0) -> bytes:
    image = photo_like(width, height, seed)
    if format == "GIF":  # two frames: only the first counts
        second = photo_like(width, height, seed + 1)
        buffer = io.BytesIO()
        image.save(buffer, format="GIF", save_all=True, append_images=[second])
        return buffer.getvalue()
    return encode(image, format)


MODES = ("RGBA", "LA", "P", "L", "I;16", "CMYK", "1")
FORMATS = ("PNG", "WEBP", "GIF", "BMP", "TIFF", "JPEG")


def parity_cases() -> dict[str, bytes]:
    """Every shape, mode, format and orientation the image steps must handle like open_clip."""
    cases = {
        "portrait 300x400": jpeg(300, 400, seed=1),
        "landscape 400x300": jpeg(400, 300, seed=2),
        "1x1": in_format("PNG", 1, 1, seed=3),
        "4000x30": in_format("PNG", 4000, 30, seed=4),
        "30x4000": in_format("PNG", 30, 4000, seed=5),
    }
    cases |= {f"mode {mode}": in_mode(mode, seed=6) for mode in MODES}
    cases |= {f"format {fmt}": in_format(fmt, seed=7) for fmt in FORMATS}
    cases |= {f"EXIF orientation {o}": with_orientation(320, 200, o, seed=8) for o in range(2, 9)}
    return cases
