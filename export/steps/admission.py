"""Admission by work: a request is refused at once when the work already accepted for its
encoder would make it wait longer than the pipeline's budget.

Why not Triton's queue policy on the encoder: it counts requests, not work (one request of 64
passages is 1,000 times the work of a short query), refuses by timeout only after the wait,
and in Triton 2.51 any policy turns off the batcher's prefetching, after which a request
arriving just as an instance finishes can sleep through the batcher's 500 ms idle wait
(docs/performance.md, "The 500 ms stall"). So the encoder runs without a policy, and the
steps that start a pipeline (tokenizer, image preprocess) admit each request here.

The model: work is counted in units (tokens plus a fixed cost per row; images count their
rows only). Entry steps add what they accept (`Backlog.admit`), the encoder subtracts what it
finishes, part by part (`Backlog.batch`), and times its batches: the queued units times the
measured seconds per unit is the wait ahead of a new request. Counting, rather than a clock
of predicted completions, keeps the estimate true when the encoder slows down under a flood
that takes its CPU. A request accepted and then lost before the encoder (a client gone, a
failed step) would stay counted: whenever the encoder has been idle for a second, nothing can
be queued, and the count starts again from zero.

The state is shared by the stub processes of one server: a page in /dev/shm named for the
server process and the encoder, read and written under an flock. Standard library only:
this module is copied beside each step's model.py.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

UNITS_PER_ROW = 16  # a row's fixed cost in token equivalents (pooling, copies, per-row kernels)
SMOOTHING = 0.3  # how far a faster batch moves the measured cost per unit (a slower one: all the way)
SLOTS = 32  # encoder instances tracked for concurrency (instance index modulo this)
STALE_S = 120.0  # a slot busy this long belongs to a stub that died mid-batch
IDLE_S = 1.0  # no batch running or ended for this long: nothing is queued, whatever the counts say
# Smaller batches (a few short queries) are not measured: Triton's and Python's fixed cost
# per batch, spread over few units, would make every unit look several times dearer than
# under load, when admission matters (until a batch this large has run, nothing is refused).
MIN_SAMPLE_UNITS = 512
BACK_TO_BACK_S = 0.05  # a batch starting this soon after the previous one was waiting for it
# The encoder's share of a request's wait budget; the rest is for the entry step's queue and
# run, the transfers and the estimate's lag when a flood slows the encoder down. Measured with
# 8 long passages per request at 50x of capacity, 2 s budget: served p99 2.0-2.3 s with 0.8,
# 1.6-2.1 s with 0.7, 1.75-1.9 s with 0.6 (docs/reliability.md, "Overload in time").
ENCODER_SHARE = 0.6
_HEADER = struct.Struct("<5d")  # _State's fields, then the layout's version
_SLOT = struct.Struct("<d")
_SIZE = _HEADER.size + SLOTS * _SLOT.size
_VERSION = 4.0
PREFIX = "triton-embeddings-admission-"


@dataclass(frozen=True)
class AdmissionSettings:
    """What an entry step admits against: the encoder its requests go to, and how long a
    request may wait for it (0: no admission)."""

    encoder: str
    max_wait_ms: int

    def parameters(self) -> dict[str, str]:
        return {"admission_encoder": self.encoder, "max_wait_ms": str(self.max_wait_ms)}

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> AdmissionSettings | None:
        if int(params.get("max_wait_ms", "0")) <= 0 or not params.get("admission_encoder"):
            return None
        return cls(params["admission_encoder"], int(params["max_wait_ms"]))


class Overloaded(Exception):
    """The work ahead would make this request wait past the budget; says by how much."""


class Admission:
    """An entry step's side: its settings and the backlog of the encoder it feeds."""

    def __init__(self, settings: AdmissionSettings) -> None:
        self.settings, self.backlog = settings, Backlog(settings.encoder)

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> Admission | None:
        settings = AdmissionSettings.from_parameters(params)
        return cls(settings) if settings else None

    def refusal(self, units: float | None = None) -> str | None:
        """None if a request of `units` is admitted (and counted), else why it is refused.
        `units` None: only whether the work ahead alone is past the budget, counting nothing."""
        budget = self.settings.max_wait_ms / 1000
        try:
            if units is None:
                self.backlog.check(budget)
            else:
                self.backlog.admit(units, budget)
        except Overloaded as error:
            return str(error)
        return None

    def close(self) -> None:
        self.backlog.close()


