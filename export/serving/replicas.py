"""N tritonservers on one repository behind one nginx (balancer.py): crashes and new releases
without a failed request.

Each replica is the same TritonServer as `serve` runs (its stub watchdog too), on loopback
ports of its own; the balancer listens on the options' host and HTTP/gRPC ports. The
repository is passed through as an opaque `ServerOptions.repository` (a folder today, an
object-store URL works the same), so every replica reads the same release.

A replica that dies on its own is restarted (`supervise`, on by default), as `serve` restarts
its one server: a replica set whose dead members stay dead loses capacity without anyone
noticing, until the next crash takes the service down. Kubernetes would restart the pod; here
nothing else would. The restart is taken out of the balancer first (passive health would
otherwise keep probing it every fail_timeout) and put back once ready. More than
`max_restarts` deaths of one replica within `window` seconds is a crash loop, not an accident:
it is left out, and said so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import IO

from export.serving.balancer import Balancer, BalancerOptions, Upstream
from export.serving.object_store import current
from export.serving.server import ServerError, ServerOptions, Started, TritonServer, free_port

REPLICA_HOST = "127.0.0.1"  # only the balancer reaches a replica


def pin(repository: Path | str) -> Path | str:
    """The release every replica is to serve: for an s3:// prefix, the one its CURRENT names now
    (object_store.py), resolved once. Replicas given the prefix itself would each resolve it when
    they start: a push during a roll, or a crashed replica restarted after one, would mix
    releases, and a failed roll could not go back (the prefix would point at the failing one)."""
    return current(repository)


class Replica:
    """One tritonserver of the set: its server, its log, and whether it is meant to run."""

    def __init__(self, index: int, options: ServerOptions, log_path: Path) -> None:
        self.index, self.options, self.log_path = index, options, log_path
        self.server: TritonServer | None = None
        self.wanted = False  # meant to run: down while wanted is a crash, for the supervisor
        self.deaths: list[float] = []
        self._log: IO[bytes] | None = None

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.options.http_url, self.options.grpc_url)

    @property
    def running(self) -> bool:
        process = self.server.process if self.server is not None else None
        return process is not None and process.poll() is None

    @property
    def crashed(self) -> bool:
        return self.wanted and not self.running

    def launch(self) -> None:
        self._log = self._log or self.log_path.open("ab")
        self.server = TritonServer(self.options, log=self._log)
        self.server.start()

    def wait_until_ready(self, timeout: float) -> None:
        """Ready, with its stub watchdog; on failure it is stopped and the error raised."""
        try:
            self.server.wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.server.start_watchdog()
        self.wanted = True

    def stop(self) -> None:
        """SIGTERM: Triton finishes what it holds, unloads, and exits."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def close(self) -> None:
        self.wanted = False
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


