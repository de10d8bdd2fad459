"""qdrant-edge (Qdrant's engine, in-process) behind the embedded engine's interface: its
settings, journal records applied to it, and its answers turned into Hits. Every call into
qdrant-edge holds the GIL for as long as it runs, so this module runs only in processes of
its own (shard.py serves one generation, optimize.py builds the next), never in the serving
process.

Imports nothing of the project but its neighbours filters, hits and journal: it is copied into
the model repository beside model.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

if __package__:
    from export.steps.index.filters import Filter, payload_from_qdrant, to_qdrant
    from export.steps.index.hits import Hits
    from export.steps.index.journal import DELETE, UPSERT, Position, Record, decode, read_journal
else:
    from filters import Filter, payload_from_qdrant, to_qdrant
    from hits import Hits
    from journal import DELETE, UPSERT, Position, Record, decode, read_journal

METRICS = {"cosine": qe.Distance.Cosine, "ip": qe.Distance.Dot, "l2": qe.Distance.Euclid}
# HNSW beam width at query time. At 1M clustered points recall@10 is 0.92 at 64, 0.96 at 128,
# 0.97 at 192, for a p50 of 1.9, 2.1 and 2.1 ms (docs/search.md); 1.0 at 100k from 64 on.
SEARCH_EF = 128
WARM_QUERIES = 32  # searches a new generation answers before it serves: its pages, in before requests come
HNSW_M, HNSW_EF_CONSTRUCT = 16, 100
FULL_SCAN_POINTS = 20_000  # segments smaller than this are searched exactly (engine_config)
SCROLL_PAGE = 10_000


def kilobytes(points: int, dimension: int) -> int:
    return max(1, points * dimension * 4 // 1024)


def engine_config(dimension: int, metric: str, optimize_after: int, threads: int = 1) -> qe.EdgeConfig:
    """The engine's settings, the same in the serving engine and the optimizer. A segment is
    given an HNSW graph once it holds half of `optimize_after` points, so an optimization always
    indexes what triggered it. A segment of fewer than FULL_SCAN_POINTS points is searched
    exactly all the same: small clustered collections are where HNSW misses most (recall@10
    0.87 at 10k points, 1.0 at 100k, docs/search.md), and exact search of them takes about 2 ms."""
    indexing = kilobytes(max(1, optimize_after // 2), dimension)
    full_scan = kilobytes(FULL_SCAN_POINTS, dimension)
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dimension, distance=METRICS[metric]),
        hnsw_config=qe.HnswIndexConfig(
            m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=full_scan, max_indexing_threads=threads
        ),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=indexing),
    )


def operation(record: Record) -> Any:
    """The engine's update for a journal record."""
    ids = record.ids.tolist()
    if record.kind == DELETE:
        return qe.UpdateOperation.delete_points(ids)
    payloads, vectors = record.payloads or [], record.vectors
    assert vectors is not None
    return qe.UpdateOperation.upsert_points([qe.Point(ids[i], vectors[i], payloads[i]) for i in range(len(ids))])


def replay(shard: Any, journal: Path, start: Position) -> tuple[Position, int]:
    """Apply the journal from `start` on. Idempotent: replaying writes the engine already holds
    leaves it as it was. Returns the position after the last whole record and how many points
    were upserted."""
    end, upserted = start, 0
    for record, end in read_journal(journal, start):  # noqa: B007 (end is the result)
        shard.update(operation(record))
        upserted += len(record.ids) if record.kind == UPSERT else 0
    return end, upserted


def create(folder: Path, config: qe.EdgeConfig) -> None:
    """A new, empty engine in `folder`."""
    qe.EdgeShard.create(str(folder), config).close()


class Engine:
    """One generation's engine, as shard.py serves it: each method is one request of the serving
    process, with plain values in and out (they cross a process boundary)."""

    def __init__(self, folder: Path, dimension: int, metric: str, optimize_after: int) -> None:
        self.metric, self.dimension = metric, dimension
        self.shard = qe.EdgeShard.load(str(folder), engine_config(dimension, metric, optimize_after))

    def warm(self) -> None:
        """Bring the engine's pages in before it serves: a freshly loaded engine's first searches
        otherwise wait on page faults (its files are mmapped), which the requests would pay."""
        vectors = np.random.default_rng(0).standard_normal((WARM_QUERIES, self.dimension)).astype(np.float32)
        self.search(vectors, 10, None)

    def update(self, encoded: bytes) -> None:
        self.shard.update(operation(decode(encoded)))

    def replay(self, journal: Path, start: Position) -> tuple[Position, int]:
        return replay(self.shard, journal, start)

    def search(self, vectors: np.ndarray, top_k: int, filter: Filter | None) -> Hits:
        """The `top_k` nearest points of each query vector, closest first, padded."""
        params, selected = qe.SearchParams(hnsw_ef=max(SEARCH_EF, top_k)), to_qdrant(filter)
        requests = [
            qe.QueryRequest(
                limit=top_k, query=qe.Query.Nearest(vector.tolist()), filter=selected, params=params, with_payload=True
            )
            for vector in vectors
        ]
        results = self.shard.query_batch(qe.QueryBatchRequest(requests)) if requests and top_k else []
        hits = Hits.padded(len(vectors), top_k)
        sign = -1.0 if self.metric == "l2" else 1.0  # l2 scores are distances: lower is closer
        for row, points in enumerate(results):
            for column, point in enumerate(points[:top_k]):
                hits.ids[row, column], hits.scores[row, column] = point.id, sign * point.score
                hits.payloads[row][column] = json.dumps(payload_from_qdrant(point.payload), ensure_ascii=False)
        return hits

    def retrieve(self, ids: list[int]) -> list[int]:
        return [record.id for record in self.shard.retrieve(ids, False, False)] if ids else []

    def count(self, filter: Filter | None) -> int:
        return self.shard.count(qe.CountRequest(filter=to_qdrant(filter)))

    def matching(self, filter: Filter | None) -> list[int]:
        """The ids of every point the filter selects."""
        selected, found, offset = to_qdrant(filter), [], None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=SCROLL_PAGE, filter=selected, with_payload=False)
            records, offset = self.shard.scroll(request)
            found += [record.id for record in records]
            if offset is None:
                return found

    def info(self) -> tuple[int, int]:
        """Points stored, and vectors in HNSW graphs."""
        info = self.shard.info()
        return info.points_count, info.indexed_vectors_count

    def flush(self) -> None:
        self.shard.flush()

    def close(self) -> None:
        self.shard.close()