def state_folder() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_states(folder: Path) -> None:
    """Delete the states of servers that have exited (their pid is in the file name)."""
    for path in folder.glob(PREFIX + "*"):
        found = re.match(re.escape(PREFIX) + r"(\d+)-", path.name)
        if found and not _alive(int(found.group(1))):
            path.unlink(missing_ok=True)


class Backlog:
    """The accepted, unfinished work of one encoder of one server, shared across processes.

    `server` tells servers on one host apart: the stub's parent, tritonserver, by default."""

    def __init__(self, encoder: str, *, server: int | None = None, folder: Path | None = None) -> None:
        folder = folder or state_folder()
        server = os.getppid() if server is None else server
        remove_stale_states(folder)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", encoder)
        self.path = folder / f"{PREFIX}{server}-{safe}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked():
            if os.fstat(self._fd).st_size < _SIZE:
                os.ftruncate(self._fd, _SIZE)  # zeros: nothing accepted, cost not measured yet
        self._map = mmap.mmap(self._fd, _SIZE)
        self._last_end = 0.0  # when this process's previous batch ended
        self._warm = False  # a stub's first batch is not a measurement: onnxruntime warms up in it

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    @contextmanager
    def _locked(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _state(self) -> _State:
        return _State(*_HEADER.unpack_from(self._map, 0)[:4])

    def _store(self, state: _State) -> None:
        _HEADER.pack_into(self._map, 0, state.admitted, state.completed, state.per_unit, state.last_end, _VERSION)

    def seconds_per_unit(self) -> float:
        """The encoder's measured cost of one unit, in seconds of the whole server (0: not yet)."""
        with self._locked():
            return self._state().per_unit

    def queued(self) -> float:
        """Units accepted and not yet done."""
        with self._locked():
            return max(0.0, self._state().queued)

    def check(self, max_wait_s: float) -> None:
        """Raise Overloaded if the work queued ahead alone is past the budget: a request can
        be refused before any work is spent on it (tokenizing long texts is not free)."""
        with self._locked():
            state = self._state()
            _refuse_past(self._queued(state), 0.0, max_wait_s, state.per_unit)

    def admit(self, units: float, max_wait_s: float) -> None:
        """Accept `units` of work, or raise Overloaded if the work queued ahead and its own
        would take longer than the encoder's share (ENCODER_SHARE) of `max_wait_s`. When
        nothing is queued any request is accepted, however large, so that a request larger
        than the budget is still served."""
        with self._locked():
            state = self._state()
            queued = self._queued(state)
            _refuse_past(queued, units, max_wait_s, state.per_unit)
            state.admitted = state.completed + queued + units
            self._store(state)

    def _queued(self, state: _State) -> float:
        now = time.monotonic()
        if state.queued > 0 and not self._running(now) and now - state.last_end > IDLE_S:
            return 0.0  # accepted work that never reached the encoder (a failed request): forgotten
        return max(0.0, state.queued)

    def restart(self, instance: int) -> None:
        """An encoder instance starts (again): the work in flight is forgotten, lost with a
        stub that died or about to be counted again when it finishes (the count then runs
        below zero, read as zero, until the next admission sets it right)."""
        with self._locked():
            _SLOT.pack_into(self._map, self._slot(instance), 0.0)
            state = self._state()
            state.admitted = min(state.admitted, state.completed)
            self._store(state)

    @contextmanager
    def batch(self, instance: int, units: float) -> Iterator[Callable[[float], None]]:
        """Time one batch of `units` on encoder instance `instance`; the block reports the
        units it has finished, part by part, with the callable it is given, and whatever it
        did not report (a failed batch) leaves the count when it ends. A batch that ends
        normally, of MIN_SAMPLE_UNITS or more, and not this process's first, puts its time per
        unit into the shared estimate: its time runs from the end of this instance's previous
        batch when the two are back to back (what a batch costs includes Triton's hand-over
        between them), divided by the instances running beside it."""
        reported = 0.0

        def finished(done: float) -> None:
            nonlocal reported
            reported += done
            with self._locked():
                state = self._state()
                state.completed += done
                self._store(state)

        with self._locked():
            began = time.monotonic()
            _SLOT.pack_into(self._map, self._slot(instance), began)
            running_at_start = self._running(began)
        failed = True
        try:
            yield finished
            failed = False
        finally:
            with self._locked():
                ended = time.monotonic()
                running = max(1.0, (running_at_start + self._running(ended)) / 2)
                _SLOT.pack_into(self._map, self._slot(instance), 0.0)
                since = self._last_end if 0 < began - self._last_end < BACK_TO_BACK_S else began
                self._last_end = ended
                state = self._state()
                state.last_end = ended
                state.completed += max(0.0, units - reported)
                if self._warm and not failed and units >= MIN_SAMPLE_UNITS:
                    state.add_sample((ended - since) / running / units)
                self._warm = True
                self._store(state)

    @staticmethod
    def _slot(instance: int) -> int:
        return _HEADER.size + (instance % SLOTS) * _SLOT.size

    def _running(self, now: float) -> int:
        starts = (_SLOT.unpack_from(self._map, _HEADER.size + i * _SLOT.size)[0] for i in range(SLOTS))
        return sum(1 for start in starts if start > 0 and now - start < STALE_S)


@dataclass
class _State:
    admitted: float  # units accepted since the server started
    completed: float  # units the encoder finished (requests sent to it directly included)
    per_unit: float  # measured seconds of the whole server per unit; 0: not yet
    last_end: float  # when the last batch ended (monotonic seconds)

    @property
    def queued(self) -> float:
        return self.admitted - self.completed

    def add_sample(self, seconds_per_unit: float) -> None:
        """A slower batch is believed at once: a flood takes CPU from the encoder, and the
        queue ahead then costs more (a median of the last three, tried instead, let served
        p99 reach 2.2-2.4 s at 50x of long passages). A faster one moves the estimate
        gradually. Outliers are rare in batches that are measured at all (see batch())."""
        old = self.per_unit
        self.per_unit = (
            seconds_per_unit if old <= 0 else max(seconds_per_unit, old + SMOOTHING * (seconds_per_unit - old))
        )


def _refuse_past(queued: float, units: float, max_wait_s: float, per_unit: float) -> None:
    """Raise Overloaded if `units` more behind `queued` would finish past the encoder's share."""
    wait, done, share = queued * per_unit, (queued + units) * per_unit, ENCODER_SHARE * max_wait_s
    if wait > 0 and done > share:
        own = f", {done:.2f} s with its own" if units else ""
        raise Overloaded(
            f"server overloaded: about {wait:.2f} s of work is queued ahead of this request{own}, more than "
            f"the encoder's {share:.2f} s of the {max_wait_s:.2f} s wait budget; retry later"
        )


def instance_index(instance_name: str) -> int:
    """The instance's index within its model, from Triton's name `<model>_<group>_<index>`."""
    tail = instance_name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def work_units(rows: int, tokens):
    """What `rows` inputs cost the encoder, `tokens` being the positions it computes (0 for
    images). Elementwise for an array of tokens, a row each (the encoder's per-row units)."""
    return rows * UNITS_PER_ROW + tokens
