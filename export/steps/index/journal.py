"""The embedded engine's journal: every acknowledged write of a collection, in order, in files
of its own beside the engine's generations (embedded.py explains why the engine's own
write-ahead log is not enough: a generation built by the optimizer must replay what was
written meanwhile, and the serving process must replay it after a SIGKILL).

A record is one write (an upsert of points with their payloads, or a delete of ids), framed
by a header with a CRC, so a torn tail (a write cut by a SIGKILL, never acknowledged) reads as
the end. The same bytes go to the journal and to the engine's process (shard.py decodes them).

Imports nothing of the project: it is copied into the model repository beside model.py.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

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


def decode(encoded: bytes) -> Record:
    """The record Record.encode gave these bytes for."""
    record = _read_record(io.BytesIO(encoded))
    if record is None:
        raise ValueError("not a whole journal record")
    return record


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

    def append(self, encoded: bytes) -> None:
        """Append one record, as Record.encode gave it."""
        data, written = memoryview(encoded), 0
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
