"""Persistence: the :class:`Store` Protocol and its SQLite implementation (the default)."""

from __future__ import annotations

from chatwright.store.base import Store, StoredMessage, ThreadInfo
from chatwright.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "StoredMessage", "ThreadInfo"]
