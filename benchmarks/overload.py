"""Overload in time: what a text pipeline does at 2x, 10x and 50x of what it sustains.

    python -m benchmarks.overload --repository model_repository --model NAME

For each kind of request, on a server of its own (the bundled Triton, on free ports):
- *short*: one 6-18 word query per request; *long*: 8 passages past max_length per request
  (every text truncated to max_length, the most work a request of 8 can carry);
- capacity: requests/s at concurrency 64, closed loop, 4 s;
- then, for each multiple in turn, an open loop at that multiple of capacity for `--seconds`
  (the client sends on schedule, whatever happened to earlier requests), and 5 s of rest;
- per load: requests offered (the client may fall short of the schedule on this 2-core
  machine, so the rate it reached is printed), served, refused as overloaded, other errors,
  wrong embeddings (against each text embedded alone, before the load, atol 1e-5), served
  p50 / p99, the refusals' p50 / max, the server's own mean time for served and failed
  requests (the ensemble's statistics: what the client's own queueing does not blur when it
  cannot keep up), and whether the server stayed ready (an HTTP readiness
  probe every 200 ms: probes failed, slowest probe).

Client retries are off (`Retry(attempts=1)`): what the server refuses is what is measured.
`--pin` puts the server on CPU 0 and the load generator on the other; `--cap N` sends the load
through the balancer (nginx, export/serving/balancer.py) refusing past N requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import triton
from export.serving.balancer import Balancer, BalancerOptions, Upstream
from export.tools import payloads
from triton_embeddings.client import AsyncEmbeddingClient, EmbeddingError, Retry

OVERLOADED = ("server overloaded", "Request timeout expired")
REST_S = 5.0


@dataclass
class Load:
    kind: str
    multiple: float
    seconds: float
    offered: int = 0
    served: list[float] | None = None
    refused: list[float] | None = None
    errors: int = 0
    wrong: int = 0
    probes_failed: int = 0
    slowest_probe: float = 0.0
    first_error: str = ""
    behind: float = 0.0  # how late the client sent its last request, against the schedule
    server: dict[str, tuple[int, float]] | None = None  # the ensemble's own count and mean ms: success, fail


def requests_of(kind: str) -> list[list[str]]:
    if kind == "short":
        return [[text] for text in payloads.short_texts(64, seed=11)]
    passages = [t for t in payloads.texts(600, seed=12) if len(t.split()) > 300]
    return [passages[i : i + 8] for i in range(0, len(passages) - 7, 8)][:8]


class ReadyProbe(threading.Thread):
    """Asks the server whether it is ready every 200 ms, counting failures and the slowest answer."""

    def __init__(self, http_url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stopping = f"{http_url}/v2/health/ready", threading.Event()
        self.failed, self.slowest = 0, 0.0

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            began = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    ok = response.status == 200
            except OSError:
                ok = False
            self.slowest = max(self.slowest, time.monotonic() - began)
            self.failed += not ok


async def capacity(client: AsyncEmbeddingClient, model: str, requests: list[list[str]], seconds: float = 4) -> float:
    """Requests served per second by 64 clients in a closed loop (refusals are not counted)."""
    done, stop = 0, time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        index = offset
        while time.monotonic() < stop:
            try:
                await client.embed_text(model, requests[index % len(requests)])
                done += 1
            except EmbeddingError as error:
                if not any(reason in error.message for reason in OVERLOADED):
                    raise
                await asyncio.sleep(0.05)
            index += 64

    began = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(64)))
    return done / (time.monotonic() - began)


async def open_loop(client: AsyncEmbeddingClient, model: str, expected: dict, load: Load, rate: float) -> None:
    """Send `rate` requests/s of the texts in `expected` (texts -> their embeddings) for the load's seconds."""
    load.served, load.refused = [], []
    requests = list(expected)

    async def one(index: int) -> None:
        texts = requests[index % len(requests)]
        began = time.monotonic()
        try:
            result = await client.embed_text(model, list(texts))
        except EmbeddingError as error:
            took = time.monotonic() - began
            if any(reason in error.message for reason in OVERLOADED):
                load.refused.append(took)
            else:
                load.errors += 1
                load.first_error = load.first_error or error.message
            return
        load.served.append(time.monotonic() - began)
        load.wrong += not np.allclose(result, expected[texts], atol=1e-5, rtol=0)

    tasks, start = [], time.monotonic()
    while time.monotonic() - start < load.seconds:
        delay = start + load.offered / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(load.offered)))
        load.offered += 1
    load.behind = time.monotonic() - (start + (load.offered - 1) / rate)
    await asyncio.gather(*tasks)


