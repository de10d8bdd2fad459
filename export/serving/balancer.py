"""nginx in front of Triton replicas: one HTTP and one gRPC address for every client.

Clients (curl, perf_analyzer, locust, triton_embeddings) see one address, the shape of a
Kubernetes Service; nginx spreads requests over the replicas round robin and keeps
HTTP/1.1 and HTTP/2 connections open to each. It is Debian's nginx, run with a config we
write (`-p WORKDIR -c nginx.conf`): its pid file, temp folders and logs are in the workdir,
nothing of /etc/nginx is read.

Who retries what:
- nginx retries the next replica only when the request never reached one (connection
  refused or timed out: a replica that crashed or is restarting). That is safe for every call.
- A request a replica took and then failed to answer (it died mid-request) is NOT retried by
  nginx (no `non_idempotent`): it may have been executed, and only the caller knows whether
  doing it again means the same (delete's count would change; embed, search, count, exists
  and upsert with ids would not). nginx answers it as unavailable, HTTP 503 with a JSON
  error in Triton's format or gRPC UNAVAILABLE, which `triton_embeddings.Retry` asks again
  for the calls that are idempotent. Over gRPC nginx cannot even see which model a request
  is for (it is inside the protobuf body): the decision has to be the client's.
- A replica's own answers pass through untouched: 400 / INVALID_ARGUMENT for bad input, and
  503 / UNAVAILABLE `server overloaded` (not retried elsewhere by nginx: the same POST rule).

The admin APIs (repository load/unload, logging, trace, shared memory) are refused here:
through a balancer they would act on one replica picked at random. Each replica's own
address has them (Replicas, replicas.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from export.serving.server import ServerError, Started, free_port, spawn, stop_group
from export.serving.watchdog import processes

INSTALL_HINT = "apt-get install -y nginx"
PORT_ATTEMPTS = 3
# Triton's error body, so tritonclient and our client read the message like any server error.
UNAVAILABLE_JSON = '{"error":"no replica could answer this request: retry it"}'
OVERLOADED_MESSAGE = "server overloaded: too many requests in flight at the balancer; retry later"
FORBIDDEN_JSON = '{"error":"admin APIs are per replica: use its own address, not the balancer"}'
ADMIN_HTTP = r"^/v2/(repository|logging|trace|systemsharedmemory|cudasharedmemory)"
ADMIN_GRPC = r"^/inference\.GRPCInferenceService/(Repository|LogSettings|Trace|SystemSharedMemory|CudaSharedMemory)"


@dataclass(frozen=True)
class Upstream:
    """One replica's HTTP and gRPC addresses, host:port each."""

    http: str
    grpc: str


@dataclass(frozen=True)
class BalancerOptions:
    """What nginx does beside the addresses. Defaults are for replicas on one machine or a LAN."""

    host: str = "127.0.0.1"
    http_port: int | None = None  # None: a free port
    grpc_port: int | None = None
    workers: int = 1  # nginx costs little beside Triton: one worker serves tens of thousands of requests/s
    # A replica that refused or timed out a connection once is left out this long, then tried
    # again with one request: short, so a restarted replica gets traffic back quickly.
    max_fails: int = 1
    fail_timeout_s: int = 2  # whole seconds (nginx takes no less)
    connect_timeout_s: float = 2.0  # a dead host (no RST) costs this, once per fail_timeout
    read_timeout_s: float = 300.0  # between two reads of a reply: longer than any batch
    # 0: no limit here. Triton checks each item (1 MiB texts, image limits) and says what was
    # wrong with a 400; a limit here would answer 413 with an HTML page instead.
    max_body_mb: int = 0
    keepalive: int = 64  # idle connections kept open to the replicas, per worker
    # HTTP/1.1 clients' connections kept open between requests. Off by default: a reload (every
    # step of a roll, every restart of a crashed replica) closes the old workers' connections
    # right after their last reply, and a client's next POST on such a connection fails with no
    # reply; clients (geventhttpclient, urllib3) do not resend a POST by themselves. Without
    # keepalive each request has a connection of its own, which no reload can close under it
    # (gRPC is not concerned: HTTP/2 says GOAWAY and gRPC moves to a new connection).
    http_keepalive: bool = False
    drain_timeout_s: float = 30.0  # old workers still busy after a reload are closed after this
    access_log: bool = False  # one line per request in WORKDIR/access.log, with the replica that answered
    # Requests in flight through the balancer per replica, HTTP and gRPC together, beyond which
    # nginx refuses at once: 503 / UNAVAILABLE `server overloaded`, as a replica's own admission
    # says it. A refusal here costs nginx a few microseconds, where a replica's costs its gRPC
    # frontend, the ensemble and the tokenizer's Python process (docs/reliability.md, "Overload
    # in time"): a flood of cheap requests is shed before it reaches Triton. It counts requests,
    # not work; the replicas' admission still bounds the work. 0: no cap. 128: a third of a
    # second of short queries on a CPU replica, far more than a GPU replica holds; measured in
    # docs/reliability.md ("At the balancer"): 4x the refusals/s and 5x faster than Triton's own.
    max_in_flight_per_replica: int = 128
    max_streams: int = 4096  # concurrent gRPC calls on one client connection


