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

Indexing off the serving path. New points are searched exactly until they are in an HNSW
graph, and the engine's `optimize()` (which builds the graphs) holds the GIL for minutes, so it
never runs here. Instead the collection is a series of generations, each a complete engine
folder, and a separate process (optimize.py) builds the next one:

    folder/collection.json   dimension and metric (written last at creation)
    folder/current           names the generation being served
    folder/gen-N/engine/     a qdrant-edge folder; gen-N/position.json: where in the journal
                             it stands (every write before that is in it)
    folder/base              names the optimizer's own copy, never served
    folder/journal/*.log     every write since the oldest generation still named
    folder/ready             names a finished generation not yet served

`maintain()` (after every execute) starts the optimizer once `optimize_after` points are
unindexed. It copies `base` (or starts empty), replays the journal, optimizes, replays what
came meanwhile, copies the result as the next `base`, replays again and names the result in
`ready`. `maintain()` then swaps it in: load it, replay the few writes since, name it in
`current`; a thread closes the old one. That load and replay is the pause of the serving
thread (`status().last_pause`); the close holds the GIL too, but later, once idle (_retire).
The optimizer runs at nice 10 and in the idle I/O class: its copies of the engine otherwise
slowed the page-ins of this process's searches.

A SIGKILL at any moment leaves `current` naming a complete generation and the journal holding
every acknowledged write after its position, which `open` replays; anything else is a leftover
that `open` deletes. Only files are renamed, never folders holding an open engine, and names
are replaced by `os.replace`, which is atomic.

Imports nothing of the project but filters: it is copied into the model repository beside
model.py, and optimize.py imports it (by either name) for the journal and the layout.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import qdrant_edge as qe

# Served (and run as optimize.py's neighbour), the copy beside model.py imports its neighbours
# by their bare names; in the export package, from the package. Never a mix: one Filter class.
if __package__:
    from export.steps.index.filters import Filter, payload_for_qdrant, payload_from_qdrant, to_qdrant
else:
    from filters import Filter, payload_for_qdrant, payload_from_qdrant, to_qdrant

METRICS = {"cosine": qe.Distance.Cosine, "ip": qe.Distance.Dot, "l2": qe.Distance.Euclid}
SETTINGS_FILE = "collection.json"  # dimension and metric: a folder without it is not a collection
OWNER_LOCK = "collection.lock"  # held by the one process serving the folder
OPTIMIZER_LOCK = "optimizer.lock"  # held by the one optimizer process working on it
OPTIMIZER_LOG = "optimizer.log"
CURRENT, BASE, READY = "current", "base", "ready"  # files naming a generation
GENERATION = "gen-"
ENGINE = "engine"
POSITION_FILE = "position.json"
JOURNAL = "journal"
PAD_ID = -1
PAD_SCORE = float(np.finfo(np.float32).min)  # below every real score: order still means closeness
PAD_PAYLOAD = "null"
SEARCH_EF = 64  # HNSW beam width at query time: recall@10 1.0 at 100k in docs/search.md
WRITE_BATCH = 1000  # points per engine call and per journal record
MAX_ID = 2**63 - 1  # ids travel as int64
# Unindexed points that start a background optimization. Exact search over them costs about
# 0.2-0.3 ms per 1,000 points of 384 dimensions on this machine (docs/search-embedded-section.md),
# so 5,000 keeps one query at 100k within its 5 ms.
OPTIMIZE_AFTER = 5_000
OPTIMIZER_NICENESS = 10  # the optimizer yields the CPU to the serving process
RETIRE_IDLE, RETIRE_WITHIN = 0.05, 10.0  # the old engine is closed once idle this long, or after that
RETRY_AFTER = 60.0  # seconds before a failed optimizer is started again (doubling up to 16x)
HNSW_M, HNSW_EF_CONSTRUCT = 16, 100
FULL_SCAN_POINTS = 20_000  # segments smaller than this are searched exactly (engine_config)


class CollectionError(ValueError):
    """A request the collection cannot take (wrong vector size, ids out of range...)."""


@dataclass(frozen=True)
class Hits:
    """The answer to `q` queries: [q, k] ids (int64), scores (float32), payloads (JSON text)."""

    ids: np.ndarray
    scores: np.ndarray
    payloads: list[list[str]]


@dataclass(frozen=True)
class Status:
    """What `maintain()` has done: `unindexed` points are searched exactly until the next swap."""

    points: int
    indexed: int  # vectors in HNSW graphs (the engine's count: it keeps deleted ones until a rebuild)
    unindexed: int  # points written since the served generation was optimized (an upper bound)
    optimizing: bool
    swaps: int
    failures: int  # optimizer runs that ended without a result
    last_pause: float | None  # seconds the last swap held the serving thread


# --- engine settings -------------------------------------------------------------------------


def kilobytes(points: int, dimension: int) -> int:
    return max(1, points * dimension * 4 // 1024)


def engine_config(dimension: int, metric: str, optimize_after: int, threads: int = 1) -> qe.EdgeConfig:
    """The engine's settings, the same in the serving process and the optimizer. A segment is
    given an HNSW graph once it holds half of `optimize_after` points, so an optimization always
    indexes what triggered it. A segment of fewer than FULL_SCAN_POINTS points is searched
    exactly all the same: small clustered collections are where HNSW misses most (recall@10
    0.87 at 10k points, 1.0 at 100k, docs/search-embedded-section.md), and exact search of
    them takes about 2 ms."""
    indexing = kilobytes(max(1, optimize_after // 2), dimension)
    full_scan = kilobytes(FULL_SCAN_POINTS, dimension)
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dimension, distance=METRICS[metric]),
        hnsw_config=qe.HnswIndexConfig(
            m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=full_scan, max_indexing_threads=threads
        ),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=indexing),
    )


# --- the journal -----------------------------------------------------------------------------

UPSERT, DELETE = 1, 2
MAGIC = b"EIJ1"
HEADER = struct.Struct("<4sB3xIIII")  # magic, kind, count, dimension, payload bytes, crc32 of the body


@dataclass(frozen=True, order=True)
class Position:
    """A place in the journal: file number and byte offset."""

    file: int
    offset: int


START = Position(1, 0)


@dataclass(frozen=True)
class Record:
    kind: int
    ids: np.ndarray  # int64
    vectors: np.ndarray | None = None  # float32 [n, dimension], upserts only
    payloads: list[dict] | None = None  # as stored in the engine (payload_for_qdrant), upserts only

    def encode(self) -> bytes:
        ids = np.ascontiguousarray(self.ids, dtype="<i8")
        body, dimension, payload = ids.tobytes(), 0, b""
        if self.kind == UPSERT:
            vectors = np.ascontiguousarray(self.vectors, dtype="<f4")
            dimension = vectors.shape[1]
            payload = json.dumps(self.payloads, ensure_ascii=False, separators=(",", ":")).encode()
            body += vectors.tobytes() + payload
        return HEADER.pack(MAGIC, self.kind, len(ids), dimension, len(payload), zlib.crc32(body)) + body


def journal_file(journal: Path, number: int) -> Path:
    return journal / f"{number:08d}.log"


def journal_files(journal: Path) -> list[int]:
    return sorted(int(path.stem) for path in journal.glob("*.log") if path.stem.isdigit())


def _read_record(stream: IO[bytes]) -> Record | None:
    """The next whole record, or None at the end or at a torn or foreign tail."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    magic, kind, count, dimension, payload_size, crc = HEADER.unpack(header)
    if magic != MAGIC or kind not in (UPSERT, DELETE):
        return None
    body = stream.read(count * 8 + count * dimension * 4 + payload_size)
    if len(body) < count * 8 + count * dimension * 4 + payload_size or zlib.crc32(body) != crc:
        return None
    ids = np.frombuffer(body, "<i8", count)
    if kind == DELETE:
        return Record(DELETE, ids)
    vectors = np.frombuffer(body, "<f4", count * dimension, count * 8).reshape(count, dimension)
    return Record(UPSERT, ids, vectors, json.loads(body[count * 8 + count * dimension * 4 :]))


def read_journal(journal: Path, start: Position) -> Iterator[tuple[Record, Position]]:
    """Each whole record from `start` on, with the position after it. Safe while the owner
    appends: it stops at the last whole record, and reads a file once more after the owner has
    moved on to the next one, so nothing written just before the move is missed."""
    number, offset = start.file, start.offset
    while True:
        path, moved_on = journal_file(journal, number), False
        while True:
            if path.exists():
                with path.open("rb") as stream:
                    stream.seek(offset)
                    while (record := _read_record(stream)) is not None:
                        offset = stream.tell()
                        yield record, Position(number, offset)
            if moved_on or not journal_file(journal, number + 1).exists():
                break
            moved_on = True  # the owner writes to the next file now: this one is complete
        if not moved_on:
            return
        number, offset = number + 1, 0


def operation(record: Record) -> Any:
    """The engine's update for a record (built before the record is journaled: a payload the
    engine cannot take is refused before anything is written)."""
    ids = record.ids.tolist()
    if record.kind == DELETE:
        return qe.UpdateOperation.delete_points(ids)
    payloads, vectors = record.payloads or [], record.vectors
    assert vectors is not None
    return qe.UpdateOperation.upsert_points([qe.Point(ids[i], vectors[i], payloads[i]) for i in range(len(ids))])


def replay(shard: Any, journal: Path, start: Position) -> tuple[Position, int]:
    """Apply the journal from `start` on. Idempotent: replaying writes the engine already holds
    leaves it as it was. Returns the position after the last whole record and how many points
    were upserted."""
    end, upserted = start, 0
    for record, end in read_journal(journal, start):  # noqa: B007 (end is the result)
        shard.update(operation(record))
        upserted += len(record.ids) if record.kind == UPSERT else 0
    return end, upserted


class JournalWriter:
    """Appends records to the newest journal file, each with one write. Nothing is ever taken
    back: a reader (the optimizer) may already have read it."""

    def __init__(self, journal: Path, end: Position) -> None:
        """Continue after `end`, the last whole record of the newest file: a torn tail (a write
        cut by a SIGKILL, never acknowledged and never read past) is cut off."""
        self.journal = journal
        self.fd = -1
        self._open(end)

    def _open(self, end: Position) -> None:
        self.fd = os.open(journal_file(self.journal, end.file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, end.offset)
        self.position = end

    def append(self, record: Record) -> None:
        data, written = memoryview(record.encode()), 0
        while written < len(data):
            written += os.write(self.fd, data[written:])
        self.position = Position(self.position.file, self.position.offset + len(data))

    def rotate(self) -> None:
        """Continue in a new file, so that older files can be deleted once nothing needs them."""
        os.close(self.fd)
        self._open(Position(self.position.file + 1, 0))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def writer_start(journal: Path, replayed_to: Position) -> Position:
    """Where the owner appends after replaying to `replayed_to`: the newest file, after its last
    whole record. Only the newest file can end in a torn record (files are rotated only after
    whole appends), so if the replay stopped in an older file, the newest holds no whole record."""
    newest = max(journal_files(journal), default=START.file)
    return replayed_to if replayed_to.file == newest else Position(newest, 0)


# --- the folder's layout ---------------------------------------------------------------------


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


def write_back(folder: Path) -> None:
    """fsync every file under `folder`: the disk writes of a later flush, done without the GIL."""
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def python_interpreter(explicit: str | None = None) -> str:
    """The Python that runs optimize.py. Inside Triton's stub `sys.executable` is whatever
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
    raise CollectionError(f"no Python for the background optimizer: tried {sys.executable!r} and {base}")


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


# --- the collection --------------------------------------------------------------------------


@dataclass(frozen=True)
class Upkeep:
    """How the background indexing runs (EmbeddedIndex.open's keyword arguments)."""

    optimize_after: int = OPTIMIZE_AFTER
    python: str | None = None
    log: Callable[[str], None] | None = None
    retry_after: float = RETRY_AFTER


class EmbeddedIndex:
    """One collection in `folder`. Not thread-safe: the index step runs one execute at a time."""

    def __init__(self, folder: Path, dimension: int, metric: str, upkeep: Upkeep, owner_lock: int) -> None:
        self.folder, self.dimension, self.metric, self.upkeep = folder, dimension, metric, upkeep
        self.owner_lock = owner_lock
        self.log: Callable[[str], None] = upkeep.log or (lambda message: None)
        self.config = engine_config(dimension, metric, upkeep.optimize_after)
        self.shard: Any = None
        self.journal: JournalWriter | None = None
        self.generation, self.unindexed = "", 0
        self.child: subprocess.Popen | None = None
        self.child_log: IO[bytes] | None = None
        self.other_optimizer = False  # one that a killed process started may still be running
        self.next_try, self.failures, self.swaps = 0.0, 0, 0
        self.last_pause: float | None = None
        self.retiring: threading.Thread | None = None
        self.hurry = threading.Event()
        self.last_maintain = 0.0

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
        interpreter that runs it (default: python_interpreter). `log`: told what the background
        work does, one line each ("optimizer started pid 12: ...", "optimizer failed ...",
        "swap loaded gen-...", "swap committed gen-...", "swap finished in 0.21 s: ..."), e.g.
        Triton's logger. `retry_after`: seconds before a failed optimization is tried again.
        """
        if metric not in METRICS:
            raise CollectionError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
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
                index.shard.close()
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
        self.shard = qe.EdgeShard.load(str(self.folder / self.generation / ENGINE), self.config)
        position, unindexed = read_position(self.folder / self.generation)
        end, replayed = replay(self.shard, self.folder / JOURNAL, position)
        self.journal = JournalWriter(self.folder / JOURNAL, writer_start(self.folder / JOURNAL, end))
        self.unindexed = unindexed + replayed
        if idle and read_name(self.folder, READY):
            self._swap()  # an optimizer finished before the last process could swap its result in

    def _create(self) -> None:
        """A first, empty generation and journal (after clearing what a killed creation left;
        nothing else in the folder is touched)."""
        ours = {CURRENT, BASE, READY, JOURNAL, OPTIMIZER_LOG}
        for path in self.folder.iterdir():
            if path.name in ours or path.name.startswith(GENERATION) or path.name.endswith(".tmp"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        generation = new_generation(self.folder)
        qe.EdgeShard.create(str(generation / ENGINE), self.config).close()
        write_position(generation, START, 0)
        (self.folder / JOURNAL).mkdir()
        journal_file(self.folder / JOURNAL, START.file).touch()
        write_atomically(self.folder / CURRENT, generation.name)

    # --- requests ----------------------------------------------------------------------------

    def _vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise CollectionError(
                f"{what}: expected vectors of {self.dimension} values, got shape {list(vectors.shape)}"
            )
        if not np.isfinite(vectors).all():
            raise CollectionError(f"{what}: vectors hold NaN or infinite values")
        return vectors

    @staticmethod
    def _ids(ids: Sequence[int], what: str) -> np.ndarray:
        try:
            found = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise CollectionError(f"{what}: ids must be integers") from None
        if found and not 0 <= min(found) <= max(found) <= MAX_ID:
            raise CollectionError(f"{what}: ids must be integers from 0 to 2**63-1")
        return np.array(found, dtype=np.int64)

    def _write(self, record: Record, update: Any) -> None:
        """Journal first, then the engine, so the engine never holds a write the journal lacks.
        Should the engine then fail, the write is not acknowledged but stays journaled: like a
        write cut by a SIGKILL, it may appear after the next replay."""
        assert self.journal is not None
        self.journal.append(record)
        self.shard.update(update)

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, payloads: Sequence[dict]) -> int:
        """Insert or replace points by id; returns how many were written."""
        vectors = self._vectors(vectors, "upsert")
        if not len(ids) == len(vectors) == len(payloads):
            raise CollectionError(f"upsert: {len(ids)} ids, {len(vectors)} vectors and {len(payloads)} payloads")
        checked = self._ids(ids, "upsert")
        try:  # all converted before anything is written
            stored = [payload_for_qdrant(payload) for payload in payloads]
        except ValueError as error:
            raise CollectionError(f"upsert: {error}") from None
        for start in range(0, len(checked), WRITE_BATCH):
            batch = slice(start, start + WRITE_BATCH)
            record = Record(UPSERT, checked[batch], vectors[batch], stored[batch])
            self._write(record, operation(record))
            self.unindexed += len(record.ids)
        return len(checked)

    def search(self, vectors: np.ndarray, top_k: int, filter: Filter | None = None) -> Hits:
        """The `top_k` nearest points of each query vector, closest first, among those `filter`
        (filters.parse_filter) selects."""
        vectors = self._vectors(vectors, "search")
        params, selected = qe.SearchParams(hnsw_ef=max(SEARCH_EF, top_k)), to_qdrant(filter)
        requests = [
            qe.QueryRequest(
                limit=top_k, query=qe.Query.Nearest(vector.tolist()), filter=selected, params=params, with_payload=True
            )
            for vector in vectors
        ]
        results = self.shard.query_batch(qe.QueryBatchRequest(requests)) if requests else []
        ids = np.full((len(vectors), top_k), PAD_ID, dtype=np.int64)
        scores = np.full((len(vectors), top_k), PAD_SCORE, dtype=np.float32)
        payloads = [[PAD_PAYLOAD] * top_k for _ in vectors]
        sign = -1.0 if self.metric == "l2" else 1.0  # l2 scores are distances: lower is closer
        for row, points in enumerate(results):
            for column, point in enumerate(points[:top_k]):
                ids[row, column], scores[row, column] = point.id, sign * point.score
                payloads[row][column] = json.dumps(payload_from_qdrant(point.payload), ensure_ascii=False)
        return Hits(ids, scores, payloads)

    def existing(self, ids: Sequence[int]) -> list[int]:
        """Which of `ids` are stored (ingest skips them when it resumes)."""
        checked = self._ids(ids, "existing").tolist()
        return [record.id for record in self.shard.retrieve(checked, False, False)] if checked else []

    def count(self, filter: Filter | None = None) -> int:
        return self.shard.count(qe.CountRequest(filter=to_qdrant(filter)))

    def _delete_stored(self, ids: list[int]) -> None:
        for start in range(0, len(ids), WRITE_BATCH):
            record = Record(DELETE, np.array(ids[start : start + WRITE_BATCH], dtype=np.int64))
            self._write(record, operation(record))

    def delete(self, ids: Sequence[int]) -> int:
        """Delete points by id; returns how many of them existed."""
        found = self.existing(ids)
        self._delete_stored(found)
        return len(found)

    def delete_matching(self, filter: Filter) -> int:
        """Delete the points a filter matches; returns how many. Journaled as the ids it matched,
        so that a replay deletes exactly those."""
        selected, found, offset = to_qdrant(filter), [], None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=10_000, filter=selected, with_payload=False)
            records, offset = self.shard.scroll(request)
            found += [record.id for record in records]
            if offset is None:
                break
        self._delete_stored(found)
        return len(found)

    # --- upkeep ------------------------------------------------------------------------------

    def status(self) -> Status:
        info = self.shard.info()
        optimizing = self.child is not None and self.child.poll() is None
        return Status(
            info.points_count, info.indexed_vectors_count, self.unindexed, optimizing,
            self.swaps, self.failures, self.last_pause,
        )  # fmt: skip

    def maintain(self) -> None:
        """Upkeep between executions, a few microseconds unless there is something to do: swap in
        a finished optimization, start one once `optimize_after` points are unindexed, notice an
        optimizer that died (tried again after `retry_after` seconds)."""
        self.last_maintain = time.monotonic()
        if self.child is not None:
            code = self.child.poll()
            if code is None:
                return
            self._child_ended(code)
        elif not self._due():
            return
        if read_name(self.folder, READY):
            self._swap()
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
        self.shard.flush()
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

    def _swap(self) -> None:
        """Serve the generation `ready` names, with the writes made since it was finished: the
        one pause of the serving thread (`status().last_pause`)."""
        started = time.perf_counter()
        name = read_name(self.folder, READY) or ""
        if name == self.generation:  # killed after naming it current, before deleting `ready`
            (self.folder / READY).unlink(missing_ok=True)
            return
        generation, shard = self.folder / name, None
        try:
            position, unindexed = read_position(generation)
            shard = qe.EdgeShard.load(str(generation / ENGINE), self.config)
            loaded = time.perf_counter()
            self.log(f"swap loaded {name} in {loaded - started:.2f} s")
            replayed = replay(shard, self.folder / JOURNAL, position)[1]
        except Exception as error:  # a result that cannot be served is dropped, and made again
            if shard is not None:
                shard.close()
            (self.folder / READY).unlink(missing_ok=True)
            self._failed(f"swap refused {name}: {error}")
            return
        self._commit(generation, shard, unindexed + replayed)
        self.last_pause = time.perf_counter() - started
        self.swaps += 1
        self.log(
            f"swap finished in {self.last_pause:.2f} s (load {loaded - started:.2f} s, then {replayed} points "
            f"replayed): {self.unindexed} points unindexed"
        )

    def _commit(self, generation: Path, shard: Any, unindexed: int) -> None:
        write_atomically(self.folder / CURRENT, generation.name)  # from here on, this is the collection
        self.log(f"swap committed {generation.name}")
        (self.folder / READY).unlink(missing_ok=True)
        old, old_name = self.shard, self.generation
        self.shard, self.generation, self.unindexed = shard, generation.name, unindexed
        self._retire(old, self.folder / old_name)

    def _retire(self, shard: Any, generation: Path) -> None:
        """In a thread: close the old engine, delete its generation and the journal files no
        generation needs now. Closing flushes, which waits for the disk holding the GIL (0.5 s
        here after 30k writes), so its files are written back first without the GIL (the close
        then takes 0.15 s), and the close waits for a moment without executes (RETIRE_IDLE since
        the last maintain(); at most RETIRE_WITHIN): a request that comes meanwhile still waits."""
        if self.retiring is not None:
            self.hurry.set()
            self.retiring.join()
        hurry = self.hurry = threading.Event()
        self.last_maintain = time.monotonic()  # idle from the end of this swap on

        def retire() -> None:
            deadline = time.monotonic() + RETIRE_WITHIN
            write_back(generation)
            while not hurry.wait(RETIRE_IDLE / 2):
                now = time.monotonic()
                if now >= deadline or now - self.last_maintain >= RETIRE_IDLE:
                    break
            shard.close()
            shutil.rmtree(generation, ignore_errors=True)
            remove_old_journal(self.folder)

        self.retiring = threading.Thread(target=retire, name="retire-generation", daemon=True)
        self.retiring.start()

    def close(self) -> None:
        """Stop a running optimizer (its work is lost, not the data), flush and release the folder."""
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        if self.child_log is not None:
            self.child_log.close()
        if self.retiring is not None:
            self.hurry.set()
            self.retiring.join()
        self.flush()
        self.shard.close()
        assert self.journal is not None
        self.journal.close()
        unlock(self.owner_lock)
