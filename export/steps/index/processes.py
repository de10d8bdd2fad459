"""The processes the embedded engine starts beside the serving one (the engine's own, shard.py;
the optimizer, optimize.py): which Python runs them, with which sys.path, at which priority,
and their end when the process that started them ends.

Imports nothing of the project but hits.py: it is copied into the model repository beside
model.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

if __package__:
    from export.steps.index.hits import CollectionError
else:
    from hits import CollectionError

OPTIMIZER_NICENESS = 10  # the optimizer yields the CPU to the serving process


def python_interpreter(explicit: str | None = None) -> str:
    """The Python that runs shard.py and optimize.py. Inside Triton's stub `sys.executable` is whatever
    `python3` the stub found on PATH (the venv's, when the server is started as
    export.serving.server does), but an embedded interpreter may report its host program
    instead, so a name not starting with "python" is skipped for the base installation's own
    interpreter. The child gets this process's `sys.path` as PYTHONPATH (`child_environment`),
    so it imports the same numpy and qdrant_edge whichever of these it is."""
    base = Path(sys.base_prefix) / "bin"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (explicit, sys.executable, str(base / version), str(base / "python3")):
        if candidate and Path(candidate).name.startswith("python") and os.access(candidate, os.X_OK):
            return candidate
    raise CollectionError(f"no Python for the engine's processes: tried {sys.executable!r} and {base}")


IOPRIO_SET = {"x86_64": 251, "aarch64": 30}  # the ioprio_set system call's number (no Python API)
IOPRIO_IDLE = 3 << 13  # IOPRIO_CLASS_IDLE: disk time only when no one else wants it


def lower_priority(pid: int = 0) -> None:
    """Make a process (0: this one) run at OPTIMIZER_NICENESS, if it does not already run lower,
    and do its disk I/O in the idle class (its copies of the engine would otherwise delay the
    serving process's page-ins: searches waited 130-400 ms on about 10 major faults each)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        niceness = os.getpriority(os.PRIO_PROCESS, pid)
        os.setpriority(os.PRIO_PROCESS, pid, max(niceness, OPTIMIZER_NICENESS))
    number = IOPRIO_SET.get(os.uname().machine)
    if number is not None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).syscall(number, 1, pid, IOPRIO_IDLE)  # 1: IOPRIO_WHO_PROCESS


def child_environment() -> dict[str, str]:
    paths = [path for path in sys.path if path and Path(path).is_dir()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def die_with_parent() -> None:
    """Be killed when the process that started this one ends, however it ends (a SIGKILL
    included): an engine left running would hold a generation nobody serves."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
