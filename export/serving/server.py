"""Run the real Triton server that ships in the `nvidia-pytriton` wheel, on the CPU.

The wheel holds the `tritonserver` binary, its shared libraries and the Python backend, but
keeps the backend's stub apart from the backend folder. We assemble a backend folder of our
own (links to the backend library, its utils module and the stub for this Python), point the
server's libraries and Python-backend imports at the wheel and this environment, and start
the binary in a process group of its own so that stopping it also stops its stub processes.
Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from export.errors import UserError
from export.repository.layout import DEFAULT_REPOSITORY, model_names
from export.serving.object_store import current, is_remote, remote_models
from export.serving.repository_api import ADMIN_KEY_HEADER, RepositoryApi
from export.serving.watchdog import StubWatchdog

CONTROL_MODES = ("none", "explicit")
# APIs that change the server or read beyond inference results: behind the admin key.
RESTRICTED_APIS = ("model-repository", "logging", "trace", "shared-memory")
GRPC_ADMIN_KEY_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"  # gRPC metadata: Triton prefixes it


class ServerError(UserError):
    """The server could not be found, started, or did not become ready."""


@dataclass(frozen=True)
class ServerOptions:
    # A folder, or an object-storage URL Triton reads itself (object_store.py: s3://, gs://, as://).
    repository: Path | str = DEFAULT_REPOSITORY
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_control_mode: str = "none"
    load_models: tuple[str, ...] = ()
    log_verbose: int = 0
    admin_key: str | None = None
    restart_dead_stubs: bool = True
    # Triton's local response cache, used by ensembles exported with --response-cache. Memory
    # is taken as entries arrive (a 384-d embedding is about 1.6 kB), up to this bound; the
    # least recently used entries go first.
    cache_mb: int = 256
    extra_args: tuple[str, ...] = field(default=())

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: assume it can be reached from elsewhere
            return False

    @property
    def local_host(self) -> str:
        """Where a client on this machine reaches the server (a wildcard bind is not an address)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    @property
    def http_url(self) -> str:
        return f"{_bracket(self.local_host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_bracket(self.local_host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_bracket(self.local_host)}:{self.metrics_port}/metrics"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class TritonInstall:
    """The pieces of the nvidia-pytriton wheel the server needs."""

    binary: Path
    libraries: Path
    python_backend: Path
    stub: Path
    caches: Path  # holds local/libtritoncache_local.so, the response cache

    @classmethod
    def find(cls) -> TritonInstall:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise ServerError("the Triton server comes from the nvidia-pytriton wheel: pip install -e '.[serve]'")
        package = Path(next(iter(spec.submodule_search_locations)))
        server = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            binary=server / "bin" / "tritonserver",
            libraries=package.parent / "nvidia_pytriton.libs",
            python_backend=server / "backends" / "python",
            stub=server / "python_backend_stubs" / version / "triton_python_backend_stub",
            caches=server / "caches",
        )
        parts = (install.binary, install.libraries, install.python_backend, install.stub, install.caches)
        missing = [path for path in parts if not path.exists()]
        if missing:
            raise ServerError(f"nvidia-pytriton is incomplete, missing: {', '.join(map(str, missing))}")
        _check_libpython(version)
        return install

    def backend_directory(self, parent: Path) -> Path:
        """A `--backend-directory` whose python/ folder also holds the stub (as the NGC image has)."""
        python = parent / "backends" / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in (
            self.python_backend / "libtriton_python.so",
            self.python_backend / "triton_python_backend_utils.py",
            self.stub,
        ):
            (python / source.name).symlink_to(source)
        return python.parent


def _check_libpython(version: str) -> None:
    """The stub links the system's shared libpython, not the interpreter running us."""
    name = f"libpython{version}.so.1.0"
    try:
        ctypes.CDLL(name)
    except OSError:
        raise ServerError(
            f"the Python-backend stub needs {name}; install it with: apt-get install -y libpython{version}"
        ) from None


def server_environment(install: TritonInstall) -> dict[str, str]:
    """The server's own libraries first, and this environment's packages for the stubs.

    The stub embeds libpython in isolated mode: PYTHONPATH is ignored. What it does honour is
    a venv: it looks up `python3` on PATH as its executable and reads the `pyvenv.cfg` beside
    it, exactly as a venv's own interpreter does. Putting this interpreter's folder first on
    PATH makes Python-backend models import numpy, tokenizers and onnxruntime from here.
    """
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(install.libraries), env.get("LD_LIBRARY_PATH")]))
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    return env


