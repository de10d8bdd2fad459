"""Encoded image -> the pixel array a CLIP image tower takes, with Pillow and numpy only.

Reproduces open_clip's inference transform (torchvision on PIL images): resize by the
configured mode and interpolation, center crop (or pad), convert to RGB, scale to [0, 1],
normalize by mean and std. Each step calls Pillow exactly as torchvision does, in the same
order (the mode conversion comes after resizing), so the pixels are the same. Two additions
open_clip leaves to its caller: EXIF orientation is applied, and large JPEGs are decoded at
a reduced DCT scale (Pillow's `draft`) when that still leaves at least the target size.

Shared by the preprocess model.py (in Triton) and the exporter, which checks it against
open_clip's own transform before writing a model.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
RESIZE_MODES = ("shortest", "longest", "squash")
FORMATS = "JPEG, PNG, WebP, GIF, BMP, TIFF"


class ImageError(ValueError):
    """This input is not an image we can use; the message says why."""


@dataclass(frozen=True)
class PreprocessSettings:
    """open_clip's PreprocessCfg, plus our decoding options. `size` is (height, width)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0
    draft: bool = True
    max_pixels: int = 89_478_485  # decoded size, Pillow's own decompression-bomb limit
    max_bytes: int = 32 << 20  # encoded size

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLING or self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unsupported interpolation {self.interpolation!r} or resize mode {self.resize_mode!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PreprocessSettings:
        values = json.loads(text)
        return cls(**values | {k: tuple(values[k]) for k in ("size", "mean", "std")})


def image_bytes(value: bytes, settings: PreprocessSettings) -> bytes:
    """The encoded file inside an IMAGE element: raw bytes, base64 of them, or a data URI."""
    if not value:
        raise ImageError("is empty")
    if len(value) > settings.max_bytes:
        raise ImageError(f"is {len(value)} bytes, more than the limit of {settings.max_bytes}")
    head = value[:16].lower()
    if head.startswith(b"data:"):
        header, _, payload = value.partition(b",")
        if not (header.lower().startswith(b"data:image/") and header.lower().endswith(b";base64")):
            raise ImageError("is a data URI but not data:image/<type>;base64,<data>")
        return _base64(payload, "the data URI's payload is not valid base64")
    if head.startswith((b"http://", b"https://", b"ftp://", b"file:")):
        raise ImageError("looks like a URL; URLs are not fetched: send the image bytes, base64 or a data: URI")
    try:
        return base64.b64decode(b"".join(value.split()), validate=True)
    except binascii.Error:
        return value  # not base64: the raw file


def _base64(payload: bytes, message: str) -> bytes:
    try:
        return base64.b64decode(b"".join(payload.split()), validate=True)
    except binascii.Error:
        raise ImageError(message) from None


def decode(data: bytes, settings: PreprocessSettings) -> Image.Image:
    """Decode (first frame), drafting large JPEGs, then apply the EXIF orientation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels decides
            image = Image.open(io.BytesIO(data))
        if image.width * image.height > settings.max_pixels:
            raise ImageError(f"has {image.width}x{image.height} pixels, more than the limit of {settings.max_pixels}")
        if settings.draft and image.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale while both sides stay >= the target's largest.
            target = max(settings.size)
            image.draft(image.mode, (target, target))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"is not an image file ({FORMATS}), base64 of one, or a data:image URI") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # corrupt or truncated
        raise ImageError(f"could not be decoded: {error}") from None


def _resize(image: Image.Image, height: int, width: int, interpolation: str) -> Image.Image:
    if (image.height, image.width) == (height, width):
        return image
    return image.resize((width, height), _RESAMPLING[interpolation])


def _keep_ratio_size(image: Image.Image, size: tuple[int, int], longest: bool) -> tuple[int, int]:
    """Scale so the shortest (or longest) side meets the target, rounding each side.

    At least one pixel: open_clip rounds a 4000x30 image fitted into 64x64 to 64x0 and fails.
    """
    ratios = (image.height / size[0], image.width / size[1])
    ratio = max(ratios) if longest else min(ratios)
    return max(1, round(image.height / ratio)), max(1, round(image.width / ratio))


def _center_crop_or_pad(image: Image.Image, size: tuple[int, int], fill: int) -> Image.Image:
    height, width = size
    if width > image.width or height > image.height:
        dx, dy = max(width - image.width, 0), max(height - image.height, 0)
        bands = len(image.getbands())
        color = fill if bands == 1 else (fill,) * bands
        palette = image.getpalette() if image.mode == "P" else None
        image = ImageOps.expand(image, border=(dx // 2, dy // 2, (dx + 1) // 2, (dy + 1) // 2), fill=color)
        if palette is not None:
            image.putpalette(palette)
        if image.size == (width, height):
            return image
    top = round((image.height - height) / 2.0)
    left = round((image.width - width) / 2.0)
    return image.crop((left, top, left + width, top + height))


def resize_and_crop(image: Image.Image, settings: PreprocessSettings) -> Image.Image:
    height, width = settings.size
    if settings.resize_mode == "squash":
        return _resize(image, height, width, settings.interpolation)
    if settings.resize_mode == "longest":
        image = _resize(image, *_keep_ratio_size(image, settings.size, longest=True), settings.interpolation)
        return _center_crop_or_pad(image, settings.size, settings.fill_color)
    if height == width:  # the shorter side to the target, the longer side truncated (not rounded)
        short, long = sorted(image.size)
        new_short, new_long = height, int(height * long / short)
        new_w, new_h = (new_short, new_long) if image.width <= image.height else (new_long, new_short)
        image = _resize(image, new_h, new_w, settings.interpolation)
    else:  # open_clip resizes a non-square target with bicubic whatever the configured mode
        image = _resize(image, *_keep_ratio_size(image, settings.size, longest=False), "bicubic")
    return _center_crop_or_pad(image, settings.size, 0)


def to_pixels(image: Image.Image, settings: PreprocessSettings) -> np.ndarray:
    """RGB, [3, H, W] float32, scaled and normalized in the order and precision torch uses."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    pixels = rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean = np.asarray(settings.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(settings.std, dtype=np.float32)[:, None, None]
    return (pixels - mean) / std


def preprocess(value: bytes, settings: PreprocessSettings) -> np.ndarray:
    """An IMAGE element (raw, base64 or data URI) to normalized [3, H, W] pixels."""
    image = decode(image_bytes(value, settings), settings)
    return to_pixels(resize_and_crop(image, settings), settings)
