"""Repositories in object storage: `push` to a real S3 store (SeaweedFS), `serve` from it.

What a team running replicas relies on: a release served from the store answers as
sentence-transformers does; a push, even one killed half-way, never changes what a server
reads; a running server keeps its release (a watchdog reload included) and a restart takes
the new one; and what cannot work from object storage is refused by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sentence_transformers import SentenceTransformer

from export.search.collection import CollectionOptions, export_collection
from export.serving.object_store import (
    MANIFEST,
    PLACEHOLDER,
    POINTER,
    RELEASES,
    S3Location,
    StoreError,
    push,
    releases,
    remote_models,
    resolve,
)
from export.serving.seaweedfs import SeaweedFS
from export.serving.server import ServerError, ServerOptions, TritonServer, free_port
from export.serving.watchdog import stubs
from export.text.pipeline import TextExportOptions, export_text
from export.tools.corpus import corpus
from tests.helpers import s3_store
from tests.test_parity import assert_parity
from triton_embeddings import EmbeddingClient

FIRST, SECOND = "tiny", "tiny-second"  # the second release adds a pipeline: a server shows which it reads
BUCKET = "models"


@pytest.fixture(scope="module")
def store() -> Iterator[SeaweedFS]:
    with s3_store(BUCKET) as running:
        yield running


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> tuple[Path, Path]:
    """Two repositories: the tiny BERT, and the same plus a second pipeline."""
    first = tmp_path_factory.mktemp("first") / "repository"
    export_text(TextExportOptions(str(tiny_models["tiny-bert"].path), FIRST, first))
    second = first.parent.parent / "second" / "repository"
    shutil.copytree(first, second)
    export_text(TextExportOptions(str(tiny_models["tiny-xlm-roberta"].path), SECOND, second))
    return first, second


def objects(store: SeaweedFS, location: S3Location) -> set[str]:
    pages = store.client().get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.prefix)
    return {entry["Key"].removeprefix(location.prefix + "/") for page in pages for entry in page.get("Contents", [])}


def pointer(store: SeaweedFS, base: S3Location) -> str:
    return store.client().get_object(Bucket=base.bucket, Key=base.key(POINTER))["Body"].read().decode()


def options(repository: str) -> ServerOptions:
    return ServerOptions(repository=repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())


def test_push_uploads_a_release_then_points_at_it(store: SeaweedFS, exports) -> None:
    first, _ = exports
    url = store.url(BUCKET, "pointing")
    release = push(first, url, say=lambda _: None)
    assert release.uploaded and release.url == f"{url}/{RELEASES}/{release.id}"
    local = {p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file() and p.suffix != ".pyc"}
    uploaded = objects(store, release.location)
    # Every file, the manifest, and a placeholder in each empty folder (the ensemble's version folder).
    assert uploaded == local | {MANIFEST, f"{FIRST}/1/{PLACEHOLDER}"}
    assert pointer(store, S3Location.parse(url)) == release.id
    assert resolve(url) == release.url
    assert remote_models(release.url) == sorted(p.name for p in first.iterdir() if (p / "config.pbtxt").is_file())
    again = push(first, url, say=lambda _: None)  # the same files: found, not uploaded again
    assert (again.id, again.uploaded) == (release.id, False)
    assert releases(store.client(), S3Location.parse(url)) == [release.id]


def test_a_push_killed_half_way_changes_nothing_a_server_reads(store: SeaweedFS, exports, tmp_path: Path) -> None:
    first, second = exports
    url = store.url(BUCKET, "interrupted")
    base = S3Location.parse(url)
    live = push(first, url, say=lambda _: None)
    # A release slow enough to kill mid-upload: 48 MB more in one of its model folders.
    bulky = tmp_path / "repository"
    shutil.copytree(second, bulky)
    (bulky / f"{SECOND}_encoder" / "1" / "padding.bin").write_bytes(os.urandom(48 << 20))
    command = [sys.executable, "-m", "export", "push", str(bulky), url]
    pushing = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(objects(store, base.child(RELEASES))) <= len(objects(store, live.location)):
        assert pushing.poll() is None and time.monotonic() < deadline, "the push ended before anything was uploaded"
        time.sleep(0.05)
    pushing.kill()
    assert pushing.wait() == -9, "the push finished before it could be killed: make its release bigger"
    # Part of a release is there, but it has no manifest: not a release, and CURRENT did not move.
    assert releases(store.client(), base) == [live.id]
    assert pointer(store, base) == live.id
    assert resolve(url) == live.url
    assert SECOND not in remote_models(resolve(url))
    # Pushed to the end, the new release becomes the one a server starts on.
    done = push(second, url, say=lambda _: None)
    assert resolve(url) == done.url and SECOND in remote_models(done.url)


def test_served_from_the_store_it_matches_and_a_restart_takes_the_new_release(
    store: SeaweedFS, exports, tiny_models, tmp_path: Path
) -> None:
    first, second = exports
    url = store.url(BUCKET, "serving")
    old = push(first, url, say=lambda _: None)
    reference = SentenceTransformer(str(tiny_models["tiny-bert"].path), device="cpu")
    texts = corpus(40)
    server = TritonServer(options(url), log=(tmp_path / "triton.log").open("wb"))
    with server:
        assert server.repository == old.url  # the pointer resolved once, at start
        with EmbeddingClient(server.options.grpc_url) as client:
            assert_parity(client.embed_text(FIRST, texts), reference.encode(texts), texts)
            new = push(second, url, say=lambda _: None)
            # Running, it keeps its release, even reloading a step whose process died: the watchdog
            # finds it by its instance name (its model.py is in a downloaded copy, /tmp/folderXYZ/1/).
            (killed,) = [stub for stub in stubs(server.process.pid) if stub.model == f"{FIRST}_encoder"]
            os.kill(killed.pid, signal.SIGKILL)
            assert_parity(client.embed_text(FIRST, texts), reference.encode(texts), texts)  # Retry waits it out
            back = [stub for stub in stubs(server.process.pid) if stub.model == f"{FIRST}_encoder"]
            assert back and killed.pid not in {stub.pid for stub in back}
            assert server.repository_api.state(SECOND) is None
        server.stop()
        server.start()
        server.wait_until_ready()
        assert server.repository == new.url
        with EmbeddingClient(server.options.grpc_url) as client:
            assert client.embed_text(SECOND, texts).shape == (len(texts), 32)
            assert_parity(client.embed_text(FIRST, texts), reference.encode(texts), texts)


def test_an_embedded_collection_is_refused_by_name(store: SeaweedFS, exports, tmp_path: Path) -> None:
    """Its data would go to the folder Triton downloads the model into, and vanish."""
    first, _ = exports
    repository = tmp_path / "repository"
    shutil.copytree(first, repository)
    export_collection(CollectionOptions("notes", FIRST, repository))
    with pytest.raises(StoreError, match=r"notes_index: a collection on the embedded engine .* --engine milvus"):
        push(repository, store.url(BUCKET, "embedded"), say=lambda _: None)


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "endpoint"),
    [
        ("s3://bucket/a/b", "bucket", "a/b", None),
        ("s3://127.0.0.1:9000/bucket/a", "bucket", "a", "http://127.0.0.1:9000"),
        ("s3://https://store.example:443/bucket", "bucket", "", "https://store.example:443"),
    ],
)
def test_urls_read_as_triton_reads_them(url: str, bucket: str, prefix: str, endpoint: str | None) -> None:
    location = S3Location.parse(url)
    assert (location.bucket, location.prefix, location.endpoint) == (bucket, prefix, endpoint)
    assert str(location) == url


def test_what_cannot_be_pushed_or_served_says_why(store: SeaweedFS, exports, tmp_path: Path) -> None:
    first, _ = exports
    with pytest.raises(StoreError, match="names no bucket"):
        S3Location.parse("s3://127.0.0.1:9000/")
    with pytest.raises(StoreError, match="not an s3:// URL"):
        push(first, "gs://bucket/prefix", say=lambda _: None)
    with pytest.raises(StoreError, match="bucket 'absent' does not exist"):
        push(first, store.url("absent", "x"), say=lambda _: None)
    # The command line: one `error:` line, exit status 1.
    done = subprocess.run(
        [sys.executable, "-m", "export", "push", str(first), store.url("absent")], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.startswith("error: bucket 'absent' does not exist"), done.stderr
    # A pointer to a release that is not there (deleted by hand) is named, not served half.
    base = S3Location.parse(store.url(BUCKET, "dangling"))
    store.client().put_object(Bucket=BUCKET, Key=base.key(POINTER), Body=b"20260101T000000Z-0123456789abcdef")
    with pytest.raises(StoreError, match="missing or incomplete"):
        resolve(str(base))
    with pytest.raises(ServerError, match="holds no models"):
        TritonServer(options(store.url(BUCKET, "nothing-here"))).start()
