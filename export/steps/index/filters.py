"""The one filter syntax of search: parsed once, checked once, then translated for each engine.

A client sends one JSON object with search, count and delete requests:

    {"must": [COND, ...], "should": [COND, ...], "must_not": [COND, ...]}
    COND = {"key": "color", "match": "red"}                  equal to a string, integer or boolean
         | {"key": "color", "match": ["red", "blue"]}        equal to any of them (one type)
         | {"key": "price", "range": {"gte": 10, "lt": 20}}  a number within gt, gte, lt, lte
         | {"must": [...], "should": [...], "must_not": [...]}   a nested filter

A point matches when every `must` holds, at least one `should` holds (if there are any) and no
`must_not` holds. `matches` below is the definition; `to_qdrant` and `to_milvus` translate a
filter so that both engines select exactly the points it selects, which the tests check on a
real engine. The details every engine has to agree on:

- a condition sees top-level payload values only. A point whose payload lacks the key, or holds
  null, a list or an object there, fails that condition (so `must_not` keeps it);
- strings, integers and booleans are distinct: `"1"`, `1` and `true` never match each other;
- numbers compare as 64-bit floats, so `{"match": 1}` matches 1 and 1.0, and `range` never
  matches booleans. Integers in a filter stay within +-2**53, where that comparison is exact
  (Milvus compares larger payload integers exactly, Qdrant as doubles: keep such ids as strings);
- limits: filters nested at most 4 deep (the top one counts), at most 64 conditions in all,
  at most 256 values in a match list.

On qdrant-edge, payloads are written through payload_for_qdrant and read back through
payload_from_qdrant (booleans and lists are stored wrapped); on Milvus, as they are.

This file runs inside Triton's Python backend beside the index step's model.py and is imported
there by its bare name, so it imports nothing of the project; qdrant_edge only when asked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import qdrant_edge

MAX_DEPTH = 4
MAX_CONDITIONS = 64
MAX_VALUES = 256
# Integers beyond this lose digits as doubles, which is how Qdrant compares every number.
EXACT_INTEGERS = 2**53
CLAUSES = ("must", "should", "must_not")
BOUNDS = ("gt", "gte", "lt", "lte")
KEY_CONDITION_FIELDS = ("key", "match", "range")
# Letters, digits, `_` and `-`: a name every engine reads as one top-level field. A `.` would be
# a path into nested objects for Qdrant but part of the name for Milvus.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
# qdrant-edge 0.9.0 stores booleans and lists of a payload wrapped in an object under one of
# these names (see payload_for_qdrant).
BOOL_TAG = "#bool"
LIST_TAG = "#list"
MILVUS_FIELD_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Value = str | int | bool


class FilterError(ValueError):
    """A filter that cannot be used; the message names the place, the fault and what is allowed."""


@dataclass(frozen=True)
class Match:
    """The payload value at `key` equals one of `values` (all of one type: str, int or bool)."""

    key: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Range:
    """The payload value at `key` is a number within every bound given (None: no bound)."""

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class Filter:
    """Every `must`, at least one `should` when there are any, no `must_not`."""

    must: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()


Condition = Match | Range | Filter


# Parsing --------------------------------------------------------------------------------------


def parse_filter(text: str | bytes | Mapping[str, Any] | None) -> Filter | None:
    """The filter a request carries, checked; None when there is none to apply.

    None, an empty or blank text and a filter with no conditions (`{}`) all mean "every point",
    so both engines get no filter at all rather than an empty one.
    """
    if text is None:
        return None
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise FilterError(f"filter: not valid UTF-8: {error}") from None
    if isinstance(text, str):
        if not text.strip():
            return None
        document = _load_json(text)
    elif isinstance(text, Mapping):
        document = text
    else:
        raise FilterError(f"filter: must be JSON text or a dict, got {type(text).__name__}")
    if not isinstance(document, Mapping):
        raise FilterError(f"filter: must be a JSON object with must, should or must_not, got {_kind(document)}")
    parsed = _Parser().filter(document, "filter", depth=1)
    return parsed if _has_conditions(parsed) else None


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_fields)
    except json.JSONDecodeError as error:
        raise FilterError(f"filter: not valid JSON: {error}") from None
    except RecursionError:
        raise FilterError(
            f"filter: not valid JSON: nested too deeply (filters nest at most {MAX_DEPTH} deep)"
        ) from None


def _unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse `{"must": [...], "must": [...]}`: json.loads would silently keep only the last."""
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name in fields:
            raise FilterError(f"filter: not valid JSON: the field {name!r} appears twice in one object")
        fields[name] = value
    return fields


