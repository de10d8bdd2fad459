"""Triton replicas behind nginx (export/serving/replicas.py, balancer.py), all real: three
tritonservers reading one repository from an S3 store (SeaweedFS), Debian's nginx, and the
project's client with its default Retry over gRPC and HTTP, through the balancer's one address.
Releases go to the store with `push`; a roll takes the one its CURRENT names.

Stated outcomes: answers through the balancer equal a replica's own (atol 1e-5, the bound the
fault tests use: batching may merge requests differently); bad input is the replica's own
400 / INVALID_ARGUMENT, not a gateway error; a replica SIGKILLed under load, and a roll to a
new release under load, fail no request and answer none wrong; the killed replica is back
within RESTART_SECONDS; after the roll every replica serves the new release; a release that
cannot load stops the roll with every replica still serving.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.serving.balancer import Balancer, BalancerOptions, Upstream
from export.serving.object_store import push
from export.serving.replicas import Replicas
from export.serving.seaweedfs import SeaweedFS
from export.serving.server import ServerError, ServerOptions, free_port
from export.serving.watchdog import processes, stubs
from export.text.pipeline import TextExportOptions, export_text
from export.tools import payloads
from tests.helpers import s3_store
from tests.tiny_models import HIDDEN
from triton_embeddings import EmbeddingClient, EmbeddingError
from triton_embeddings.core import is_retryable
from triton_embeddings.names import TEXT

MODEL = "replicated"  # in both releases
NEXT = "replicated-next"  # only in the second release: what tells the releases apart
COUNT = 3
ATOL = 1e-5
RESTART_SECONDS = 60


@pytest.fixture(scope="module")
def store() -> Iterator[SeaweedFS]:
    with s3_store("models") as running:
        yield running


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> dict[str, Path]:
    """Exports: a: MODEL. b: MODEL and NEXT. broken: MODEL whose encoder cannot load."""
    folder = tmp_path_factory.mktemp("releases")
    model = str(tiny_models["tiny-bert"].path)
    for release in ("a", "b"):
        export_text(TextExportOptions(model, MODEL, folder / release))
    export_text(TextExportOptions(str(tiny_models["tiny-xlm-roberta"].path), NEXT, folder / "b"))
    shutil.copytree(folder / "a", folder / "broken")
    (folder / "broken" / f"{MODEL}_encoder" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    return {name: folder / name for name in ("a", "b", "broken")}


@pytest.fixture(scope="module")
def prefix(store: SeaweedFS, releases: dict[str, Path]) -> str:
    """Where the replicas read: release a is CURRENT there."""
    url = store.url("models", "replicated")
    push(releases["a"], url, say=lambda _: None)
    return url


@pytest.fixture(scope="module")
def replicas(prefix: str, tmp_path_factory: pytest.TempPathFactory):
    options = ServerOptions(prefix, http_port=free_port(), grpc_port=free_port())
    with Replicas(options, COUNT, logs=tmp_path_factory.mktemp("replica-logs")) as running:
        yield running


@pytest.fixture(scope="module")
def expected(replicas: Replicas) -> dict[str, np.ndarray]:
    """Each text embedded alone by replica 0 directly, before any load."""
    texts = payloads.short_texts(24, seed=16) + payloads.texts(8, seed=16)
    with EmbeddingClient(replicas.servers[0].options.grpc_url) as client:
        return {text: client.embed_text(MODEL, [text])[0] for text in texts}


class Load:
    """Client threads embedding two texts a request through the balancer (half gRPC, half
    HTTP, each with its own client and the default Retry) until stopped, checking each answer."""

    def __init__(self, replicas: Replicas, expected: dict[str, np.ndarray], per_protocol: int = 3) -> None:
        self.expected, self.texts = expected, list(expected)
        self.urls = [("grpc", replicas.grpc_url)] * per_protocol + [("http", replicas.http_url)] * per_protocol
        self.stopping = threading.Event()
        self.served: list[float] = []  # when each answer came (list.append is atomic)
        self.wrong: list[str] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(k, *url)) for k, url in enumerate(self.urls)]

    def _run(self, offset: int, protocol: str, url: str) -> None:
        with EmbeddingClient(url, protocol, timeout=30) as client:
            index = offset
            while not self.stopping.is_set():
                texts = [self.texts[index % len(self.texts)], self.texts[(index + 1) % len(self.texts)]]
                try:
                    result = client.embed_text(MODEL, texts)
                except Exception as error:  # anything: an error of any kind is a failed request
                    self.errors.append(f"{protocol}: {error!r}")
                else:
                    if not np.allclose(result, [self.expected[t] for t in texts], atol=ATOL, rtol=0):
                        self.wrong.append(f"{protocol}: {texts}")
                    self.served.append(time.monotonic())
                index += len(self.urls)

    def served_between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.served)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


def inference_count(grpc_url: str, model: str = MODEL) -> int:
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        (stats,) = client.get_inference_statistics(model).model_stats
        return stats.inference_count
    finally:
        client.close()


def post(url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_answers_through_the_balancer_equal_a_replicas_own_and_every_replica_serves(replicas, expected) -> None:
    texts = list(expected)
    before = [inference_count(server.options.grpc_url) for server in replicas.servers]
    for protocol, url in (("grpc", replicas.grpc_url), ("http", replicas.http_url)):
        with EmbeddingClient(url, protocol) as client:
            served = np.concatenate([client.embed_text(MODEL, [text]) for text in texts])
            np.testing.assert_allclose(served, np.stack([expected[t] for t in texts]), atol=ATOL, rtol=0)
    after = [inference_count(server.options.grpc_url) for server in replicas.servers]
    assert sum(after) - sum(before) == 2 * len(texts)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)  # round robin reached each


def test_bad_input_through_the_balancer_is_the_replicas_own_error(replicas) -> None:
    body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [2, 1], "data": ["fine", ""]}]}
    status, reply = post(f"http://{replicas.http_url}/v2/models/{MODEL}/infer", json.dumps(body).encode())
    assert status == 400 and "TEXT[1] is an empty string" in reply["error"], (status, reply)
    with EmbeddingClient(replicas.grpc_url) as client, pytest.raises(EmbeddingError) as raised:
        client.embed_text(MODEL, ["fine", ""])
    assert raised.value.status == "StatusCode.INVALID_ARGUMENT" and raised.value.index == 1, raised.value
    # Admin APIs would act on one replica picked at random: refused, each replica has its own.
    status, reply = post(f"http://{replicas.http_url}/v2/repository/index", b"{}")
    assert status == 403 and "per replica" in reply["error"]


def lost_in_flight(replicas: Replicas) -> int:
    """Requests nginx had passed to a replica that then died before answering (its error log)."""
    log = (replicas.balancer.workdir / "error.log").read_text(errors="replace")
    return log.count("while reading response header from upstream")


def test_a_replica_killed_under_load_fails_no_request_and_comes_back(replicas, expected) -> None:
    """The replica's encoder stubs are stopped (SIGSTOP) half a second before the kill, so that
    requests are surely in flight in it when it dies, as in a long batch: nginx cannot retry
    those (they reached a replica), the client does."""
    victim = replicas.servers[1]
    restarts, lost = replicas.restarts, lost_in_flight(replicas)
    with Load(replicas, expected) as load:
        time.sleep(1.0)
        for stub in stubs(victim.process.pid):
            if stub.model == f"{MODEL}_encoder":
                os.kill(stub.pid, signal.SIGSTOP)
        time.sleep(0.5)
        replicas.kill(1)
        killed = time.monotonic()
        while replicas.restarts == restarts and time.monotonic() - killed < RESTART_SECONDS:
            time.sleep(0.1)
        back = time.monotonic()
        time.sleep(1.0)
    assert replicas.restarts == restarts + 1, "the supervisor did not restart the killed replica"
    assert back - killed < RESTART_SECONDS
    assert lost_in_flight(replicas) > lost, "no request was in flight in the killed replica: the test proves less"
    assert not load.errors and not load.wrong, (load.errors[:5], load.wrong[:5])
    assert load.served_between(killed, back) > 0, "the balancer stopped serving while a replica was down"
    assert replicas.servers[1] is not victim and replicas.servers[1].process.poll() is None
    assert inference_count(replicas.servers[1].options.grpc_url) > 0, "the restarted replica got no requests"


def test_a_roll_to_a_new_release_under_load_fails_no_request(replicas, expected, releases, prefix: str) -> None:
    release = push(releases["b"], prefix, say=lambda _: None)  # CURRENT moves; running replicas keep theirs
    with Load(replicas, expected) as load:
        time.sleep(1.0)
        began = time.monotonic()
        replicas.roll(prefix)
        rolled = time.monotonic()
        time.sleep(0.5)
    assert not load.errors and not load.wrong, (load.errors[:5], load.wrong[:5])
    assert load.served_between(began, rolled) > 0
    for server in replicas.servers:  # every replica, at its own address, serves the new release
        assert server.options.repository == server.repository == release.url
        with EmbeddingClient(server.options.grpc_url) as client:
            assert client.embed_text(NEXT, ["a new release"]).shape == (1, HIDDEN)
    with EmbeddingClient(replicas.http_url, "http") as client:
        assert client.embed_text(NEXT, ["a new release"]).shape == (1, HIDDEN)


def test_a_release_that_cannot_load_stops_the_roll_and_every_replica_still_serves(
    replicas, releases, prefix: str
) -> None:
    before = [server.options.repository for server in replicas.servers]
    push(releases["broken"], prefix, say=lambda _: None)
    with pytest.raises(ServerError, match="roll stopped at replica 0, back on its release"):
        replicas.roll(prefix)
    assert [server.options.repository for server in replicas.servers] == before
    # Back on the store too: pushing the good export again finds its release and points at it.
    assert push(releases["b"], prefix, say=lambda _: None).url == before[0]
    for server in replicas.servers:
        with EmbeddingClient(server.options.grpc_url) as client:
            assert client.embed_text(MODEL, ["still served"]).shape == (1, HIDDEN)
    assert len(replicas.balancer.upstreams) == COUNT


def test_past_its_in_flight_cap_the_balancer_refuses_at_once_as_overloaded() -> None:
    """A replica that holds what it gets (a socket that listens and never answers: a hung
    server), and a cap of 2 in flight: with two requests held, the next ones are refused by
    nginx itself, at once, in a replica's own words (retryable), over gRPC and HTTP."""
    with socket.socket() as hung_http, socket.socket() as hung_grpc:
        for hung in (hung_http, hung_grpc):
            hung.bind(("127.0.0.1", 0))
            hung.listen(16)  # the kernel accepts; nobody reads or answers
        upstream = Upstream(*(f"127.0.0.1:{hung.getsockname()[1]}" for hung in (hung_http, hung_grpc)))
        options = BalancerOptions(max_in_flight_per_replica=2)
        with Balancer([upstream], options) as balancer, ThreadPoolExecutor(2) as pool:
            infer = f"http://{balancer.http_url}/v2/models/{MODEL}/infer"
            held = [pool.submit(post, infer, b"{}") for _ in range(2)]
            time.sleep(1.0)  # both passed to the replica, and held there
            assert not any(future.done() for future in held)
            client = grpcclient.InferenceServerClient(balancer.grpc_url)
            text = grpcclient.InferInput(TEXT.name, [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[b"one more"]], dtype=object))
            started = time.monotonic()
            with pytest.raises(InferenceServerException) as raised:
                client.infer(MODEL, [text], client_timeout=10)
            refused_in = time.monotonic() - started
            client.close()
            status, reply = post(infer, b"{}")
            hung_http.close()  # the held requests end: the replica is gone
        assert [future.result(30)[0] for future in held] == [503, 503]
    error = EmbeddingError(MODEL, raised.value.message(), status=raised.value.status())
    assert error.status == "StatusCode.UNAVAILABLE" and error.message.startswith("server overloaded"), error
    assert is_retryable(error) and refused_in < 1.0, refused_in
    assert status == 503 and reply["error"].startswith("server overloaded"), (status, reply)


