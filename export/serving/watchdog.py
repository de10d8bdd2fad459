"""Bringing back a Python-backend model whose stub process died.

Triton 2.51's Python backend does not restart a stub that died (killed, out of memory):
every later request to that model fails with "Stub process '<model>_0_0' is not healthy",
until someone reloads it. This watchdog does: it follows the stub processes of the server's
process group, and when a model that Triton still reports READY has lost one, it asks the
server to load the model again (repository_api.reload: new stubs swapped in once up, the model
never gone meanwhile, other models untouched). Requests caught in between get that clear,
retryable error, never a wrong result.

It runs inside the launcher (server.py), or beside a server it did not start (`python -m export
watchdog`, `watch()`): in docker compose, a service sharing the server container's process
namespace, reloading through the repository API with the admin key.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from export.serving.repository_api import RepositoryApi

STUB = "triton_python_backend_stub"
SERVER = "tritonserver"


@dataclass(frozen=True)
class Stub:
    """One live stub process: which model instance it serves, and when it started."""

    model: str
    instance: str  # <model>_<group>_<index>: the same name again after a reload
    pid: int
    started: int  # clock ticks since boot: tells a reload's new stub from the one it replaces


@dataclass(frozen=True)
class Process:
    """A live process as /proc shows it: its arguments and the stat fields after its name."""

    pid: int
    args: list[bytes]
    fields: list[str]  # state, ppid, pgrp, ... (stat's fields 3 on; starttime is fields[19])

    @property
    def group(self) -> int:
        return int(self.fields[2])


def processes() -> Iterator[Process]:
    """Every process this one can see, except those gone while read and zombies."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] not in "ZX":
            yield Process(int(proc.name), args, fields)


def stubs(group: int) -> list[Stub]:
    """Live stub processes of process group `group`, read from /proc: a stub's arguments are
    its model.py (in <repository>/<model>/<version>/), ..., its instance name (the 8th)."""
    return [
        Stub(model_of(p.args[1].decode(), p.args[8].decode()), p.args[8].decode(), p.pid, int(p.fields[19]))
        for p in processes()
        if p.group == group and p.args[0].endswith(STUB.encode()) and len(p.args) > 8
    ]


_INSTANCE_SUFFIX = re.compile(r"_\d+_\d+$")  # <model>_<group index>_<instance index>


def model_of(model_file: str, instance: str) -> str:
    """The model a stub serves. Locally its model.py is in <repository>/<model>/<version>/;
    from object storage Triton loads a downloaded copy in a temporary folder (/tmp/folderXYZ/1/),
    whose name says nothing: then the instance name does, for instance groups Triton named
    (ours are unnamed: <model>_<group>_<instance>)."""
    folder = Path(model_file).parent.parent.name
    return folder if instance.startswith(f"{folder}_") else _INSTANCE_SUFFIX.sub("", instance)


