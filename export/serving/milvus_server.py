"""Run a real Milvus 2.3.5 standalone server, from the PyPI `milvus` wheel, for tests and benchmarks.

The wheel ships the server binary and its libraries (lzma-compressed) with a small launcher,
`milvus-server`, whose pins clash with ours: it lives in a venv of its own (`make test` builds
`.tools/milvus`; elsewhere set MILVUS_SERVER_VENV). We do what that launcher does, from here:
unpack the binaries once, fill the wheel's config template, and run `milvus run standalone`
in the data folder, with what the launcher leaves out so that two servers can run on one
machine at once (docs/search.md, "Scale-out"): every port free and chosen here, the embedded
etcd on ports of its own (ETCD_CONFIG_PATH), every role advertising 127.0.0.1, its own run
folder (it locks a pid file there), and a short graceful stop (the default 1,800 s makes
SIGTERM hang). The server is in a process group of its own and gets SIGTERM if we die. It is
ready when healthy and listening on its proxy port, which Milvus 2.3.5 does not check itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import lzma
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from export.serving.server import ServerError, Started, free_port, spawn, stop_group

VENV_VARIABLE = "MILVUS_SERVER_VENV"
DEFAULT_VENV = Path(__file__).resolve().parents[2] / ".tools" / "milvus"
VERSION = "2.3.5"
# Every role of the standalone process: each advertises (and dials) <role>.ip.
ROLES = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
# The template's `{{ name(type): default }}` placeholders (the wheel's own little template syntax).
PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*(?:\([a-z]+\))?\s*(?::\s*([^}]*?))?\s*\}\}")
PORTS = (
    "etcd_port",
    "root_coord_port",
    "proxy_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)
# Settings beside the template's: dotted keys of milvus.yaml. Sessions last `ttl` seconds in etcd:
# a server restarted after a stop that did not end them waits them out.
SETTINGS = {
    "common.gracefulStopTimeout": 3,
    "common.session.ttl": 10,
    "log.level": "warn",
    "rootCoord.dmlChannelNum": 4,  # 16 by default: each channel is a stream every node follows
    # A read right after a write waits for the next time ticks: about 90 ms at 50, 300-400 ms at the
    # default 200, for about 11% of a core at rest instead of 5% (docs/search.md).
    "proxy.timeTickInterval": 50,
    **{f"{role}.ip": "127.0.0.1" for role in ROLES},
}
LOG_NAME = "milvus.log"
PORT_TAKEN = "address already in use"
PORT_ATTEMPTS = 3
PROXY_GRACE = 5.0  # seconds from healthy to listening on the proxy port


class MilvusServerError(ServerError):
    """The Milvus server could not be found, started, or did not become ready."""


class PortTakenError(MilvusServerError):
    """Another process took one of the server's ports between our choosing and its binding it."""


