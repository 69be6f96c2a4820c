"""List-method parameters as the catalog ``*.list`` methods take them: select, filter, order, start.

Pure functions over rows (dicts of one item's fields); :mod:`.products` builds the rows and turns a
:class:`ListError` into the portal's error answer (HTTP 400, code 0).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["PAGE", "ListError", "ListQuery", "page"]

PAGE = 50  # "The page size of results is always static — 50 records."

# Longest prefixes first, so ">=" is not read as ">" plus a field called "=id".
_PREFIXES = ("!=", ">=", "<=", "=", "!", ">", "<")
_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class ListError(ValueError):
    """A list call the portal refuses (error code 0); the message is the ``error_description``."""


@dataclass(frozen=True)
class _Condition:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class ListQuery:
    """Parsed ``select``, ``filter``, ``order`` and ``start`` of one list call."""

    select: frozenset[str] | None
    conditions: tuple[_Condition, ...]
    order: tuple[tuple[str, bool], ...]  # (field, descending)
    start: int

    @classmethod
    def parse(
        cls,
        params: dict[str, Any],
        fields: Iterable[str],
        *,
        require: bool = False,
        is_field: Callable[[str], bool] | None = None,
    ) -> ListQuery:
        """Read the parameters; ``require`` enforces the catalog.product.list rules (id and iblockId).

        ``fields`` are the filterable and orderable fields; ``is_field`` may accept more (``property<N>``).
        An empty-string filter value drops its condition (what an unresolved ``$result[...]`` reference of
        a batch becomes).
        """
        known = set(fields)

        def valid(name: str) -> bool:
            return name in known or (is_field is not None and is_field(name))

        select = _names(params.get("select"))
        if require and (select is None or not {"id", "iblockId"} <= select):
            raise ListError("Required select fields: id, iblockId")
        raw_filter = params.get("filter") or {}
        if isinstance(raw_filter, list) and not raw_filter:
            raw_filter = {}
        if not isinstance(raw_filter, dict):
            raise ListError("Invalid value to match with parameter {filter}. Should be value of type array")
        conditions = []
        for key, value in raw_filter.items():
            op = next((p for p in _PREFIXES if str(key).startswith(p)), "")
            name = str(key)[len(op) :]
            if not _FIELD.fullmatch(name) or not valid(name):
                raise ListError(f"Unknown filter field: {key}")
            if value == "" or value is None:
                continue
            conditions.append(_Condition(name, op or "=", value))
        if require and not any(c.field == "iblockId" for c in conditions):
            raise ListError("Required filter fields: iblockId")
        raw_order = params.get("order") or {}
        if not isinstance(raw_order, dict):
            raise ListError("Invalid value to match with parameter {order}. Should be value of type array")
        order = []
        for name, direction in raw_order.items():
            if not valid(str(name)):
                raise ListError(f"Unknown order field: {name}")
            order.append((str(name), str(direction).strip().lower() == "desc"))
        try:
            start = int(params.get("start") or 0)
        except (TypeError, ValueError):
            start = 0
        return cls(select, tuple(conditions), tuple(order) or (("id", False),), start)

    def matches(self, row: dict[str, Any]) -> bool:
        return all(_test(row.get(c.field), c.op, c.value) for c in self.conditions)

    def project(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.select is None or "*" in self.select:
            return row
        return {key: value for key, value in row.items() if key in self.select}


def page(rows: list[dict[str, Any]], query: ListQuery) -> tuple[list[dict[str, Any]], int | None, int | None]:
    """Filter, order and cut one page; return (page, total, next). ``start = -1``: no total, no next."""
    found = [row for row in rows if query.matches(row)]
    for name, descending in reversed(query.order):
        found.sort(key=lambda row: _sort_key(row.get(name)), reverse=descending)
    if query.start < 0:
        return found[:PAGE], None, None
    chunk = found[query.start : query.start + PAGE]
    following = query.start + PAGE
    return chunk, len(found), following if following < len(found) else None


def _names(raw: Any) -> frozenset[str] | None:
    if not raw:
        return None
    if isinstance(raw, str):
        return frozenset({raw})
    if isinstance(raw, dict):
        raw = list(raw.values())
    return frozenset(str(item) for item in raw) if isinstance(raw, list) else None


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value))


def _coerce(value: Any, like: Any) -> Any:
    """A filter value (often a string from a query) in the type of the row's value."""
    if isinstance(like, int) and not isinstance(like, bool):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return None if value is None else str(value)


def _test(actual: Any, op: str, wanted: Any) -> bool:
    if isinstance(actual, dict):  # parentId {"value": "1275", "valueId": ...}
        actual = actual.get("value")
        actual = int(actual) if isinstance(actual, str) and actual.isdigit() else actual
    values = list(wanted.values()) if isinstance(wanted, dict) else wanted
    if isinstance(values, list):
        choices = {_coerce(v, actual) for v in values}
        if op in ("=",):
            return actual in choices
        if op in ("!", "!="):
            return actual not in choices
        return False
    value = _coerce(values, actual)
    if actual is None or value is None:
        return op in ("!", "!=") and actual != value
    if op == "=":
        return bool(actual == value)
    if op in ("!", "!="):
        return bool(actual != value)
    if op == ">":
        return bool(actual > value)
    if op == ">=":
        return bool(actual >= value)
    if op == "<":
        return bool(actual < value)
    return bool(actual <= value)
