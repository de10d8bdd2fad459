"""The index step's scale-out engine (export/steps/index/milvus.py) on a real Milvus 2.3.5 server
(export/serving/milvus_server.py, one for the module): the embedded engine's answers, scores
and refusals, read-your-writes within a process and across processes, payloads and generated
filters, recall, a server killed and restarted, and a writer beside a reader."""

from __future__ import annotations

import functools
import itertools
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymilvus import MilvusException

from export.serving.milvus_server import MilvusServer, MilvusServerError
from export.steps.index.embedded import EmbeddedIndex
from export.steps.index.filters import matches, parse_filter
from export.steps.index.hits import PAD_ID, PAD_PAYLOAD, PAD_SCORE, CollectionError
from export.steps.index.milvus import MAX_TOP_K, MilvusIndex
from tests.test_filters import MILVUS_EXACT_VALUES, filter_documents, parsed, random_payloads

DIMENSION = 16
RECALL_DIMENSION = 384
ROOT = Path(__file__).parents[1]


def unit(rows: int, seed: int = 0, dimension: int = DIMENSION) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class Collections:
    """Fresh collections on the session's server. Opening one takes about 2.5 s whatever its size
    (Milvus loads it before it serves) and eight at once take the same, so the collections the
    tests will need are opened together up front; `take` hands out one never used before."""

    def __init__(self, uri: str, specs: list[tuple[int, str]]) -> None:
        self.uri, self.names, self.opened = uri, (f"test_{n}" for n in itertools.count()), []
        self.ready = self.open_many(specs)

    def open_many(self, specs: list[tuple[int, str]]) -> list[MilvusIndex]:
        with ThreadPoolExecutor(len(specs)) as pool:
            opened = list(pool.map(lambda spec: MilvusIndex.open(self.uri, next(self.names), *spec), specs))
        self.opened += opened
        return opened

    def take(self, dimension: int = DIMENSION, metric: str = "cosine") -> MilvusIndex:
        for index in self.ready:
            if (index.dimension, index.metric) == (dimension, metric):
                self.ready.remove(index)
                return index
        return self.open_many([(dimension, metric)])[0]

    def serving(self, timeout: float = 120.0) -> None:
        """Wait until every collection serves reads again: after a restart Milvus reloads them,
        and reads fail meanwhile (`collection not loaded`, or a shard leader not ready yet)."""
        deadline = time.monotonic() + timeout
        for index in self.opened:
            while True:
                try:
                    index.count()
                    break
                except MilvusException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)

    def drop_all(self) -> None:
        """A server holding no loaded collection stops sooner."""
        for index in self.opened:
            index.client.drop_collection(index.collection)
            index.close()


@pytest.fixture(scope="module")
def milvus() -> Iterator[MilvusServer]:
    """One server for these tests, stopped after them, not at the end of the whole session:
    idle, it still takes about a tenth of a core and 250-700 MB."""
    with MilvusServer() as server:
        yield server


@pytest.fixture(scope="module")
def collections(milvus: MilvusServer) -> Iterator[Collections]:
    specs = [(DIMENSION, "cosine")] * 11 + [(DIMENSION, "ip"), (DIMENSION, "l2"), (RECALL_DIMENSION, "cosine")]
    opened = Collections(milvus.uri, specs)
    yield opened
    opened.drop_all()


@pytest.fixture
def index(collections: Collections) -> MilvusIndex:
    return collections.take()


