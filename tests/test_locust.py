"""The Locust load test, headless for 10 s against the test server: no failures, real load."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, ClipPipelineNames

LOCUSTFILE = Path(__file__).parents[1] / "locustfiles" / "embeddings.py"
USERS = ("json", "binary", "grpc")


def run_locust(server, tmp_path: Path, model: str, payload: str, seconds: int) -> tuple[int, dict[str, dict]]:
    """Run every user class; return locust's exit code and its stats rows by name."""
    prefix = tmp_path / "locust"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "6", "-r", "6",
        "-t", f"{seconds}s", "--host", f"http://{server.options.http_url}", "--grpc-host", server.options.grpc_url,
        "--model", model, "--payload", payload, "--csv", str(prefix), "--html", str(tmp_path / "report.html"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    with open(f"{prefix}_stats.csv", newline="") as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    assert (tmp_path / "report.html").stat().st_size > 0
    return done.returncode, rows


@pytest.mark.parametrize(
    ("model", "payload"), [(DEFAULT_TEXT_PIPELINE, "text"), (ClipPipelineNames("clip-tiny").image, "image")]
)
def test_ten_seconds_of_load_without_a_failure(server, tmp_path: Path, model: str, payload: str) -> None:
    code, rows = run_locust(server, tmp_path, model, payload, seconds=10)
    assert code == 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    for user in USERS:
        assert int(rows[f"{user} {model}"]["Request Count"]) > 0, user


def test_failures_are_counted_and_fail_the_run(server, tmp_path: Path) -> None:
    """The same run against a model that does not exist: every request fails, locust says so."""
    code, rows = run_locust(server, tmp_path, "no-such-model", "text", seconds=3)
    assert code != 0
    assert int(rows["Aggregated"]["Failure Count"]) == int(rows["Aggregated"]["Request Count"]) > 0
