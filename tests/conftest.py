"""Shared fixtures: every test runs in its own tmp dir with no CHATWRIGHT_* settings leaking in."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatwright import Chatbot, SQLiteStore
from chatwright.store import Store


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real chatwright.toml, CHATWRIGHT_* variable or data directory reaches a test."""
    for name in list(os.environ):
        if name.startswith("CHATWRIGHT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def store(data_dir: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(data_dir / "chatwright.db")
    yield s
    s.close()


@pytest.fixture
def bot(store: SQLiteStore) -> Chatbot:
    return Chatbot("test:echo", store=store)


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """For tests every backend runs: a factory of store objects on one fresh database (SQLite
    in a tmp dir, or a new PostgreSQL database: ``_postgres.py``). Each call opens another
    connection to the same data, as another process or replica would."""
    opened: list[Store] = []
    if request.param == "sqlite":

        def make() -> Store:
            opened.append(SQLiteStore(tmp_path / "data" / "chatwright.db"))
            return opened[-1]

    else:
        import _postgres

        database = _postgres.require_database()

        def make() -> Store:
            from chatwright.store.postgres import PostgresStore

            opened.append(PostgresStore(database))
            return opened[-1]

    yield make
    for store in opened:
        store.close()
