"""perf_analyzer (the binary `make` installs) against the test server, with the input files
the exporters write beside each pipeline."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from export.errors import UserError
from export.tools import perf_analyzer
from export.tools.perf_analyzer import INPUT_FILE
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, IMAGE, TEXT, ClipPipelineNames

ROOT = Path(__file__).resolve().parent.parent


def test_every_pipeline_has_a_perf_analyzer_input_file(repository: Path) -> None:
    clip = ClipPipelineNames("clip-vit-b-32")
    pipelines = ((DEFAULT_TEXT_PIPELINE, TEXT), (clip.text, TEXT), (clip.image, IMAGE), (clip.classify, IMAGE))
    for pipeline, kind in pipelines:
        data = json.loads((repository / pipeline / INPUT_FILE).read_text(encoding="utf-8"))["data"]
        assert len(data) >= 8 and all(list(item) == [kind.name] for item in data)
    texts = json.loads((repository / DEFAULT_TEXT_PIPELINE / INPUT_FILE).read_text(encoding="utf-8"))["data"]
    lengths = [len(item[TEXT.name]["content"][0].split()) for item in texts]
    assert min(lengths) <= 8 and max(lengths) >= 300  # queries to passages past max_length
    images = json.loads((repository / clip.image / INPUT_FILE).read_text(encoding="utf-8"))["data"]
    serialized = base64.b64decode(images[0][IMAGE.name]["b64"])
    (length,) = struct.unpack("<I", serialized[:4])
    assert length == len(serialized) - 4 and serialized[4:6] == b"\xff\xd8"  # the JPEG itself, not base64


@pytest.mark.parametrize(
    ("model", "protocol"),
    [(DEFAULT_TEXT_PIPELINE, "grpc"), (DEFAULT_TEXT_PIPELINE, "http"), (ClipPipelineNames("clip-tiny").image, "grpc")],
)
def test_perf_command_measures_a_served_pipeline(server, repository: Path, model: str, protocol: str) -> None:
    url = server.options.grpc_url if protocol == "grpc" else server.options.http_url
    command = [
        sys.executable, "-m", "export", "perf", model, "--repository", str(repository), "--url", url,
        "--protocol", protocol, "--concurrency", "1", "2", "--measurement-interval", "1000",
        "--stability-percentage", "500",  # this checks that it runs and reports, not that the machine is quiet
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Concurrency: 1, throughput:" in done.stdout and "Concurrency: 2, throughput:" in done.stdout
    summary = done.stdout[done.stdout.index("| concurrency |") :].splitlines()
    rows = [line.split("|") for line in summary[2:4]]
    assert [int(row[1]) for row in rows] == [1, 2] and all(float(row[2]) > 0 for row in rows)


def test_an_installed_copy_finds_the_binary_of_its_environment(tmp_path: Path) -> None:
    """The packages copied outside the source tree, as a regular install puts them in
    site-packages: perf_analyzer is found where `make perf-tools` put it in this environment."""
    site = tmp_path / "site-packages"
    for package in ("export", "triton_embeddings"):
        shutil.copytree(ROOT / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {key: value for key, value in os.environ.items() if key != "PERF_ANALYZER"} | {"PYTHONPATH": str(site)}
    code = "from export.tools import perf_analyzer as p; print(p.__file__); print(p.binary())"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    module, binary = done.stdout.split()
    assert Path(module).is_relative_to(site) and Path(binary).is_file()
    assert Path(binary) == Path(sys.prefix) / "lib" / "perf_analyzer" / "perf_analyzer"


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_perf_analyzer_is_looked_up_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$PERF_ANALYZER, then this environment's lib/perf_analyzer, then PATH; else what to run."""
    named = _executable(tmp_path / "named" / "perf_analyzer")
    installed = _executable(tmp_path / "venv" / "lib" / "perf_analyzer" / "perf_analyzer")
    (tmp_path / "venv" / "lib" / "perf_analyzer" / "cuda" / "nvidia" / "cuda_runtime" / "lib").mkdir(parents=True)
    on_path = _executable(tmp_path / "bin" / "perf_analyzer")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setenv("PERF_ANALYZER", str(named))
    assert perf_analyzer.binary() == named
    monkeypatch.setenv("PERF_ANALYZER", str(tmp_path / "missing"))
    with pytest.raises(UserError, match=r"PERF_ANALYZER names .*missing, which is not a file"):
        perf_analyzer.binary()
    monkeypatch.delenv("PERF_ANALYZER")
    assert perf_analyzer.binary() == installed
    libraries = perf_analyzer.environment(installed)["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libraries[0] == str(installed.parent / "cuda" / "nvidia" / "cuda_runtime" / "lib")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "elsewhere"))
    assert perf_analyzer.binary() == on_path
    assert perf_analyzer.environment(on_path).get("LD_LIBRARY_PATH", "") == os.environ.get("LD_LIBRARY_PATH", "")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="make perf-tools"):
        perf_analyzer.binary()
