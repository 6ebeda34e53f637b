"""Persistence: the :class:`Store` Protocol, its SQLite backend (the default, one file for one
person) and its PostgreSQL backend (``chatwright[postgres]``, shared by server replicas).
:func:`open_store` picks one from the settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chatwright.store.base import Store, StoredMessage, ThreadInfo
from chatwright.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from chatwright.config import Settings

__all__ = ["SQLiteStore", "Store", "StoredMessage", "ThreadInfo", "open_store"]


def open_store(settings: Settings | None = None, *, url: str | None = None) -> Store:
    """The store named by ``url``, else by ``settings.database_url``, else the SQLite file in
    ``settings.data_dir``. ``postgresql://…`` needs ``pip install "chatwright[postgres]"``."""
    if url is None and settings is None:
        from chatwright.config import Settings

        settings = Settings()
    url = url or (settings.database_url if settings is not None else None)
    if not url:
        assert settings is not None
        return SQLiteStore(settings.db_path)
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "sqlite":
        return SQLiteStore(Path(rest[1:] if rest.startswith("/") else rest) if rest else ":memory:")
    from chatwright.store.postgres import PostgresStore

    return PostgresStore(url)
