"""The search load test (locustfiles/search.py), headless for 10 s against a real Triton serving
a collection over the tiny BERT: no failures, both users at work, and failures counted.

A repository and server of its own (the tiny model keeps them fast), so the load does not
touch the session server's collections.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from export.search.collection import CollectionOptions, export_collection
from export.serving.server import ServerOptions, TritonServer, free_port
from export.text.pipeline import TextExportOptions, export_text
from export.tools import payloads
from tests.tiny_models import TinyModel
from triton_embeddings import EmbeddingClient
from triton_embeddings.names import CollectionNames

LOCUSTFILE = Path(__file__).parents[1] / "locustfiles" / "search.py"
PIPELINE = "tiny-bert-search"
COLLECTION = CollectionNames("locust-docs")
POINTS = 200


@pytest.fixture(scope="module")
def search_server(
    tiny_models: dict[str, TinyModel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """Triton with the tiny BERT and a collection over it, holding some points already."""
    repository = tmp_path_factory.mktemp("locust-search") / "model_repository"
    export_text(TextExportOptions(str(tiny_models["tiny-bert"].path), PIPELINE, repository))
    export_collection(CollectionOptions(COLLECTION.name, PIPELINE, repository))
    options = ServerOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with (repository.parent / "tritonserver.log").open("wb") as log, TritonServer(options, log=log) as server:
        with EmbeddingClient(server.options.grpc_url) as client:
            texts = payloads.short_texts(POINTS, seed=2)
            groups = [{"group": "locust" if i % 2 else "other", "n": i} for i in range(POINTS)]
            assert client.upsert(COLLECTION.name, texts, list(range(POINTS)), groups) == POINTS
        yield server


def run_locust(server: TritonServer, tmp_path: Path, seconds: int, collection: str) -> tuple[int, dict[str, dict]]:
    """Both user classes, the collection named by the environment variable; locust's exit code
    and its stats rows by name."""
    prefix = tmp_path / "locust"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4",
        "-t", f"{seconds}s", "--host", f"http://{server.options.http_url}", "--filter-share", "0.5",
        "--upsert-items", "3", "--csv", str(prefix), "--html", str(tmp_path / "report.html"),
    ]  # fmt: skip
    env = os.environ | {"LOCUST_COLLECTION": collection}
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, env=env)
    with open(f"{prefix}_stats.csv", newline="") as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    assert (tmp_path / "report.html").stat().st_size > 0
    return done.returncode, rows


def test_ten_seconds_of_search_and_upsert_without_a_failure(search_server: TritonServer, tmp_path: Path) -> None:
    code, rows = run_locust(search_server, tmp_path, 10, COLLECTION.name)
    assert int(rows["Aggregated"]["Failure Count"]) == 0, rows["Aggregated"]
    assert code == 0
    for name in (f"search {COLLECTION.search}", f"filtered search {COLLECTION.search}", f"upsert {COLLECTION.upsert}"):
        assert int(rows[name]["Request Count"]) > 0, name
    with EmbeddingClient(search_server.options.grpc_url) as client:  # the upserts were stored
        assert client.count(COLLECTION.name) > POINTS


def test_failures_are_counted_and_fail_the_run(search_server: TritonServer, tmp_path: Path) -> None:
    """The same run against a collection the server does not have: every request fails."""
    code, rows = run_locust(search_server, tmp_path, 3, "no-such-collection")
    assert code != 0
    assert int(rows["Aggregated"]["Failure Count"]) == int(rows["Aggregated"]["Request Count"]) > 0
