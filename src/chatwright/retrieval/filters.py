"""Metadata filters: equality on top-level metadata keys, typed as in JSON.

A filter ``{"lang": "en", "year": [2020, 2021], "draft": None}`` keeps chunks whose ``lang`` is
the string ``"en"``, whose ``year`` is the number 2020 or 2021, and that have no ``draft`` (or
a null one). Comparison is typed: the string ``"1"`` is not the number ``1``, and ``true`` is
not ``1`` (SQLite's ``json_extract`` alone would say it is).

Two implementations agree on that: ``MetadataIndex`` (an inverted index over the metadata of a
namespace held in memory: a filter costs a few dictionary look-ups, where scanning the
``metadata`` column of 10,000 rows with ``json_extract`` took 33 ms), and ``filter_sql`` (a SQL
condition, for the FTS5 path).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from chatwright.errors import UserError
from chatwright.retrieval.bm25 import Grow

__all__ = ["MetadataIndex", "check_filters", "filter_sql"]

Scalar = str | int | float | bool | None
_NONE = ("z", None)


def _value_key(value: Any) -> tuple[str, Any]:
    """A hashable key that keeps JSON types apart (True is not 1, "1" is not 1)."""
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", float(value))
    if isinstance(value, str):
        return ("s", value)
    return ("j", json.dumps(value, sort_keys=True, default=str))


def check_filters(filters: Mapping[str, Any]) -> dict[str, list[Scalar]]:
    """``filters`` with every value as a list of allowed scalars; UserError if malformed."""
    out: dict[str, list[Scalar]] = {}
    for key, value in filters.items():
        if not isinstance(key, str) or not key or '"' in key:
            raise UserError(f"invalid metadata filter key {key!r}")
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        for v in values:
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise UserError(f"filter {key!r}: values must be str, int, float, bool or None")
        out[key] = values
    return out


class MetadataIndex:
    """Row numbers by (metadata key, value) for one namespace; rows numbered as added."""

    def __init__(self) -> None:
        self.size = 0
        self._rows: dict[str, dict[tuple[str, Any], Grow]] = {}

    def add(self, metadatas: Sequence[Mapping[str, Any] | None]) -> None:
        """Append the metadata of the next ``len(metadatas)`` rows."""
        grouped: dict[tuple[str, tuple[str, Any]], list[int]] = {}
        for row, metadata in enumerate(metadatas, start=self.size):
            for key, value in (metadata or {}).items():
                grouped.setdefault((key, _value_key(value)), []).append(row)
        for (key, value), rows in grouped.items():
            per_key = self._rows.setdefault(key, {})
            per_key.setdefault(value, Grow(np.int64)).extend(np.asarray(rows, dtype=np.int64))
        self.size += len(metadatas)

    def mask(self, filters: Mapping[str, Sequence[Scalar]]) -> np.ndarray:
        """Which rows pass every filter (see ``check_filters``)."""
        keep = np.ones(self.size, dtype=np.bool_)
        for key, values in filters.items():
            per_key = self._rows.get(key, {})
            match = np.zeros(self.size, dtype=np.bool_)
            for value in values:
                if value is None:
                    present = np.zeros(self.size, dtype=np.bool_)
                    for value_key, rows in per_key.items():
                        if value_key != _NONE:
                            present[rows.array] = True
                    match |= ~present
                elif (rows := per_key.get(_value_key(value))) is not None:
                    match[rows.array] = True
            keep &= match
        return keep


def _sql_condition(column: str, path: str, value: Scalar) -> tuple[str, list[Any]]:
    """One typed equality test of the JSON value at ``path`` (``None``: missing or null)."""
    kind = f"json_type({column}, ?)"
    if value is None:
        return f"{kind} IS NULL OR {kind} = 'null'", [path, path]
    if isinstance(value, bool):
        return f"{kind} = '{'true' if value else 'false'}'", [path]
    types = "'text'" if isinstance(value, str) else "'integer', 'real'"
    return f"{kind} IN ({types}) AND json_extract({column}, ?) = ?", [path, path, value]


def filter_sql(filters: Mapping[str, Sequence[Scalar]], column: str) -> tuple[str, list[Any]]:
    """``AND (...)`` SQL conditions and parameters equivalent to ``MetadataIndex.mask``."""
    clauses, params = [], []
    for key, values in filters.items():
        path = f'$."{key}"'
        terms = []
        for value in values:
            condition, extra = _sql_condition(column, path, value)
            terms.append(f"({condition})")
            params.extend(extra)
        clauses.append("(" + (" OR ".join(terms) or "0") + ")")
    return "".join(f" AND {c}" for c in clauses), params
