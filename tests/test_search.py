"""Search served by Triton: collections over the default text pipeline and over CLIP ViT-B-32,
on the session server, through the client (gRPC and HTTP, blocking and asyncio) and through
Triton's own HTTP endpoint.

Each test writes points under its own payload `group` (or id range) and filters on it, so
tests share one collection without seeing each other's points.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from sentence_transformers import SentenceTransformer

from export.serving.server import TritonServer
from export.steps.index.filters import matches, parse_filter
from export.tools.corpus import corpus
from export.tools.payloads import jpeg, photo_like
from tests.conftest import DOCS, PHOTOS
from tests.helpers import post_infer
from triton_embeddings import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError, Hit
from triton_embeddings.core import server_errors
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, CollectionNames

SCORE_TOLERANCE = 1e-4  # served cosine vs sentence-transformers' cosine (fp32 both sides)


def group(name: str) -> dict:
    return {"must": [{"key": "group", "match": name}]}


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request: pytest.FixtureRequest, server: TritonServer):
    url = server.options.grpc_url if request.param == "grpc" else server.options.http_url
    with EmbeddingClient(url, request.param) as opened:
        yield opened


@pytest.fixture(scope="module")
def grpc(server: TritonServer):
    with EmbeddingClient(server.options.grpc_url) as opened:
        yield opened


def test_each_stored_text_is_found_first_with_the_reference_score(
    client: EmbeddingClient, default_st_model: SentenceTransformer
) -> None:
    texts = list(dict.fromkeys(corpus(300, seed=3)))[:120]
    base = 1_000 if client.protocol == "grpc" else 2_000
    ids = list(range(base, base + len(texts)))
    payloads = [{"group": f"first-{client.protocol}", "text": text, "n": i} for i, text in enumerate(texts)]
    assert client.upsert(DOCS, texts, ids, payloads) == len(texts)
    hits = client.search(DOCS, texts, top_k=3, filter=group(f"first-{client.protocol}"))
    assert [row[0].id for row in hits] == ids
    assert [row[0].payload for row in hits] == payloads
    reference = default_st_model.encode(texts, normalize_embeddings=True)
    for row, vector in zip(hits, reference, strict=True):
        assert [hit.score for hit in row] == sorted((hit.score for hit in row), reverse=True)
        for hit in row:  # cosine of the reference embeddings of the query and of the stored text
            expected = float(vector @ reference[hit.id - base])
            assert abs(hit.score - expected) < SCORE_TOLERANCE


def test_a_paraphrase_finds_its_text(grpc: EmbeddingClient) -> None:
    texts = [
        "The cat sleeps on the warm windowsill.",
        "Interest rates rose again this quarter.",
        "Knead the dough for ten minutes before baking.",
        "The striker scored twice in the final.",
    ]
    grpc.upsert(DOCS, texts, [10, 11, 12, 13], [{"group": "paraphrase"}] * 4)
    queries = [
        "a kitten napping by the window",
        "the central bank raised borrowing costs",
        "how long to work bread dough",
        "a football player got two goals",
    ]
    hits = grpc.search(DOCS, queries, top_k=1, filter=group("paraphrase"))
    assert [row[0].id for row in hits] == [10, 11, 12, 13]


def test_top_k_padding_and_the_default(grpc: EmbeddingClient) -> None:
    grpc.upsert(DOCS, [f"filler {i}" for i in range(12)], list(range(40, 52)), [{"group": "filler"}] * 12)
    grpc.upsert(DOCS, ["one", "two"], [20, 21], [{"group": "padding"}] * 2)
    hits = grpc.search(DOCS, ["one", "three"], top_k=5, filter=group("padding"))
    assert [len(row) for row in hits] == [2, 2]  # fewer points than k: the -1 pads are dropped
    assert hits[0][0].id == 20
    assert len(grpc.search(DOCS, ["anything"])[0]) == 10  # the collection's default top-k, over everything


def test_raw_endpoint_pads_with_minus_one(server: TritonServer, grpc: EmbeddingClient) -> None:
    """What a client without our package sees: KServe v2 JSON in, padded tensors out."""
    grpc.upsert(DOCS, ["raw one"], [30], [{"group": "raw"}])
    body = {
        "inputs": [
            {"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": ["raw one", "raw two"]},
            {"name": "TOP_K", "shape": [2, 1], "datatype": "INT32", "data": [3, 1]},
            {"name": "FILTER", "shape": [2, 1], "datatype": "BYTES", "data": [json.dumps(group("raw"))] * 2},
        ]
    }
    status, reply = post_infer(server, CollectionNames(DOCS).search, json.dumps(body).encode())
    assert status == 200, reply
    outputs = {o["name"]: o for o in reply["outputs"]}
    assert outputs["IDS"]["shape"] == [2, 3] and outputs["IDS"]["datatype"] == "INT64"
    assert outputs["IDS"]["data"] == [30, -1, -1, 30, -1, -1]  # row 2 asked for 1: padded past it
    assert json.loads(outputs["PAYLOADS"]["data"][0]) == {"group": "raw"}
    assert outputs["PAYLOADS"]["data"][1] == "null"


def test_filters_select_what_the_definition_selects(grpc: EmbeddingClient) -> None:
    rng = np.random.default_rng(5)
    colors, payloads = ["red", "green", "blue"], []
    for i in range(60):
        payload = {"group": "filters", "color": colors[i % 3], "price": int(rng.integers(0, 100)), "sale": bool(i % 2)}
        if i % 7 == 0:
            del payload["price"]
        payloads.append(payload)
    ids = list(range(100, 160))
    vectors = rng.standard_normal((60, 384)).astype(np.float32)
    assert grpc.upsert(DOCS, vectors, ids, payloads) == 60  # precomputed vectors go to the index step
    cases = [
        {"must": [{"key": "color", "match": "red"}]},
        {"must": [{"key": "color", "match": ["red", "blue"]}, {"key": "price", "range": {"gte": 20, "lt": 70}}]},
        {"should": [{"key": "sale", "match": True}, {"key": "price", "range": {"gt": 90}}]},
        {"must_not": [{"key": "price", "range": {"gte": 0}}]},  # keeps the points without a price
        {"must": [{"must_not": [{"key": "color", "match": "green"}]}, {"key": "sale", "match": False}]},
    ]
    for case in cases:
        selected = {"must": [*group("filters")["must"], case]}
        expected = {i for i, p in zip(ids, payloads, strict=True) if matches(parse_filter(selected), p)}
        assert grpc.count(DOCS, selected) == len(expected)
        hits = grpc.search(DOCS, ["anything"], top_k=100, filter=selected)[0]
        assert {hit.id for hit in hits} == expected, case


def test_upsert_replaces_and_delete_by_ids_and_by_filter(grpc: EmbeddingClient) -> None:
    grpc.upsert(DOCS, ["first version", "kept", "gone"], [200, 201, 202], [{"group": "edit", "v": 1}] * 3)
    grpc.upsert(DOCS, ["second version"], [200], [{"group": "edit", "v": 2}])
    hit = grpc.search(DOCS, ["second version"], top_k=1, filter=group("edit"))[0][0]
    assert (hit.id, hit.payload["v"]) == (200, 2) and hit.score > 0.99
    assert grpc.exists(DOCS, [200, 202, 299]) == [True, True, False]
    assert grpc.delete(DOCS, ids=[202, 299]) == 1  # only what existed counts
    assert grpc.exists(DOCS, [202]) == [False]
    assert grpc.delete(DOCS, filter={"must": [*group("edit")["must"], {"key": "v", "match": 2}]}) == 1
    assert [h.id for h in grpc.search(DOCS, ["version"], top_k=5, filter=group("edit"))[0]] == [201]
    assert grpc.count(DOCS, group("edit")) == 1


def test_an_acknowledged_write_is_seen_by_the_next_search(grpc: EmbeddingClient) -> None:
    for i in range(20):
        grpc.upsert(DOCS, [f"fresh point number {i}"], [300 + i], [{"group": "fresh"}])
        assert grpc.search(DOCS, [f"fresh point number {i}"], top_k=1, filter=group("fresh"))[0][0].id == 300 + i
        grpc.delete(DOCS, ids=[300 + i])
        assert grpc.exists(DOCS, [300 + i]) == [False]


def test_concurrent_writers_and_readers(server: TritonServer) -> None:
    """Four threads write while four search; every write is acknowledged and then found."""
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        with EmbeddingClient(server.options.grpc_url) as client:
            for batch in range(10):
                ids = [10_000 + worker * 1000 + batch * 8 + i for i in range(8)]
                assert (
                    client.upsert(
                        DOCS, [f"w{worker} b{batch} i{i}" for i in range(8)], ids, [{"group": "concurrent"}] * 8
                    )
                    == 8
                )

    def read() -> None:
        with EmbeddingClient(server.options.http_url, "http") as client:
            for _ in range(20):
                for row in client.search(DOCS, ["w1 b2 i3", "w0"], top_k=5, filter=group("concurrent")):
                    assert all(10_000 <= hit.id < 14_000 for hit in row)

    def guarded(work, *args) -> None:
        try:
            work(*args)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(write, w)) for w in range(4)]
    threads += [threading.Thread(target=guarded, args=(read,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    with EmbeddingClient(server.options.grpc_url) as client:
        assert client.count(DOCS, group("concurrent")) == 4 * 10 * 8


def test_async_client(server: TritonServer) -> None:
    async def run() -> list[list[Hit]]:
        async with AsyncEmbeddingClient(server.options.grpc_url) as client:
            assert await client.upsert(DOCS, ["async text"], [400], [{"group": "async"}]) == 1
            assert await client.exists(DOCS, [400, 401]) == [True, False]
            hits = await client.search(DOCS, ["async text"], top_k=2, filter=group("async"))
            assert await client.count(DOCS, group("async")) == 1
            assert await client.delete(DOCS, ids=[400]) == 1
            return hits

    hits = asyncio.run(run())
    assert [h.id for h in hits[0]] == [400]


# Bad input: a 400 naming the problem, nothing stored changes, the server keeps serving.


def _raw_upsert_payload(client: EmbeddingClient, payload: str) -> None:
    """An upsert with a payload the client would refuse to send (NaN is not JSON)."""
    inputs = [
        grpcclient.InferInput("TEXT", [1, 1], "BYTES"),
        grpcclient.InferInput("ID", [1, 1], "INT64"),
        grpcclient.InferInput("PAYLOAD", [1, 1], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(np.array([[b"a"]], dtype=object))
    inputs[1].set_data_from_numpy(np.array([[504]], dtype=np.int64))
    inputs[2].set_data_from_numpy(np.array([[payload.encode()]], dtype=object))
    with server_errors(CollectionNames(DOCS).upsert):
        client.client.infer(CollectionNames(DOCS).upsert, inputs)


BAD_REQUESTS = {
    "top-k 0": (lambda c: c.search(DOCS, ["x"], top_k=0), "TOP_K[0] is 0"),
    "top-k over the max": (lambda c: c.search(DOCS, ["x"], top_k=1001), "use 1 to 1000"),
    "malformed filter": (lambda c: c.search(DOCS, ["x"], filter="{not json"), "not valid JSON"),
    "unknown filter field": (lambda c: c.search(DOCS, ["x"], filter={"must": [{"key": "a", "like": 1}]}), "like"),
    "negative id": (lambda c: c.upsert(DOCS, ["a", "b"], [500, -1]), "ID[1] is -1"),
    "duplicate ids": (lambda c: c.upsert(DOCS, ["a", "b"], [501, 501]), "repeats id 501"),
    "payload not an object": (lambda c: c.upsert(DOCS, ["a", "b"], [502, 503], [{}, [1, 2]]), "not an object"),
    "payload NaN": (lambda c: _raw_upsert_payload(c, '{"x": NaN}'), "PAYLOAD[0] is not JSON"),
    "wrong vector size": (lambda c: c.upsert(DOCS, np.ones((1, 383), np.float32), [505]), "EMBEDDING"),
    "vector NaN": (lambda c: c.upsert(DOCS, np.full((1, 384), np.nan, np.float32), [506]), "NaN"),
    "delete with nothing": (lambda c: c.delete(DOCS, filter=""), "FILTER[0] is empty"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_refused_and_nothing_changes(grpc: EmbeddingClient, case: str) -> None:
    call, message = BAD_REQUESTS[case]
    before = grpc.count(DOCS)
    with pytest.raises(EmbeddingError) as raised:
        call(grpc)
    assert message in raised.value.message
    assert grpc.count(DOCS) == before
    assert grpc.exists(DOCS, [500, 501, 502, 503, 504, 505, 506]) == [False] * 7


def test_bad_requests_answer_400_over_http(server: TritonServer) -> None:
    docs = CollectionNames(DOCS)
    cases = [
        (
            docs.search,
            [
                {"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]},
                {"name": "TOP_K", "shape": [1, 1], "datatype": "INT32", "data": [-4]},
            ],
        ),
        (docs.index, [{"name": "ACTION", "shape": [1, 1], "datatype": "BYTES", "data": ["drop"]}]),
        (docs.index, [{"name": "ACTION", "shape": [1, 1], "datatype": "BYTES", "data": ["delete"]}]),
        (docs.index, [{"name": "EMBEDDING", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]),
        (
            docs.upsert,
            [
                {"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]},
                {"name": "ID", "shape": [1, 1], "datatype": "INT64", "data": [1]},
                {"name": "PAYLOAD", "shape": [1, 1], "datatype": "BYTES", "data": ['"text"']},
            ],
        ),
    ]
    for model, inputs in cases:
        status, reply = post_infer(server, model, json.dumps({"inputs": inputs}).encode())
        assert status == 400 and reply["error"], (model, inputs, reply)


# Images: a CLIP collection filled by `ingest` from a folder.


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for seed in range(24):
        (folder / ("sub" if seed % 2 else "") / f"p{seed:02d}.jpg").parent.mkdir(exist_ok=True)
        (folder / ("sub" if seed % 2 else "") / f"p{seed:02d}.jpg").write_bytes(jpeg(320, 240, seed=seed))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (folder / "notes.txt").write_text("not an image either")
    (folder / ".hidden.jpg").write_bytes(jpeg(64, 64, seed=99))
    return folder


def ingest(server: TritonServer, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "export",
        "ingest",
        PHOTOS,
        *args,
        "--url",
        server.options.grpc_url,
        "--no-progress",
        "--batch",
        "5",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_ingest_a_folder_then_search_by_image_and_by_text(server: TritonServer, photo_folder: Path) -> None:
    first = ingest(server, "--images", str(photo_folder))
    assert first.returncode == 1, first.stderr  # bad files: listed, and the status says so
    assert "stored 24, skipped 0 already stored, 2 bad" in first.stdout, first.stdout
    assert "broken.jpg" in first.stdout and "notes.txt" in first.stdout
    again = ingest(server, "--images", str(photo_folder))  # resumable: nothing is sent twice
    assert "stored 0, skipped 24 already stored, 2 bad" in again.stdout, again.stdout

    with EmbeddingClient(server.options.grpc_url) as client:
        paths = sorted(p for p in photo_folder.rglob("p*.jpg"))
        exact = client.search(PHOTOS, paths, top_k=3)  # the same files: exact duplicates
        names = [str(p.relative_to(photo_folder)) for p in paths]
        assert [row[0].payload["path"] for row in exact] == names
        assert all(row[0].score > 0.99 for row in exact)
        resized = []
        for path in paths:
            image = Image.open(path).convert("RGB")
            smaller = image.resize((image.width * 3 // 5, image.height * 3 // 5), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            smaller.save(buffer, format="JPEG", quality=80)
            resized.append(buffer.getvalue())
        found = client.search(PHOTOS, resized, top_k=1)
        assert [row[0].payload["path"] for row in found] == names
        by_text = client.search(PHOTOS, ["a photo", "colourful shapes"], top_k=5)
        assert all(len(row) == 5 and {"path"} == set(row[0].payload) for row in by_text)


def test_a_bad_image_fails_alone_and_the_rest_of_its_batch_is_stored(server: TritonServer) -> None:
    good = [jpeg(200, 150, seed=s) for s in (40, 41, 42)]
    with EmbeddingClient(server.options.grpc_url) as client:
        with pytest.raises(EmbeddingError) as raised:
            client.upsert(PHOTOS, [good[0], b"garbage", good[1]], [900, 901, 902])
        assert raised.value.index == 1
        assert client.exists(PHOTOS, [900, 901, 902]) == [False] * 3  # a refused request stores nothing
        # ingest's way: take the named item out and send the rest again
        assert client.upsert(PHOTOS, [good[0], good[1]], [900, 902]) == 2
        assert client.search(PHOTOS, [photo_like(200, 150, seed=41)], top_k=1)[0][0].id == 902


def test_the_search_ensembles_are_listed_as_a_collection(repository: Path) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "export", "list", "--repository", str(repository), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    records = {r["name"]: r for r in json.loads(listed.stdout)}
    assert records[DOCS]["kind"] == "search" and records[DOCS]["uses"] == DEFAULT_TEXT_PIPELINE
    assert records[PHOTOS]["ensembles"] == list(CollectionNames(PHOTOS).ensembles("clip"))
    refused = subprocess.run(
        [sys.executable, "-m", "export", "remove", DEFAULT_TEXT_PIPELINE, "--repository", str(repository)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and f"used by the collections {DOCS}" in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope-collection", "--pipeline", "nope"], "'nope' is not a text or CLIP pipeline"),
        (["x", "--pipeline", DEFAULT_TEXT_PIPELINE, "--engine", "milvus"], "--engine milvus needs --uri"),
        (["x", "--pipeline", DEFAULT_TEXT_PIPELINE, "--top-k", "0"], "top-k must be between 1"),
        (["x", "--pipeline", DEFAULT_TEXT_PIPELINE, "--uri", "http://h:1"], "--uri and --milvus-collection are for"),
        ([DEFAULT_TEXT_PIPELINE, "--pipeline", DEFAULT_TEXT_PIPELINE], "is a text pipeline's name"),
        (["x", "--pipeline", DOCS], f"'{DOCS}' is not a text or CLIP pipeline"),
    ],
)
def test_export_search_refuses_in_one_line(repository: Path, args: list[str], message: str) -> None:
    before = sorted(p.name for p in repository.iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "export", "search", *args, "--repository", str(repository)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in repository.iterdir()) == before
