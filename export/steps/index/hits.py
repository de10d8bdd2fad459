"""What both engines of the index step answer and refuse alike: the hits of a search (padded
with id -1), and the checks of vectors and ids every request goes through before any engine
sees it. One copy, so that the embedded engine and Milvus cannot drift apart.

Imports nothing of the project: it is copied into the model repository beside model.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD_ID = -1
PAD_SCORE = float(np.finfo(np.float32).min)  # below every real score: order still means closeness
PAD_PAYLOAD = "null"
MAX_ID = 2**63 - 1  # ids travel as int64; the embedded engine stores them unsigned, Milvus as INT64


class CollectionError(ValueError):
    """A request the collection cannot take (wrong vector size, ids out of range...)."""


@dataclass(frozen=True)
class Hits:
    """The answer to `q` queries: [q, k] ids (int64), scores (float32), payloads (JSON text)."""

    ids: np.ndarray
    scores: np.ndarray
    payloads: list[list[str]]

    @classmethod
    def padded(cls, queries: int, top_k: int) -> Hits:
        """Every row all padding: engines fill in what they find, left to right."""
        return cls(
            np.full((queries, top_k), PAD_ID, dtype=np.int64),
            np.full((queries, top_k), PAD_SCORE, dtype=np.float32),
            [[PAD_PAYLOAD] * top_k for _ in range(queries)],
        )


def check_vectors(vectors: np.ndarray, dimension: int, what: str) -> np.ndarray:
    """[n, dimension] finite float32 vectors, or a CollectionError naming what is wrong."""
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
        vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise CollectionError(f"{what}: expected vectors of {dimension} values, got shape {list(vectors.shape)}")
    if not np.isfinite(vectors).all():
        raise CollectionError(f"{what}: vectors hold NaN or infinite values")
    return vectors


def check_ids(ids: Sequence[int], what: str) -> list[int]:
    """The ids as Python ints from 0 to MAX_ID, or a CollectionError naming the first bad one."""
    checked = []
    for index, point_id in enumerate(ids):
        if isinstance(point_id, bool) or not isinstance(point_id, int | np.integer) or not 0 <= point_id <= MAX_ID:
            raise CollectionError(f"{what}: ids[{index}] must be an integer from 0 to 2**63-1, got {point_id!r}")
        checked.append(int(point_id))
    return checked
