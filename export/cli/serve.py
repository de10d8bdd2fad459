"""`serve`: run Triton on a repository until Ctrl-C or SIGTERM; `watchdog`: reload the models of a
server started otherwise whose Python-backend stubs die."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from export.cli import flags

if TYPE_CHECKING:
    from export.serving.server import ServerOptions


def add_command(commands: argparse._SubParsersAction) -> None:
    from export.serving.server import CONTROL_MODES, ServerOptions

    serve = commands.add_parser(
        "serve",
        help="run Triton (from the nvidia-pytriton wheel) on a repository",
        description="Starts Triton, waits until every model is ready, prints the endpoints and forwards the "
        "server's log; restarts it if it crashes. Ctrl-C or SIGTERM stops it.",
    )
    serve.add_argument(
        "--repository",
        type=flags.repository_location,
        default=ServerOptions.repository,
        help="model repository to serve: a folder, or s3://[HOST:PORT/]BUCKET/PREFIX (the release `push` made "
        "CURRENT there, resolved at each start; also gs:// and as://, read by Triton) "
        f"(default: {ServerOptions.repository})",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    for protocol, port in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        label = {"http": "HTTP", "grpc": "gRPC", "metrics": "Prometheus metrics"}[protocol]
        serve.add_argument(
            f"--{protocol}-port", type=int, metavar="PORT", default=port, help=f"{label} port (default: {port})"
        )
    serve.add_argument(
        "--model-control-mode",
        choices=CONTROL_MODES,
        default="none",
        help="none: load every model at start; explicit: only --load-model ones, others on request (default: none)",
    )
    serve.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with explicit mode: load this pipeline at start (an ensemble brings its steps); repeatable",
    )
    serve.add_argument(
        "--log-verbose", type=int, metavar="N", default=0, help="Triton's log verbosity, 0 to 3 (default: 0)"
    )
    serve.add_argument(
        "--cache-mb",
        type=int,
        metavar="MB",
        default=ServerOptions.cache_mb,
        help="response cache for ensembles exported with --response-cache; 0: none "
        f"(default: {ServerOptions.cache_mb})",
    )
    serve.add_argument(
        "--admin-key",
        default=os.environ.get("TRITON_ADMIN_KEY"),
        help="require this key (header admin-key) for the repository, logging, trace and shared-memory "
        "APIs; required when --host is not loopback (default: $TRITON_ADMIN_KEY)",
    )
    serve.add_argument(
        "--replicas",
        type=int,
        default=0,
        metavar="N",
        help="N tritonservers on loopback ports behind nginx on --host and the HTTP/gRPC ports, which sheds floods "
        "past 128 requests in flight per replica before they reach Triton; crashed replicas restart "
        "(docs/scaling.md). 0: Triton itself on those ports (default: 0)",
    )
    serve.set_defaults(run=_run)

    push = commands.add_parser(
        "push",
        help="upload a repository to object storage as a new release, then make it the one servers start on",
        description="Uploads REPOSITORY's models under URL/releases/ID/ (ID: the UTC time and a digest of the files; "
        "the same files pushed again find their release), writes the release's manifest last, then points "
        "URL/CURRENT at it. Servers reading URL (`serve --repository URL`) load the pointed release at their next "
        "start; a release is never written over, so no server reads half of one. Credentials: boto3's "
        "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or a profile). docs/scaling.md.",
    )
    push.add_argument("source", type=Path, metavar="REPOSITORY", help="the exported repository folder")
    push.add_argument("url", metavar="URL", help="s3://BUCKET/PREFIX on AWS, s3://HOST:PORT/BUCKET/PREFIX elsewhere")
    push.add_argument(
        "--point",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="make the release CURRENT; --no-point uploads it and leaves CURRENT as it is, to roll it out by its "
        "own URL (as the Kubernetes files do) (default: --point)",
    )
    push.set_defaults(run=_push)

    watchdog = commands.add_parser(
        "watchdog",
        help="reload any Python-backend model whose stub dies, beside a server `serve` did not start",
        description="What `serve` does for its own server, for a tritonserver started otherwise (docker compose, "
        "Kubernetes): finds the tritonserver serving HTTP on the URL's port among the processes it can see "
        "(in compose: `pid: service:triton`), follows its stubs, and reloads a model whose stub died through the "
        "repository API (the server must run with --model-control-mode=explicit). Exits 1 when that server "
        "process ends, so that the supervisor runs it again with the new one.",
    )
    watchdog.add_argument(
        "--url", default="localhost:8000", help="the server's HTTP host:port (default: localhost:8000)"
    )
    watchdog.add_argument(
        "--admin-key",
        default=os.environ.get("TRITON_ADMIN_KEY"),
        help="the server's admin key, for the repository API (default: $TRITON_ADMIN_KEY)",
    )
    watchdog.add_argument(
        "--interval", type=float, default=0.5, metavar="S", help="seconds between looks (default: 0.5)"
    )
    watchdog.add_argument(
        "--wait", type=float, default=600.0, metavar="S", help="seconds to wait for a ready server (default: 600)"
    )
    watchdog.set_defaults(run=_watch)


def _watch(args: argparse.Namespace) -> int:
    from export.serving.repository_api import RepositoryApi
    from export.serving.watchdog import watch

    url = args.url.removeprefix("http://")
    return watch(RepositoryApi(url, args.admin_key), interval=args.interval, wait=args.wait, say=_say)


def _run_replicas(options: ServerOptions, count: int) -> int:
    """`count` replicas behind the balancer until Ctrl-C or SIGTERM (export/serving/replicas.py)."""
    from export.serving.replicas import Replicas

    try:
        with Replicas(options, count) as replicas:
            lines = [f"\nTriton is ready, {count} replica(s) behind nginx:"]
            lines += [f"  HTTP    http://{replicas.http_url}/v2/models/<name>/infer", f"  gRPC    {replicas.grpc_url}"]
            lines += [
                f"  replica {index}: HTTP {server.options.http_url} (admin APIs), metrics {server.options.metrics_url}"
                for index, server in enumerate(replicas.servers)
            ]
            print("\n".join([*lines, f"Logs in {replicas.logs}. Ctrl-C stops them."]), flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped the replicas", file=sys.stderr, flush=True)
    return 0


def _push(args: argparse.Namespace) -> int:
    from export.serving.object_store import push

    release = push(args.source, args.url, point=args.point, say=_say)
    print(release.url)  # alone on stdout: scripts take it from there
    return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    from export.serving.server import ServerOptions, TritonServer, serve_until_stopped

    options = ServerOptions(
        repository=args.repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        log_verbose=args.log_verbose,
        admin_key=args.admin_key,
        cache_mb=args.cache_mb,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    if args.replicas:
        return _run_replicas(options, args.replicas)
    server = TritonServer(options)  # its log goes to our stdout

    def ready() -> None:
        print(
            f"\nTriton is ready:\n  HTTP    http://{options.http_url}/v2/models/<name>/infer\n"
            f"  gRPC    {options.grpc_url}\n  metrics {options.metrics_url}\nCtrl-C stops it.",
            flush=True,
        )

    try:
        return serve_until_stopped(server, ready)
    except KeyboardInterrupt:
        print("stopping tritonserver", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
