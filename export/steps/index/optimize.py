"""The embedded engine's background optimizer: builds the next generation of a collection in a
process of its own, so that the engine's `optimize()`, which holds the GIL for minutes, never
stops the serving process (embedded.py explains the generations and the journal).

    python optimize.py FOLDER --optimize-after N [--threads T]

Started by EmbeddedIndex.maintain with the serving process's interpreter and sys.path; one at
a time (it holds FOLDER/optimizer.lock from its start, on a descriptor the serving process
locked and passed with --lock-fd; run by hand, it takes the lock or exits with code 75), at
nice 10 and in the idle I/O class. Steps, each of which a SIGKILL may cut short without harm (the serving
process deletes what an unfinished run leaves and starts again later):

1. copy the optimizer's own generation (`base`; an empty engine the first time) to a new one;
2. replay the journal from the base's position, then optimize (HNSW graphs, merges);
3. replay what was written meanwhile, until a pass finds nothing new;
4. copy the result as the next `base` (the serving process will write into this one);
5. replay once more, then name the result in `ready` for the serving process to swap in.

Imports nothing of the project but its neighbours (generations, journal, processes,
qdrant_engine), under either name: it is copied into the model repository beside model.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import qdrant_edge as qe

if __package__:  # imported from the export package
    from export.steps.index.generations import (
        BASE,
        ENGINE,
        JOURNAL,
        OPTIMIZER_LOCK,
        POSITION_FILE,
        READY,
        SETTINGS_FILE,
        new_generation,
        read_name,
        read_position,
        remove_leftovers,
        try_lock,
        write_atomically,
        write_position,
    )
    from export.steps.index.journal import START, Position
    from export.steps.index.processes import lower_priority
    from export.steps.index.qdrant_engine import engine_config, replay
else:  # run as a script, from the export package or beside model.py
    from generations import (  # type: ignore[no-redef]
        BASE,
        ENGINE,
        JOURNAL,
        OPTIMIZER_LOCK,
        POSITION_FILE,
        READY,
        SETTINGS_FILE,
        new_generation,
        read_name,
        read_position,
        remove_leftovers,
        try_lock,
        write_atomically,
        write_position,
    )
    from journal import START, Position  # type: ignore[no-redef]
    from processes import lower_priority  # type: ignore[no-redef]
    from qdrant_engine import engine_config, replay  # type: ignore[no-redef]

BUSY = 75  # exit code when another optimizer holds the lock (EX_TEMPFAIL)
CATCH_UP_PASSES = 20


def say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} optimize.py[{os.getpid()}] {message}", flush=True)


def start_from_base(folder: Path, work: Path, config: qe.EdgeConfig) -> tuple[Any, Position]:
    """An engine in `work` holding what the base holds, and the journal position it stands at."""
    base = read_name(folder, BASE)
    if base is None:
        return qe.EdgeShard.create(str(work / ENGINE), config), START
    shutil.copytree(folder / base / ENGINE, work / ENGINE)
    return qe.EdgeShard.load(str(work / ENGINE), config), read_position(folder / base)[0]


def catch_up(shard: Any, journal: Path, position: Position) -> tuple[Position, int]:
    """Replay until a pass finds nothing new (or CATCH_UP_PASSES passes, if writes never stop)."""
    upserted = 0
    for _ in range(CATCH_UP_PASSES):
        end, count = replay(shard, journal, position)
        upserted += count
        if end == position:
            break
        position = end
    return position, upserted


def publish_base(folder: Path, work: Path) -> None:
    """A copy of `work` (closed) becomes the optimizer's base for the next run."""
    old, base = read_name(folder, BASE), new_generation(folder)
    shutil.copytree(work / ENGINE, base / ENGINE)
    shutil.copy2(work / POSITION_FILE, base / POSITION_FILE)
    write_atomically(folder / BASE, base.name)
    if old:
        shutil.rmtree(folder / old, ignore_errors=True)


def build(folder: Path, optimize_after: int, threads: int) -> str:
    settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    config = engine_config(settings["dimension"], settings["metric"], optimize_after, threads)
    journal, work = folder / JOURNAL, new_generation(folder)
    started = time.perf_counter()
    shard, position = start_from_base(folder, work, config)
    position, upserted = replay(shard, journal, position)
    say(f"{work.name}: base copied and {upserted} points replayed in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    shard.optimize()
    info = shard.info()
    say(f"optimized in {time.perf_counter() - started:.1f} s: {info.indexed_vectors_count} vectors indexed")
    position, unindexed = catch_up(shard, journal, position)
    shard.close()
    write_position(work, position, unindexed)
    publish_base(folder, work)
    shard = qe.EdgeShard.load(str(work / ENGINE), config)
    position, more = catch_up(shard, journal, position)
    shard.close()
    write_position(work, position, unindexed + more)
    say(f"ready: {unindexed + more} points written during the run stay unindexed")
    return work.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the collection's folder")
    parser.add_argument("--optimize-after", type=int, required=True, help="the serving process's setting")
    parser.add_argument("--threads", type=int, default=0, help="HNSW build threads (0: all CPUs but one)")
    parser.add_argument("--lock-fd", type=int, help="a descriptor already holding the optimizer's lock")
    args = parser.parse_args(argv)
    lower_priority()
    if args.lock_fd is None and try_lock(args.folder / OPTIMIZER_LOCK) is None:  # held until this process exits
        say("another optimizer is running")
        return BUSY
    remove_leftovers(args.folder)
    threads = args.threads or max(1, (os.cpu_count() or 2) - 1)
    name = build(args.folder, args.optimize_after, threads)
    write_atomically(args.folder / READY, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
