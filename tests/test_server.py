"""`python -m export serve`: starts, says where, forwards the log, stops without leftovers,
and refuses clearly when it cannot start."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from export.repository.config import read_config
from export.serving.server import ServerError, ServerOptions, TritonServer, free_port
from export.text.pipeline import TextExportOptions, export_text
from tests.helpers import embed_http

PIPELINE = "tiny-xlm-roberta"


@pytest.fixture(scope="module")
def small_repository(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Path:
    repo = tmp_path_factory.mktemp("small") / "repo"
    export_text(TextExportOptions(model=str(tiny_models[PIPELINE].path), name=PIPELINE, repository=repo))
    return repo


def process_group(pgid: int) -> list[str]:
    """Names of the live processes in a process group, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, group = text.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(text[text.index("(") + 1 : text.rindex(")")])
    return members


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def serve_command(repository: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "export", "serve", "--repository", str(repository), *extra]


def ports() -> list[str]:
    return ["--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_answers_and_stops_without_leftovers(small_repository: Path, stop_signal: int) -> None:
    args = ports()
    serve = subprocess.Popen(
        serve_command(small_repository, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops it." not in "".join(lines[-2:]):
            assert time.monotonic() < deadline and serve.poll() is None, "".join(lines)
            lines.append(serve.stdout.readline())
        output = "".join(lines)
        assert "Started GRPCInferenceService" in output  # the server's own log, forwarded
        assert f"http://127.0.0.1:{args[1]}/v2/models/<name>/infer" in output

        (triton,) = children(serve.pid)
        group = process_group(triton)  # tritonserver leads its own group; stubs join it
        configs = [read_config(folder) for folder in small_repository.iterdir() if (folder / "config.pbtxt").is_file()]
        python_stubs = sum(g.count for c in configs if c.backend == "python" for g in c.instance_group)
        assert "tritonserver" in group and sum(name.startswith("triton_python") for name in group) == python_stubs

        client = httpclient.InferenceServerClient(f"127.0.0.1:{args[1]}")
        assert embed_http(client, PIPELINE, ["hello"], binary=True).shape == (1, 32)
        client.close()

        serve.send_signal(stop_signal)
        serve.communicate(timeout=60)
        assert serve.returncode == 0
        assert process_group(triton) == []
    finally:
        serve.kill()
        serve.communicate()


def test_serve_refuses_a_taken_port(small_repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag, label in (("--http-port", "HTTP"), ("--grpc-port", "gRPC"), ("--metrics-port", "metrics")):
            args = ports()
            args[args.index(flag) + 1] = str(port)
            done = subprocess.run(serve_command(small_repository, *args), capture_output=True, text=True, timeout=60)
            assert done.returncode == 1
            assert f"cannot use port {port} ({label}) on 127.0.0.1" in done.stderr


def test_serve_refuses_an_empty_or_missing_repository(tmp_path: Path) -> None:
    done = subprocess.run(serve_command(tmp_path, *ports()), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "holds no models; export one first" in done.stderr
    done = subprocess.run(serve_command(tmp_path / "nowhere", *ports()), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "does not exist" in done.stderr


def test_explicit_mode_loads_only_what_is_asked(small_repository: Path, tiny_models, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_text(TextExportOptions(model=str(tiny_models["tiny-bert"].path), name="other", repository=repo))
    for model in small_repository.iterdir():
        (repo / model.name).symlink_to(model)
    options = ServerOptions(
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        model_control_mode="explicit",
        load_models=(PIPELINE,),
    )
    with (tmp_path / "log").open("wb") as log, TritonServer(options, log=log) as server:
        client = httpclient.InferenceServerClient(server.options.http_url)
        ready = {m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"}
        # Loading the ensemble loads its steps, and nothing else.
        assert ready == {PIPELINE, f"{PIPELINE}_tokenizer", f"{PIPELINE}_encoder"}
        client.close()
    with pytest.raises(ServerError, match=r"not in .*: missing"):
        TritonServer(ServerOptions(repository=repo, model_control_mode="explicit", load_models=("missing",))).start()


def test_a_model_that_fails_to_load_stops_the_start_with_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "repo" / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 1\n')
    (broken / "1" / "model.py").write_text("raise RuntimeError('broken at import')\n")
    options = ServerOptions(
        repository=tmp_path / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    with (tmp_path / "log").open("wb") as log, pytest.raises(ServerError) as caught, TritonServer(options, log=log):
        pass
    assert "exited with code 1 before it was ready" in str(caught.value)
    assert "broken at import" in str(caught.value)


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith(("Z", "X"))
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_what_spawn_starts_dies_with_the_process_that_started_it() -> None:
    """export.serving.server.spawn (every server we start: tritonserver, nginx, Milvus,
    SeaweedFS): killed with SIGKILL, the starting process leaves nothing running."""
    script = (
        "import time\n"
        "from export.serving.server import spawn\n"
        "print(spawn(['sleep', '120']).pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    root = Path(__file__).resolve().parent.parent
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=root)
    child = int(parent.stdout.readline())
    assert not _gone(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the spawned process outlived its parent"
