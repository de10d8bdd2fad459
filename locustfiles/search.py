"""Locust load test for a search collection, over Triton's own HTTP endpoint (KServe v2 JSON).

    locust -f locustfiles/search.py --headless -u 8 -r 8 -t 60s --host http://localhost:8000 \\
        --collection docs --csv reports/search --html reports/search.html

The collection comes from --collection or LOCUST_COLLECTION (default: docs); its ensembles
are named by triton_embeddings.names.CollectionNames. Two user classes (name classes on the
command line to run only one):
- `SearchUser` (weight 3): one query text per request to COLLECTION_search with a TOP_K; a
  share of them (--filter-share) also send a FILTER on the payload group the upserts write;
- `UpsertUser` (weight 1): texts to COLLECTION_upsert under random ids far above the usual
  ones (from 10**15), each with a payload.

Queries and stored texts are export.tools.payloads' short texts. Every reply is checked, and
anything else counts as a failure: HTTP 200; IDS an INT64 row of TOP_K ids, the hits (>= 0)
before the padding (-1); SCORES in descending order; PAYLOADS JSON, objects for the hits (and,
with a filter, in the filtered group); COUNT 1 per stored text.
"""

from __future__ import annotations

import itertools
import json
import random

from locust import FastHttpUser, constant, events, task

from export.tools import payloads
from triton_embeddings.names import COUNT, FILTER, ID, IDS, PAYLOAD, PAYLOADS, SCORES, TEXT, TOP_K, CollectionNames

DEFAULT_COLLECTION = "docs"
FIRST_ID = 10**15  # upserts stay above the ids an ingest uses
ID_SPAN = 10**9
GROUP = "locust"  # the payload group upserts write and filtered searches select


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument(
        "--collection", env_var="LOCUST_COLLECTION", default=DEFAULT_COLLECTION, help="the search collection"
    )
    parser.add_argument("--top-k", type=int, default=10, help="hits asked per query")
    parser.add_argument("--filter-share", type=float, default=0.25, help="share of searches sent with a FILTER")
    parser.add_argument("--upsert-items", type=int, default=1, help="texts per upsert request")


_TEXTS: list[str] = []


def _texts() -> list[str]:
    if not _TEXTS:
        _TEXTS.extend(payloads.short_texts(1000, seed=5))
    return _TEXTS


def _tensor(spec, rows: list) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": [len(rows), 1], "data": rows}


def _outputs(response) -> dict[str, dict]:
    """The reply's outputs by name, or ValueError."""
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
    return {output["name"]: output for output in json.loads(response.text)["outputs"]}


def check_hits(outputs: dict[str, dict], top_k: int, group: str | None) -> None:
    """One row of `top_k` hits: ids INT64, hits before padding, scores descending, payloads JSON."""
    ids, scores, found = (outputs[spec.name] for spec in (IDS, SCORES, PAYLOADS))
    if ids["datatype"] != IDS.datatype or ids["shape"] != [1, top_k] or scores["shape"] != [1, top_k]:
        raise ValueError(f"IDS {ids['datatype']} {ids['shape']}, SCORES {scores['shape']}: expected [1, {top_k}]")
    values = ids["data"]
    hits = sum(1 for value in itertools.takewhile(lambda i: isinstance(i, int) and i >= 0, values))
    if any(value != -1 for value in values[hits:]) or any(not isinstance(value, int) for value in values):
        raise ValueError(f"IDS must be hits (>= 0) then -1 padding, got {values}")
    if any(later > earlier for earlier, later in itertools.pairwise(scores["data"])):
        raise ValueError(f"SCORES not in descending order: {scores['data']}")
    stored = [json.loads(text) for text in found["data"]]
    if not all(isinstance(p, dict) for p in stored[:hits]) or any(p is not None for p in stored[hits:]):
        raise ValueError(f"PAYLOADS must be objects for the hits and null for padding, got {found['data']}")
    if group is not None and any(p.get("group") != group for p in stored[:hits]):
        raise ValueError(f"a hit outside the filtered group {group!r}: {stored[:hits]}")


class _Collection:
    """Options and texts shared by both user classes (listed first in their bases, so that this
    on_start is the one Locust calls). Closed loop: no wait."""

    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.names = CollectionNames(options.collection)
        self.options = options
        self.random = random.Random()
        self._cycle = itertools.cycle(_texts())

    def post(self, model: str, name: str, inputs: list[dict], check) -> None:
        with self.client.post(
            f"/v2/models/{model}/infer", json={"inputs": inputs}, name=name, catch_response=True
        ) as response:
            try:
                check(_outputs(response))
            except (ValueError, KeyError, TypeError) as error:
                response.failure(str(error)[:300])


class SearchUser(_Collection, FastHttpUser):
    weight = 3

    @task
    def search(self) -> None:
        top_k = self.options.top_k
        inputs = [_tensor(TEXT, [next(self._cycle)]), _tensor(TOP_K, [top_k])]
        group = GROUP if self.random.random() < self.options.filter_share else None
        if group is not None:
            selected = {"must": [{"key": "group", "match": group}]}
            inputs.append(_tensor(FILTER, [json.dumps(selected)]))
        name = f"{'filtered ' if group else ''}search {self.names.search}"
        self.post(self.names.search, name, inputs, lambda outputs: check_hits(outputs, top_k, group))


class UpsertUser(_Collection, FastHttpUser):
    weight = 1

    @task
    def upsert(self) -> None:
        count = self.options.upsert_items
        texts = [next(self._cycle) for _ in range(count)]
        ids = self.random.sample(range(FIRST_ID, FIRST_ID + ID_SPAN), count)  # distinct: a request may not repeat one
        marks = [json.dumps({"group": GROUP, "source": "locust"}) for _ in range(count)]
        inputs = [_tensor(TEXT, texts), _tensor(ID, ids), _tensor(PAYLOAD, marks)]

        def check(outputs: dict[str, dict]) -> None:
            counts = outputs[COUNT.name]
            if counts["shape"] != [count, 1] or counts["data"] != [1] * count:
                raise ValueError(f"COUNT {counts['shape']} {counts['data']}: expected {count} times 1")

        self.post(self.names.upsert, f"upsert {self.names.upsert}", inputs, check)