# The embedded engine's answers --------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_answers_and_scores_are_the_embedded_engines(collections: Collections, tmp_path: Path, metric: str) -> None:
    """Vectors of lengths 0.5 to 2, so that inner product, cosine and l2 order them differently;
    Milvus and qdrant-edge (exact below its full-scan threshold) give the same ids and scores, which
    are numpy's exact ones (-distance for l2: Milvus itself answers the squared distance)."""
    lengths = np.random.default_rng(3).uniform(0.5, 2.0, (300, 1)).astype(np.float32)
    vectors, payloads = unit(300, seed=1) * lengths, [{"n": i} for i in range(300)]
    milvus_index, embedded = collections.take(metric=metric), EmbeddedIndex.open(tmp_path / metric, DIMENSION, metric)
    try:
        assert milvus_index.upsert(list(range(300)), vectors, payloads) == 300
        embedded.upsert(list(range(300)), vectors, payloads)
        hits, reference = milvus_index.search(vectors[:50], top_k=5), embedded.search(vectors[:50], top_k=5)
    finally:
        embedded.close()
    assert hits.ids.dtype == np.int64 and hits.scores.dtype == np.float32
    exact = {
        "cosine": (vectors[:50] @ vectors.T) / np.outer(lengths[:50], lengths),
        "ip": vectors[:50] @ vectors.T,
        "l2": -np.linalg.norm(vectors[:50, None] - vectors, axis=-1),
    }[metric]
    assert hits.ids.tolist() == reference.ids.tolist() == np.argsort(-exact, axis=1)[:, :5].tolist()
    np.testing.assert_allclose(hits.scores, reference.scores, atol=1e-5, rtol=0)
    np.testing.assert_allclose(hits.scores, np.take_along_axis(exact, hits.ids, axis=1), atol=1e-5, rtol=0)
    assert (np.diff(hits.scores, axis=1) <= 0).all(), "higher is closer, whatever the metric"
    if metric != "ip":  # a longer vector can beat a vector's own inner product
        assert hits.ids[:, 0].tolist() == list(range(50))
    assert [[json.loads(text) for text in row] for row in hits.payloads] == [
        [payloads[i] for i in row] for row in hits.ids.tolist()
    ]


def test_fewer_points_than_k_are_padded(index: MilvusIndex) -> None:
    index.upsert([7, 8], unit(2), [{}, {"a": "b"}])
    hits = index.search(unit(3, seed=5), top_k=4)
    assert hits.ids.shape == (3, 4) and hits.ids.dtype == np.int64 and hits.scores.dtype == np.float32
    assert (hits.ids[:, 2:] == PAD_ID).all() and (hits.scores[:, 2:] == PAD_SCORE).all()
    assert all(row[2:] == [PAD_PAYLOAD, PAD_PAYLOAD] for row in hits.payloads)
    assert sorted(hits.ids[0, :2].tolist()) == [7, 8] and (hits.scores[:, :2] > -1.01).all()
    assert index.search(unit(3), top_k=0).ids.shape == (3, 0)
    nothing = index.search(np.zeros((0, DIMENSION), np.float32), top_k=4)
    assert nothing.ids.shape == (0, 4) and nothing.payloads == []


def test_filters_select_and_payloads_come_back_as_written(index: MilvusIndex) -> None:
    payloads = [{"color": ["red", "blue"][i % 2], "n": i, "sale": i % 3 == 0, "tags": ["a", str(i)]} for i in range(30)]
    vectors = unit(30, seed=2)
    index.upsert(list(range(30)), vectors, payloads)
    wanted = parse_filter({"must": [{"key": "sale", "match": True}], "must_not": [{"key": "color", "match": "red"}]})
    hits = index.search(vectors[:1], top_k=30, filter=wanted)
    found = [i for i in hits.ids[0].tolist() if i != PAD_ID]
    assert sorted(found) == [i for i in range(30) if matches(wanted, payloads[i])] == [3, 9, 15, 21, 27]
    assert hits.payloads[0][: len(found)] == [json.dumps(payloads[i], ensure_ascii=False) for i in found]
    assert index.count(wanted) == 5
    assert index.delete_matching(wanted) == 5 and index.count() == 25 and index.count(wanted) == 0


