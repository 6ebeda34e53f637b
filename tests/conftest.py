"""Shared fixtures: every test runs in its own tmp dir with no CHATWRIGHT_* settings leaking in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatwright import Chatbot, SQLiteStore


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