def nginx_binary() -> Path:
    """nginx on PATH, or Debian's /usr/sbin/nginx (sbin is often not on a user's PATH)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        raise ServerError(f"nginx is not installed; the replicas' load balancer needs it: {INSTALL_HINT}")
    return Path(found)


def _seconds(value: float) -> str:
    return f"{round(value * 1000)}ms"


def nginx_config(upstreams: Sequence[Upstream], options: BalancerOptions, workdir: Path, ports: tuple[int, int]) -> str:
    """The whole nginx.conf. Every path is inside `workdir`."""
    if not upstreams:
        raise ServerError("a balancer needs at least one replica")
    o, temp = options, workdir / "temp"
    health = f"max_fails={o.max_fails} fail_timeout={max(1, o.fail_timeout_s)}s"
    http_servers = "".join(f"        server {u.http} {health};\n" for u in upstreams)
    grpc_servers = "".join(f"        server {u.grpc} {health};\n" for u in upstreams)
    access = f"access_log {workdir / 'access.log'} upstream;" if o.access_log else "access_log off;"
    cap = o.max_in_flight_per_replica * len(upstreams)
    # One count for both listeners (the key is their common server_name); in HTTP/2 each stream counts.
    limit = f"limit_conn in_flight {cap};\n        limit_conn_status 503;" if cap else ""
    timeouts = f"connect_timeout {_seconds(o.connect_timeout_s)};"
    return f"""# Written by export/serving/balancer.py; rewritten on every change of replicas.
