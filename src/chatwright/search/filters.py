"""Metadata filters: equality on top-level metadata keys, typed as in JSON.

A filter ``{"lang": "en", "year": [2020, 2021], "draft": None}`` keeps chunks whose ``lang`` is
the string ``"en"``, whose ``year`` is the number 2020 or 2021, and that have no ``draft`` (or
a null one). Comparison is typed: the string ``"1"`` is not the number ``1``, and ``true`` is
not ``1`` (SQLite's ``json_extract`` alone would say it is).

``MetadataIndex`` is an inverted index over the metadata of a namespace held in memory: a filter
costs a few dictionary look-ups, where scanning the ``metadata`` column of 10,000 rows with
SQLite's ``json_extract`` took 33 ms. Backends that filter in SQL implement the same typed
semantics (the conformance suite checks that they agree). ``to_arrays``/``from_arrays`` give it
as JSON-ready groups and one array of row numbers, for a store to persist.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from chatwright.errors import UserError
from chatwright.search.bm25 import Grow

__all__ = ["MetadataIndex", "Scalar", "check_filters"]

Scalar = str | int | float | bool | None
_NONE = ("z", None)
_TAGS = frozenset("zbnsj")  # the first item of every value key


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
    """Row numbers by (metadata key, value) for one namespace; rows numbered as added.

    One restored by :meth:`from_arrays` stays as its arrays until a filter needs it (rows
    added meanwhile are indexed apart, and joined then): a thread's recall units have values
    of their own (``first_seq``, ``created_at``), three groups a row, which took 140 ms to
    rebuild at 10,000 units on the first turn after a restart, and recall never filters."""

    def __init__(self) -> None:
        self.size = 0
        self._rows: dict[str, dict[tuple[str, Any], Grow]] = {}
        self._restored: tuple[Sequence[Sequence[Any]], np.ndarray] | None = None  # not expanded

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

    def to_arrays(self) -> tuple[int, list[tuple[str, str, Any, int]], np.ndarray]:
        """(rows, groups, row numbers): each group is (key, type tag, value, how many rows),
        JSON-serializable; their row numbers follow one another in the one array."""
        if self._restored is not None:
            return self._restored_arrays()
        groups, rows = [], []
        for key, per_key in self._rows.items():
            for (tag, value), grow in per_key.items():
                groups.append((key, tag, value, grow.size))
                rows.append(grow.array)
        flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return self.size, groups, flat

    @classmethod
    def from_arrays(
        cls, size: int, groups: Sequence[Sequence[Any]], rows: np.ndarray
    ) -> MetadataIndex:
        """The index that gave ``to_arrays`` (``rows`` is used, not copied); ValueError if the
        parts do not fit together."""
        if sum(int(g[3]) for g in groups) != len(rows) or rows.ndim != 1:
            raise ValueError("metadata groups do not match their row numbers")
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= size):
            raise ValueError("a metadata row number is out of range")
        unknown = [g[1] for g in groups if g[1] not in _TAGS]
        if unknown:
            raise ValueError(f"unknown metadata value tag {unknown[0]!r}")
        index = cls()
        index.size = size
        index._restored = (groups, rows)
        return index

    def _groups(self) -> list[tuple[str, str, Any, np.ndarray]]:
        """(key, tag, value, row numbers) of every group: the restored ones with the rows
        added since joined to theirs, then the groups that only those rows have."""
        assert self._restored is not None
        groups, rows = self._restored
        added = {(k, v): grow for k, per in self._rows.items() for v, grow in per.items()}
        out = []
        start = 0
        for key, tag, value, count in groups:
            part = rows[start : start + count]
            start += count
            extra = added.pop((key, (tag, value)), None)
            if extra is not None:  # added rows number after every restored one
                part = np.concatenate([part, extra.array])
            out.append((key, tag, value, part))
        out += [(key, tag, value, grow.array) for (key, (tag, value)), grow in added.items()]
        return out

    def _restored_arrays(self) -> tuple[int, list[tuple[str, str, Any, int]], np.ndarray]:
        groups = self._groups()
        flat = [g[3] for g in groups]
        rows = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
        return self.size, [(k, t, v, len(r)) for k, t, v, r in groups], rows

    def _expand(self) -> None:
        """Index the restored groups as dictionaries (what a filter reads)."""
        if self._restored is None:
            return
        expanded: dict[str, dict[tuple[str, Any], Grow]] = {}
        for key, tag, value, rows in self._groups():
            expanded.setdefault(key, {})[(tag, value)] = Grow.wrap(rows)
        self._rows = expanded
        self._restored = None

    def mask(self, filters: Mapping[str, Sequence[Scalar]]) -> np.ndarray:
        """Which rows pass every filter (see ``check_filters``)."""
        self._expand()
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
