"""A collection keeps every acknowledged write: across a restart, a SIGKILL of the whole
tritonserver (stubs included) and a SIGKILL of the index step's stub alone, with a writer
sending points the whole time; and across a re-export of the collection.

Its own server on a small repository (the tiny BERT), since these tests kill and restart it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from export.search.collection import CollectionOptions, export_collection
from export.serving.server import ServerOptions, TritonServer, free_port
from export.serving.watchdog import stubs
from export.text.pipeline import TextExportOptions, export_text
from triton_embeddings import EmbeddingClient, EmbeddingError
from triton_embeddings.names import CollectionNames

PIPELINE = "durable-bert"
COLLECTION = CollectionNames("durable")
RECOVERY_SECONDS = 30


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Path:
    repo = tmp_path_factory.mktemp("durable") / "repo"
    export_text(TextExportOptions(str(tiny_models["tiny-bert"].path), PIPELINE, repo))
    export_collection(CollectionOptions(COLLECTION.name, PIPELINE, repo))
    return repo


@pytest.fixture
def server(repository: Path) -> Iterator[TritonServer]:
    options = ServerOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with (repository.parent / "log").open("ab") as log, TritonServer(options, log=log) as running:
        yield running


class Writer(threading.Thread):
    """Upserts one point a request, ids counting up, until stopped; keeps the acknowledged ids."""

    def __init__(self, url: str, first: int) -> None:
        super().__init__()
        self.url, self.next, self.acknowledged, self.stopped = url, first, [], threading.Event()

    def run(self) -> None:
        with EmbeddingClient(self.url, timeout=5) as client:
            while not self.stopped.is_set():
                try:
                    client.upsert(COLLECTION.name, [f"point {self.next}"], [self.next], [{"n": self.next}])
                    self.acknowledged.append(self.next)
                except EmbeddingError:
                    time.sleep(0.05)  # down: an unacknowledged write may or may not be stored
                self.next += 1

    def stop(self) -> list[int]:
        self.stopped.set()
        self.join(timeout=30)
        assert not self.is_alive()
        return self.acknowledged


def stored(server: TritonServer, ids: list[int]) -> list[int]:
    """Which of `ids` the collection holds, asked until the index step answers."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    with EmbeddingClient(server.options.grpc_url, timeout=10) as client:
        while True:
            try:
                found = client.exists(COLLECTION.name, ids)
                return [i for i, known in zip(ids, found, strict=True) if known]
            except EmbeddingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def test_restart_keeps_every_point(server: TritonServer) -> None:
    with EmbeddingClient(server.options.grpc_url) as client:
        ids = list(range(1_000, 1_050))
        client.upsert(COLLECTION.name, [f"restart {i}" for i in ids], ids, [{"n": i} for i in ids])
    server.stop()
    server.__enter__()
    assert stored(server, ids) == ids
    with EmbeddingClient(server.options.grpc_url) as client:  # and searchable (the tiny BERT's texts look alike)
        (hit,) = client.search(COLLECTION.name, ["restart 1007"], top_k=1)[0]
        assert hit.id in ids and hit.score > 0.99


def test_sigkill_of_tritonserver_loses_no_acknowledged_write(server: TritonServer) -> None:
    writer = Writer(server.options.grpc_url, first=10_000)
    writer.start()
    time.sleep(2)
    os.killpg(server.process.pid, signal.SIGKILL)  # tritonserver and every stub, mid-write
    acknowledged = writer.stop()
    assert len(acknowledged) > 10
    server.stop()
    server.__enter__()
    assert stored(server, acknowledged) == acknowledged


def test_sigkill_of_the_index_stub_loses_no_acknowledged_write(server: TritonServer) -> None:
    writer = Writer(server.options.grpc_url, first=20_000)
    writer.start()
    time.sleep(2)
    (victim,) = [s for s in stubs(server.process.pid) if s.model == COLLECTION.index]
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    before = len(writer.acknowledged)
    while len(writer.acknowledged) == before and time.monotonic() - killed < RECOVERY_SECONDS:
        time.sleep(0.1)  # the watchdog reloads the step; the writer's next writes succeed
    acknowledged = writer.stop()
    assert len(acknowledged) > before, "the index step did not come back"
    assert stored(server, acknowledged) == acknowledged


def test_a_re_export_keeps_the_points(server: TritonServer, repository: Path) -> None:
    with EmbeddingClient(server.options.grpc_url) as client:
        client.upsert(COLLECTION.name, [f"kept across re-export {i}" for i in range(5)], list(range(30_000, 30_005)))
    server.stop()
    export_collection(CollectionOptions(COLLECTION.name, PIPELINE, repository, top_k=3))
    server.__enter__()
    assert stored(server, list(range(30_000, 30_005))) == list(range(30_000, 30_005))
    with EmbeddingClient(server.options.grpc_url) as client:
        assert len(client.search(COLLECTION.name, ["anything"])[0]) == 3  # the new default top-k