def test_upsert_replaces_and_deletes_count_what_existed(index: MilvusIndex) -> None:
    vectors = unit(10)
    index.upsert(list(range(10)), vectors, [{"v": 1}] * 10)
    index.upsert([3, 3], vectors[3:5], [{"v": 2}, {"v": 3}])  # twice in one call: the last one stays
    assert index.count() == 10
    hits = index.search(vectors[4:5], top_k=2)  # 3 now holds 4's vector: a tie, in either order
    assert sorted(hits.ids[0].tolist()) == [3, 4] and hits.scores[0, 1] > 0.9999
    assert json.loads(hits.payloads[0][hits.ids[0].tolist().index(3)]) == {"v": 3}
    assert sorted(index.delete([3, 4, 99, 4])) == [3, 4]
    assert index.existing([2, 3, 4, 5, 99, 5]) == [2, 5]
    assert index.count() == 8
    assert index.delete([]) == [] and index.existing([]) == [] and index.upsert([], np.zeros((0, DIMENSION)), []) == 0


# Read-your-writes ------------------------------------------------------------------------------------


def test_every_acknowledged_write_is_read_at_once(index: MilvusIndex) -> None:
    """Milvus 2.3.5 gives pymilvus no timestamp for a delete, so a Session read right after one
    would still find the point: the engine reads Strong once after a delete."""
    vectors = unit(6, seed=4)
    for point in range(6):
        index.upsert([point], vectors[point : point + 1], [{"p": point}])
        assert index.existing([point]) == [point]
        assert index.count() == 1
        assert index.search(vectors[point : point + 1], top_k=1).ids[0, 0] == point
        if point % 2:
            assert index.delete_matching(parse_filter({"must": [{"key": "p", "match": point}]})) == 1
        else:
            assert index.delete([point]) == [point]
        assert index.existing([point]) == [] and index.count() == 0
        assert index.search(vectors[point : point + 1], top_k=1).ids[0, 0] == PAD_ID


WRITER = """
import sys
import numpy as np
from export.steps.index.milvus import MilvusIndex
index = MilvusIndex.open(sys.argv[1], sys.argv[2], 16, "cosine")
for line in sys.stdin:
    operation, point = line.split()
    if operation == "upsert":
        index.upsert([int(point)], np.ones((1, 16), np.float32), [{"p": int(point)}])
    else:
        index.delete([int(point)])
    print("acknowledged", flush=True)
"""


def test_a_process_opening_the_collection_reads_every_write_acknowledged_before(
    collections: Collections, milvus: MilvusServer
) -> None:
    """What a restarted index step sees: another process writes, and each time it acknowledges,
    this one opens the collection with a new client and reads at once. Session reads alone would
    miss the write (pymilvus only knows the timestamps of its own process's writes)."""
    name = collections.take().collection
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, milvus.uri, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        for point, operation in itertools.product(range(3), ("upsert", "delete")):
            print(operation, point, file=writer.stdin, flush=True)
            assert writer.stdout.readline() == "acknowledged\n"
            reader = MilvusIndex.open(milvus.uri, name, DIMENSION, "cosine")
            try:
                assert reader.existing([point]) == ([point] if operation == "upsert" else [])
            finally:
                reader.close()
    finally:
        writer.stdin.close()
        assert writer.wait(timeout=30) == 0


SERVED = """
import filters, milvus
assert milvus.Filter is filters.Filter, milvus.Filter.__module__
nested = filters.parse_filter({"must": [{"must_not": [{"key": "a", "match": 1}]}]})
print(milvus.to_milvus(nested))
"""


