"""The embedded engine of the index step: one collection in a folder of its own, run by
qdrant-edge (Qdrant's engine in-process: HNSW, a write-ahead log, payload filters).

Chosen by measurement over milvus-lite (docs/search.md). What this module guarantees:
- a write returns once it is in the collection's journal and the engine's write-ahead log, so
  an acknowledged write survives a SIGKILL of the process, and the next search sees it;
- one process per folder (a lock on the folder; a second open is refused);
- the folder records the collection's dimension and metric, and a reopen with others is
  refused rather than serving vectors of another model;
- scores are "higher is closer" for every metric (l2 distances are negated), and every query
  gets exactly `top_k` rows, padded with id -1.

Nothing of qdrant-edge runs in the serving process. Every qdrant-edge call holds the GIL for as
long as it runs: `optimize()` (which builds the HNSW graphs) for minutes, loading or closing an
engine for tenths of a second. So the engine runs in processes of its own: the generation being
served in one (shard.py, asked over a socket; about 0.1 ms a request), the next being built in
another (optimize.py). The collection is a series of generations, each a complete engine folder:

    folder/collection.json   dimension and metric (written last at creation)
    folder/current           names the generation being served
    folder/gen-N/engine/     a qdrant-edge folder; gen-N/position.json: where in the journal
                             it stands (every write before that is in it)
    folder/base              names the optimizer's own copy, never served
    folder/journal/*.log     every write since the oldest generation still named (journal.py)
    folder/ready             names a finished generation not yet served

`maintain()` (after every execute) starts the optimizer once `optimize_after` points are
unindexed. It copies `base` (or starts empty), replays the journal, optimizes, replays what
came meanwhile, copies the result as the next `base`, replays again and names the result in
`ready`. `maintain()` then starts a second engine process on it, which loads it and replays the
writes since, while the first one serves. Once it is done, the next `maintain()` has it replay
the last few writes, names it in `current` and sends requests to it: that replay is the one
pause of the serving thread (`status().last_pause`). The old process closes its engine on its
own, and a thread deletes its generation once it has ended. The optimizer runs at nice 10 and in the
idle I/O class: its copies of the engine otherwise slowed the page-ins of the served engine.

A SIGKILL at any moment leaves `current` naming a complete generation and the journal holding
every acknowledged write after its position, which `open` replays; anything else is a leftover
that `open` deletes. Engine processes end with the process that started them. Only files are
renamed, never folders holding an open engine, and names are replaced by `os.replace`, which is
atomic. An engine process that dies while serving is started again, from `current` and the
journal, and the request that found it gone is asked again.

Imports nothing of the project but its neighbours: it is copied into the model repository
beside model.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

# Served (and run as optimize.py's or shard.py's neighbour), the copy beside model.py imports its
# neighbours by their bare names; in the export package, from the package. Never a mix: one
# Filter class.
if __package__:
    from export.steps.index import qdrant_engine
    from export.steps.index.filters import Filter, payload_for_qdrant
    from export.steps.index.generations import (
        BASE,
        CURRENT,
        ENGINE,
        JOURNAL,
        OPTIMIZER_LOCK,
        OPTIMIZER_LOG,
        OWNER_LOCK,
        READY,
        SETTINGS_FILE,
        new_generation,
        optimizer_paused,
        read_name,
        read_position,
        remove_leftovers,
        remove_old_journal,
        try_lock,
        unlock,
        write_atomically,
        write_position,
    )
    from export.steps.index.hits import CollectionError, Hits, check_ids, check_vectors
    from export.steps.index.journal import (
        DELETE,
        START,
        UPSERT,
        JournalWriter,
        Position,
        Record,
        journal_file,
        writer_start,
    )
    from export.steps.index.processes import child_environment, lower_priority, python_interpreter
    from export.steps.index.shard import ShardEnded, ShardFailed, ShardProcess
else:
    import qdrant_engine
    from filters import Filter, payload_for_qdrant
    from generations import (
        BASE,
        CURRENT,
        ENGINE,
        JOURNAL,
        OPTIMIZER_LOCK,
        OPTIMIZER_LOG,
        OWNER_LOCK,
        READY,
        SETTINGS_FILE,
        new_generation,
        optimizer_paused,
        read_name,
        read_position,
        remove_leftovers,
        remove_old_journal,
        try_lock,
        unlock,
        write_atomically,
        write_position,
    )
    from hits import CollectionError, Hits, check_ids, check_vectors
    from journal import DELETE, START, UPSERT, JournalWriter, Position, Record, journal_file, writer_start
    from processes import child_environment, lower_priority, python_interpreter
    from shard import ShardEnded, ShardFailed, ShardProcess

WRITE_BATCH = 1000  # points per engine call and per journal record
# Unindexed points that start a background optimization. Exact search over them costs about
# 0.2-0.3 ms per 1,000 points of 384 dimensions on this machine (docs/search.md), so 5,000
# keeps one query at 100k within its 5 ms.
OPTIMIZE_AFTER = 5_000
RETRY_AFTER = 60.0  # seconds before a failed optimizer is started again (doubling up to 16x)


@dataclass(frozen=True)
class Status:
    """What `maintain()` has done: `unindexed` points are searched exactly until the next swap."""

    points: int
    indexed: int  # vectors in HNSW graphs (the engine's count: it keeps deleted ones until a rebuild)
    unindexed: int  # points written since the served generation was optimized (an upper bound)
    optimizing: bool
    swaps: int
    failures: int  # optimizer runs and swaps that ended without a result
    last_pause: float | None  # seconds the last swap held the serving thread


@dataclass(frozen=True)
class Upkeep:
    """How the background indexing runs (EmbeddedIndex.open's keyword arguments)."""

    optimize_after: int = OPTIMIZE_AFTER
    python: str | None = None
    log: Callable[[str], None] | None = None
    retry_after: float = RETRY_AFTER


@dataclass
class Incoming:
    """A finished generation loading in a process of its own while the current one serves."""

    shard: ShardProcess
    name: str
    unindexed: int  # in the generation itself, before the replay
    started: float
    answers: list[Any] = field(default_factory=list)  # the load's (None), then the replay's

    def take_answers(self, wait: bool) -> bool:
        """Collect the answers there are (all of them, with `wait`); whether both are in."""
        while len(self.answers) < 2 and (wait or self.shard.answered()):
            self.answers.append(self.shard.receive())
        return len(self.answers) == 2


class EmbeddedIndex:
    """One collection in `folder`. Not thread-safe: the index step runs one execute at a time."""

    def __init__(self, folder: Path, dimension: int, metric: str, upkeep: Upkeep, owner_lock: int) -> None:
        self.folder, self.dimension, self.metric, self.upkeep = folder, dimension, metric, upkeep
        self.owner_lock = owner_lock
        self.log: Callable[[str], None] = upkeep.log or (lambda message: None)
        self.shard: ShardProcess | None = None
        self.journal: JournalWriter | None = None
        self.generation, self.unindexed = "", 0
        self.child: subprocess.Popen | None = None
        self.child_log: IO[bytes] | None = None
        self.other_optimizer = False  # one that a killed process started may still be running
        self.next_try, self.failures, self.swaps = 0.0, 0, 0
        self.last_pause: float | None = None
        self.incoming: Incoming | None = None
        self.retiring: list[tuple[ShardProcess, Path]] = []  # old engines closing, and their generations
        self.cleaning: threading.Thread | None = None  # deleting what retired engines left

    @classmethod
    def open(
        cls,
        folder: Path,
        dimension: int,
        metric: str,
        *,
        optimize_after: int = OPTIMIZE_AFTER,
        python: str | None = None,
        log: Callable[[str], None] | None = None,
        retry_after: float = RETRY_AFTER,
    ) -> EmbeddedIndex:
        """Create the collection, or load it with the same dimension and metric.

        `optimize_after`: unindexed points that start a background optimization. `python`: the
        interpreter that runs the engine's processes (default: processes.python_interpreter).
        `log`: told what the background work does, one line each ("optimizer started pid 12:
        ...", "optimizer failed ...", "swap started ...", "swap loaded gen-...", "swap committed
        gen-...", "swap finished in 0.004 s: ..."), e.g. Triton's logger. `retry_after`: seconds
        before a failed optimization is tried again.
        """
        if metric not in qdrant_engine.METRICS:
            raise CollectionError(f"unknown metric {metric!r}; use one of {', '.join(qdrant_engine.METRICS)}")
        if optimize_after < 2:
            raise CollectionError(f"optimize_after must be 2 or more, not {optimize_after}")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        owner_lock = try_lock(folder / OWNER_LOCK)
        if owner_lock is None:
            raise CollectionError(f"{folder} is open in another process")
        index = cls(folder, dimension, metric, Upkeep(optimize_after, python, log, retry_after), owner_lock)
        try:
            index._load()
        except BaseException:
            if index.shard is not None:
                index.shard.kill()
            if index.journal is not None:
                index.journal.close()
            unlock(owner_lock)
            raise
        return index

    def _load(self) -> None:
        settings = {"dimension": self.dimension, "metric": self.metric}
        recorded = self.folder / SETTINGS_FILE
        if recorded.is_file():
            found = json.loads(recorded.read_text(encoding="utf-8"))
            if found != settings:
                raise CollectionError(f"{self.folder} holds a collection with {found}, not {settings}")
            if read_name(self.folder, CURRENT) is None:
                raise CollectionError(f"{self.folder} holds a collection of an older layout: re-ingest it")
        else:
            self._create()
            recorded.write_text(json.dumps(settings), encoding="utf-8")  # last: the collection is complete
        with optimizer_paused(self.folder) as idle:
            if idle:
                remove_leftovers(self.folder)
        self.other_optimizer = not idle
        self.generation = read_name(self.folder, CURRENT) or ""
        end = self._serve_current()
        self.journal = JournalWriter(self.folder / JOURNAL, writer_start(self.folder / JOURNAL, end))
        if idle and read_name(self.folder, READY):  # an optimizer finished before the last process swapped
            self._begin_swap()
            if self.incoming is not None:
                self._finish_swap(wait=True)

    def _create(self) -> None:
        """A first, empty generation and journal (after clearing what a killed creation left;
        nothing else in the folder is touched). The one qdrant-edge call in this process."""
        ours = {CURRENT, BASE, READY, JOURNAL, OPTIMIZER_LOG}
        for path in self.folder.iterdir():
            if path.name in ours or path.name.startswith("gen-") or path.name.endswith(".tmp"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        generation = new_generation(self.folder)
        qdrant_engine.create(generation / ENGINE, qdrant_engine.engine_config(self.dimension, self.metric, 2))
        write_position(generation, START, 0)
        (self.folder / JOURNAL).mkdir()
        journal_file(self.folder / JOURNAL, START.file).touch()
        write_atomically(self.folder / CURRENT, generation.name)

    def _start_shard(self, name: str) -> ShardProcess:
        engine = self.folder / name / ENGINE
        return ShardProcess(engine, self.dimension, self.metric, self.upkeep.optimize_after, self.upkeep.python)

    def _serve_current(self) -> Position:
        """Serve the `current` generation in a new engine process, with every journaled write
        after its position; returns where that replay ended."""
        position, unindexed = read_position(self.folder / self.generation)
        shard = self._start_shard(self.generation)
        try:
            shard.receive()  # loaded
            end, replayed = shard.call("replay", self.folder / JOURNAL, position)
        except BaseException:
            shard.kill()
            raise
        self.shard, self.unindexed = shard, unindexed + replayed
        return end

    # --- requests ----------------------------------------------------------------------------

    def _call(self, method: str, *arguments: Any) -> Any:
        """One request to the served engine. Should its process be gone, another is started
        (from `current` and the journal) and asked again; a write needs no asking again, as it
        was journaled before it was sent."""
        assert self.shard is not None
        try:
            return self.shard.call(method, *arguments)
        except ShardEnded as error:
            self.log(f"{error}: starting it again")
            self.shard.kill()
            self._serve_current()
            return None if method == "update" else self.shard.call(method, *arguments)

    def _write(self, record: Record) -> None:
        """Journal first, then the engine, so the engine never holds a write the journal lacks.
        Should the engine then fail, the write is not acknowledged but stays journaled: like a
        write cut by a SIGKILL, it may appear after the next replay."""
        assert self.journal is not None
        encoded = record.encode()
        self.journal.append(encoded)
        self._call("update", encoded)

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, payloads: Sequence[dict]) -> int:
        """Insert or replace points by id; returns how many were written."""
        vectors = check_vectors(vectors, self.dimension, "upsert")
        if not len(ids) == len(vectors) == len(payloads):
            raise CollectionError(f"upsert: {len(ids)} ids, {len(vectors)} vectors and {len(payloads)} payloads")
        checked = np.array(check_ids(ids, "upsert"), dtype=np.int64)
        try:  # all converted before anything is written
            stored = [payload_for_qdrant(payload) for payload in payloads]
        except ValueError as error:
            raise CollectionError(f"upsert: {error}") from None
        for start in range(0, len(checked), WRITE_BATCH):
            batch = slice(start, start + WRITE_BATCH)
            self._write(Record(UPSERT, checked[batch], vectors[batch], stored[batch]))
            self.unindexed += len(checked[batch])
        return len(checked)

    def search(self, vectors: np.ndarray, top_k: int, filter: Filter | None = None) -> Hits:
        """The `top_k` nearest points of each query vector, closest first, among those `filter`
        (filters.parse_filter) selects."""
        return self._call("search", check_vectors(vectors, self.dimension, "search"), int(top_k), filter)

    def existing(self, ids: Sequence[int]) -> list[int]:
        """Which of `ids` are stored, each once (ingest skips them when it resumes)."""
        checked = list(dict.fromkeys(check_ids(ids, "existing")))
        return self._call("retrieve", checked) if checked else []

    def count(self, filter: Filter | None = None) -> int:
        return self._call("count", filter)

    def _delete_stored(self, ids: list[int]) -> None:
        for start in range(0, len(ids), WRITE_BATCH):
            self._write(Record(DELETE, np.array(ids[start : start + WRITE_BATCH], dtype=np.int64)))

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Delete points by id; returns those that existed (each once), the ones deleted."""
        found = self.existing(ids)
        self._delete_stored(found)
        return found

    def delete_matching(self, filter: Filter) -> int:
        """Delete the points a filter matches; returns how many. Journaled as the ids it matched,
        so that a replay deletes exactly those."""
        found = self._call("matching", filter)
        self._delete_stored(found)
        return len(found)

    # --- upkeep ------------------------------------------------------------------------------

    def status(self) -> Status:
        points, indexed = self._call("info")
        optimizing = self.child is not None and self.child.poll() is None
        return Status(
            points, indexed, self.unindexed, optimizing, self.swaps, self.failures, self.last_pause
        )  # fmt: skip

    def maintain(self) -> None:
        """Upkeep between executions, a few microseconds unless there is something to do: finish
        a swap whose generation has loaded, start one when an optimization is done, start an
        optimization once `optimize_after` points are unindexed, notice an optimizer that died
        (tried again after `retry_after` seconds), delete generations no engine serves now."""
        self._reap()
        if self.incoming is not None:
            self._finish_swap(wait=False)
            return
        if self.child is not None:
            code = self.child.poll()
            if code is None:
                return
            self._child_ended(code)
        elif not self._due():
            return
        if read_name(self.folder, READY):
            self._begin_swap()
        elif self.unindexed >= self.upkeep.optimize_after and time.monotonic() >= self.next_try:
            self._start_optimizer()

    def _due(self) -> bool:
        """With no optimizer of ours running: whether to look for a result or start one now."""
        now = time.monotonic()
        if now < self.next_try or not (self.other_optimizer or self.unindexed >= self.upkeep.optimize_after):
            return False
        with optimizer_paused(self.folder) as idle:
            pass
        self.other_optimizer = not idle
        if not idle:  # started by a process killed since: wait for it, and adopt its result
            self.next_try = now + 1.0
        return idle

    def flush(self) -> None:
        """Write the engine's state to its files, and record that the journal up to here is in it
        (the next open replays less). Not needed for durability, and not done between requests:
        a flush waits for the disk (about 0.1-0.25 s here, however little was written)."""
        assert self.journal is not None
        self._call("flush")
        write_position(self.folder / self.generation, self.journal.position, self.unindexed)

    def _failed(self, message: str) -> None:
        self.failures += 1
        delay = self.upkeep.retry_after * 2 ** min(self.failures - 1, 4)
        self.next_try = time.monotonic() + delay
        self.log(f"{message}; trying again in {delay:.0f} s")

    def _child_ended(self, code: int) -> None:
        self.child = None
        if self.child_log is not None:
            self.child_log.close()
            self.child_log = None
        if code != 0 and not read_name(self.folder, READY):
            self._failed(f"optimizer failed (exit code {code}, see {self.folder / OPTIMIZER_LOG})")

    def _start_optimizer(self) -> None:
        """Start optimize.py holding the optimizer's lock for it: the child inherits the locked
        descriptor, so no moment passes without the lock, even if this process dies at once."""
        assert self.journal is not None
        lock = try_lock(self.folder / OPTIMIZER_LOCK)
        if lock is None:
            self.other_optimizer, self.next_try = True, time.monotonic() + 1.0
            return
        try:
            self.journal.rotate()  # the result will stand in the new file or later: older ones can go
            log_path = self.folder / OPTIMIZER_LOG
            if log_path.exists() and log_path.stat().st_size > 1_000_000:
                log_path.unlink()
            self.child_log = log_path.open("ab")
            script = Path(__file__).with_name("optimize.py")
            command = [python_interpreter(self.upkeep.python), str(script), str(self.folder)]
            command += ["--optimize-after", str(self.upkeep.optimize_after), "--lock-fd", str(lock)]
            self.child = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self.child_log, stderr=subprocess.STDOUT,
                env=child_environment(), pass_fds=(lock,),
            )  # fmt: skip
        finally:
            os.close(lock)  # the child's copy holds the lock now (nobody's, if it did not start)
        lower_priority(self.child.pid)  # at once: its interpreter's start already competes for the CPU
        self.log(f"optimizer started pid {self.child.pid}: {self.unindexed} points unindexed")

    def _begin_swap(self) -> None:
        """Start serving the generation `ready` names: load it in a process of its own, and
        replay the writes made since it was finished, while the current one keeps serving."""
        name = read_name(self.folder, READY) or ""
        if name == self.generation:  # killed after naming it current, before deleting `ready`
            (self.folder / READY).unlink(missing_ok=True)
            return
        try:
            position, unindexed = read_position(self.folder / name)
            shard = self._start_shard(name)
        except Exception as error:  # a result that cannot be served is dropped, and made again
            self._refuse(name, error)
            return
        shard.send("replay", self.folder / JOURNAL, position)  # answered once the load is
        self.incoming = Incoming(shard, name, unindexed, time.perf_counter())
        self.log(f"swap started: loading {name} in process {shard.pid}")

    def _finish_swap(self, wait: bool) -> None:
        """Once the incoming generation has loaded and replayed (at once, with `wait`): replay the
        writes made since, and serve it. That last replay is the pause of the serving thread."""
        incoming = self.incoming
        assert incoming is not None and self.journal is not None
        try:
            if not incoming.take_answers(wait):
                return
            end, replayed = incoming.answers[1]
            self.log(f"swap loaded {incoming.name} in {time.perf_counter() - incoming.started:.2f} s")
            paused = time.perf_counter()
            more = incoming.shard.call("replay", self.folder / JOURNAL, end)[1]
        except ShardFailed as error:
            self.incoming = None
            incoming.shard.kill()
            self._refuse(incoming.name, error)
            return
        self.incoming = None
        self._commit(incoming.name, incoming.shard, incoming.unindexed + replayed + more)
        self.last_pause = time.perf_counter() - paused
        self.swaps += 1
        self.log(
            f"swap finished in {self.last_pause:.3f} s ({more} points replayed at the switch, {replayed} while "
            f"loading): {self.unindexed} points unindexed"
        )

    def _refuse(self, name: str, error: BaseException) -> None:
        (self.folder / READY).unlink(missing_ok=True)
        self._failed(f"swap refused {name}: {error}")

    def _commit(self, name: str, shard: ShardProcess, unindexed: int) -> None:
        write_atomically(self.folder / CURRENT, name)  # from here on, this is the collection
        self.log(f"swap committed {name}")
        (self.folder / READY).unlink(missing_ok=True)
        assert self.shard is not None
        old, old_name = self.shard, self.generation
        self.shard, self.generation, self.unindexed = shard, name, unindexed
        old.close(wait=False)  # it closes its engine in its own time; _reap deletes the folder after
        self.retiring.append((old, self.folder / old_name))

    def _reap(self, wait: bool = False) -> None:
        """Once an old engine's process has ended, delete its generation and the journal files no
        generation needs any more, in a thread at low priority: removing a generation of 1M
        points took 0.4 s (unlinks release the GIL, so the serving thread goes on meanwhile)."""
        ended = []
        for shard, generation in list(self.retiring):
            if wait:
                shard.close(wait=True)
            if shard.ended():
                self.retiring.remove((shard, generation))
                ended.append(generation)
        if not ended:
            return
        previous = self.cleaning

        def clean() -> None:
            lower_priority()  # this thread only (Linux sets niceness and I/O class per thread)
            if previous is not None:
                previous.join()
            for generation in ended:
                shutil.rmtree(generation, ignore_errors=True)
            remove_old_journal(self.folder)

        self.cleaning = threading.Thread(target=clean, name="remove-old-generations", daemon=True)
        self.cleaning.start()

    def close(self) -> None:
        """Stop a running optimizer (its work is lost, not the data), flush and release the folder."""
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        if self.child_log is not None:
            self.child_log.close()
        if self.incoming is not None:  # `ready` stays: the next open swaps it in
            self.incoming.shard.kill()
            self.incoming = None
        self._reap(wait=True)
        if self.cleaning is not None:
            self.cleaning.join()
        assert self.shard is not None and self.journal is not None
        self.flush()
        self.shard.close(wait=True)
        self.journal.close()
        unlock(self.owner_lock)