class StubWatchdog(threading.Thread):
    """Every `interval` seconds: count each model's instances whose newest stub is alive,
    against the most it has had since it was last (re)loaded. A drop is only a trigger: the
    model is reloaded if Triton still calls it ready and it has fewer live instances than its
    config's instance count (a model unloaded on purpose is not ready).

    Instances, not processes, because a reload's old stubs outlive it: after an unload and
    load, or a reload of a model with two instances, Triton keeps an old stub beside the new
    ones for up to a minute. Counting processes, that old stub hid the death of a new one.
    Each instance counts by its newest stub only.

    The baseline is kept across passes, never re-read after a reload: a stub that dies while
    another model is being reloaded is still noticed on the next pass."""

    def __init__(
        self,
        group: int,
        is_ready: Callable[[str], bool],
        reload: Callable[[str], None],
        instances: Callable[[str], int],
        *,
        interval: float = 0.5,
        say: Callable[[str], None] = print,
    ) -> None:
        super().__init__(name="stub-watchdog", daemon=True)
        self.group, self.is_ready, self.reload, self.instances = group, is_ready, reload, instances
        self.interval, self.say = interval, say
        self.stopping = threading.Event()
        self.reloads: list[str] = []
        self.healthy: Counter[str] = Counter()  # model -> live instances it should have
        self.newest: dict[tuple[str, str], Stub] = {}  # (model, instance) -> its newest stub seen

    def _look(self) -> set[Stub]:
        """One scan of /proc: each live stub newer than its instance's newest becomes it."""
        alive = stubs(self.group)
        for stub in alive:
            known = self.newest.get((stub.model, stub.instance))
            if known is None or stub.started > known.started:
                self.newest[stub.model, stub.instance] = stub
        return set(alive)

    def live(self) -> Counter[str]:
        """Per model, the instances whose newest stub is alive."""
        alive = self._look()
        return Counter(model for (model, _), stub in self.newest.items() if stub in alive)

    def forget(self, model: str) -> None:
        """Drop the model's dead instances: unloaded, or loaded again with fewer of them."""
        alive = self._look()
        for key in [key for key, stub in self.newest.items() if key[0] == model and stub not in alive]:
            del self.newest[key]
        self.healthy[model] = sum(1 for name, _ in self.newest if name == model)  # all alive now

    def run(self) -> None:
        self.healthy = self.live()
        while not self.stopping.wait(self.interval):
            now = self.live()
            self.healthy |= now  # a model loaded, or given more instances
            for model in [model for model, count in self.healthy.items() if now[model] < count]:
                try:
                    self._heal(model)
                except Exception as error:  # the server busy or going away: try again next pass
                    self.say(f"stub-watchdog: reloading {model} failed: {error}")

    def _heal(self, model: str) -> None:
        """Readiness first, then the count: a model that is READY has all its stubs up, so a
        short count then means a dead stub, not a load that finished in between."""
        if self.stopping.wait(self.interval):  # let a load or reload in progress catch up
            return
        if not self.is_ready(model):  # unloaded on purpose, or loading
            self.forget(model)
            return
        live = self.live()[model]
        if live >= self.instances(model) or not self.is_ready(model):
            self.forget(model)  # whole (loaded again with fewer instances), or unloaded just now
            return
        self.say(f"stub-watchdog: a stub of {model} died; reloading {model}")
        self.reload(model)
        self.reloads.append(model)
        self.healthy[model] = self.live()[model]

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def find_server(http_port: int = 8000) -> tuple[int, int] | None:
    """The (pid, process group) of the tritonserver process serving HTTP on `http_port` (by its
    --http-port flag, 8000 without one), if this process can see it: its stubs are in its group."""
    wanted = f"--http-port={http_port}".encode()
    for process in processes():
        ports = [arg for arg in process.args if arg.startswith(b"--http-port=")]
        if Path(process.args[0].decode(errors="replace")).name == SERVER and (
            wanted in ports or (not ports and http_port == 8000)
        ):
            return process.pid, process.group
    return None


def watch(api: RepositoryApi, *, interval: float = 0.5, wait: float = 600.0, say: Callable[[str], None] = print) -> int:
    """Run the watchdog beside a server it did not start, until that server process ends.
    Waits up to `wait` seconds for the server process to appear and be ready. Returns 1 when the
    server is gone (its supervisor restarts it, and whoever runs this should run it again:
    compose's restart policy), 2 if it never came."""
    deadline, port = time.monotonic() + wait, int(api.http_url.rsplit(":", 1)[1])
    while (found := find_server(port)) is None or not _ready(api):
        if time.monotonic() > deadline:
            say(f"stub-watchdog: no ready {SERVER} within {wait:.0f} s")
            return 2
        time.sleep(interval)
    pid, group = found
    watchdog = StubWatchdog(group, api.is_ready, api.reload, api.instances, interval=interval, say=say)
    watchdog.start()
    say(f"stub-watchdog: watching the stubs of {SERVER} pid {pid} (process group {group})")
    try:
        while Path(f"/proc/{pid}").exists():
            time.sleep(interval)
    finally:
        watchdog.stop()
    say(f"stub-watchdog: {SERVER} pid {pid} is gone")
    return 1


def _ready(api: RepositoryApi) -> bool:
    try:
        urllib.request.urlopen(f"http://{api.http_url}/v2/health/ready", timeout=2).close()
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
