"""PostgreSQL for the benchmarks (support, not a benchmark).

``server_url(url)`` is ``url`` when given; otherwise one throwaway server for this process,
started with ``pgserver`` (PostgreSQL 16 + pgvector from a wheel, as ``tests/_postgres.py``
does), stopped and deleted at exit. ``fresh_database`` makes an empty database on it and
``drop_database`` removes one. ``ServerCpu`` reads the CPU time of the server's processes:
PostgreSQL does its share of a turn's work in its own processes, which the client's
``time.process_time()`` does not see.
"""

from __future__ import annotations

import atexit
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ServerCpu", "database_size", "drop_database", "fresh_database", "server_url"]

PREFIX = "cw_bench_"
_started: str | None = None


def server_url(url: str | None = None, tmp_dir: Path | None = None) -> str:
    """``url``, or the URL of a pgserver started (once per process) in a temporary directory."""
    global _started
    if url:
        return url
    if _started is None:
        try:
            with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR is not set
                warnings.simplefilter("ignore")
                import pgserver
        except ImportError:
            raise SystemExit("--backend postgres needs pgserver: pip install pgserver") from None
        data = tempfile.mkdtemp(prefix="chatwright-bench-pg-", dir=tmp_dir)
        server = pgserver.get_server(data, cleanup_mode="delete")
        atexit.register(server.cleanup)
        _started = server.get_uri()
    return _started


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def fresh_database(base_url: str) -> str:
    """A new, empty database on the server of ``base_url``: its URL."""
    import psycopg

    name = PREFIX + uuid.uuid4().hex[:12]
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[call-overload]
    return _with_database(base_url, name)


def drop_database(url: str) -> None:
    """Drop a database made by :func:`fresh_database`, closing its sessions."""
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    assert name.startswith(PREFIX), name
    with psycopg.connect(_with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[call-overload]


def database_size(url: str, checkpoint: bool = False) -> dict[str, Any]:
    """The database's size on disk and each table's (with its indexes and TOAST), in bytes.
    WAL is not counted (it is shared by the server's databases and recycled)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if checkpoint:
            conn.execute("CHECKPOINT")
        total = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        tables = conn.execute(
            "SELECT relname, pg_total_relation_size(relid) FROM pg_stat_user_tables"
            " ORDER BY relname"
        ).fetchall()
    return {"total": int(total[0]) if total else 0, "per_table": {n: int(s) for n, s in tables}}


class ServerCpu:
    """CPU seconds used by the PostgreSQL server of ``url``, all its processes together.

    The postmaster is found as the parent of a backend (so the server must run on this
    machine); each process's user + system time is summed, plus the postmaster's reaped
    children's (backends that exited). ``seconds()`` is None when the server's processes
    cannot be read (another machine, psutil missing)."""

    def __init__(self, url: str) -> None:
        self.postmaster: Any = None
        try:
            import psutil
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            self.postmaster = psutil.Process(int(row[0])).parent()
        except Exception:  # a measurement we can do without
            self.postmaster = None

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        import psutil

        for _ in range(3):  # a backend that exits while the tree is read: read it again
            try:
                own = self.postmaster.cpu_times()
                total = own.user + own.system + own.children_user + own.children_system
                for child in self.postmaster.children(recursive=True):
                    try:
                        t = child.cpu_times()
                        total += t.user + t.system
                    except psutil.NoSuchProcess:
                        pass
                return total
            except psutil.Error:
                continue
        return None
