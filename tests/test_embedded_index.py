"""The index step's embedded engine (export/steps/index/embedded.py) on a real qdrant-edge
collection: nearest first for every metric, padding, deletes, reopening, refusals, and
acknowledged writes surviving a SIGKILL of the process that made them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.steps.index.embedded import PAD_ID, PAD_SCORE, CollectionError, EmbeddedIndex
from export.steps.index.filters import matches, parse_filter

DIMENSION = 16


def unit(rows: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def index(tmp_path: Path):
    opened = EmbeddedIndex.open(tmp_path / "collection", DIMENSION, "cosine")
    yield opened
    opened.close()


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_each_stored_vector_is_its_own_nearest(tmp_path: Path, metric: str) -> None:
    vectors = unit(300, seed=1)
    index = EmbeddedIndex.open(tmp_path / metric, DIMENSION, metric)
    try:
        assert index.upsert(list(range(300)), vectors, [{"n": i} for i in range(300)]) == 300
        hits = index.search(vectors[:50], top_k=5)
        assert hits.ids[:, 0].tolist() == list(range(50))
        assert (np.diff(hits.scores, axis=1) <= 0).all(), "higher is closer, whatever the metric"
        assert [json.loads(row[0]) for row in hits.payloads] == [{"n": i} for i in range(50)]
        exact = np.argsort(
            -(vectors[:50] @ vectors.T) if metric != "l2" else ((vectors[:50, None] - vectors) ** 2).sum(-1)
        )
        assert (hits.ids == exact[:, :5]).mean() >= 0.99  # below the full-scan threshold: exact search
    finally:
        index.close()


def test_fewer_points_than_k_are_padded(index: EmbeddedIndex) -> None:
    index.upsert([7, 8], unit(2), [{}, {"a": "b"}])
    hits = index.search(unit(3, seed=5), top_k=4)
    assert hits.ids.shape == (3, 4) and hits.ids.dtype == np.int64 and hits.scores.dtype == np.float32
    assert (hits.ids[:, 2:] == PAD_ID).all() and (hits.scores[:, 2:] == PAD_SCORE).all()
    assert all(row[2:] == ["null", "null"] for row in hits.payloads)
    assert sorted(hits.ids[0, :2].tolist()) == [7, 8]


def test_filters_select_and_payloads_come_back_as_written(index: EmbeddedIndex) -> None:
    payloads = [{"color": ["red", "blue"][i % 2], "n": i, "sale": i % 3 == 0, "tags": ["a", str(i)]} for i in range(30)]
    vectors = unit(30, seed=2)
    index.upsert(list(range(30)), vectors, payloads)
    wanted = parse_filter({"must": [{"key": "sale", "match": True}], "must_not": [{"key": "color", "match": "red"}]})
    hits = index.search(vectors[:1], top_k=30, filter=wanted)
    found = [i for i in hits.ids[0].tolist() if i != PAD_ID]
    assert sorted(found) == [i for i in range(30) if matches(wanted, payloads[i])] == [3, 9, 15, 21, 27]
    assert [json.loads(text) for text in hits.payloads[0][: len(found)]] == [payloads[i] for i in found]
    assert index.count(wanted) == 5
    assert index.delete_matching(wanted) == 5 and index.count() == 25 and index.count(wanted) == 0


def test_upsert_replaces_and_deletes_count_what_existed(index: EmbeddedIndex) -> None:
    vectors = unit(10)
    index.upsert(list(range(10)), vectors, [{"v": 1}] * 10)
    index.upsert([3], vectors[3:4], [{"v": 2}])
    assert index.count() == 10
    assert json.loads(index.search(vectors[3:4], top_k=1).payloads[0][0]) == {"v": 2}
    assert index.delete([3, 4, 99]) == 2
    assert sorted(index.existing([2, 3, 4, 5, 99])) == [2, 5]
    assert index.count() == 8


def test_wrong_vectors_are_refused_and_nothing_changes(index: EmbeddedIndex) -> None:
    index.upsert([1], unit(1), [{}])
    with pytest.raises(CollectionError, match="expected vectors of 16 values, got shape \\[1, 8\\]"):
        index.upsert([2], np.ones((1, 8), np.float32), [{}])
    with pytest.raises(CollectionError, match="NaN or infinite"):
        index.search(np.full((1, DIMENSION), np.nan, np.float32), top_k=1)
    with pytest.raises(CollectionError, match="2 ids, 1 vectors and 1 payloads"):
        index.upsert([2, 3], unit(1), [{}])
    assert index.count() == 1


def test_a_reopened_collection_keeps_its_points_and_its_settings(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    index = EmbeddedIndex.open(folder, DIMENSION, "cosine")
    index.upsert([1, 2], unit(2), [{"x": 1}, {"x": 2}])
    index.close()
    index = EmbeddedIndex.open(folder, DIMENSION, "cosine")
    assert index.count() == 2
    index.close()
    with pytest.raises(CollectionError, match="holds a collection with"):
        EmbeddedIndex.open(folder, 32, "cosine")
    with pytest.raises(CollectionError, match="unknown metric 'hamming'"):
        EmbeddedIndex.open(tmp_path / "d", DIMENSION, "hamming")


WRITER = """
import sys
import numpy as np
from export.steps.index.embedded import EmbeddedIndex
index = EmbeddedIndex.open(__import__("pathlib").Path(sys.argv[1]), 16, "cosine")
rng = np.random.default_rng(0)
for batch in range(1000):
    ids = list(range(batch * 50, batch * 50 + 50))
    index.upsert(ids, rng.standard_normal((50, 16)).astype(np.float32), [{"batch": batch}] * 50)
    print(ids[-1], flush=True)  # acknowledged
"""


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    """A writer is killed mid-stream; every id it acknowledged is there when a new process opens
    the folder (the engine's write-ahead log), and the folder opens cleanly."""
    folder = tmp_path / "killed"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1]
    )
    acknowledged = -1
    for line in writer.stdout:
        acknowledged = int(line)
        if acknowledged >= 2000:
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    index = EmbeddedIndex.open(folder, DIMENSION, "cosine")
    try:
        assert len(index.existing(range(acknowledged + 1))) == acknowledged + 1
        assert index.count() >= acknowledged + 1
    finally:
        index.close()