def _has_conditions(filter: Filter) -> bool:
    return bool(filter.must or filter.should or filter.must_not)


class _Parser:
    """One parse: counts the conditions of the whole filter against MAX_CONDITIONS."""

    def __init__(self) -> None:
        self.conditions = 0

    def filter(self, document: Mapping[str, Any], path: str, depth: int) -> Filter:
        for name in document:
            if name not in CLAUSES:
                raise FilterError(f"{path}: unknown field {name!r} (a filter has must, should, must_not)")
        clauses: dict[str, tuple[Condition, ...]] = {}
        for clause in CLAUSES:
            items = document.get(clause, [])
            if not isinstance(items, list):
                raise FilterError(f"{path}.{clause}: must be a list of conditions, got {_kind(items)}")
            clauses[clause] = tuple(
                self.condition(item, f"{path}.{clause}[{index}]", depth) for index, item in enumerate(items)
            )
        return Filter(**clauses)

    def condition(self, item: Any, path: str, depth: int) -> Condition:
        if not isinstance(item, Mapping):
            raise FilterError(f"{path}: a condition is a JSON object, got {_kind(item)}")
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(f"{path}: more than {MAX_CONDITIONS} conditions in one filter (nested ones count)")
        if "key" in item:
            return _key_condition(item, path)
        if not item or any(clause in item for clause in CLAUSES):
            if depth >= MAX_DEPTH:
                raise FilterError(f"{path}: filters nest at most {MAX_DEPTH} deep, the top one included")
            nested = self.filter(item, path, depth + 1)
            if not _has_conditions(nested):
                raise FilterError(f"{path}: a nested filter needs at least one condition in must, should or must_not")
            return nested
        raise FilterError(f'{path}: a condition needs "key" with "match" or "range", or must/should/must_not')


def _key_condition(item: Mapping[str, Any], path: str) -> Match | Range:
    for name in item:
        if name not in KEY_CONDITION_FIELDS:
            raise FilterError(
                f'{path}: unknown field {name!r} in a key condition (use "key" with "match" or "range"; '
                "a nested filter is a condition of its own)"
            )
    key = item["key"]
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise FilterError(
            f"{path}.key: must be a non-empty string of ASCII letters, digits, _ and - naming a top-level "
            f"payload field ('.' is not allowed: nested fields cannot be filtered), got {json.dumps(key)}"
        )
    if ("match" in item) == ("range" in item):
        raise FilterError(f'{path}: a key condition needs exactly one of "match" or "range"')
    if "match" in item:
        return Match(key, _match_values(item["match"], f"{path}.match"))
    return _range(key, item["range"], f"{path}.range")


def _match_values(match: Any, path: str) -> tuple[Value, ...]:
    if not isinstance(match, list):
        return (_match_value(match, path),)
    if not match:
        raise FilterError(f"{path}: an empty list matches nothing; give 1 to {MAX_VALUES} values")
    if len(match) > MAX_VALUES:
        raise FilterError(f"{path}: {len(match)} values, at most {MAX_VALUES} allowed")
    values = tuple(_match_value(value, f"{path}[{index}]") for index, value in enumerate(match))
    kinds = sorted({_kind(value) for value in values})
    if len(kinds) > 1:
        raise FilterError(f"{path}: a list must hold values of one type, got {' and '.join(kinds)}")
    return values


def _match_value(value: Any, path: str) -> Value:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _exact_integer(value, path)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FilterError(f"{path}: the string is not valid Unicode (it holds a lone surrogate)") from None
        return value
    if isinstance(value, float):
        raise FilterError(f"{path}: {value!r} is not an integer; match takes strings, integers or booleans (use range)")
    raise FilterError(f"{path}: match takes a string, integer or boolean or a list of one of them, got {_kind(value)}")


def _range(key: str, bounds: Any, path: str) -> Range:
    if not isinstance(bounds, Mapping) or not bounds:
        raise FilterError(f"{path}: must be an object with at least one of gt, gte, lt, lte, got {_kind(bounds)}")
    for name in bounds:
        if name not in BOUNDS:
            raise FilterError(f"{path}: unknown bound {name!r} (use gt, gte, lt, lte)")
    return Range(key, **{name: _bound(value, f"{path}.{name}") for name, value in bounds.items()})