def test_serve_with_replicas_puts_the_balancer_in_front_and_stops_cleanly(releases, tmp_path: Path) -> None:
    """`serve --replicas 2`: one address for both, answers as a replica does, SIGTERM stops everything."""
    http, grpc = free_port(), free_port()
    command = [sys.executable, "-m", "export", "serve", "--repository", str(releases["a"]), "--replicas", "2"]
    command += ["--http-port", str(http), "--grpc-port", str(grpc)]
    with (tmp_path / "serve.log").open("wb") as log:
        serving = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        while not ready(f"http://127.0.0.1:{http}"):
            assert serving.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        with EmbeddingClient(f"127.0.0.1:{grpc}") as client:
            assert client.embed_text(MODEL, ["through the balancer"]).shape == (1, HIDDEN)
        # nginx answers as soon as it is up, a moment before the command prints its addresses.
        deadline = time.monotonic() + 30
        while "2 replica(s) behind nginx" not in (tmp_path / "serve.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        started = descendants(serving.pid)  # tritonservers, their stubs, nginx and its workers
        assert len(started) >= 2 * 3 + 2, started
    finally:
        serving.send_signal(signal.SIGTERM)
        code = serving.wait(60)
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    time.sleep(1.0)
    alive = {p.pid for p in processes()}
    assert not started & alive, started & alive  # nothing outlives serve


def descendants(root: int) -> set[int]:
    parents = {p.pid: int(p.fields[1]) for p in processes()}
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
