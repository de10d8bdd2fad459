"""The same search ensembles on the scale-out engine: a collection exported with --engine milvus,
served by a real tritonserver whose index step talks to a real Milvus server.

What tests/test_search.py checks on the embedded engine, here end to end on Milvus: each
stored text found first, filters, upsert replacing, deletes by ids and by filter, count and
exists, read-your-writes, bad input refused with nothing changed, and points kept when the
index step restarts. Engine-level details (scores equal to the embedded engine's, recall,
payload round trips) are in tests/test_milvus_index.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from export.errors import InvalidArgumentError
from export.search.collection import CollectionOptions, export_collection
from export.serving.milvus_server import MilvusServer
from export.serving.server import ServerOptions, TritonServer, free_port
from export.steps.index.filters import matches, parse_filter
from export.text.pipeline import TextExportOptions, export_text
from triton_embeddings import EmbeddingClient, EmbeddingError

PIPELINE = "milvus-bert"
COLLECTION = "on_milvus"


@pytest.fixture(scope="module")
def milvus() -> Iterator[MilvusServer]:
    with MilvusServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_models, milvus: MilvusServer) -> Iterator[TritonServer]:
    folder = tmp_path_factory.mktemp("search-milvus")
    repo = folder / "repo"
    export_text(TextExportOptions(str(tiny_models["tiny-bert"].path), PIPELINE, repo))
    export_collection(CollectionOptions(COLLECTION, PIPELINE, repo, engine="milvus", uri=milvus.uri))
    options = ServerOptions(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with (folder / "log").open("wb") as log, TritonServer(options, log=log) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[EmbeddingClient]:
    with EmbeddingClient(server.options.grpc_url) as opened:
        yield opened


def test_points_stored_through_the_ensemble_are_found_first(client: EmbeddingClient) -> None:
    texts = [f"text number {i} " + "word " * (i % 5) for i in range(40)]
    vectors = client.embed_text(PIPELINE, texts)
    assert client.upsert(COLLECTION, texts, list(range(40)), [{"group": "first", "n": i} for i in range(40)]) == 40
    hits = client.search(COLLECTION, texts, top_k=3, filter={"must": [{"key": "group", "match": "first"}]})
    for i, row in enumerate(hits):  # the tiny BERT embeds some texts alike: the best score is the stored one's
        assert row[0].score == pytest.approx(1.0, abs=1e-5) and float(vectors[i] @ vectors[row[0].id]) > 0.9999
    assert hits[0][0].payload["group"] == "first"


def test_filters_count_delete_and_exists(client: EmbeddingClient) -> None:
    payloads = [{"group": "filters", "color": ["red", "blue"][i % 2], "price": i} for i in range(30)]
    ids = list(range(100, 130))
    client.upsert(COLLECTION, client.embed_text(PIPELINE, [f"p{i}" for i in ids]), ids, payloads)
    selected = {
        "must": [{"key": "group", "match": "filters"}, {"key": "color", "match": "red"}],
        "must_not": [{"key": "price", "range": {"gte": 20}}],
    }
    expected = {i for i, p in zip(ids, payloads, strict=True) if matches(parse_filter(selected), p)}
    assert client.count(COLLECTION, selected) == len(expected)
    assert {h.id for h in client.search(COLLECTION, ["p1"], top_k=30, filter=selected)[0]} == expected
    assert client.exists(COLLECTION, [100, 999]) == [True, False]
    assert client.delete(COLLECTION, ids=[100, 999]) == 1
    assert client.exists(COLLECTION, [100]) == [False]  # read-your-writes after a delete
    assert client.delete(COLLECTION, filter=selected) == len(expected - {100})
    assert client.count(COLLECTION, {"must": [{"key": "group", "match": "filters"}]}) == 30 - len(expected | {100})


def test_upsert_replaces(client: EmbeddingClient) -> None:
    client.upsert(COLLECTION, ["old"], [200], [{"v": 1}])
    client.upsert(COLLECTION, ["new"], [200], [{"v": 2}])
    (hit,) = client.search(COLLECTION, ["new"], top_k=1, filter={"must": [{"key": "v", "match": 2}]})[0]
    assert (hit.id, hit.payload) == (200, {"v": 2})
    assert client.count(COLLECTION, {"must": [{"key": "v", "range": {"gte": 1}}]}) == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.upsert(COLLECTION, ["a", "b"], [300, 300]), "repeats id 300"),
        (lambda c: c.upsert(COLLECTION, ["a"], [-2]), "ID[0] is -2"),
        (lambda c: c.search(COLLECTION, ["a"], top_k=5000), "use 1 to 1000"),
        (lambda c: c.search(COLLECTION, ["a"], filter={"must": [{"key": "a b", "match": 1}]}), "FILTER[0]"),
        (lambda c: c.upsert(COLLECTION, ["a"], [301], [{"x": float("inf")}]), "Out of range float values"),
    ],
)
def test_bad_input_is_refused_and_nothing_changes(client: EmbeddingClient, call, message: str) -> None:
    before = client.count(COLLECTION)
    with pytest.raises((EmbeddingError, ValueError)) as raised:
        call(client)
    assert message in str(raised.value)
    assert client.count(COLLECTION) == before and client.exists(COLLECTION, [300, 301]) == [False, False]


def test_a_restarted_index_step_sees_every_point(server: TritonServer, client: EmbeddingClient) -> None:
    ids = list(range(400, 420))
    client.upsert(COLLECTION, [f"kept {i}" for i in ids], ids)
    server.stop()
    server.__enter__()
    with EmbeddingClient(server.options.grpc_url) as fresh:
        assert fresh.exists(COLLECTION, ids) == [True] * len(ids)


def test_milvus_without_a_server_is_refused_at_export(server: TritonServer) -> None:
    repository = server.options.repository
    with pytest.raises(InvalidArgumentError, match="--engine milvus needs --uri"):
        export_collection(CollectionOptions("elsewhere", PIPELINE, repository, engine="milvus"))
    assert not (repository / "elsewhere_index").exists()