def test_served_it_uses_the_filters_copied_beside_it(tmp_path: Path) -> None:
    """In a model repository, model.py's neighbours import each other by bare names, with the
    project installed in the same environment: the engine must take the copy's filters, whose
    Filter objects the step parses, or a nested filter is not recognised as one."""
    for module in (ROOT / "export" / "steps" / "index").glob("*.py"):  # as export copies them
        (tmp_path / module.name).write_bytes(module.read_bytes())
    served = subprocess.run(
        [sys.executable, "-c", SERVED], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert served.returncode == 0, served.stderr
    assert served.stdout == '(not (payload["a"] == 1))\n'


# Refusals ------------------------------------------------------------------------------------------

BAD_PAYLOADS = [
    ([1, 2], "a payload is a JSON object, got list"),
    ({"a": math.nan}, r'payloads\[1\]\["a"\]: nan is not a JSON number'),
    ({"a": [2**64]}, r'\["a"\]\[0\]: the integer 18446744073709551616 is beyond 64 bits'),
    ({1: "a"}, "the key 1 is not a string"),
    ({"a": {1}}, "set is not a JSON value"),
    ({"a": b"x"}, "bytes is not a JSON value"),
    ({"a": "\ud800"}, "lone surrogate"),
    ({"a": "x" * 65536}, "65545 bytes of JSON, Milvus takes at most 65536"),
    ({"o": {"#bool": 1}}, "a top-level object with a field '#bool'"),  # what the embedded engine refuses
    ({"a": functools.reduce(lambda inner, _: [inner], range(5000), [])}, "nested too deeply"),
]


def test_wrong_requests_are_refused_and_nothing_changes(index: MilvusIndex) -> None:
    index.upsert([1], unit(1), [{}])
    with pytest.raises(CollectionError, match="expected vectors of 16 values, got shape \\[1, 8\\]"):
        index.upsert([2], np.ones((1, 8), np.float32), [{}])
    with pytest.raises(CollectionError, match="NaN or infinite"):
        index.search(np.full((1, DIMENSION), np.nan, np.float32), top_k=1)
    with pytest.raises(CollectionError, match="NaN or infinite"):
        index.upsert([2], np.full((1, DIMENSION), 1e39), [{}])
    with pytest.raises(CollectionError, match="2 ids, 1 vectors and 1 payloads"):
        index.upsert([2, 3], unit(1), [{}])
    for bad in (-1, 2**63, True, 1.5, "3"):
        with pytest.raises(CollectionError, match=r"ids\[1\] must be an integer from 0 to 2\*\*63-1"):
            index.upsert([2, bad], unit(2), [{}, {}])
        with pytest.raises(CollectionError, match=r"ids\[0\] must be an integer"):
            index.existing([bad])
    for payload, message in BAD_PAYLOADS:
        with pytest.raises(CollectionError, match=message):
            index.upsert([2, 3], unit(2), [{}, payload])  # the good first one is not written either
    for top_k in (-1, MAX_TOP_K + 1, 2.0):
        with pytest.raises(CollectionError, match="top_k must be an integer from 0 to 16384"):
            index.search(unit(1), top_k=top_k)
    with pytest.raises(CollectionError, match="no filter given"):
        index.delete_matching(None)
    assert index.count() == 1 and index.existing([1, 2, 3]) == [1]


def test_a_reopened_collection_keeps_its_points_and_its_settings(index: MilvusIndex, milvus: MilvusServer) -> None:
    index.upsert([1, 2], unit(2), [{"x": 1}, {"x": 2}])
    reopened = MilvusIndex.open(milvus.uri, index.collection, DIMENSION, "cosine")
    assert reopened.count() == 2
    reopened.close()
    with pytest.raises(CollectionError, match=r"holds a collection with \{'dimension': 16, 'metric': 'cosine'\}"):
        MilvusIndex.open(milvus.uri, index.collection, 32, "cosine")
    with pytest.raises(CollectionError, match="not \\{'dimension': 16, 'metric': 'l2'\\}"):
        MilvusIndex.open(milvus.uri, index.collection, DIMENSION, "l2")
    with pytest.raises(CollectionError, match="unknown metric 'hamming'"):
        MilvusIndex.open(milvus.uri, "other", DIMENSION, "hamming")
    with pytest.raises(CollectionError, match="Milvus cannot name a collection 'my-docs'"):
        MilvusIndex.open(milvus.uri, "my-docs", DIMENSION, "cosine")


# Payloads and filters -----------------------------------------------------------------------------

ODD_PAYLOADS = [
    {"on": True, "off": False, "none": None, "list": [1, "a", True, None, [2.5]], "": "an empty key"},
    {"nested": {"a": {"b": [1.5, {"c": "é"}]}, "empty": {}}, "a.b": "a dot", "l": []},
    {"text": 'Zürich 東京 🎉 \u0000 "quoted" \\ \n', "ключ": "значение"},
    {"max": 2**63 - 1, "min": -(2**63), "u64": 2**64 - 1, "beyond_doubles": 2**53 + 1},
    {"tenth": 0.1, "tiny": 1e-300, "huge": 1.5e300, "minus_zero": -0.0, "whole": 3.0},
]


def test_payloads_come_back_as_the_embedded_engine_gives_them(index: MilvusIndex, tmp_path: Path) -> None:
    embedded = EmbeddedIndex.open(tmp_path / "embedded", DIMENSION, "cosine")
    vectors = unit(len(ODD_PAYLOADS), seed=6)
    try:
        embedded.upsert(list(range(len(ODD_PAYLOADS))), vectors, ODD_PAYLOADS)
        reference = embedded.search(vectors, top_k=1)
    finally:
        embedded.close()
    index.upsert(list(range(len(ODD_PAYLOADS))), vectors, ODD_PAYLOADS)
    hits = index.search(vectors, top_k=1)
    assert [row[0] for row in hits.payloads] == [json.dumps(payload, ensure_ascii=False) for payload in ODD_PAYLOADS]
    assert [json.loads(row[0]) for row in hits.payloads] == [json.loads(row[0]) for row in reference.payloads]


GENERATED_POINTS = 600


@pytest.fixture(scope="module")
def generated(collections: Collections) -> tuple[MilvusIndex, list[dict[str, Any]]]:
    """Payloads of tests/test_filters.py's generator (integers beyond 2**53 left out: Milvus
    compares those exactly, `matches` as doubles), written once for every generated filter."""
    payloads = [payload for seed in range(3) for payload in random_payloads(seed, MILVUS_EXACT_VALUES)]
    index = collections.take()
    index.upsert(list(range(len(payloads))), unit(len(payloads), seed=7), payloads)
    return index, payloads


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=filter_documents(), query=st.integers(0, GENERATED_POINTS - 1))
def test_generated_filters_select_what_matches_selects(
    generated: tuple[MilvusIndex, list[dict[str, Any]]], document: dict[str, Any], query: int
) -> None:
    index, payloads = generated
    filter = parsed(document)
    expected = [i for i, payload in enumerate(payloads) if matches(filter, payload)]
    assert index.count(filter) == len(expected)
    # One row more than the points expected: it must come back padded, so nothing else matched.
    hits = index.search(unit(GENERATED_POINTS, seed=7)[query : query + 1], top_k=len(expected) + 1, filter=filter)
    assert sorted(hits.ids[0, :-1].tolist()) == expected and hits.ids[0, -1] == PAD_ID


