"""Generated request payloads for load tests and benchmarks: texts and images, no downloads.

Texts come with a realistic spread of lengths, from search queries to passages longer than
any max_length; images are photo-like JPEGs (smooth gradients, soft shapes, sensor noise, so
that compression, decoding and resizing cost what they cost on photographs) of several sizes.
Deterministic for a seed. Needs numpy and Pillow only.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image

_WORDS = (
    "the of and to in is for on that with as by this are from at be it an or was which not have has can "
    "model server request batch token text vector search query answer document image photo cat dog car "
    "city river mountain music movie book coffee price weather train flight hotel recipe garden computer "
    "network latency memory storage cloud user account password payment order delivery customer support "
    "fast slow new old large small red green blue bright quiet happy simple better best first last next "
    "find show buy read write build run open close start stop learn play watch cook travel compare explain "
    "how what why where when who which because while although however therefore meanwhile today tomorrow"
).split()
_EXTRAS = ("Zürich", "café", "naïve", "東京", "数据", "🙂", "—", "(beta)", "v2.1", "42", "#1", "e-mail")

# (share of texts, min words, max words): queries, sentences, paragraphs, passages past 256 tokens.
LENGTH_MIX = ((0.4, 2, 8), (0.3, 10, 25), (0.2, 40, 120), (0.1, 300, 500))
IMAGE_SIZES = ((320, 240), (640, 480), (1280, 720), (1920, 1080))


def _sentence(rng: random.Random, words: int) -> str:
    picked = [rng.choice(_EXTRAS) if rng.random() < 0.03 else rng.choice(_WORDS) for _ in range(words)]
    picked[0] = picked[0].capitalize()
    return " ".join(picked) + rng.choice((".", ".", "?", "!"))


def texts(count: int, seed: int = 0) -> list[str]:
    """`count` texts with lengths drawn from LENGTH_MIX."""
    rng = random.Random(seed)
    shares = [share for share, _, _ in LENGTH_MIX]
    out = []
    for _ in range(count):
        _, low, high = rng.choices(LENGTH_MIX, weights=shares)[0]
        out.append(_sentence(rng, rng.randint(low, high)))
    return out


def odd_texts(count: int, seed: int = 0) -> list[str]:
    """Short texts of no words: punctuation, symbols, digits, emoji, one letter. Their
    activations are unlike sentences' (int8 calibration needs them: sensitivity.py)."""
    rng = random.Random(seed)
    pieces = [*"!?.,;:'\"()[]{}<>#$%&*@^~+-=/\\|_`", "—", "…", "🙂", "🚀", "🎉", "42", "3.14", "x", "I", "²", "∑"]
    return [
        " ".join(rng.choices(pieces, k=rng.randint(1, 3)))
        if rng.random() < 0.3
        else "".join(rng.choices(pieces, k=rng.randint(1, 8)))
        for _ in range(count)
    ]


def short_texts(count: int, seed: int = 0) -> list[str]:
    """6-18 words (about 8-20 tokens): the one-text requests of retrieval and RAG queries."""
    rng = random.Random(seed)
    return [_sentence(rng, rng.randint(6, 18)) for _ in range(count)]


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= max(height - 1, 1)
    x /= max(width - 1, 1)
    channels = []
    for c in range(3):
        a, b, phase = rng.uniform(0.5, 3.0, size=3)
        base = 0.5 + 0.25 * np.sin(a * np.pi * x + phase) * np.cos(b * np.pi * y + c)
        for _ in range(4):  # soft blobs
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            base += rng.uniform(-0.3, 0.3) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        channels.append(base)
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 0.02, size=(height, width, 3))
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")


def jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    photo_like(width, height, seed).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def images(count: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = IMAGE_SIZES) -> list[bytes]:
    """`count` JPEGs cycling through `sizes`."""
    return [jpeg(*sizes[i % len(sizes)], seed=seed + i) for i in range(count)]
