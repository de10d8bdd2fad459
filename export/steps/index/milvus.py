"""The scale-out engine of the index step: one collection on a Milvus server, through pymilvus.

The same interface, answers and refusals as the embedded engine (embedded.py), so that the
index step and its clients cannot tell them apart; tests/test_milvus_index.py checks that
against a real Milvus 2.3.5 server. What this module guarantees:
- a collection of INT64 ids (`id`, chosen by the client), FLOAT_VECTOR `vector` under an HNSW
  index, and the payload as a JSON field `payload` (filters.to_milvus filters on it);
  a reopen with another dimension or metric is refused;
- scores on the embedded engine's scale, higher is closer: cosine and inner product as Milvus
  gives them; for l2 Milvus gives the squared distance, the embedded engine minus the distance;
- every query gets exactly `top_k` rows, padded with id -1;
- read-your-writes: an acknowledged upsert or delete is seen by the next search, count or
  existing of this process, and by a process opening the collection afterwards. Reads use
  Session consistency, which waits until the server has applied this process's last write, as
  pymilvus remembers it: a few ms, but up to two of the server's time ticks right after a write
  (300-400 ms at Milvus's default `proxy.timeTickInterval` of 200 ms, about 50 ms at 50).
  pymilvus learns nothing from a delete on Milvus 2.3.5 (its answer has no timestamp) and
  nothing of other processes' writes: the first read after opening and after a delete is
  Strong instead (it waits for everything acknowledged before it, about as long);
- payloads come back exactly as written; ids are 0 to 2**63-1, which both engines can store.

Imports nothing of the project but its neighbours filters and hits: it is copied into the model repository beside
model.py, which imports it only when the engine is milvus.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

# Served, this file runs from its copy beside model.py and imports filters by its bare name, as
# actions.py does; in the export package, from the package. Never a mix: where the project is
# installed, a try/except import would take the package's filters here while actions.py parses
# with the copy's, and to_milvus would not know the copy's nested Filter (seen: AttributeError).
if __package__:
    from export.steps.index.filters import Filter, payload_for_qdrant, to_milvus
    from export.steps.index.hits import CollectionError, Hits, check_ids, check_vectors
else:
    from filters import Filter, payload_for_qdrant, to_milvus
    from hits import CollectionError, Hits, check_ids, check_vectors

METRICS = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
INDEX_TYPE = "HNSW"
INDEX_PARAMS = {"M": 16, "efConstruction": 64}  # Milvus 2.3 refuses HNSW without them
SEARCH_EF = 128  # HNSW beam width at query time, at least top_k: the embedded engine's
WRITE_BATCH = 1000  # points per upsert call, ids per lookup
MAX_TOP_K = 16384  # Milvus refuses a larger limit
# Payload integers both engines store exactly (Milvus parses JSON with simdjson: int64 or uint64).
PAYLOAD_INTEGERS = (-(2**63), 2**64 - 1)
MAX_PAYLOAD_BYTES = 65536  # Milvus 2.3 refuses a longer JSON value
TIMEOUT = 30.0  # seconds a call may take before the request fails (pymilvus retries within it)
LOAD_TIMEOUT = 300.0  # loading a collection after a server restart
COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # what Milvus accepts


class MilvusIndex:
    """One collection on a Milvus server. Thread-safe as far as pymilvus is (its client is)."""

    def __init__(self, client: MilvusClient, collection: str, dimension: int, metric: str) -> None:
        self.client, self.collection, self.dimension, self.metric = client, collection, dimension, metric
        # Deletes (and opens) whose effect a Session read may miss, and how many of them a
        # Strong read has covered since: the next read is Strong while they differ.
        self._unseen_writes, self._covered_writes = 1, 0

    @classmethod
    def open(cls, uri: str, collection: str, dimension: int, metric: str, token: str | None = None) -> MilvusIndex:
        """Create the collection, or load it with the same dimension and metric."""
        if metric not in METRICS:
            raise CollectionError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        if not COLLECTION_NAME.fullmatch(collection):
            raise CollectionError(
                f"Milvus cannot name a collection {collection!r}: letters, digits and _, not starting with a digit, "
                "at most 255"
            )
        client = MilvusClient(uri=uri, token=token or "", timeout=TIMEOUT)
        try:
            if not client.has_collection(collection, timeout=TIMEOUT):
                try:
                    _create(client, collection, dimension, metric)
                except MilvusException:
                    if not client.has_collection(collection, timeout=TIMEOUT):
                        raise  # else another instance of the step created it meanwhile: checked below
            found = _settings(client, collection)
            settings = {"dimension": dimension, "metric": metric}
            if found != settings:
                raise CollectionError(f"{collection} at {uri} holds a collection with {found}, not {settings}")
            client.load_collection(collection, timeout=LOAD_TIMEOUT)  # waits until it serves
        except BaseException:
            client.close()
            raise
        return cls(client, collection, dimension, metric)

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, payloads: Sequence[dict]) -> int:
        """Insert or replace points by id; returns how many were given. An id given twice in
        one call ends with its last vector and payload, as two calls would."""
        vectors = check_vectors(vectors, self.dimension, "upsert")
        if not len(ids) == len(vectors) == len(payloads):
            raise CollectionError(f"upsert: {len(ids)} ids, {len(vectors)} vectors and {len(payloads)} payloads")
        checked = check_ids(ids, "upsert")
        texts = [_payload_text(payload, f"upsert: payloads[{index}]") for index, payload in enumerate(payloads)]
        last = {point_id: row for row, point_id in enumerate(checked)}  # Milvus would keep both
        rows = [
            {"id": point_id, "vector": vectors[row].tolist(), "payload": texts[row]} for point_id, row in last.items()
        ]
        for start in range(0, len(rows), WRITE_BATCH):
            self.client.upsert(self.collection, rows[start : start + WRITE_BATCH], timeout=TIMEOUT)
        return len(checked)

    def search(self, vectors: np.ndarray, top_k: int, filter: Filter | None = None) -> Hits:
        """The `top_k` nearest points of each query vector, closest first, among those `filter`
        (filters.parse_filter) selects."""
        vectors = check_vectors(vectors, self.dimension, "search")
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or not 0 <= top_k <= MAX_TOP_K:
            raise CollectionError(f"search: top_k must be an integer from 0 to {MAX_TOP_K}, got {top_k!r}")
        hits = Hits.padded(len(vectors), top_k)
        if not len(vectors) or not top_k:
            return hits
        results = self._read(
            self.client.search,
            data=vectors.tolist(),
            filter=to_milvus(filter),
            limit=int(top_k),
            output_fields=["payload"],
            search_params={"metric_type": METRICS[self.metric], "params": {"ef": max(SEARCH_EF, int(top_k))}},
        )
        for row, points in enumerate(results):
            for column, point in enumerate(list(points)[:top_k]):
                hits.ids[row, column], hits.scores[row, column] = point["id"], self._score(point["distance"])
                hits.payloads[row][column] = json.dumps(point["entity"]["payload"], ensure_ascii=False)
        return hits

    def _score(self, distance: float) -> float:
        """Milvus's L2 "distance" is the squared distance; the embedded engine scores -distance."""
        return -math.sqrt(max(distance, 0.0)) if self.metric == "l2" else distance

    def existing(self, ids: Sequence[int]) -> list[int]:
        """Which of `ids` are stored (ingest skips them when it resumes)."""
        wanted = list(dict.fromkeys(check_ids(ids, "existing")))
        found: set[int] = set()
        for start in range(0, len(wanted), WRITE_BATCH):
            chunk = wanted[start : start + WRITE_BATCH]
            rows = self._read(self.client.query, filter=f"id in {chunk}", output_fields=["id"], limit=len(chunk))
            found.update(row["id"] for row in rows)
        return [point_id for point_id in wanted if point_id in found]

    def count(self, filter: Filter | None = None) -> int:
        rows = self._read(self.client.query, filter=to_milvus(filter), output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def delete(self, ids: Sequence[int]) -> list[int]:
        """Delete points by id; returns those that existed (each once), the ones deleted. Milvus
        itself only counts the ids it was given."""
        found = self.existing(ids)
        for start in range(0, len(found), WRITE_BATCH):
            self._unseen_writes += 1  # first: a call that fails may still have deleted
            self.client.delete(self.collection, ids=found[start : start + WRITE_BATCH], timeout=TIMEOUT)
        return found

    def delete_matching(self, filter: Filter) -> int:
        """Delete the points a filter matches; returns how many."""
        if filter is None:
            raise CollectionError("delete_matching: no filter given; it would delete every point")
        matched = self.count(filter)  # this read waited for the process's writes: Milvus's own
        if matched:  # query for the points to delete, after it, sees them too
            self._unseen_writes += 1
            self.client.delete(self.collection, filter=to_milvus(filter), timeout=TIMEOUT)
        return matched

    def maintain(self) -> None:
        """Between requests: nothing to do, the server indexes and compacts by itself."""

    def close(self) -> None:
        self.client.close()

    def _read(self, call: Any, **kwargs: Any) -> Any:
        """A read that sees every write acknowledged to this process, and every write made
        before the collection was opened (see the module's docstring)."""
        unseen = self._unseen_writes
        strong = unseen != self._covered_writes
        result = call(self.collection, consistency_level="Strong" if strong else "Session", timeout=TIMEOUT, **kwargs)
        if strong:
            self._covered_writes = max(self._covered_writes, unseen)
        return result


def _create(client: MilvusClient, collection: str, dimension: int, metric: str) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field("payload", DataType.JSON)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type=INDEX_TYPE, metric_type=METRICS[metric], params=INDEX_PARAMS)
    # Session is the collection's default; every read here says which level it uses anyway.
    client.create_collection(
        collection, schema=schema, index_params=index, consistency_level="Session", timeout=TIMEOUT
    )


