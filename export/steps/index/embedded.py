"""The embedded engine of the index step: one collection in a folder of its own, run by
qdrant-edge (Qdrant's engine in-process: HNSW, a write-ahead log, payload filters).

Chosen by measurement over milvus-lite (docs/search.md). What this module guarantees:
- a write returns once it is in the write-ahead log, so an acknowledged write survives a
  SIGKILL of the process, and the next search sees it;
- one process per folder (the engine refuses a second one cleanly);
- the folder records the collection's dimension and metric, and a reopen with others is
  refused rather than serving vectors of another model;
- scores are "higher is closer" for every metric (l2 distances are negated), and every query
  gets exactly `top_k` rows, padded with id -1.

It never calls the engine's `optimize()`: that holds the GIL for minutes, stalling the
whole step (docs/search.md says how indexing happens off the serving path instead).
Imports nothing of the project: it is copied into the model repository beside model.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

try:  # in the export package
    from export.steps.index.filters import Filter, payload_for_qdrant, payload_from_qdrant, to_qdrant
except ImportError:  # copied into a model repository, beside model.py
    from filters import Filter, payload_for_qdrant, payload_from_qdrant, to_qdrant

METRICS = {"cosine": qe.Distance.Cosine, "ip": qe.Distance.Dot, "l2": qe.Distance.Euclid}
SETTINGS_FILE = "collection.json"  # dimension and metric, beside the engine's own folder
SHARD = "shard"
PAD_ID = -1
PAD_SCORE = float(np.finfo(np.float32).min)  # below every real score: order still means closeness
PAD_PAYLOAD = "null"
SEARCH_EF = 64  # HNSW beam width at query time: recall@10 1.0 at 100k in docs/search.md
WRITE_BATCH = 1000  # points per engine call


class CollectionError(ValueError):
    """A request the collection cannot take (wrong vector size, ids out of range...)."""


@dataclass(frozen=True)
class Hits:
    """The answer to `q` queries: [q, k] ids (int64), scores (float32), payloads (JSON text)."""

    ids: np.ndarray
    scores: np.ndarray
    payloads: list[list[str]]


class EmbeddedIndex:
    """One collection in `folder`. Not thread-safe: the index step runs one execute at a time."""

    def __init__(self, shard: Any, dimension: int, metric: str) -> None:
        self.shard, self.dimension, self.metric = shard, dimension, metric

    @classmethod
    def open(cls, folder: Path, dimension: int, metric: str) -> EmbeddedIndex:
        """Create the collection, or load it with the same dimension and metric."""
        if metric not in METRICS:
            raise CollectionError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        settings = {"dimension": dimension, "metric": metric}
        recorded = folder / SETTINGS_FILE
        if recorded.is_file():
            found = json.loads(recorded.read_text(encoding="utf-8"))
            if found != settings:
                raise CollectionError(f"{folder} holds a collection with {found}, not {settings}")
            return cls(qe.EdgeShard.load(str(folder / SHARD)), dimension, metric)
        folder.mkdir(parents=True, exist_ok=True)
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dimension, distance=METRICS[metric]),
            hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000, max_indexing_threads=1),
        )
        shard = qe.EdgeShard.create(str(folder / SHARD), config)
        recorded.write_text(json.dumps(settings), encoding="utf-8")  # last: a folder without it is not a collection
        return cls(shard, dimension, metric)

    def _vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise CollectionError(
                f"{what}: expected vectors of {self.dimension} values, got shape {list(vectors.shape)}"
            )
        if not np.isfinite(vectors).all():
            raise CollectionError(f"{what}: vectors hold NaN or infinite values")
        return vectors

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, payloads: Sequence[dict]) -> int:
        """Insert or replace points by id; returns how many were written."""
        vectors = self._vectors(vectors, "upsert")
        if not len(ids) == len(vectors) == len(payloads):
            raise CollectionError(f"upsert: {len(ids)} ids, {len(vectors)} vectors and {len(payloads)} payloads")
        try:  # all converted before anything is written
            stored = [payload_for_qdrant(payload) for payload in payloads]
        except ValueError as error:
            raise CollectionError(f"upsert: {error}") from None
        for start in range(0, len(ids), WRITE_BATCH):
            points = [
                qe.Point(int(ids[i]), vectors[i], stored[i]) for i in range(start, min(start + WRITE_BATCH, len(ids)))
            ]
            self.shard.update(qe.UpdateOperation.upsert_points(points))
        return len(ids)

    def search(self, vectors: np.ndarray, top_k: int, filter: Filter | None = None) -> Hits:
        """The `top_k` nearest points of each query vector, closest first, among those `filter`
        (filters.parse_filter) selects."""
        vectors = self._vectors(vectors, "search")
        params, selected = qe.SearchParams(hnsw_ef=max(SEARCH_EF, top_k)), to_qdrant(filter)
        requests = [
            qe.QueryRequest(
                limit=top_k, query=qe.Query.Nearest(vector.tolist()), filter=selected, params=params, with_payload=True
            )
            for vector in vectors
        ]
        results = self.shard.query_batch(qe.QueryBatchRequest(requests)) if requests else []
        ids = np.full((len(vectors), top_k), PAD_ID, dtype=np.int64)
        scores = np.full((len(vectors), top_k), PAD_SCORE, dtype=np.float32)
        payloads = [[PAD_PAYLOAD] * top_k for _ in vectors]
        sign = -1.0 if self.metric == "l2" else 1.0  # l2 scores are distances: lower is closer
        for row, points in enumerate(results):
            for column, point in enumerate(points[:top_k]):
                ids[row, column], scores[row, column] = point.id, sign * point.score
                payloads[row][column] = json.dumps(payload_from_qdrant(point.payload), ensure_ascii=False)
        return Hits(ids, scores, payloads)

    def existing(self, ids: Sequence[int]) -> list[int]:
        """Which of `ids` are stored (ingest skips them when it resumes)."""
        return [record.id for record in self.shard.retrieve([int(i) for i in ids], False, False)]

    def count(self, filter: Filter | None = None) -> int:
        return self.shard.count(qe.CountRequest(filter=to_qdrant(filter)))

    def delete(self, ids: Sequence[int]) -> int:
        """Delete points by id; returns how many of them existed."""
        found = self.existing(ids)
        if found:
            self.shard.update(qe.UpdateOperation.delete_points(found))
        return len(found)

    def delete_matching(self, filter: Filter) -> int:
        """Delete the points a filter matches; returns how many."""
        matched = self.count(filter)
        if matched:
            self.shard.update(qe.UpdateOperation.delete_points_by_filter(to_qdrant(filter)))
        return matched

    def close(self) -> None:
        self.shard.flush()
        self.shard.close()