@dataclass(frozen=True)
class MilvusInstall:
    """The `milvus` wheel installed in its own venv: the compressed binaries and the templates."""

    venv: Path
    data: Path  # site-packages/milvus/data: bin/*.lzma, config.yaml.template, glog.conf

    @classmethod
    def find(cls, venv: Path | None = None) -> MilvusInstall:
        venv = venv or Path(os.environ.get(VENV_VARIABLE) or DEFAULT_VENV)
        found = sorted(venv.glob("lib/python3*/site-packages/milvus/data/config.yaml.template"))
        if not found:
            raise MilvusServerError(
                f"no Milvus server in {venv}: run `make milvus-server` (a venv with the PyPI wheel "
                f"milvus=={VERSION}), or point {VENV_VARIABLE} at such a venv"
            )
        return cls(venv, found[-1].parent)

    def binaries(self) -> Path:
        """The folder holding the `milvus` binary and its libraries, unpacked on first use.

        Unpacked once per venv (246 MB, about 6 s), not per data folder as the wheel's launcher
        does; a lock keeps two test sessions from unpacking into each other.
        """
        folder = self.venv / "milvus-bin"
        stamp = folder / ".unpacked"
        packed = sorted((self.data / "bin").glob("*.lzma"))
        wanted = "\n".join(f"{path.name} {path.stat().st_size}" for path in packed)
        if stamp.is_file() and stamp.read_text() == wanted:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        with open(self.venv / "milvus-bin.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if stamp.is_file() and stamp.read_text() == wanted:
                return folder
            for path in packed:
                partial = folder / f".{path.stem}.partial"
                with lzma.open(path) as source, open(partial, "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
                partial.chmod(0o755)
                partial.replace(folder / path.stem)
            stamp.write_text(wanted)
        return folder

    def config(self, values: dict[str, object], settings: dict[str, object]) -> str:
        """milvus.yaml: the wheel's template with `values` filled in, then `settings` applied."""
        template = (self.data / "config.yaml.template").read_text(encoding="utf-8")

        def fill(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in values:
                return _yaml_value(values[name])
            if default is None:
                raise MilvusServerError(f"the Milvus config template needs a value for {name}")
            return default

        return apply_settings(PLACEHOLDER.sub(fill, template), settings)


def apply_settings(text: str, settings: dict[str, object]) -> str:
    """Set dotted keys (`proxy.ip`) of a YAML text written two spaces a level, keeping its comments.

    The wheel's launcher edits its template the same way; every key must already be in the text.
    """
    lines, path, seen = [], [], set()
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z0-9_]+):([^#]*)(#.*)?$", line)
        if match and not line.lstrip().startswith("#"):
            level = len(match.group(1)) // 2
            path = [*path[:level], match.group(2)]
            key = ".".join(path)
            if key in settings:
                line = f"{match.group(1)}{match.group(2)}: {_yaml_value(settings[key])}"
                seen.add(key)
        lines.append(line)
    missing = sorted(set(settings) - seen)
    if missing:
        raise MilvusServerError(f"the Milvus config template has no {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def _yaml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200 and b"OK" in response.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _listening(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (from /proc: its sockets, and the kernel's tables)."""
    sockets = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    sockets.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in sockets:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _free_ports() -> dict[str, int]:
    return {name: free_port() for name in (*PORTS, "metrics_port", "etcd_peer_port")}


def etcd_config(client_port: int, peer_port: int) -> str:
    """The embedded etcd's own config: loopback ports of its own, not 2379 and 2380."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return (
        f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
        f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\n"
    )


class MilvusServer(Started):
    """A Milvus standalone process on loopback. Use as a context manager, or `start()` then `stop()`.

    `data` is its folder (config, logs, etcd, segments); by default a temporary one, removed on
    exit. A `stop()` keeps it and the ports: `start()` again is a restart on the same data and
    at the same `uri`. `settings` (dotted keys of milvus.yaml) go over SETTINGS.
    """

    def __init__(
        self,
        data: Path | None = None,
        *,
        settings: dict[str, object] | None = None,
        venv: Path | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.install = MilvusInstall.find(venv)
        self.settings = SETTINGS | (settings or {})
        self.startup_timeout = startup_timeout
        self._temporary = None if data is not None else tempfile.TemporaryDirectory(prefix="milvus-")
        self.data = data if data is not None else Path(self._temporary.name)
        self._fresh = not self.data.is_dir() or not any(self.data.iterdir())
        self.ports = _free_ports()
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False  # once started, the ports stay: a restart is at the same uri

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy_port']}"

    @property
    def log_path(self) -> Path:
        return self.data / "logs" / LOG_NAME

    def _prepare(self) -> dict[str, str]:
        """Write the configs into the data folder; returns the server's environment."""
        configs, logs, storage = self.data / "configs", self.data / "logs", self.data / "data"
        for folder in (configs, logs, storage, self.data / "run"):
            folder.mkdir(parents=True, exist_ok=True)
        values = {name: port for name, port in self.ports.items() if name in PORTS}
        values |= {
            "etcd_log_path": logs / "etcd.log",
            "etcd_data_dir": storage / "etcd.data",
            "local_storage_dir": storage,
            "rocksmq_data_dir": storage / "rocksmq",
            "system_log_path": "",  # no log files of its own: everything goes to its stdout, our log
        }
        settings = self.settings | {"etcd.endpoints": f"127.0.0.1:{self.ports['etcd_port']}"}
        (configs / "milvus.yaml").write_text(self.install.config(values, settings), encoding="utf-8")
        shutil.copy(self.install.data / "glog.conf", configs / "glog.conf")
        etcd = configs / "etcd.yaml"
        etcd.write_text(etcd_config(self.ports["etcd_port"], self.ports["etcd_peer_port"]), encoding="utf-8")
        # Milvus reads every environment variable as a setting too (PROXY_PORT is proxy.port):
        # give it only what it needs, so nothing of ours changes its config.
        env = {name: os.environ[name] for name in ("PATH", "HOME", "TMPDIR", "LANG") if name in os.environ}
        return env | {
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.ports["metrics_port"]),
            "ETCD_CONFIG_PATH": str(etcd),
            "MILVUS_RUN_DIR": str(self.data / "run"),
            "LD_LIBRARY_PATH": str(self.install.binaries()),
        }

    def start(self) -> MilvusServer:
        """Start the server and wait until it is ready; raises with its log's end if it is not.

        If a port was taken between our choosing it and Milvus binding it (another test session
        on the machine), a first start tries again on new ports; a restart keeps its `uri`.
        """
        if self.process is not None:
            raise MilvusServerError("the Milvus server is already running")
        for attempt in range(1, PORT_ATTEMPTS + 1):
            offset = self._launch()
            try:
                self._wait_until_ready()
            except MilvusServerError as error:
                self.stop()
                taken = isinstance(error, PortTakenError) or PORT_TAKEN in self._log_since(offset)
                if self._started or attempt == PORT_ATTEMPTS or not taken:
                    raise
                self.ports = _free_ports()
                if self._fresh:  # nothing of anyone's yet: start clean, not waiting out the last try's sessions
                    shutil.rmtree(self.data / "data", ignore_errors=True)
            except BaseException:
                self.stop()
                raise
            else:
                self._started = True
                return self
        raise AssertionError("unreachable")

    def _launch(self) -> int:
        """Start the process; returns where its output begins in the log."""
        env = self._prepare()
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self.process = spawn(
                [str(Path(env["LD_LIBRARY_PATH"]) / "milvus"), "run", "standalone"],
                cwd=self.data,  # it reads configs/milvus.yaml from here
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return offset

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _wait_until_ready(self) -> None:
        """Healthy on its metrics port, and listening on its proxy port: Milvus 2.3.5 reports
        itself healthy even when its proxy could not bind that port (seen)."""
        url = f"http://127.0.0.1:{self.ports['metrics_port']}/healthz"
        deadline, healthy = time.monotonic() + self.startup_timeout, None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise MilvusServerError(f"milvus exited with code {code} before it was ready{self.log_tail()}")
            if healthy is None and _answers(url):
                healthy = time.monotonic()
            if healthy is not None:
                if self.ports["proxy_port"] in _listening(self.process.pid):
                    return
                if time.monotonic() - healthy > PROXY_GRACE:
                    raise PortTakenError(
                        f"milvus is up but not listening on its port {self.ports['proxy_port']}: "
                        f"another process holds it{self.log_tail()}"
                    )
            time.sleep(0.25)
        raise MilvusServerError(f"milvus was not ready after {self.startup_timeout:.0f} s{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the log; for a Go panic, the lines up to the panic's message instead (what
        follows it is a dump of every goroutine)."""
        if not self.log_path.is_file():
            return ""
        logged = self.log_path.read_text(errors="replace").splitlines()
        panics = [i for i, line in enumerate(logged) if line.startswith(("panic: ", "fatal error: "))]
        shown = logged[max(0, panics[-1] - lines + 1) : panics[-1] + 1] if panics else logged[-lines:]
        return f"; from its log ({self.log_path}):\n" + "\n".join(shown)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL the group after `timeout` s. Milvus 2.3.5's graceful stop ends after
        common.gracefulStopTimeout with a loaded collection, but was seen to hang for over 20 s after
        a restart from SIGKILL; a test server's writes are in its log either way."""
        process, self.process = self.process, None
        if process is None:
            return None
        return stop_group(process, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL, no graceful stop: what a crash or an OOM kill does."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def close(self) -> None:
        """Stop, and remove the data folder if it is a temporary one."""
        self.stop()
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None
