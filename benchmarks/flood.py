"""A flood of short queries from a compiled load generator: Triton direct against the balancer's cap.

    python -m benchmarks.flood --repository model_repository --model NAME [--connections 1000] [--caps 0 128]
        [--rates 3650 18250]

wrk (Debian; `make bench-tools` installs it) keeps `--connections` HTTP requests in flight for
10 s, closed loop, one short query each, far past what the server sustains: most answers are
refusals. With `--rates`, each connection waits between its requests so that all together
offer about that many requests a second (wrk's `delay`): close to an open loop at that rate
while answers come fast, which refusals do. The server (and nginx, with a cap) run on CPU 0,
wrk on CPU 1, so that the load generator neither takes the server's CPU nor, being compiled,
falls behind as a Python one does (benchmarks/overload.py). Cap 0: Triton direct (its own
admission refuses); cap N: through the balancer refusing past N requests in flight. wrk's
latencies are over every answer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import triton
from export.serving.balancer import Balancer, BalancerOptions, Upstream
from triton_embeddings.names import TEXT

QUERY = "how do I reset my password"
# wrk prints its own summary; this adds the percentiles over every answer, in ms.
REPORT = """
done = function(summary, latency, requests)
  io.write(string.format("percentiles %.1f %.1f %.1f\\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
"""


def paced(script: Path, connections: int, rate: float) -> Path:
    """`script` with each connection waiting connections / rate seconds between requests."""
    out = script.with_name(f"paced-{rate:g}.lua")
    out.write_text(script.read_text() + f"\ndelay = function() return {1000 * connections / rate:.3f} end\n")
    return out


def flood(url: str, model: str, connections: int, cpu: int, script: Path) -> dict[str, float]:
    """wrk against `url` pinned to `cpu`: answers/s, non-2xx answers, and p50/p90/p99 ms."""
    command = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", "-d10s", "--timeout", "30s"]
    out = subprocess.run([*command, "-s", str(script), f"http://{url}/v2/models/{model}/infer"], capture_output=True)
    text = out.stdout.decode()
    total, seconds = re.search(r"(\d+) requests in ([\d.]+)s", text).groups()
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    p50, p90, p99 = map(float, re.search(r"percentiles ([\d.]+) ([\d.]+) ([\d.]+)", text).groups())
    answers, refusals = int(total), int(refused.group(1)) if refused else 0
    return {"answers": answers / float(seconds), "served": (answers - refusals) / float(seconds)} | {
        "p50": p50,
        "p90": p90,
        "p99": p99,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", required=True, help="a text pipeline in the repository")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--caps", type=int, nargs="+", default=[0, 128])
    parser.add_argument("--rates", type=float, nargs="*", default=[], help="offered requests/s (default: as fast)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: make bench-tools (apt-get install wrk)")
    body = {"inputs": [{"name": TEXT.name, "datatype": "BYTES", "shape": [1, 1], "data": [QUERY]}]}
    cpus = sorted(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "flood.lua"
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
            f'wrk.headers["Content-Type"] = "application/json"\n{REPORT}'
        )
        for cap in args.caps:
            os.sched_setaffinity(0, cpus[:1])  # the server and nginx started next inherit CPU 0
            with triton(args.repository, Path(folder) / "triton.log") as server:
                url, balancer = server.options.http_url, None
                if cap:
                    upstream = Upstream(server.options.http_url, server.options.grpc_url)
                    balancer = Balancer([upstream], BalancerOptions(max_in_flight_per_replica=cap)).start()
                    url = balancer.http_url
                os.sched_setaffinity(0, cpus)
                try:
                    for rate in args.rates or [0.0]:
                        load = paced(script, args.connections, rate) if rate else script
                        rows.append((cap, rate, flood(url, args.model, args.connections, cpus[-1], load)))
                finally:
                    if balancer is not None:
                        balancer.close()
    print(f"wrk, {args.connections} connections, 10 s, one short query per request, {args.model}:\n")
    print("| path | offered | answers/s | served/s | answers p50 / p90 / p99 ms |\n|---|---|---|---|---|")
    for cap, rate, r in rows:
        path = "Triton direct" if not cap else f"nginx, cap {cap}"
        latency = f"{r['p50']:.1f} / {r['p90']:.1f} / {r['p99']:.1f}"
        offered = f"{rate:,.0f}/s" if rate else "as fast"
        print(f"| {path} | {offered} | {r['answers']:,.0f} | {r['served']:,.0f} | {latency} |")


if __name__ == "__main__":
    main()