def ensemble_stats(http_url: str, model: str) -> dict[str, tuple[int, int]]:
    """The ensemble's (count, total ns) of successful and failed requests since the server started."""
    with urllib.request.urlopen(f"{http_url}/v2/models/{model}/stats", timeout=10) as response:
        stats = json.load(response)["model_stats"][0]["inference_stats"]
    return {key: (int(stats[key]["count"]), int(stats[key]["ns"])) for key in ("success", "fail")}


def since(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, float]]:
    """Requests and their mean server-side ms between two readings of ensemble_stats."""
    delta = {key: (after[key][0] - before[key][0], after[key][1] - before[key][1]) for key in after}
    return {key: (count, ns / count / 1e6 if count else float("nan")) for key, (count, ns) in delta.items()}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def measure(
    server, model: str, kind: str, multiples: list[float], seconds: float, grpc_url: str | None = None
) -> list[Load]:
    """One kind of request on one server: its capacity, then each multiple of it in turn.
    `grpc_url`: where the load goes, when not to the server itself (a balancer in front)."""
    loads, http_url = [], f"http://127.0.0.1:{server.options.http_port}"
    target = grpc_url or server.options.grpc_url
    async with AsyncEmbeddingClient(target, timeout=120, retry=Retry(attempts=1)) as client:
        requests = requests_of(kind)
        expected = {tuple(texts): await client.embed_text(model, texts) for texts in requests}
        sustained = await capacity(client, model, requests)
        print(f"{kind}: capacity {sustained:.1f} requests/s", flush=True)
        for multiple in multiples:
            load, probe = Load(kind, multiple, seconds), ReadyProbe(http_url)
            probe.start()
            before = ensemble_stats(http_url, model)
            await open_loop(client, model, expected, load, multiple * sustained)
            load.server = since(before, ensemble_stats(http_url, model))
            probe.stopping.set()
            probe.join()
            load.probes_failed, load.slowest_probe = probe.failed, probe.slowest
            loads.append(load)
            print(row(load), flush=True)
            await asyncio.sleep(REST_S)
    return loads


def run(
    repository: Path,
    model: str,
    kinds: list[str],
    multiples: list[float],
    seconds: float,
    pin: bool = False,
    cap: int = 0,
) -> list[Load]:
    """`pin`: the server (with its stubs) on CPU 0 and this load generator on the others, so
    that the generator cannot take the server's CPU (capacity is then one core's). `cap`: the
    load goes through the balancer (nginx, on the server's CPU when pinned) with that cap of
    requests in flight (BalancerOptions.max_in_flight_per_replica)."""
    loads, cpus = [], sorted(os.sched_getaffinity(0))
    for kind in kinds:
        if pin:
            os.sched_setaffinity(0, cpus[:1])  # the server and the balancer started next inherit it
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(triton(repository, Path(f"/tmp/overload-{kind}.log")))
            grpc_url = None
            if cap:
                upstream = Upstream(server.options.http_url, server.options.grpc_url)
                balancer = stack.enter_context(Balancer([upstream], BalancerOptions(max_in_flight_per_replica=cap)))
                grpc_url = balancer.grpc_url
            if pin:
                os.sched_setaffinity(0, cpus[1:])
            loads += asyncio.run(measure(server, model, kind, multiples, seconds, grpc_url))
        os.sched_setaffinity(0, cpus)
    return loads


HEADER = (
    "| requests | load | offered/s | served | refused | other errors | wrong | served p50 / p99 s "
    "| refusals p50 / max ms | server: served / failed mean ms | readiness probes failed (slowest) "
    "| client behind s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(load: Load) -> str:
    served, refused, server = load.served or [], load.refused or [], load.server or {}
    return (
        f"| {load.kind} | {load.multiple:g}x | {load.offered / load.seconds:.0f} | {len(served)} | {len(refused)} "
        f"| {load.errors} | {load.wrong} | {percentile(served, 50):.2f} / {percentile(served, 99):.2f} "
        f"| {1000 * percentile(refused, 50):.0f} / {1000 * max(refused, default=float('nan')):.0f} "
        f"| {server['success'][1]:.0f} / {server['fail'][1]:.0f} "
        f"| {load.probes_failed} ({load.slowest_probe * 1000:.0f} ms) | {load.behind:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", required=True, help="a text pipeline in the repository")
    parser.add_argument("--kinds", nargs="+", choices=["short", "long"], default=["short", "long"])
    parser.add_argument("--multiples", type=float, nargs="+", default=[2, 10, 50])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--pin", action="store_true", help="the server on CPU 0, the load generator on the rest")
    parser.add_argument(
        "--cap", type=int, default=0, metavar="N", help="through nginx, refusing past N requests in flight (0: direct)"
    )
    args = parser.parse_args()
    loads = run(args.repository, args.model, args.kinds, args.multiples, args.seconds, args.pin, args.cap)
    print(HEADER)
    for load in loads:
        print(row(load))
        if load.first_error:
            print(f"  first other error: {load.first_error}")


if __name__ == "__main__":
    main()