worker_processes {o.workers};
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
worker_shutdown_timeout {_seconds(o.drain_timeout_s)};
events {{
    worker_connections 4096;
}}
http {{
    log_format upstream '$msec $request_method $uri $status $upstream_addr $upstream_status $request_time';
    {access}
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    client_max_body_size {o.max_body_mb}m;
    client_body_buffer_size 1m;
    keepalive_requests 1000000;
    tcp_nodelay on;
    limit_conn_zone $server_name zone=in_flight:1m;

    upstream triton_http {{
{http_servers}        keepalive {o.keepalive};
        keepalive_requests 1000000;
    }}
    upstream triton_grpc {{
{grpc_servers}        keepalive {o.keepalive};
        keepalive_requests 1000000;
    }}

    server {{
        listen {_listen(o.host, ports[0])};
        server_name balancer;
        keepalive_timeout {"75s" if o.http_keepalive else "0"};
        {limit}
        location / {{
            proxy_pass http://triton_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_{timeouts}
            proxy_send_timeout {_seconds(o.read_timeout_s)};
            proxy_read_timeout {_seconds(o.read_timeout_s)};
        }}
        location ~ {ADMIN_HTTP} {{
            default_type application/json;
            return 403 '{FORBIDDEN_JSON}';
        }}
        error_page 502 504 = @unavailable;
        location @unavailable {{
            default_type application/json;
            return 503 '{UNAVAILABLE_JSON}';
        }}
        error_page 503 = @overloaded;
        location @overloaded {{
            default_type application/json;
            return 503 '{{"error":"{OVERLOADED_MESSAGE}"}}';
        }}
    }}

    server {{
        listen {_listen(o.host, ports[1])} http2;
        server_name balancer;
        # nginx's default, 128 streams per connection, would hold a client's further calls in
        # the client itself, past every limit here and every admission check in Triton.
        http2_max_concurrent_streams {o.max_streams};
        {limit}
        location / {{
            grpc_pass grpc://triton_grpc;
            grpc_next_upstream error timeout http_502 http_503 http_504;
            grpc_{timeouts}
            grpc_send_timeout {_seconds(o.read_timeout_s)};
            grpc_read_timeout {_seconds(o.read_timeout_s)};
        }}
        location ~ {ADMIN_GRPC} {{
            default_type application/grpc;
            add_header grpc-status 7 always;
            add_header grpc-message "admin APIs are per replica: use the replica's own address" always;
            return 204;
        }}
        error_page 502 504 = @unavailable;
        location @unavailable {{
            default_type application/grpc;
            add_header grpc-status 14 always;
            add_header grpc-message "no replica could answer this request: retry it" always;
            return 204;
        }}
        error_page 503 = @overloaded;
        location @overloaded {{
            default_type application/grpc;
            add_header grpc-status 14 always;
            add_header grpc-message "{OVERLOADED_MESSAGE}" always;
            return 204;
        }}
    }}
}}
"""


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _children(pid: int) -> set[int]:
    return {p.pid for p in processes() if int(p.fields[1]) == pid}


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


class Balancer(Started):
    """An nginx process balancing HTTP and gRPC over `upstreams`. Use as a context manager,
    or `start()` then `stop()`. `set_upstreams()` changes the replicas without dropping a request."""

    def __init__(
        self, upstreams: Sequence[Upstream], options: BalancerOptions | None = None, workdir: Path | None = None
    ) -> None:
        self.options = options or BalancerOptions()
        self.upstreams = tuple(upstreams)
        self._temporary = None if workdir is not None else tempfile.TemporaryDirectory(prefix="balancer-")
        self.workdir = Path(workdir if workdir is not None else self._temporary.name).resolve()
        self.ports = self._ports()
        self.process: subprocess.Popen[bytes] | None = None
        self.binary = nginx_binary()

    @property
    def local_host(self) -> str:
        return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.options.host, self.options.host)

    @property
    def http_url(self) -> str:
        return _listen(self.local_host, self.ports[0])

    @property
    def grpc_url(self) -> str:
        return _listen(self.local_host, self.ports[1])

    @property
    def config_path(self) -> Path:
        return self.workdir / "nginx.conf"

    def _ports(self) -> tuple[int, int]:
        o = self.options
        return (o.http_port or free_port(), o.grpc_port or free_port())

    def _nginx(self, *args: str) -> list[str]:
        return [str(self.binary), "-p", str(self.workdir), "-c", str(self.config_path), "-e", "stderr", *args]

    def _write(self, upstreams: Sequence[Upstream]) -> None:
        """Write the config and have nginx check it, so a bad one never reaches the running server."""
        for folder in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "temp" / folder).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(nginx_config(upstreams, self.options, self.workdir, self.ports))
        checked = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True)
        if checked.returncode != 0:
            raise ServerError(f"nginx refused the balancer's config {self.config_path}: {checked.stderr.strip()}")

    def start(self) -> Balancer:
        """Start nginx and wait until both ports accept; on a port taken meanwhile, try others
        (only for ports we picked ourselves)."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self._write(self.upstreams)
            with (self.workdir / "error.log").open("ab") as log:
                self.process = spawn(
                    self._nginx("-g", "daemon off;"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
                )
            try:
                self._wait_until_listening()
                return self
            except ServerError:
                self.stop()
                picked = not (self.options.http_port or self.options.grpc_port)
                if attempt == PORT_ATTEMPTS or not picked or "in use" not in self.log_tail():
                    raise
                self.ports = self._ports()
        raise AssertionError("unreachable")

    def _wait_until_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"nginx exited before it listened{self.log_tail()}")
            if all(_accepts(self.local_host, port) for port in self.ports):
                return
            time.sleep(0.05)
        raise ServerError(f"nginx did not listen on {self.ports} within {timeout:.0f} s{self.log_tail()}")

    def set_upstreams(self, upstreams: Sequence[Upstream], *, drain: bool = True) -> None:
        """Balance over `upstreams` from now on: the config rewritten, then a graceful reload
        (SIGHUP: new workers take new requests, the old ones finish theirs and exit).

        Returns once the new workers run and, with `drain`, once the old ones have exited:
        then no request is in flight to a replica left out, and it can be stopped."""
        if self.process is None or self.process.poll() is not None:
            raise ServerError(f"the balancer is not running{self.log_tail()}")
        self._write(upstreams)
        old = _children(self.process.pid)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + self.options.drain_timeout_s + 10
        while time.monotonic() < deadline:
            current = _children(self.process.pid)
            if current - old and not (drain and current & old):
                self.upstreams = tuple(upstreams)
                return
            time.sleep(0.05)
        raise ServerError(f"nginx did not reload within {self.options.drain_timeout_s + 10:.0f} s{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "error.log"
        if not path.is_file():
            return ""
        return f"; from its log ({path}):\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGQUIT (requests in flight finish), then SIGKILL the group after `timeout` s."""
        process, self.process = self.process, None
        if process is None:
            return None
        return stop_group(process, signal.SIGQUIT, timeout)

    def close(self) -> None:
        self.stop()
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None
