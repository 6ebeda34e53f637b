"""PostgreSQL for the tests (support, not a test module).

``database_url()`` is ``CHATWRIGHT_TEST_DATABASE_URL`` when set; otherwise one throwaway
server per test session, started with ``pgserver`` (PostgreSQL 16 and pgvector in a wheel,
about 5 s to start), stopped and deleted at exit. ``fresh_database(url)`` makes an empty
database on that server, so each test starts from nothing; ``drop_database`` removes it.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import threading
import uuid
import warnings
from urllib.parse import urlsplit, urlunsplit

__all__ = ["database_url", "drop_database", "fresh_database"]

ENV = "CHATWRIGHT_TEST_DATABASE_URL"

_lock = threading.Lock()
_server_url: str | None = None
# read when the test session starts: the tests' autouse fixture clears CHATWRIGHT_* later
_env_url = os.environ.get(ENV)


def database_url() -> str | None:
    """A PostgreSQL server with pgvector to test against, or None (nothing to start one
    with: pgserver or psycopg not installed)."""
    global _server_url
    if url := os.environ.get(ENV) or _env_url:
        return url
    with _lock:
        if _server_url is None:
            try:
                with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR is not set
                    warnings.simplefilter("ignore")
                    import pgserver
                import psycopg  # noqa: F401
            except ImportError:
                return None
            server = pgserver.get_server(
                tempfile.mkdtemp(prefix="chatwright-pg-"), cleanup_mode="delete"
            )
            atexit.register(server.cleanup)
            _server_url = server.get_uri()
        return _server_url


def _with_database(url: str, name: str) -> str:
    """``url`` naming the database ``name`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def fresh_database(base_url: str) -> str:
    """A new, empty database on the server of ``base_url``: its URL."""
    import psycopg

    name = "cw_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[call-overload]
    return _with_database(base_url, name)


def drop_database(url: str) -> None:
    """Drop the database of ``url`` (made by :func:`fresh_database`), closing its sessions."""
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    assert name.startswith("cw_test_"), name
    base = _with_database(url, "postgres")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[call-overload]


def require_server() -> str:
    """:func:`database_url`, or skip the test where PostgreSQL cannot be had, and fail it
    under CI (CI=true), which must test both backends."""
    import pytest

    url = database_url()
    if url is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"no PostgreSQL to test against: install pgserver and psycopg, or set {ENV}",
                pytrace=False,
            )
        pytest.skip("PostgreSQL is not available (pip install 'chatwright[postgres]' pgserver)")
    return url


def require_database() -> str:
    """A fresh database for one test (see :func:`require_server`)."""
    return fresh_database(require_server())