def free_port() -> int:
    """A TCP port on loopback that is free now (tests and benchmarks start servers on these)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_ports_free(options: ServerOptions) -> None:
    for label, port in (("HTTP", options.http_port), ("gRPC", options.grpc_port), ("metrics", options.metrics_port)):
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((options.host, port))
            except OSError as error:
                raise ServerError(
                    f"cannot use port {port} ({label}) on {options.host}: {error.strerror}; "
                    f"pick another with --{label.lower()}-port"
                ) from None


def check_exposure(options: ServerOptions) -> None:
    """Off loopback, the admin APIs (load, unload, logging, trace) must be behind a key."""
    if not options.loopback and not options.admin_key:
        raise ServerError(
            f"binding {options.host} would let anyone who reaches it load and unload models: "
            "pass --admin-key KEY (or set TRITON_ADMIN_KEY), or bind 127.0.0.1"
        )


def check_repository(options: ServerOptions, repository: Path | str | None = None) -> None:
    """The repository exists and holds the models asked for. `repository`: where the server will
    read it, when that is not options.repository (the release an s3:// prefix points to)."""
    repository = options.repository if repository is None else repository
    if options.model_control_mode not in CONTROL_MODES:
        raise ServerError(f"model control mode must be one of {', '.join(CONTROL_MODES)}")
    if is_remote(repository):
        if not str(repository).startswith("s3://"):
            return  # gs:// and as://: Triton reports what it cannot read
        present = remote_models(str(repository))
    else:
        repository = Path(repository)
        if not repository.is_dir():
            raise ServerError(f"model repository {repository} does not exist; export a model first (README.md)")
        present = model_names(repository)
    if options.model_control_mode == "none" and not present:
        raise ServerError(f"model repository {repository} holds no models; export one first (README.md)")
    absent = [name for name in options.load_models if name not in present]
    if absent:
        raise ServerError(f"not in {repository}: {', '.join(absent)} (it has: {', '.join(present) or 'nothing'})")


def repository_location(repository: Path | str) -> str:
    """The --model-repository value: a URL as it is, a folder as an absolute path."""
    return str(repository) if is_remote(repository) else str(Path(repository).resolve())


def stop_group(process: subprocess.Popen[bytes], first: int, timeout: float) -> int:
    """Send `first` (SIGTERM, SIGQUIT: the graceful stop of that program), give it `timeout`
    seconds to exit, then SIGKILL its whole process group, so nothing it started (stubs,
    workers) outlives it. Returns its exit code."""
    if process.poll() is None:
        process.send_signal(first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # leftovers share the group
    return process.wait()


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the launching process dies, so no server
    outlives a killed `serve` or test run. Only where setpriv is missing (see `spawn`)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(command: Sequence[str], **options) -> subprocess.Popen[bytes]:
    """Start `command` in a session of its own, to get SIGTERM when this process dies.

    The parent-death signal is set by util-linux's setpriv in front of the command, which then
    execs it (same pid), not by a preexec_fn: a function run between fork and exec in a process
    with threads can abort the child (seen in tests/test_replicas.py: a replica restarted while
    gRPC client threads ran died of abseil's mutex check, SIGABRT, before exec). Without a
    preexec_fn Python starts the child with vfork, and nothing runs before exec.

    The signal follows the thread that started the child, not the process: the replica
    supervisor restarts replicas from its own thread, which lives as long as they do."""
    setpriv = shutil.which("setpriv")
    prefix = [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
    hook = None if setpriv else die_with_parent
    process = subprocess.Popen([*prefix, *command], start_new_session=True, preexec_fn=hook, **options)
    if setpriv:
        _wait_until_armed(process, os.path.realpath(setpriv))
    return process


def _wait_until_armed(process: subprocess.Popen[bytes], launcher: str, timeout: float = 10.0) -> None:
    """Return once setpriv has exec'd the command, so its parent-death signal is set.

    Popen returns while the child may still be setpriv, before its prctl. A parent killed in
    that window leaves the command running for good: the signal is armed only after the parent
    is gone, and never fires (seen once in CI: a `sleep` outlived its SIGKILLed parent).
    setpriv calls prctl before exec, so a new executable means the signal is in place."""
    exe = f"/proc/{process.pid}/exe"
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if os.readlink(exe) != launcher:
                return
        except OSError:  # exited between poll() and readlink
            return
        time.sleep(0.001)


def serving_flags(load_models: Sequence[str] = ("*",), *, cache_mb: int, admin_key: str | None) -> list[str]:
    """The tritonserver flags every deployment passes, wherever it runs: `serve` here, and the
    Kubernetes files (deploy/kubernetes, checked against this list by tests/test_kubernetes.py).
    Only addresses, ports, the repository and machine-specific flags are left to each."""
    flags = [
        "--metrics-config=summary_latencies=true",  # p50/p99 per model on the metrics port
        # "none" runs as explicit with every model loaded at start: the same models, and
        # the repository API the stub watchdog reloads a model through.
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in load_models),
        "--strict-readiness=true",
        "--exit-timeout-secs=10",
    ]
    if cache_mb:
        flags.append(f"--cache-config=local,size={cache_mb * 1024 * 1024}")
    if admin_key:
        restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_KEY_HEADER}={admin_key}"
        flags += [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
    return flags


_S = TypeVar("_S", bound="Started")


class Started:
    """A context manager for what has `start()` (returning itself) and `close()`: closed again
    when starting fails, so no half-started process or temporary folder is left behind."""

    def start(self: _S) -> _S:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


class TritonServer:
    """A tritonserver process. Use as a context manager, or `start()` then `stop()`.

    `log` is where the server's output goes: None forwards it to our own stdout/stderr.
    """

    def __init__(self, options: ServerOptions, log: IO[bytes] | None = None) -> None:
        self.options = options
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.watchdog: StubWatchdog | None = None
        self.repository: Path | str = options.repository  # what it reads: an s3:// prefix's current release
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    def command(self, backend_directory: Path, install: TritonInstall) -> list[str]:
        o = self.options
        loads = ("*",) if o.model_control_mode == "none" else o.load_models
        cmd = [
            str(install.binary),
            f"--model-repository={repository_location(self.repository)}",
            f"--backend-directory={backend_directory}",
            f"--http-address={o.host}",
            f"--http-port={o.http_port}",
            f"--grpc-address={o.host}",
            f"--grpc-port={o.grpc_port}",
            f"--metrics-address={o.host}",
            f"--metrics-port={o.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",  # CPU only: no pinned (page-locked) staging buffers
            f"--log-verbose={o.log_verbose}",
        ]
        if o.cache_mb:
            cmd.append(f"--cache-directory={install.caches}")
        return cmd + serving_flags(loads, cache_mb=o.cache_mb, admin_key=o.admin_key) + list(o.extra_args)

    def start(self) -> TritonServer:
        check_exposure(self.options)
        # An s3:// prefix is resolved at every start: a restarted server serves the newest release.
        self.repository = current(self.options.repository)
        check_repository(self.options, self.repository)
        check_ports_free(self.options)
        install = TritonInstall.find()
        self._workdir = tempfile.TemporaryDirectory(prefix="tritonserver-")
        backends = install.backend_directory(Path(self._workdir.name))
        self.process = spawn(
            self.command(backends, install),
            env=server_environment(install),
            stdout=self.log,
            stderr=subprocess.STDOUT if self.log else None,
        )
        return self

    def wait_until_ready(self, timeout: float = 300.0) -> None:
        """Poll /v2/health/ready, failing early if the process exits."""
        url = f"http://{self.options.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServerError(f"tritonserver exited with code {code} before it was ready{self._log_hint()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s{self._log_hint()}")

    @property
    def repository_api(self) -> RepositoryApi:
        """The server's repository API (load, reload, state), with its admin key."""
        return RepositoryApi(self.options.http_url, self.options.admin_key)

    def start_watchdog(self) -> None:
        """Reload any model whose Python-backend stub dies (watchdog.py)."""
        if self.options.restart_dead_stubs and self.process is not None and self.watchdog is None:
            api = self.repository_api
            self.watchdog = StubWatchdog(self.process.pid, api.is_ready, api.reload, api.instances, say=self._say)
            self.watchdog.start()

    @staticmethod
    def _say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def _log_hint(self, lines: int = 60) -> str:
        """The end of the server's log file, if it writes to one (else it is on our terminal)."""
        name = getattr(self.log, "name", None)
        if not isinstance(name, str) or not Path(name).is_file():
            return ""
        self.log.flush()
        tail = Path(name).read_text(errors="replace").splitlines()[-lines:]
        return f"; the end of its log ({name}):\n" + "\n".join(tail)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton unloads models and ends its stubs), then SIGKILL whatever remains."""
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        process, self.process = self.process, None
        code = None
        if process is not None:
            code = stop_group(process, signal.SIGTERM, timeout)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        return code

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_until_ready()
            self.start_watchdog()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_until_stopped(
    server: TritonServer, on_ready: Callable[[], None], *, max_restarts: int = 5, window: float = 300.0
) -> int:
    """Run the server until it is stopped; restart it when it dies on its own.

    Triton can crash on a single request (2.51's HTTP frontend segfaults on a JSON body
    holding a string of 4 MiB or more, see docs/reliability.md). A crash ends every request
    in flight; the restart brings the service back without an operator. More than
    `max_restarts` crashes within `window` seconds is a loop, not an accident: give up.
    Returns the exit code to report. KeyboardInterrupt (our SIGINT/SIGTERM) stops it.
    """
    crashes: list[float] = []
    while True:
        server.start()
        try:
            server.wait_until_ready()
        except ServerError:
            code = server.process.returncode if server.process is not None else None
            server.stop()
            if code is None or code >= 0:  # its own error (a model failed to load...): no retry
                raise
            # else killed by a signal while starting (a request can reach it first): a crash
        else:
            server.start_watchdog()
            on_ready()
            code = server.process.wait()
            server.stop()
        now = time.monotonic()
        crashes = [t for t in crashes if now - t < window] + [now]
        if len(crashes) > max_restarts:
            print(f"error: tritonserver died {len(crashes)} times in {window:.0f} s; giving up", file=sys.stderr)
            return code or 1
        print(f"tritonserver exited with code {code}; restarting it", file=sys.stderr, flush=True)