def _bound(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FilterError(f"{path}: must be a number, got {_kind(value)}")
    if isinstance(value, int):
        return _exact_integer(value, path)
    if not math.isfinite(value):
        raise FilterError(f"{path}: must be a finite number, got {value!r}")
    return value


def _exact_integer(value: int, path: str) -> int:
    if abs(value) > EXACT_INTEGERS:
        raise FilterError(
            f"{path}: {value} is beyond +-{EXACT_INTEGERS} (2**53), where numbers stop comparing exactly; "
            "store such ids as strings"
        )
    return value


def _kind(value: Any) -> str:
    """A value's JSON type, for messages and for the one-type rule of match lists."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


# The definition ---------------------------------------------------------------------------------


def matches(filter: Filter | None, payload: Mapping[str, Any]) -> bool:
    """Whether a point with this payload is selected: the semantics every engine must reproduce."""
    if filter is None:
        return True
    return (
        all(_holds(condition, payload) for condition in filter.must)
        and (not filter.should or any(_holds(condition, payload) for condition in filter.should))
        and not any(_holds(condition, payload) for condition in filter.must_not)
    )


def _holds(condition: Condition, payload: Mapping[str, Any]) -> bool:
    if isinstance(condition, Filter):
        return matches(condition, payload)
    if condition.key not in payload:
        return False
    value = payload[condition.key]
    if isinstance(condition, Match):
        return any(_equal(value, wanted) for wanted in condition.values)
    number = _double(value)
    if number is None:
        return False
    return (
        (condition.gt is None or number > condition.gt)
        and (condition.gte is None or number >= condition.gte)
        and (condition.lt is None or number < condition.lt)
        and (condition.lte is None or number <= condition.lte)
    )


def _equal(value: Any, wanted: Value) -> bool:
    if isinstance(wanted, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
    if isinstance(wanted, str):
        return isinstance(value, str) and value == wanted
    return _double(value) == wanted


def _double(value: Any) -> float | None:
    """A payload number as the 64-bit float engines compare (Qdrant rounds big integers so too)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


# Qdrant (qdrant-edge-py 0.9.0) ---------------------------------------------------------------


def to_qdrant(filter: Filter | None) -> qdrant_edge.Filter | None:
    """The qdrant-edge Filter selecting what `matches` selects, for points stored with
    payload_for_qdrant; None (no filter) for None."""
    if filter is None or not _has_conditions(filter):
        return None
    try:
        import qdrant_edge
    except ImportError as error:
        raise ImportError("to_qdrant needs qdrant-edge-py: pip install 'triton-embeddings[serve]'") from error
    return _qdrant_filter(qdrant_edge, filter)


def _qdrant_filter(qe: Any, filter: Filter) -> Any:
    def conditions(items: tuple[Condition, ...]) -> list[Any] | None:
        return [_qdrant_condition(qe, item) for item in items] or None

    return qe.Filter(
        must=conditions(filter.must), should=conditions(filter.should), must_not=conditions(filter.must_not)
    )


def _qdrant_condition(qe: Any, condition: Condition) -> Any:
    if isinstance(condition, Filter):
        return _qdrant_filter(qe, condition)
    # Quoted, the key names one top-level field whatever it holds.
    path = json.dumps(condition.key)
    if isinstance(condition, Range):
        bounds = {name: None if (bound := getattr(condition, name)) is None else float(bound) for name in BOUNDS}
        return qe.FieldCondition(path, range=qe.RangeFloat(**bounds))
    values = condition.values
    if isinstance(values[0], bool):
        # qdrant-edge 0.9.0 turns a Python bool in MatchValue/MatchAny into the integer 1 or 0, which
        # never equals a stored JSON boolean: booleans are stored as {"#bool": 1 or 0} instead.
        return _qdrant_match(qe, f"{path}.{json.dumps(BOOL_TAG)}", [int(value) for value in values])
    if isinstance(values[0], str):
        return _qdrant_match(qe, path, list(values))
    # Integers as ranges: MatchValue(1) misses a stored 1.0, which Milvus and `matches` accept.
    ranges = [qe.FieldCondition(path, range=qe.RangeFloat(gte=float(value), lte=float(value))) for value in values]
    return ranges[0] if len(ranges) == 1 else qe.Filter(should=ranges)


def _qdrant_match(qe: Any, path: str, values: list[Any]) -> Any:
    match = qe.MatchValue(values[0]) if len(values) == 1 else qe.MatchAny(values)
    return qe.FieldCondition(path, match=match)


def payload_for_qdrant(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A payload as the embedded engine must store it for to_qdrant's filters to mean `matches`.

    Two top-level values are wrapped, in place: a boolean as {"#bool": 1 or 0}, because
    qdrant-edge 0.9.0 cannot match a stored JSON boolean at all; a list as {"#list": [...]},
    because Qdrant matches a list by any of its items, where Milvus and `matches` match no list.
    payload_from_qdrant undoes both. A top-level object value with a field of either name is
    refused, as it could pass for a stored boolean or list.
    """
    stored: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, bool):
            stored[key] = {BOOL_TAG: int(value)}
        elif isinstance(value, list):
            stored[key] = {LIST_TAG: value}
        elif isinstance(value, Mapping) and (BOOL_TAG in value or LIST_TAG in value):
            raise ValueError(
                f"payload[{json.dumps(key, ensure_ascii=False)}]: a top-level object with a field "
                f"{BOOL_TAG!r} or {LIST_TAG!r} is refused: that is how booleans and lists are stored"
            )
        else:
            stored[key] = value
    return stored


def payload_from_qdrant(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """The payload as the client wrote it: the inverse of payload_for_qdrant."""
    payload: dict[str, Any] = {}
    for key, value in (stored or {}).items():
        if _wrapped(value) and BOOL_TAG in value:
            payload[key] = bool(value[BOOL_TAG])
        elif _wrapped(value):
            payload[key] = value[LIST_TAG]
        else:
            payload[key] = value
    return payload


def _wrapped(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and (BOOL_TAG in value or LIST_TAG in value)


# Milvus (a server, 2.3.5 measured) ----------------------------------------------------------------


def to_milvus(filter: Filter | None, field: str = "payload") -> str:
    """A Milvus boolean expression over the JSON field `field`; "" (no filter) for None or {}.

    Every value is written as a JSON literal (json.dumps), so no key or string can end its
    quotes early. ensure_ascii=False because Milvus refuses the surrogate-pair escapes json.dumps
    writes for characters beyond U+FFFF, while it reads them as raw UTF-8.
    On a Milvus 2.3.5 server, `not (...)` is true for a point lacking the key, which is what
    must_not means here, so no `exists` guard is needed (measured: check again on a new version).
    """
    if not MILVUS_FIELD_PATTERN.fullmatch(field):
        raise ValueError(f"to_milvus: field {field!r} is not a Milvus field name")
    if filter is None:
        return ""
    return _milvus_filter(filter, field)


def _milvus_filter(filter: Filter, field: str) -> str:
    parts = [_milvus_condition(condition, field) for condition in filter.must]
    if filter.should:
        parts.append("(" + " or ".join(_milvus_condition(condition, field) for condition in filter.should) + ")")
    if filter.must_not:
        parts.append("not (" + " or ".join(_milvus_condition(condition, field) for condition in filter.must_not) + ")")
    return " and ".join(parts)


def _milvus_condition(condition: Condition, field: str) -> str:
    if isinstance(condition, Filter):
        return f"({_milvus_filter(condition, field)})"
    value = f"{field}[{_milvus_literal(condition.key)}]"
    if isinstance(condition, Match):
        if len(condition.values) == 1:
            return f"{value} == {_milvus_literal(condition.values[0])}"
        return f"{value} in [{', '.join(_milvus_literal(item) for item in condition.values)}]"
    operators = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
    comparisons = [
        f"{value} {operators[name]} {_milvus_literal(bound)}"
        for name in BOUNDS
        if (bound := getattr(condition, name)) is not None
    ]
    # Milvus 2.3.5 fails on chained comparisons (`1 <= x <= 2`): one comparison per bound.
    return comparisons[0] if len(comparisons) == 1 else "(" + " and ".join(comparisons) + ")"


def _milvus_literal(value: Value | float) -> str:
    return json.dumps(value, ensure_ascii=False)
