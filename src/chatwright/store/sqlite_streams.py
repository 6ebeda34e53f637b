"""The SQLite store's turn streams and signals (:class:`~chatwright.store.base.StreamLog`).

Tables from ``m009_streams`` (``migrations.py``). A replica writes its running streams in one
transaction per flush (``record``), so a busy server pays one commit per flush interval, not
one per event.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from chatwright.store.base import Signal, StreamInfo, StreamWrite
from chatwright.store.sqlite_commit import GroupCommit

__all__ = ["STREAM_TABLES", "SQLiteStreams"]

STREAM_TABLES: tuple[str, ...] = (
    """
    CREATE TABLE streams (
        id           TEXT PRIMARY KEY,
        owner        TEXT NOT NULL,
        thread_id    TEXT NOT NULL,
        replica      TEXT NOT NULL,
        status       TEXT NOT NULL,
        started_at   REAL NOT NULL,
        heartbeat_at REAL NOT NULL,
        ended_at     REAL,
        last_seq     INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID
    """,
    "CREATE INDEX streams_by_thread ON streams (owner, thread_id, started_at)",
    "CREATE INDEX streams_by_replica ON streams (replica, status)",
    """
    CREATE TABLE stream_events (
        stream_id TEXT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
        seq       INTEGER NOT NULL,
        name      TEXT NOT NULL,
        data      TEXT NOT NULL,
        PRIMARY KEY (stream_id, seq)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE stream_signals (
        id         INTEGER PRIMARY KEY,
        stream_id  TEXT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
        kind       TEXT NOT NULL,
        call_id    TEXT,
        value      INTEGER NOT NULL DEFAULT 0,
        taken      INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX stream_signals_untaken ON stream_signals (taken, stream_id)",
    # A deleted thread's streams go with it (a new thread of the same id starts clean).
    """
    CREATE TRIGGER threads_delete_streams AFTER DELETE ON threads BEGIN
        DELETE FROM streams WHERE owner = old.owner AND thread_id = old.id;
    END
    """,
)

_COLUMNS = "id, owner, thread_id, replica, status, started_at, heartbeat_at, last_seq"


class SQLiteStreams:
    """Streams in the store's connection: ``write()`` opens the store's write transaction,
    ``lock`` guards reads."""

    def __init__(
        self,
        db: sqlite3.Connection,
        lock: threading.RLock,
        write: Callable[[], AbstractContextManager[sqlite3.Connection]],
        group: GroupCommit,
    ) -> None:
        self.db = db
        self._lock = lock
        self._write = write
        self._group = group

    def record(self, replica: str, writes: Sequence[StreamWrite]) -> None:
        with self._write() as db:
            _record(db, replica, writes)

    async def record_async(self, replica: str, writes: Sequence[StreamWrite]) -> None:
        """:meth:`record` in the store's group commit, with the turns' appends."""
        await self._group.run(lambda db: _record(db, replica, writes))

    def _streams(self, where: str, args: tuple[Any, ...]) -> list[StreamInfo]:
        with self._lock:
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM streams WHERE {where}", args).fetchall()
        return [StreamInfo(*row) for row in rows]

    def get(self, owner: str, thread_id: str, stream_id: str) -> StreamInfo | None:
        found = self._streams(
            "id = ? AND owner = ? AND thread_id = ?", (stream_id, owner, thread_id)
        )
        return found[0] if found else None

    def latest(self, owner: str, thread_id: str) -> StreamInfo | None:
        found = self._streams(
            "owner = ? AND thread_id = ? ORDER BY started_at DESC, id DESC LIMIT 1",
            (owner, thread_id),
        )
        return found[0] if found else None

    def running(self, owner: str, thread_id: str) -> list[StreamInfo]:
        return self._streams(
            "owner = ? AND thread_id = ? AND status = 'running' ORDER BY started_at",
            (owner, thread_id),
        )

    def events(
        self, stream_id: str, after_seq: int, limit: int = 1000
    ) -> list[tuple[int, str, str]]:
        with self._lock:
            return self.db.execute(
                "SELECT seq, name, data FROM stream_events WHERE stream_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (stream_id, after_seq, limit),
            ).fetchall()

    def interrupt(self, stream_id: str, name: str, data: str) -> bool:
        with self._write() as db:
            row = db.execute(
                "UPDATE streams SET status = 'interrupted', ended_at = ?, last_seq = last_seq + 1"
                " WHERE id = ? AND status = 'running' RETURNING last_seq",
                (time.time(), stream_id),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "INSERT OR REPLACE INTO stream_events (stream_id, seq, name, data)"
                " VALUES (?, ?, ?, ?)",
                (stream_id, row[0], name, data),
            )
        return True

    def signal(
        self, stream_id: str, kind: str, call_id: str | None = None, value: bool = False
    ) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO stream_signals (stream_id, kind, call_id, value, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (stream_id, kind, call_id, int(value), time.time()),
            )

    def take_signals(self, replica: str) -> list[Signal]:
        query = (
            "SELECT g.id, g.stream_id, g.kind, g.call_id, g.value FROM stream_signals g"
            " JOIN streams s ON s.id = g.stream_id"
            " WHERE g.taken = 0 AND s.replica = ? AND s.status = 'running' ORDER BY g.id"
        )
        with self._lock:  # a poll that finds nothing writes nothing
            if not self.db.execute(query, (replica,)).fetchone():
                return []
        with self._write() as db:
            rows = db.execute(query, (replica,)).fetchall()
            db.executemany(
                "UPDATE stream_signals SET taken = 1 WHERE id = ?", [(r[0],) for r in rows]
            )
        return [Signal(i, sid, kind, call, bool(value)) for i, sid, kind, call, value in rows]

    def prune(self, ended_before: float) -> int:
        with self._write() as db:
            return db.execute(
                "DELETE FROM streams WHERE status != 'running' AND ended_at < ?", (ended_before,)
            ).rowcount


def _record(db: sqlite3.Connection, replica: str, writes: Sequence[StreamWrite]) -> None:
    """The writes of :meth:`SQLiteStreams.record`, in the caller's transaction."""
    now = time.time()
    for w in writes:
        last = w.events[-1][0] if w.events else 0
        ended = None if w.status == "running" else now
        db.execute(
            "INSERT INTO streams (id, owner, thread_id, replica, status, started_at,"
            " heartbeat_at, ended_at, last_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
            " heartbeat_at = excluded.heartbeat_at, ended_at = excluded.ended_at,"
            " last_seq = max(last_seq, excluded.last_seq)"
            " WHERE streams.status != 'interrupted'",
            (w.id, w.owner, w.thread_id, replica, w.status, now, now, ended, last),
        )
        if w.events:
            db.executemany(
                "INSERT OR IGNORE INTO stream_events (stream_id, seq, name, data)"
                " VALUES (?, ?, ?, ?)",
                [(w.id, seq, name, data) for seq, name, data in w.events],
            )
    db.execute(
        "UPDATE streams SET heartbeat_at = ? WHERE replica = ? AND status = 'running'",
        (now, replica),
    )
