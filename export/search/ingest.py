"""Fill a collection through the served upsert ensemble: a folder of images or a JSONL of texts.

Batches go through the client concurrently. The run is resumable: ids already stored are
skipped (asked with `exists` before each batch), so a run stopped halfway, started again,
sends only the rest. A bad item (an image that does not decode, a JSONL line without text)
is listed in the report and the rest of its batch is stored anyway: the server names the bad
row (IMAGE[3]), it is taken out and the batch sent again.

Ids: a JSONL line's "id", else one derived from its text; an image's is derived from its path
under the folder. Derived ids are stable hashes below 2**53 (exact in JSON and JavaScript);
among a million items the chance that two share one is about 1 in 20,000.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from export.errors import InvalidArgumentError, UserError
from triton_embeddings import EmbeddingClient, EmbeddingError

ID_BITS = 53


def stable_id(key: str) -> int:
    """An id from a path or a text: the same on every run and machine."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - ID_BITS)


@dataclass(frozen=True)
class Item:
    """One point to store: `where` names it in the report (a path, or "line 12")."""

    id: int
    value: str | Path  # a text, or an image file
    payload: dict[str, Any]
    where: str


@dataclass
class Report:
    stored: int = 0
    skipped: int = 0  # already stored
    bad: list[tuple[str, str]] = field(default_factory=list)  # (where, why)

    def summary(self, limit: int = 20) -> str:
        lines = [f"stored {self.stored}, skipped {self.skipped} already stored, {len(self.bad)} bad"]
        lines += [f"  {where}: {why}" for where, why in self.bad[:limit]]
        if len(self.bad) > limit:
            lines.append(f"  ... and {len(self.bad) - limit} more")
        return "\n".join(lines)


def image_items(folder: Path) -> Iterator[Item | tuple[str, str]]:
    """Every file under `folder` (hidden ones aside), in path order; payload {"path": relative}."""
    if not folder.is_dir():
        raise InvalidArgumentError(f"{folder} is not a folder")
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            yield Item(stable_id(relative), path, {"path": relative}, relative)


def jsonl_items(path: Path) -> Iterator[Item | tuple[str, str]]:
    """One JSON object a line: "text" (required), "id" (an integer >= 0; default: from the
    text), and any other fields, stored with the text as the payload. Bad lines come out as
    (where, why)."""
    try:
        lines = path.open(encoding="utf-8")
    except OSError as error:
        raise InvalidArgumentError(f"cannot read {path}: {error.strerror}") from None
    with lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                record = json.loads(line)
            except ValueError as error:
                yield where, f"not JSON: {error}"
                continue
            if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"]:
                yield where, 'expected an object with a non-empty "text"'
                continue
            point_id = record.pop("id", None)
            if point_id is None:
                point_id = stable_id(record["text"])
            elif not isinstance(point_id, int) or isinstance(point_id, bool) or not 0 <= point_id < 2**63:
                yield where, f'"id" must be an integer from 0 to 2**63-1, got {point_id!r}'
                continue
            yield Item(point_id, record["text"], record, where)


def ingest(
    client: EmbeddingClient,
    collection: str,
    items: Iterable[Item | tuple[str, str]],
    *,
    batch: int = 32,
    concurrency: int = 4,
    resume: bool = True,
    progress: Callable[[int], None] = lambda done: None,
) -> Report:
    """Store `items` in `collection`; `progress(n)` after each batch of n items."""
    report = Report()

    def store(chunk: list[Item | tuple[str, str]]) -> Report:
        part = Report(bad=[entry for entry in chunk if isinstance(entry, tuple)])
        points = [entry for entry in chunk if isinstance(entry, Item)]
        if resume and points:
            stored = client.exists(collection, [p.id for p in points])
            part.skipped = sum(stored)
            points = [p for p, known in zip(points, stored, strict=True) if not known]
        values = []
        for point in list(points):
            try:
                values.append(point.value if isinstance(point.value, str) else point.value.read_bytes())
            except OSError as error:
                part.bad.append((point.where, f"cannot read: {error.strerror}"))
                points.remove(point)
        while points:
            try:
                part.stored += client.upsert(collection, values, [p.id for p in points], [p.payload for p in points])
                break
            except EmbeddingError as error:
                if error.index is None or not 0 <= error.index < len(points):
                    raise
                part.bad.append((points[error.index].where, error.message))
                del points[error.index], values[error.index]
        progress(len(chunk))
        return part

    def add(part: Report) -> None:
        report.stored += part.stored
        report.skipped += part.skipped
        report.bad += part.bad

    with ThreadPoolExecutor(concurrency) as pool:
        pending: deque[Future[Report]] = deque()
        for chunk in _batches(items, batch):
            if len(pending) >= 2 * concurrency:  # read ahead a little, not the whole folder
                add(pending.popleft().result())
            pending.append(pool.submit(store, chunk))
        while pending:
            add(pending.popleft().result())
    return report


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def check_collection(client: EmbeddingClient, collection: str) -> None:
    """Fail early, in words, when the server has no such collection."""
    try:
        client.count(collection)
    except EmbeddingError as error:
        raise UserError(f"cannot use collection {collection!r} on the server: {error.message}") from None
