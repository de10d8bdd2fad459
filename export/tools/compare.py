"""How close two sets of embeddings are: per-row cosine, and agreement of nearest neighbours.

Parity tests and benchmarks compare served embeddings with a reference (sentence-transformers,
open_clip, the fp32 graph) with these.
"""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top10_overlap(got: np.ndarray, expected: np.ndarray, queries: int) -> float:
    """Mean share of each query's 10 nearest documents (by cosine) that `got` and `expected`
    agree on; the first `queries` rows are the queries, the rest the documents."""

    def top10(embeddings: np.ndarray) -> np.ndarray:
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        return np.argsort(-(unit[:queries] @ unit[queries:].T), axis=1)[:, :10]

    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top10(got), top10(expected), strict=True)]))
