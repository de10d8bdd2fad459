"""perf_analyzer (the binary `make` installs) against the test server, with the input files
the exporters write beside each pipeline."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from export.tools.perf_analyzer import INPUT_FILE
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, IMAGE, TEXT, ClipPipelineNames


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
