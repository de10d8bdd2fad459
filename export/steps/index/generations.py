"""The embedded engine's folder: generations of the engine, the files naming them, positions
in the journal, and the locks that keep one serving process and one optimizer per folder
(embedded.py explains the layout and why every change is a rename).

Imports nothing of the project but journal.py: it is copied into the model repository beside
model.py, and optimize.py imports it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

if __package__:
    from export.steps.index.journal import Position, journal_file, journal_files
else:
    from journal import Position, journal_file, journal_files

SETTINGS_FILE = "collection.json"  # dimension and metric: a folder without it is not a collection
OWNER_LOCK = "collection.lock"  # held by the one process serving the folder
OPTIMIZER_LOCK = "optimizer.lock"  # held by the one optimizer process working on it
OPTIMIZER_LOG = "optimizer.log"
CURRENT, BASE, READY = "current", "base", "ready"  # files naming a generation
GENERATION = "gen-"
ENGINE = "engine"  # a generation's qdrant-edge folder
POSITION_FILE = "position.json"
JOURNAL = "journal"


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def read_name(folder: Path, name: str) -> str | None:
    """The generation a name file (current, base, ready) names, if it exists."""
    with contextlib.suppress(FileNotFoundError):
        return (folder / name).read_text(encoding="utf-8").strip() or None
    return None


def new_generation(folder: Path) -> Path:
    generation = folder / f"{GENERATION}{time.time_ns()}"
    generation.mkdir()
    return generation


def read_position(generation: Path) -> tuple[Position, int]:
    """Where a generation stands in the journal, and how many of its points are unindexed."""
    found = json.loads((generation / POSITION_FILE).read_text(encoding="utf-8"))
    return Position(found["file"], found["offset"]), found["unindexed"]


def write_position(generation: Path, position: Position, unindexed: int) -> None:
    text = json.dumps({"file": position.file, "offset": position.offset, "unindexed": unindexed})
    write_atomically(generation / POSITION_FILE, text)


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `path`, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def optimizer_paused(folder: Path) -> Iterator[bool]:
    """Holds the optimizer's lock meanwhile, if no optimizer holds it: yields whether it does."""
    fd = try_lock(folder / OPTIMIZER_LOCK)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            unlock(fd)


def remove_leftovers(folder: Path) -> None:
    """Generations no name refers to, half-written name files, and journal files before every
    position still needed. Only with the optimizer's lock held (an optimizer may be writing a
    generation no name refers to yet)."""
    named = {read_name(folder, name) for name in (CURRENT, BASE, READY)}
    for path in folder.iterdir():
        if path.name.startswith(GENERATION) and path.name not in named:
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
    remove_old_journal(folder)


def remove_old_journal(folder: Path) -> None:
    """Journal files before the positions of every named generation (the newest file stays)."""
    names = [read_name(folder, name) for name in (CURRENT, BASE, READY)]
    needed = [read_position(folder / name)[0].file for name in names if name and (folder / name).is_dir()]
    for number in journal_files(folder / JOURNAL)[:-1]:
        if needed and number < min(needed):
            journal_file(folder / JOURNAL, number).unlink(missing_ok=True)
