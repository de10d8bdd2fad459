"""What the index step does with one request: its tensors in, checked, run on the collection,
tensors out. No Triton here (model.py only moves tensors), so it runs in tests as it runs served.

A request is one action on all its rows (ACTION, or by default "upsert" when it carries ids and
"search" otherwise):
- search: vectors (+ top-k, filter per row) -> ids, scores, payloads, [rows, k] padded with -1;
- upsert: vectors, ids (+ payloads) -> count per row (1);
- delete: ids -> 1 per id that existed; or filters -> how many points each one deleted;
- count: (filters) -> how many points each one matches;
- exists: ids -> 1 per id stored, else 0 (ingest resumes with it).
Everything is checked before anything is written, so a refused request changes nothing. An
error names the tensor and row (`ID[3]`), which the client turns into an index in its list.
Imports nothing of the project but its neighbours: it is copied beside model.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

# Served, this file runs from its copy beside model.py and imports its neighbours by their bare
# names; in the export package (tests, the exporter), from the package. Never a mix of the two:
# a served step runs exactly the code its export copied.
if __package__:
    from export.steps.index.filters import Filter, FilterError, parse_filter
else:
    from filters import Filter, FilterError, parse_filter

ENGINES = ("embedded", "milvus")
METRICS = ("cosine", "ip", "l2")
ACTIONS = ("search", "upsert", "delete", "count", "exists")
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_FILTER_BYTES = 64 * 1024


class RequestError(ValueError):
    """A request the index step refuses (a 400 for that request only)."""


@dataclass(frozen=True)
class IndexSettings:
    """What export writes into the index step's config parameters and model.py reads back.

    `tensors` maps each role (vector, top_k, filter, id, payload, action, ids, scores, payloads,
    count) to its tensor name, so the names are defined once (triton_embeddings.names)."""

    engine: str
    dimension: int
    metric: str
    top_k: int
    max_top_k: int
    tensors: Mapping[str, str] = field(default_factory=dict)
    # embedded: the collection's folder; relative paths start at the folder holding the repository.
    data_dir: str = ""
    # milvus: the server and the collection's name there.
    uri: str = ""
    collection: str = ""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; use one of {', '.join(ENGINES)}")
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; use one of {', '.join(METRICS)}")
        if not 1 <= self.top_k <= self.max_top_k:
            raise ValueError(f"top-k must be between 1 and the max top-k {self.max_top_k}, got {self.top_k}")
        if self.engine == "embedded" and not self.data_dir:
            raise ValueError("the embedded engine needs a data folder")
        if self.engine == "milvus" and not (self.uri and self.collection):
            raise ValueError("the milvus engine needs a server URI and a collection name")

    def parameters(self) -> dict[str, str]:
        values = asdict(self)
        return {key: json.dumps(value) if key == "tensors" else str(value) for key, value in values.items()}

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> IndexSettings:
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, text in params.items():
            if key in kinds:
                values[key] = json.loads(text) if key == "tensors" else int(text) if kinds[key] == "int" else text
        return cls(**values)

    def data_folder(self, repository: Path) -> Path:
        """The embedded collection's folder: outside every model folder, so a re-export (which
        replaces model folders) never touches the data."""
        path = Path(self.data_dir).expanduser()
        return path if path.is_absolute() else repository.resolve().parent / path


def open_index(settings: IndexSettings, repository: Path) -> Any:
    """The collection, on the configured engine (imported only when chosen)."""
    if settings.engine == "milvus":
        if __package__:
            from export.steps.index.milvus import MilvusIndex
        else:
            from milvus import MilvusIndex
        return MilvusIndex.open(settings.uri, settings.collection, settings.dimension, settings.metric)
    if __package__:
        from export.steps.index.embedded import EmbeddedIndex
    else:
        from embedded import EmbeddedIndex
    return EmbeddedIndex.open(settings.data_folder(repository), settings.dimension, settings.metric)


class Action:
    """One request's inputs (tensor name -> array) read by role, checked, and run."""

    def __init__(self, settings: IndexSettings, inputs: Mapping[str, np.ndarray]) -> None:
        self.settings, self.names = settings, settings.tensors
        self.inputs = {role: inputs[name] for role, name in self.names.items() if name in inputs}
        self.rows = next((len(array) for array in self.inputs.values()), 0)
        self.kind = self._kind()

    def _kind(self) -> str:
        if "action" not in self.inputs:
            return "upsert" if "id" in self.inputs else "search"
        kinds = {self._text(raw, "action", row) for row, raw in enumerate(self.inputs["action"].reshape(-1))}
        if len(kinds) != 1:
            raise RequestError(f"{self.names['action']}: one action per request, got {sorted(kinds)}")
        kind = kinds.pop()
        if kind not in ACTIONS:
            raise RequestError(f"{self.names['action']}[0] is {kind!r}; use one of {', '.join(ACTIONS)}")
        return kind

    def run(self, index: Any) -> dict[str, np.ndarray]:
        """Output tensors by name."""
        allowed = {
            "search": {"vector", "top_k", "filter"},
            "upsert": {"vector", "id", "payload"},
            "delete": {"id", "filter"},
            "count": {"filter"},
            "exists": {"id"},
        }[self.kind] | {"action"}
        if extra := sorted(self.names[role] for role in self.inputs if role not in allowed):
            takes = ", ".join(self.names[role] for role in sorted(allowed))
            raise RequestError(f"{self.kind} takes {takes}; this request also has {', '.join(extra)}")
        return getattr(self, f"_{self.kind}")(index)

    # The actions.

    def _search(self, index: Any) -> dict[str, np.ndarray]:
        vectors = self._required("vector")
        top_k = self._top_k()
        filters, parsed = self._filters()
        width = int(top_k.max()) if self.rows else self.settings.top_k
        ids = np.full((self.rows, width), -1, dtype=np.int64)
        scores = np.full((self.rows, width), np.finfo(np.float32).min, dtype=np.float32)
        payloads = np.full((self.rows, width), b"null", dtype=object)
        for text, rows in _groups(filters):  # one engine call per distinct filter
            k = int(top_k[rows].max())
            hits = index.search(vectors[rows], k, parsed.get(text))
            for at, row in enumerate(rows):
                keep = int(top_k[row])
                ids[row, :keep], scores[row, :keep] = hits.ids[at, :keep], hits.scores[at, :keep]
                payloads[row, :keep] = [payload.encode() for payload in hits.payloads[at][:keep]]
        return {self.names["ids"]: ids, self.names["scores"]: scores, self.names["payloads"]: payloads}

    def _upsert(self, index: Any) -> dict[str, np.ndarray]:
        vectors, ids = self._required("vector"), self._ids()
        payloads = self._payloads() if "payload" in self.inputs else [{} for _ in range(self.rows)]
        index.upsert(ids.tolist(), vectors, payloads)
        return self._counts(np.ones(self.rows, dtype=np.int64))

    def _delete(self, index: Any) -> dict[str, np.ndarray]:
        if ("id" in self.inputs) == ("filter" in self.inputs):
            raise RequestError(f"delete takes {self.names['id']} or {self.names['filter']}, one of the two")
        if "id" in self.inputs:
            ids = self._ids()
            found = set(index.delete(ids.tolist()))
            return self._counts(np.array([int(i in found) for i in ids.tolist()], dtype=np.int64))
        parsed = [self._parse(text, row) for row, text in enumerate(self._filter_texts(required=True))]
        return self._counts(np.array([index.delete_matching(f) for f in parsed], dtype=np.int64))

    def _count(self, index: Any) -> dict[str, np.ndarray]:
        rows = max(self.rows, 1)
        texts = self._filter_texts() if "filter" in self.inputs else [None] * rows
        parsed = [None if text is None else self._parse(text, row) for row, text in enumerate(texts)]
        return self._counts(np.array([index.count(f) for f in parsed], dtype=np.int64))

    def _exists(self, index: Any) -> dict[str, np.ndarray]:
        ids = self._ids(unique=False)
        found = set(index.existing(sorted(set(ids.tolist()))))
        return self._counts(np.array([int(i in found) for i in ids.tolist()], dtype=np.int64))

    # Reading the inputs.

    def _counts(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        return {self.names["count"]: counts.reshape(-1, 1)}

    def _required(self, role: str) -> np.ndarray:
        if role not in self.inputs:
            raise RequestError(f"{self.kind} needs {self.names[role]}")
        return self.inputs[role]

    def _top_k(self) -> np.ndarray:
        if "top_k" not in self.inputs:
            return np.full(self.rows, self.settings.top_k, dtype=np.int64)
        top_k = self.inputs["top_k"].reshape(-1).astype(np.int64)
        for row, k in enumerate(top_k.tolist()):
            if not 1 <= k <= self.settings.max_top_k:
                raise RequestError(f"{self.names['top_k']}[{row}] is {k}: use 1 to {self.settings.max_top_k}")
        return top_k

    def _ids(self, *, unique: bool = True) -> np.ndarray:
        ids = self._required("id").reshape(-1).astype(np.int64)
        seen: dict[int, int] = {}
        for row, value in enumerate(ids.tolist()):
            if value < 0:
                raise RequestError(f"{self.names['id']}[{row}] is {value}: ids are integers >= 0")
            if unique and value in seen:
                raise RequestError(f"{self.names['id']}[{row}] repeats id {value} of row {seen[value]}")
            seen.setdefault(value, row)
        return ids

    def _payloads(self) -> list[dict[str, Any]]:
        payloads = []
        for row, raw in enumerate(self.inputs["payload"].reshape(-1)):
            text = self._text(raw, "payload", row, limit=MAX_PAYLOAD_BYTES)
            try:
                payload = json.loads(text, parse_constant=_refuse_constant) if text.strip() else {}
            except ValueError as error:
                raise RequestError(f"{self.names['payload']}[{row}] is not JSON: {error}") from None
            if not isinstance(payload, dict):
                raise RequestError(f"{self.names['payload']}[{row}] is a JSON {type(payload).__name__}, not an object")
            payloads.append(payload)
        return payloads

    def _filter_texts(self, *, required: bool = False) -> list[str | None]:
        texts = [
            self._text(raw, "filter", row, limit=MAX_FILTER_BYTES).strip() or None
            for row, raw in enumerate(self.inputs["filter"].reshape(-1))
        ]
        if required and None in texts:
            raise RequestError(f"{self.names['filter']}[{texts.index(None)}] is empty: delete takes a filter")
        return texts

    def _filters(self) -> tuple[list[str | None], dict[str | None, Filter]]:
        """Each row's filter text, and each distinct text parsed: all checked before any search."""
        if "filter" not in self.inputs:
            return [None] * self.rows, {}
        texts = self._filter_texts()
        parsed: dict[str | None, Filter] = {}
        for row, text in enumerate(texts):
            if text is not None and text not in parsed:
                parsed[text] = self._parse(text, row)
        return texts, parsed

    def _parse(self, text: str, row: int) -> Filter:
        try:
            return parse_filter(text)
        except FilterError as error:
            raise RequestError(f"{self.names['filter']}[{row}]: {error}") from None

    def _text(self, raw: Any, role: str, row: int, limit: int = 256) -> str:
        if len(raw) > limit:
            raise RequestError(f"{self.names[role]}[{row}] is {len(raw)} bytes, more than the limit of {limit}")
        try:
            return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError as error:
            raise RequestError(f"{self.names[role]}[{row}] is not valid UTF-8 at byte {error.start}") from None


def _groups(filters: list[str | None]) -> list[tuple[str | None, list[int]]]:
    """Rows grouped by their filter text, in first-seen order."""
    groups: dict[str | None, list[int]] = {}
    for row, text in enumerate(filters):
        groups.setdefault(text, []).append(row)
    return list(groups.items())


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")
