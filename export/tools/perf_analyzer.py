"""perf_analyzer, Triton's load generator: input-data files for our pipelines, and running it.

The binary is the one inside the tritonclient 2.50.0 wheel (the newer perf-analyzer wheels
need glibc 2.38); `make perf-tools` puts it in the environment, .venv/lib/perf_analyzer, with
the CUDA runtime library it links (only linked: no GPU is used). It is looked up in the
environment (sys.prefix), not beside the source, so an installed package finds it too.
PERF_ANALYZER overrides the path; a perf_analyzer on PATH (the NGC SDK image) is the last resort.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from export.errors import UserError
from export.tools import payloads
from triton_embeddings.names import TEXT, TensorSpec

INPUT_FILE = "perf_analyzer_input.json"
PAYLOAD_TEXTS, PAYLOAD_IMAGES = 200, 8
BINARY = "perf_analyzer"
# Beside the binary `make perf-tools` installs: the CUDA runtime it links, from PyPI.
_CUDA_LIBRARIES = Path("cuda", "nvidia", "cuda_runtime", "lib")


def input_data(source: TensorSpec, items: Sequence[str | bytes]) -> dict:
    """perf_analyzer's --input-data JSON: one batch-1 request per item, used in turn.

    Texts go as readable `content`. Binary items go as `b64` of the *serialized* BYTES tensor
    (4-byte little-endian length, then the bytes), which perf_analyzer decodes and sends as
    is: the server receives the image file itself, not base64 text.
    """

    shape = list(source.dims)  # one item: the spec's dims, without the batch axis

    def tensor(item: str | bytes) -> dict:
        if isinstance(item, str):
            return {"content": [item], "shape": shape}
        return {"b64": base64.b64encode(struct.pack("<I", len(item)) + item).decode(), "shape": shape}

    return {"data": [{source.name: tensor(item)} for item in items]}


def write_input_data(model_dir: Path, source: TensorSpec, items: Sequence[str | bytes]) -> Path:
    path = model_dir / INPUT_FILE
    path.write_text(json.dumps(input_data(source, items), ensure_ascii=False), encoding="utf-8")
    return path


def write_pipeline_input(model_dir: Path, source: TensorSpec) -> Path:
    """The input file exporters write beside each pipeline: texts of every length (TEXT), or
    JPEGs of every size (IMAGE), from export.tools.payloads."""
    items = payloads.texts(PAYLOAD_TEXTS) if source == TEXT else payloads.images(PAYLOAD_IMAGES)
    return write_input_data(model_dir, source, items)


def installed_binary() -> Path:
    """Where `make perf-tools` installs perf_analyzer: in the environment, not the source tree."""
    return Path(sys.prefix) / "lib" / BINARY / BINARY


def binary() -> Path:
    """$PERF_ANALYZER, else the environment's own, else the one on PATH."""
    if named := os.environ.get("PERF_ANALYZER"):
        if not Path(named).is_file():
            raise UserError(f"PERF_ANALYZER names {named}, which is not a file")
        return Path(named)
    if installed_binary().is_file():
        return installed_binary()
    if on_path := shutil.which(BINARY):
        return Path(on_path)
    raise UserError(
        f"perf_analyzer not found (not at {installed_binary()}, nor on PATH): run `make perf-tools` "
        "(or set PERF_ANALYZER)"
    )


def environment(perf_analyzer: Path) -> dict[str, str]:
    """The environment to run `perf_analyzer` in: with the CUDA runtime installed beside it, if any."""
    env = dict(os.environ)
    libraries = perf_analyzer.parent / _CUDA_LIBRARIES
    if libraries.is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libraries), env.get("LD_LIBRARY_PATH")]))
    return env


@dataclass(frozen=True)
class Measurement:
    """One concurrency level: throughput, latency percentiles (ms), and the CPU perf_analyzer
    itself used, as a share of the machine (the load generator must not be the bottleneck)."""

    concurrency: int
    per_second: float
    p50_ms: float
    p99_ms: float
    client_cpu: float


def command(
    model: str,
    url: str,
    input_file: Path,
    concurrency: int,
    *,
    protocol: str = "grpc",
    measurement_ms: int = 5000,
    stability_percentage: int = 50,
    csv_file: Path | None = None,
    transport: Sequence[str] = (),
) -> list[str]:
    """Shared 2-core machines are noisy and mixed-length payloads vary per window: the default
    stability window (50%, up to 10 trials) is wider than perf_analyzer's own 10%.
    `transport`: more perf_analyzer flags, e.g. ("--streaming",) or ("--shared-memory", "system")."""
    cmd = [
        str(binary()),
        "-m", model,
        "-u", url,
        "-i", protocol,
        "--input-data", str(input_file),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(measurement_ms),
        "--percentile", "99",
        "--stability-percentage", str(stability_percentage),
        "--max-trials", "10",
        *transport,
    ]  # fmt: skip
    return [*cmd, "-f", str(csv_file)] if csv_file is not None else cmd


def measure(
    model: str, url: str, input_file: Path, concurrency: int, report_dir: Path, *, timeout: float = 600, **options
) -> tuple[Measurement, str]:
    """One perf_analyzer run at one concurrency: the parsed measurement and its own report.

    `timeout` (seconds): perf_analyzer 2.50 can hang (seen with --streaming at concurrency 32);
    a run that takes longer fails instead of blocking the benchmark forever."""
    flags = "".join(options.get("transport", ())).replace("-", "")
    csv_file = report_dir / f"perf-{model}-{options.get('protocol', 'grpc')}{flags}-c{concurrency}.csv"
    cmd = command(model, url, input_file, concurrency, csv_file=csv_file, **options)
    before, began = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    try:
        done = subprocess.run(cmd, env=environment(Path(cmd[0])), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise UserError(
            f"perf_analyzer did not finish on {model} at concurrency {concurrency} in {timeout:.0f} s"
        ) from error
    wall, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise UserError(f"perf_analyzer failed on {model} at concurrency {concurrency}:\n{done.stdout}{done.stderr}")
    with csv_file.open() as file:
        (row,) = list(csv.DictReader(file))
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / (wall * (os.cpu_count() or 1))
    measurement = Measurement(
        concurrency=concurrency,
        per_second=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000,
        p99_ms=float(row["p99 latency"]) / 1000,
        client_cpu=cpu,
    )
    return measurement, done.stdout
