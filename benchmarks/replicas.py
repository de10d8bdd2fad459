"""Throughput of 1, 2 and 3 Triton replicas behind nginx, and of 1 replica direct.

    python -m benchmarks.replicas [--repository R --model NAME] [--replicas 1 2 3] [--seconds 10]

Load: perf_analyzer over gRPC (compiled: on 2 cores a Python load generator would take the
CPU the servers need), one short query per request, at `--concurrency` (32). Without
--repository, all-MiniLM-L6-v2 is exported to a temporary folder first.

Besides texts/s and latency, the CPU the servers used per 1,000 requests: utime + stime of
every process in each replica's process group (tritonserver and its Python-backend stubs) and
in nginx's, read from /proc before and after the run, over the requests the replicas counted
(their ensemble statistics) in the same span. That cost per request is what predicts N
machines: this machine cannot show growth (2 cores, shared with the load generator), a
machine of its own per replica can.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from export.errors import UserError
from export.serving.replicas import Replicas
from export.serving.server import ServerOptions, free_port
from export.serving.watchdog import processes
from export.text.default_model import default_model_path
from export.text.pipeline import TextExportOptions, export_text
from export.tools import payloads
from export.tools.perf_analyzer import measure, write_input_data
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, TEXT

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    setup: str
    replicas: int
    per_second: float
    p50_ms: float
    p99_ms: float
    requests: int  # counted by the replicas during the run
    server_cpu_s: float  # every replica's processes
    nginx_cpu_s: float
    client_cpu: float  # perf_analyzer's share of the machine

    def per_thousand(self, seconds: float) -> float:
        return 1000 * seconds / self.requests if self.requests else float("nan")


def group_cpu(group: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group `group`."""
    return sum(int(p.fields[11]) + int(p.fields[12]) for p in processes() if p.group == group) / TICKS


def served(http_url: str, model: str) -> int:
    """Requests the replica's ensemble answered since it started."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as response:
        return int(json.load(response)["model_stats"][0]["inference_stats"]["success"]["count"])


def run(replicas: Replicas, setup: str, url: str, args: argparse.Namespace, input_file: Path) -> Result:
    servers = [server for server in replicas.servers if server is not None]
    groups = [server.process.pid for server in servers]
    nginx = replicas.balancer.process.pid
    count = lambda: sum(served(server.options.http_url, args.model) for server in servers)  # noqa: E731
    before = (count(), [group_cpu(g) for g in groups], group_cpu(nginx))
    options = {"protocol": "grpc", "measurement_ms": int(args.seconds * 1000), "timeout": 30 * args.seconds}
    m, _ = measure(args.model, url, input_file, args.concurrency, input_file.parent, **options)
    after = (count(), [group_cpu(g) for g in groups], group_cpu(nginx))
    server_cpu = sum(a - b for a, b in zip(after[1], before[1], strict=True))
    nginx_cpu = after[2] - before[2] if url == replicas.grpc_url else 0.0
    return Result(
        setup, len(servers), m.per_second, m.p50_ms, m.p99_ms, after[0] - before[0], server_cpu, nginx_cpu, m.client_cpu
    )


def table(results: list[Result]) -> str:
    direct = next((r.per_second for r in results if r.setup == "direct"), None)
    lines = [
        "| setup | replicas | texts/s | vs direct | p50 ms | p99 ms | server CPU s / 1k requests | "
        "nginx CPU s / 1k requests | perf_analyzer CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r.per_second / direct:.2f}" if direct else "-"
        lines.append(
            f"| {r.setup} | {r.replicas} | {r.per_second:.0f} | {ratio} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
            f"{r.per_thousand(r.server_cpu_s):.2f} | {r.per_thousand(r.nginx_cpu_s):.3f} | {r.client_cpu:.0%} |"
        )
    return "\n".join(lines)


def prediction(results: list[Result]) -> str:
    """What the cost per request says for replicas on machines of their own: taken from the run
    with the fewest replicas behind the balancer, where a replica had the cores to itself (more
    replicas on the same cores cost more per request: their thread pools contend)."""
    balanced = [r for r in results if r.setup == "balancer" and r.requests]
    if not balanced:
        return ""
    alone = min(balanced, key=lambda r: r.replicas)
    server, nginx = alone.per_thousand(alone.server_cpu_s) / 1000, alone.per_thousand(alone.nginx_cpu_s) / 1000
    cores = os.cpu_count() or 1
    return (
        f"With {alone.replicas} replica(s) behind the balancer a request cost the replicas {server * 1000:.2f} ms "
        f"of CPU and nginx {nginx * 1000:.3f} ms. A replica on a machine of its own with C cores then serves at "
        f"most C / {server:.5f} s = {1 / server:.0f} x C requests/s ({cores} cores: {cores / server:.0f}/s); N such "
        f"machines N times that, and one nginx core balances about {1 / nginx:.0f} requests/s."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="default: all-MiniLM-L6-v2 exported to a temporary folder")
    parser.add_argument("--model", default=DEFAULT_TEXT_PIPELINE)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10, help="perf_analyzer's measurement window")
    args = parser.parse_args()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        repository = args.repository
        if repository is None:
            repository = work / "model_repository"
            export_text(TextExportOptions(str(default_model_path()), args.model, repository))
        input_file = write_input_data(work, TEXT, payloads.short_texts(2000, seed=7))
        for count in args.replicas:
            options = ServerOptions(repository, http_port=free_port(), grpc_port=free_port())
            with Replicas(options, count, logs=work / f"logs-{count}") as replicas:
                time.sleep(2)  # let start-up settle before measuring
                targets = [("direct", replicas.servers[0].options.grpc_url)] if count == 1 else []
                for setup, url in [*targets, ("balancer", replicas.grpc_url)]:
                    try:
                        results.append(run(replicas, setup, url, args, input_file))
                    except UserError as error:  # a hung perf_analyzer: say so, measure the rest
                        print(f"{setup}, {count} replicas: {error}", file=sys.stderr)
                    print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"perf_analyzer over gRPC, concurrency {args.concurrency}, one short query per request, {args.model}:\n")
    print(table(results))
    print()
    print(prediction(results))


if __name__ == "__main__":
    main()
