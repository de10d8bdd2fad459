"""Bringing back a Python-backend model whose stub process died.

Triton 2.51's Python backend does not restart a stub that died (killed, out of memory):
every later request to that model fails with "Stub process '<model>_0_0' is not healthy",
until someone reloads it. This watchdog does: it follows the stub processes of the server's
process group, and when a model that Triton still reports READY has lost one, it asks the
server to load the model again (a reload: new stubs, same name, other models untouched).
Requests caught in between get that clear error, never a wrong result.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

STUB = "triton_python_backend_stub"


def stubs(group: int) -> Counter[str]:
    """Live stub processes of process group `group`, counted per model (read from /proc: a
    stub's second argument is its model.py, in <repository>/<model>/<version>/)."""
    counts: Counter[str] = Counter()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state not in "ZX" and args[0].endswith(STUB.encode()) and len(args) > 1:
            counts[Path(args[1].decode()).parent.parent.name] += 1
    return counts


class StubWatchdog(threading.Thread):
    """Every `interval` seconds: count each model's live stubs against the most it has had
    since it was last (re)loaded. A drop is only a trigger: the model is reloaded if Triton
    still calls it ready and it has fewer stubs than its config's instance count (a model
    unloaded on purpose is not ready; an unload followed at once by a load briefly shows the
    old stub beside the new one, which is not a loss).

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
        self.healthy: Counter[str] = Counter()  # model -> stubs it should have

    def run(self) -> None:
        self.healthy = stubs(self.group)
        while not self.stopping.wait(self.interval):
            now = stubs(self.group)
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
            self.healthy[model] = stubs(self.group)[model]
            return
        live = stubs(self.group)[model]
        if live >= self.instances(model) or not self.is_ready(model):
            self.healthy[model] = live  # whole (an old instance's stub has exited), or unloaded just now
            return
        self.say(f"stub-watchdog: a stub of {model} died; reloading {model}")
        self.reload(model)
        self.reloads.append(model)
        self.healthy[model] = stubs(self.group)[model]

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