# Recall ------------------------------------------------------------------------------------------


def embeddings_like(rows: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around random centres: a nearest neighbour at cosine 0.56, like embeddings
    (docs/search.md measures with 0.62). Uniform random vectors in 384 dimensions have no
    neighbourhoods (nearest cosine 0.20, median 0.00): HNSW finds 26% of their top 10 at ef 64
    and 94% at ef 1024 here, as any index that does not scan nearly everything would."""
    noise = rng.standard_normal((rows, centres.shape[1])).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), rows)] + noise / np.linalg.norm(noise, axis=1, keepdims=True)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_recall_at_10_against_exact_search(collections: Collections) -> None:
    rng = np.random.default_rng(8)
    centres = unit(400, seed=9, dimension=RECALL_DIMENSION)
    vectors, queries = embeddings_like(20_000, rng, centres), embeddings_like(100, rng, centres)
    index = collections.take(dimension=RECALL_DIMENSION)
    for start in range(0, len(vectors), 1000):
        rows = range(start, start + 1000)
        index.upsert(list(rows), vectors[start : start + 1000], [{"n": i} for i in rows])
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = np.concatenate([index.search(queries[i : i + 1], top_k=10).ids for i in range(len(queries))])
    recall = np.mean([len(set(found[i]) & set(exact[i])) / 10 for i in range(len(queries))])
    assert recall >= 0.95, recall


# The server killed, a writer beside a reader ----------------------------------------------------------


def test_acknowledged_writes_survive_the_server_killed(
    collections: Collections, milvus: MilvusServer, index: MilvusIndex
) -> None:
    """SIGKILL, no graceful stop. The step's open index comes back by itself once Milvus has
    reloaded the collection (5-10 s after the restart), and a new one sees every point too."""
    vectors = unit(500, seed=10)
    for start in range(0, 500, 100):
        index.upsert(list(range(start, start + 100)), vectors[start : start + 100], [{"batch": start}] * 100)
    milvus.kill()
    milvus.start()
    collections.serving()
    assert index.count() == 500 and index.existing(range(500)) == list(range(500))
    assert index.search(vectors[:3], top_k=1).ids[:, 0].tolist() == [0, 1, 2]
    reopened = MilvusIndex.open(milvus.uri, index.collection, DIMENSION, "cosine")
    try:
        assert reopened.count(parse_filter({"must": [{"key": "batch", "match": 400}]})) == 100
    finally:
        reopened.close()


def test_a_writer_beside_a_reader(collections: Collections, milvus: MilvusServer) -> None:
    """Two clients of one process, in two threads: every batch the writer has acknowledged is
    found by the reader's next lookup (pymilvus shares write timestamps within a process), and
    the reader's searches go on while the writer writes (it writes until the reader has done
    five rounds, and at least 20 batches)."""
    writer = collections.take()
    reader = MilvusIndex.open(milvus.uri, writer.collection, DIMENSION, "cosine")
    acknowledged, stop, errors, rounds = [0], threading.Event(), [], [0]

    def write() -> None:
        try:
            for batch in range(1, 201):
                ids = list(range(batch * 64 - 64, batch * 64))
                writer.upsert(ids, unit(64, seed=batch), [{"batch": batch}] * 64)
                acknowledged[0] = batch
                if stop.is_set() or (batch >= 20 and rounds[0] >= 5):
                    return
                time.sleep(0.05)
        except Exception as error:  # reported by the assertion below
            errors.append(error)
        finally:
            stop.set()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while not stop.is_set():
            batch = acknowledged[0]
            hits = reader.search(unit(1, seed=99), top_k=5)
            assert hits.ids.shape == (1, 5) and (batch == 0 or (hits.ids[0] != PAD_ID).all())
            assert len(reader.existing(range(batch * 64))) == batch * 64, f"batch {batch} acknowledged, not read"
            rounds[0] += 1
    finally:
        stop.set()
        thread.join()
        reader.close()
    assert not errors and rounds[0] >= 5 and writer.count() == acknowledged[0] * 64 >= 20 * 64


# The test server ----------------------------------------------------------------------------------


def test_a_server_that_dies_starting_fails_at_once_with_its_panic(tmp_path: Path) -> None:
    """A setting Milvus cannot use: the process dies within a second or two, and the error
    says why (the panic's message, not the goroutine dump after it)."""
    started = time.monotonic()
    server = MilvusServer(settings={"common.storageType": "nonsense"})
    with pytest.raises(MilvusServerError, match=r"(?s)exited with code -6 before it was ready.*panic: no chunk"):
        server.start()
    server.close()  # its temporary data folder goes
    assert not server.data.exists()
    assert time.monotonic() - started < 30
    with pytest.raises(MilvusServerError, match=r"no Milvus server in .*: run `make milvus-server`"):
        MilvusServer(venv=tmp_path)