class Replicas(Started):
    """`count` tritonservers on `options.repository` behind one balancer on `options.host`,
    `options.http_port` and `options.grpc_port`. Use as a context manager, or `start()` then `close()`.

    `logs`: a folder for replica-N.log and the balancer's files (by default a temporary one)."""

    def __init__(
        self,
        options: ServerOptions,
        count: int = 2,
        *,
        logs: Path | None = None,
        balancer: BalancerOptions | None = None,
        supervise: bool = True,
        ready_timeout: float = 300.0,
        max_restarts: int = 5,
        window: float = 300.0,
    ) -> None:
        if count < 1:
            raise ServerError("replicas: count must be at least 1")
        self.options = options
        self._temporary = None if logs is not None else tempfile.TemporaryDirectory(prefix="replicas-")
        self.logs = Path(logs if logs is not None else self._temporary.name)
        self.logs.mkdir(parents=True, exist_ok=True)
        pinned = replace(options, repository=pin(options.repository))
        self.replicas = [
            Replica(i, self._replica_options(pinned), self.logs / f"replica-{i}.log") for i in range(count)
        ]
        ports = {"http_port": options.http_port, "grpc_port": options.grpc_port}
        self.balancer_options = replace(balancer or BalancerOptions(), host=options.host, **ports)
        self.balancer: Balancer | None = None
        self.supervise, self.ready_timeout = supervise, ready_timeout
        self.max_restarts, self.window = max_restarts, window
        self.restarts = 0  # replicas restarted after a crash, for tests and operators
        self._lock = threading.Lock()  # one change of the set at a time: roll, restart, recovery
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @staticmethod
    def _replica_options(options: ServerOptions) -> ServerOptions:
        return replace(
            options, host=REPLICA_HOST, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
        )

    @property
    def http_url(self) -> str:
        return self._running_balancer().http_url

    @property
    def grpc_url(self) -> str:
        return self._running_balancer().grpc_url

    @property
    def servers(self) -> list[TritonServer | None]:
        """Each replica's server (its own addresses: `options.http_url`...), None while it is down."""
        return [replica.server for replica in self.replicas]

    def _running_balancer(self) -> Balancer:
        if self.balancer is None:
            raise ServerError("the replicas are not started")
        return self.balancer

    def start(self) -> Replicas:
        """Start every replica (their start-ups overlap), then the balancer over them."""
        for replica in self.replicas:
            replica.launch()
        for replica in self.replicas:
            replica.wait_until_ready(self.ready_timeout)
        self.balancer = Balancer(self._upstreams(), self.balancer_options, self.logs / "balancer").start()
        if self.supervise:
            self._supervisor = threading.Thread(target=self._supervise, name="replicas-supervisor", daemon=True)
            self._supervisor.start()
        return self

    def _upstreams(self, leave_out: int | None = None) -> list[Upstream]:
        return [r.upstream for r in self.replicas if r.index != leave_out and r.running]

    def _set_upstreams(self, leave_out: int | None = None) -> None:
        """Balance over the running replicas but `leave_out`, and wait for the old workers to
        finish their requests. With none left (one replica, restarting), the config stays:
        nginx answers 503 / UNAVAILABLE meanwhile, which clients retry."""
        if upstreams := self._upstreams(leave_out):
            self._running_balancer().set_upstreams(upstreams)

    def kill(self, index: int) -> None:
        """SIGKILL replica `index` and its stubs, as a crash or an out-of-memory kill does. The
        supervisor (if on) restarts it; else `restart(index)` does."""
        server = self.replicas[index].server
        if server is not None and server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()

    def restart(self, index: int) -> None:
        """Take replica `index` out, stop it (if running), start it again, put it back."""
        with self._lock:
            self._replace(index, self.replicas[index].options)

    def roll(self, repository: Path | str) -> None:
        """Serve `repository` (a new release) from every replica, one replica at a time: taken
        out of the balancer, its requests finished, stopped, started on the new repository,
        ready, put back. The others serve meanwhile, so no request fails; old and new releases
        both answer during the roll (give a changed pipeline a new name if that matters).
        `repository`: a folder, a release's URL, or an s3:// prefix: the release its CURRENT
        names when the roll begins (`push` moved it there) goes to every replica.

        If a replica cannot serve the new release, it is started again on the one it had and
        the roll stops there: ServerError, the rest still on the old release."""
        if len(self.replicas) < 2:
            raise ServerError("a roll without downtime needs at least two replicas")
        release = pin(repository)
        for replica in self.replicas:
            with self._lock:
                old = replica.options
                try:
                    self._replace(replica.index, replace(old, repository=release))
                except ServerError as error:
                    self._replace(replica.index, old)
                    stopped = f"the roll stopped at replica {replica.index}, back on its release"
                    raise ServerError(f"{stopped}: {error}") from None
        self.options = replace(self.options, repository=repository)

    def _replace(self, index: int, options: ServerOptions) -> None:
        """Replica `index` out of the balancer and drained, stopped, started with `options`, back in."""
        replica = self.replicas[index]
        if replica.upstream in self._running_balancer().upstreams:  # running, or dead and still balanced to
            self._set_upstreams(leave_out=index)
        replica.stop()
        replica.options = options
        replica.launch()
        replica.wait_until_ready(self.ready_timeout)
        self._set_upstreams()

    def _supervise(self, interval: float = 0.5) -> None:
        while not self._stopping.wait(interval):
            for replica in self.replicas:
                if replica.crashed:
                    with self._lock:
                        if replica.crashed and not self._stopping.is_set():
                            self._recover(replica)

    def _recover(self, replica: Replica) -> None:
        now = time.monotonic()
        replica.deaths = [t for t in replica.deaths if now - t < self.window] + [now]
        code = replica.server.process.returncode if replica.server and replica.server.process else None
        if len(replica.deaths) > self.max_restarts:
            _say(f"replica {replica.index} died {len(replica.deaths)} times in {self.window:.0f} s; left out")
            replica.wanted = False
            replica.stop()
            self._set_upstreams()
            return
        _say(f"replica {replica.index} (tritonserver) exited with code {code}; restarting it")
        try:
            self._replace(replica.index, replica.options)
            self.restarts += 1
        except ServerError as error:  # tried again on the next look, within the crash-loop bound
            _say(f"replica {replica.index} did not come back: {error}")

    def close(self) -> None:
        """Stop the supervisor, the balancer, then every replica."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        if self.balancer is not None:
            self.balancer.close()
            self.balancer = None
        with ThreadPoolExecutor(len(self.replicas)) as pool:  # each takes seconds to unload: together
            list(pool.map(Replica.close, self.replicas))
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
