"""The embedded search engine alone (export/steps/index/embedded.py), at several sizes.

    python -m benchmarks.search_index --sizes 10000 100000

Synthetic vectors like sentence embeddings: 384 dimensions, unit length, 2,000 cluster centres
plus noise (a point's nearest neighbour at cosine about 0.6). For each size, in one process, as
the index step runs it (maintain() after every call):

- build: upserts of 1,000 points with payloads, then upkeep until no optimizer runs and fewer
  than `optimize_after` points wait unindexed (the steady state); its time, the points left
  unindexed, and the engine's memory (the RSS of its process; the optimizer's peak apart);
- one query at a time (p50 / p95 of 500), 64 queries in one call, recall@10 against exact
  search in numpy;
- writes while searching: a search, an upsert of 64 points and maintain(), paced at `--rate`
  points a second (about what the encoder of this machine produces: 280-620 sentences/s), until
  the optimization those writes start has been swapped in: the slowest search and the slowest
  loop (search, upsert and upkeep) meanwhile, searches over 100 ms, the swap's pause (the new
  engine loads in a process of its own before it, in the time given in brackets), and the
  slowest search in the 10 s after it (the old engine's process closes it then);
- then, for choosing `optimize_after`: one query with more points left unindexed (upserted
  without upkeep), by how many.

The machine has 2 cores shared with other jobs: compare within a run rather than across runs.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.steps.index.embedded import OPTIMIZE_AFTER, EmbeddedIndex

DIMENSION, CENTRES, NOISE = 384, 2000, 0.9
BATCH = 1000
AFTER_SWAP = 10.0  # seconds of searching measured after the swap: the old engine's process closes meanwhile
QUERIES = 500
TAILS = (2_500, 5_000, 10_000, 20_000)


def clustered(count: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, len(centres), count)]
    vectors = vectors + NOISE * rng.standard_normal((count, DIMENSION), dtype=np.float32) / np.sqrt(DIMENSION)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def exact_top10(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best = np.empty((len(queries), 0), dtype=np.int64)
    scores = np.empty((len(queries), 0), dtype=np.float32)
    for start in range(0, len(data), 200_000):
        chunk = queries @ data[start : start + 200_000].T
        top = np.argpartition(-chunk, 10, axis=1)[:, :10]
        best = np.hstack([best, top + start])
        scores = np.hstack([scores, np.take_along_axis(chunk, top, axis=1)])
    order = np.argsort(-scores, axis=1)[:, :10]
    return np.take_along_axis(best, order, axis=1)


def nearest_cosine(data: np.ndarray, sample: int = 200) -> float:
    best = np.full(sample, -1.0, dtype=np.float32)
    for start in range(0, len(data), 200_000):
        chunk = data[:sample] @ data[start : start + 200_000].T
        own = np.arange(sample)[(np.arange(sample) >= start) & (np.arange(sample) < start + 200_000)]
        chunk[own, own - start] = -1.0
        best = np.maximum(best, chunk.max(axis=1))
    return float(best.mean())


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settled(index: EmbeddedIndex, optimize_after: int) -> bool:
    status = index.status()
    return not status.optimizing and status.unindexed < optimize_after


@dataclass
class Result:
    size: int
    nearest_cosine: float
    build_s: float
    insert_s: float
    swaps: int
    unindexed: int
    rss_mb: float  # the engine's: its process's (shard.py) at the end of the build
    optimizer_peak_mb: float
    p50_ms: float
    p95_ms: float
    batch64_ms: float
    recall: float
    worst_search_ms: float
    worst_loop_ms: float
    over_100ms: int
    searches: int
    swap_pause_ms: float
    swap_load_ms: float
    after_swap_ms: float
    tails: dict[int, tuple[float, float]]


def build(index: EmbeddedIndex, data: np.ndarray, optimize_after: int) -> tuple[float, float]:
    started = time.perf_counter()
    for start in range(0, len(data), BATCH):
        ids = list(range(start, min(start + BATCH, len(data))))
        index.upsert(ids, data[ids[0] : ids[-1] + 1], [{"n": i, "group": i % 10} for i in ids])
        index.maintain()
    inserted = time.perf_counter() - started
    while not settled(index, optimize_after):
        index.maintain()
        time.sleep(0.05)
    return time.perf_counter() - started, inserted


def one_query_ms(index: EmbeddedIndex, queries: np.ndarray) -> tuple[float, float]:
    times = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], top_k=10)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 95) * 1000)


def writes_while_searching(
    index: EmbeddedIndex, extra: np.ndarray, first_id: int, queries: np.ndarray, rate: float
) -> dict:
    """Search, upsert 64, maintain, until the optimization these writes start is swapped in, and
    for AFTER_SWAP seconds more (when the old engine is closed, in a thread holding the GIL)."""
    swaps, searches, loops, after, added = index.status().swaps, [], [], [], 0
    begun, swapped_at = time.perf_counter(), None
    while swapped_at is None or time.perf_counter() - swapped_at < AFTER_SWAP:
        if added + 64 > len(extra):
            raise RuntimeError(f"no swap after {added:,} points were upserted: {index.status()}")
        time.sleep(max(0.0, begun + added / rate - time.perf_counter()))
        started = time.perf_counter()
        index.search(queries[added % len(queries)][None], top_k=10)
        searched = time.perf_counter()
        ids = list(range(first_id + added, first_id + added + 64))
        index.upsert(ids, extra[added : added + 64], [{"n": i, "group": i % 10} for i in ids])
        index.maintain()
        if swapped_at is not None:
            after.append(searched - started)
        elif index.status().swaps == swaps:
            searches.append(searched - started)
            loops.append(time.perf_counter() - started)
        else:
            swapped_at = time.perf_counter()
        added += 64
    return {
        "worst_search_ms": max(searches) * 1000, "worst_loop_ms": max(loops) * 1000,
        "over_100ms": sum(s > 0.1 for s in searches + after), "searches": len(searches) + len(after),
        "after_swap_ms": max(after) * 1000, "swap_pause_ms": (index.status().last_pause or float("nan")) * 1000,
        "added": added,
    }  # fmt: skip


def measure(size: int, folder: Path, optimize_after: int, centres: np.ndarray, rate: float) -> Result:
    data = clustered(size, seed=1, centres=centres)
    queries = clustered(QUERIES, seed=2, centres=centres)
    extra = clustered(max(40 * optimize_after, 2 * max(TAILS)), seed=3, centres=centres)
    truth = exact_top10(data, queries)
    events: list[str] = []
    index = EmbeddedIndex.open(folder, DIMENSION, "cosine", optimize_after=optimize_after, log=events.append)
    try:
        build_s, insert_s = build(index, data, optimize_after)
        time.sleep(AFTER_SWAP)  # the last swap's old engine has closed by then
        status, memory = index.status(), rss_mb(index.shard.pid)
        p50, p95 = one_query_ms(index, queries)
        found = index.search(queries, top_k=10).ids
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
        batch = []
        for start in range(0, 640, 64):
            started = time.perf_counter()
            index.search(queries[start : start + 64], top_k=10)
            batch.append(time.perf_counter() - started)
        writes = writes_while_searching(index, extra, size, queries, rate)
        loaded = [event for event in events if event.startswith("swap loaded")][-1]
        writes["swap_load_ms"] = float(loaded.rsplit(" in ", 1)[1].split()[0]) * 1000
        while not settled(index, optimize_after):
            index.maintain()
            time.sleep(0.05)
        tails, upserted, first = {}, 0, size + writes["added"]
        for tail in TAILS:  # unindexed on purpose: no maintain()
            more = tail - index.status().unindexed
            if more > 0:
                ids = list(range(first + upserted, first + upserted + more))
                index.upsert(ids, extra[upserted : upserted + more], [{"n": i} for i in ids])
                upserted += more
            tails[index.status().unindexed] = one_query_ms(index, queries[:200])
    finally:
        index.close()
    return Result(
        size, nearest_cosine(data), build_s, insert_s, status.swaps, status.unindexed, memory,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, p50, p95,
        float(np.median(batch) * 1000), recall, writes["worst_search_ms"], writes["worst_loop_ms"],
        writes["over_100ms"], writes["searches"], writes["swap_pause_ms"], writes["swap_load_ms"],
        writes["after_swap_ms"], tails,
    )  # fmt: skip


def table(results: list[Result]) -> str:
    lines = [
        "| points | build (insert) | swaps | left unindexed | RSS; optimizer peak | one query p50 / p95 "
        "| 64 queries | recall@10 | upserting 64 a call: worst search; worst loop; >100 ms "
        "| swap pause (load) | worst search after the swap |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.size:,} | {r.build_s:.0f} s ({r.insert_s:.0f} s) | {r.swaps} | {r.unindexed:,} "
            f"| {r.rss_mb:.0f} MB; {r.optimizer_peak_mb:.0f} MB | {r.p50_ms:.2f} / {r.p95_ms:.2f} ms "
            f"| {r.batch64_ms:.0f} ms | {r.recall:.3f} | {r.worst_search_ms:.0f} ms; {r.worst_loop_ms:.0f} ms; "
            f"{r.over_100ms} of {r.searches} | {r.swap_pause_ms:.0f} ms ({r.swap_load_ms:.0f} ms) "
            f"| {r.after_swap_ms:.0f} ms |"
        )
    lines += ["", "| points | unindexed | one query p50 / p95 |", "|---|---|---|"]
    for r in results:
        for unindexed, (p50, p95) in r.tails.items():
            lines.append(f"| {r.size:,} | {unindexed:,} | {p50:.2f} / {p95:.2f} ms |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="collection sizes")
    parser.add_argument("--optimize-after", type=int, default=OPTIMIZE_AFTER, help="the engine's setting")
    parser.add_argument("--rate", type=float, default=640.0, help="points a second upserted while searching")
    parser.add_argument("--workdir", type=Path, help="where the collections go (default: a temporary folder)")
    args = parser.parse_args()
    centres = np.random.default_rng(0).standard_normal((CENTRES, DIMENSION)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="search-index-"))
    results = []
    try:
        for size in args.sizes:
            results.append(measure(size, workdir / f"c{size}", args.optimize_after, centres, args.rate))
            r = results[-1]
            print(f"{size:,} points (nearest-neighbour cosine {r.nearest_cosine:.2f}) done", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))


if __name__ == "__main__":
    main()