def _settings(client: MilvusClient, collection: str) -> dict[str, Any]:
    """The dimension and metric of an existing collection, or a description of why it is not ours."""
    fields = {field["name"]: field for field in client.describe_collection(collection, timeout=TIMEOUT)["fields"]}
    kinds = {name: field["type"] for name, field in fields.items()}
    wanted = {"id": DataType.INT64, "vector": DataType.FLOAT_VECTOR, "payload": DataType.JSON}
    if kinds != wanted or not fields["id"].get("is_primary") or fields["id"].get("auto_id"):
        found = ", ".join(f"{name} {getattr(kind, 'name', kind)}" for name, kind in kinds.items())
        return {"fields": found}
    indexes = client.list_indexes(collection, field_name="vector", timeout=TIMEOUT)
    described = client.describe_index(collection, indexes[0], timeout=TIMEOUT) if indexes else {}
    metrics = {name: key for key, name in METRICS.items()}
    metric = metrics.get(described.get("metric_type"), described.get("metric_type", "no index"))
    return {"dimension": int(fields["vector"]["params"]["dim"]), "metric": metric}


def _payload_text(payload: Any, path: str) -> str:
    """The payload as the JSON text stored, after checking it is JSON both engines keep as is."""
    if not isinstance(payload, Mapping):
        raise CollectionError(f"{path}: a payload is a JSON object, got {type(payload).__name__}")
    try:
        _check_json(payload, path)
    except RecursionError:
        raise CollectionError(f"{path}: nested too deeply") from None
    try:
        payload_for_qdrant(payload)  # what the embedded engine refuses is refused here too
    except ValueError as error:
        raise CollectionError(f"{path}: {error}") from None
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise CollectionError(f"{path}: a string holds a lone surrogate, not valid Unicode") from None
    if size > MAX_PAYLOAD_BYTES:
        raise CollectionError(f"{path}: {size} bytes of JSON, Milvus takes at most {MAX_PAYLOAD_BYTES}")
    return text


def _check_json(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not PAYLOAD_INTEGERS[0] <= value <= PAYLOAD_INTEGERS[1]:
            raise CollectionError(f"{path}: the integer {value} is beyond 64 bits (store it as a string)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise CollectionError(f"{path}: {value} is not a JSON number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CollectionError(f"{path}: the key {key!r} is not a string")
            _check_json(item, f"{path}[{json.dumps(key, ensure_ascii=False)}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]")
    else:
        raise CollectionError(f"{path}: {type(value).__name__} is not a JSON value")
