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
    """Every `interval` seconds: compare each model's live stubs with the last count; for a
    model with fewer, that Triton still calls ready, reload it. A model unloaded on purpose
    is not ready, so it is left alone; a model reloaded by someone else gets its stubs back."""

    def __init__(
        self,
        group: int,
        is_ready: Callable[[str], bool],
        reload: Callable[[str], None],
        *,
        interval: float = 0.5,
        say: Callable[[str], None] = print,
    ) -> None:
        super().__init__(name="stub-watchdog", daemon=True)
        self.group, self.is_ready, self.reload, self.interval, self.say = group, is_ready, reload, interval, say
        self.stopping = threading.Event()
        self.reloads: list[str] = []

    def run(self) -> None:
        seen = stubs(self.group)
        while not self.stopping.wait(self.interval):
            now, failed = stubs(self.group), {}
            for model, count in seen.items():
                if now[model] < count and self._confirm(model, count):
                    self.say(f"stub-watchdog: a stub of {model} died; reloading {model}")
                    try:
                        self.reload(model)
                        self.reloads.append(model)
                    except Exception as error:  # remember the count: the next pass tries again
                        self.say(f"stub-watchdog: reloading {model} failed: {error}")
                        failed[model] = count
            seen = stubs(self.group) | Counter(failed)

    def _confirm(self, model: str, count: int) -> bool:
        """Still short after a moment (not a reload in progress), and still served."""
        if self.stopping.wait(self.interval):
            return False
        return stubs(self.group)[model] < count and self.is_ready(model)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
