"""Shared pieces of the benchmarks: in-process timing, wrk runs, services, tables, charts."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.repository.config import read_config
from export.serving.server import ServerOptions, TritonServer, free_port
from export.steps.tokenizer.tokenization import token_arrays
from export.steps.writers import TokenizerSettings
from export.tools.perf_analyzer import measure

CPUS = os.cpu_count() or 1


@dataclass(frozen=True)
class Row:
    """One system at one load. `concurrency` is None for in-process rows (batch in the name);
    `client_cpu` is the load generator's share of the machine's CPU, where there is one."""

    system: str
    concurrency: int | None
    per_second: float
    p50_ms: float
    p99_ms: float
    client_cpu: float | None = None


def time_calls(call: Callable[[int], object], items_per_call: int, seconds: float) -> tuple[float, float, float]:
    """(items/s, p50 ms, p99 ms) of calling `call(i)` back to back for `seconds`, after a warm-up."""
    call(0)
    latencies, began, i = [], time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        start = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - start)
        i += 1
    elapsed = time.perf_counter() - began
    ms = sorted(x * 1000 for x in latencies)
    return len(ms) * items_per_call / elapsed, statistics.median(ms), ms[int(0.99 * (len(ms) - 1))]


def perf_row(
    system: str,
    model: str,
    url: str,
    input_file: Path,
    level: int,
    seconds: float,
    protocol: str,
    transport: Sequence[str] = (),
    stability_percentage: int = 50,
) -> Row:
    """perf_analyzer averages its last three stable windows: windows of half the time keep it
    measuring about as long as the others (1.5x). Sub-millisecond requests need a wider
    stability band: one stall of this shared machine moves their p99 by more than 50%."""
    window = int(seconds * 500)
    # A run takes a few windows; one that takes 30 (perf_analyzer stuck) fails.
    options = {"protocol": protocol, "measurement_ms": window, "transport": transport, "timeout": 30 * seconds}
    options["stability_percentage"] = stability_percentage
    m, _ = measure(model, url, input_file, level, input_file.parent, **options)
    return Row(system, level, m.per_second, m.p50_ms, m.p99_ms, m.client_cpu)


def onnx_text_encoder(tokenizer_dir: Path, encoder_dir: Path) -> Callable[[list[str]], np.ndarray]:
    """The exported pipeline in-process: the served tokenizer setup, then onnxruntime with
    its default thread pool (all cores, spinning on): the best case of the same computation."""
    import onnxruntime as ort

    tokenizer = TokenizerSettings.from_model(tokenizer_dir).load()
    dtypes = {output.name: np.int64 for output in read_config(tokenizer_dir).output}
    options = ort.SessionOptions()
    options.intra_op_num_threads = CPUS
    session = ort.InferenceSession(str(encoder_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return lambda texts: session.run(None, token_arrays(tokenizer.encode_batch(texts), dtypes))[0]


_WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
local index = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  index = index % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[index])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.status + e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(system: str, url: str, bodies: Sequence[dict], concurrency: int, seconds: float) -> Row:
    """Closed-loop load from wrk (compiled, one thread): POST each JSON body in turn."""
    with tempfile.TemporaryDirectory() as folder:
        script, body_file = Path(folder) / "post.lua", Path(folder) / "bodies.jsonl"
        script.write_text(_WRK_SCRIPT)
        body_file.write_text("\n".join(json.dumps(body, ensure_ascii=False) for body in bodies) + "\n")
        duration = f"-d{max(1, round(seconds))}s"
        command = ["wrk", "-t1", f"-c{concurrency}", duration, "--timeout", "60s", "-s", str(script), url]
        before, began = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        done = subprocess.run(command, env=os.environ | {"WRK_BODIES": str(body_file)}, capture_output=True, text=True)
        wall, after = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_CHILDREN)
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not result:
        raise RuntimeError(f"wrk failed against {url}: {done.stdout}{done.stderr}")
    requests, duration_us, errors, p50_us, p99_us = (int(x) for x in result[0].split()[1:])
    if errors:
        raise RuntimeError(f"{system}: {errors} of {requests} requests failed at concurrency {concurrency}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / (wall * CPUS)
    return Row(system, concurrency, requests / (duration_us / 1e6), p50_us / 1000, p99_us / 1000, cpu)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def service(command: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """A server process for the length of the block, its output in `log`."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_for_http(ready_url, process)
            yield
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def served_parser(doc: str, *, rounds: int = 1) -> argparse.ArgumentParser:
    """The flags every benchmark of a served pipeline takes; a script adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=rounds, help="served measurements, repeated in turn")
    return parser


@contextlib.contextmanager
def triton(repository: Path, log: Path) -> Iterator[TritonServer]:
    """The bundled Triton on `repository`, on free ports, its log in `log`, for the block."""
    options = ServerOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with log.open("wb") as output, TritonServer(options, log=output) as server:
        yield server


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| system | concurrency | items/s | p50 ms | p99 ms | load generator CPU |", "|---|---|---|---|---|---|"]
    for r in rows:
        concurrency = "-" if r.concurrency is None else str(r.concurrency)
        cpu = "-" if r.client_cpu is None else f"{r.client_cpu:.0%}"
        lines.append(f"| {r.system} | {concurrency} | {r.per_second:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {cpu} |")
    return "\n".join(lines)


def chart(rows: Sequence[Row], title: str, path: Path) -> None:
    """Throughput against concurrency per served system; in-process rows as flat lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    served = sorted({r.system for r in rows if r.concurrency is not None}, key=lambda s: s)
    for system in served:
        points = sorted((r.concurrency, r.per_second) for r in rows if r.system == system)
        axes.plot([c for c, _ in points], [v for _, v in points], marker="o", label=system)
    flat = [r for r in rows if r.concurrency is None]
    for index, r in enumerate(flat):
        axes.axhline(r.per_second, linestyle="--", linewidth=1, label=r.system, color=f"C{len(served) + index}")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("concurrency (requests in flight, one item each)")
    axes.set_ylabel("items per second")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
