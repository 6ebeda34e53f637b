"""The PostgreSQL store's turn streams and signals (:class:`~chatwright.store.base.StreamLog`).

Tables from ``m004_streams`` (``postgres_migrations.py``). Every replica writes the events of
the turns it runs (one transaction per flush) and reads the others' when a client resumes a
turn on it; a signal (an approval answer, a cancel) is a row that the replica running the
stream takes once (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from chatwright.store.base import Signal, StreamInfo, StreamWrite

if TYPE_CHECKING:
    from chatwright.store.postgres import Database

__all__ = ["STREAM_TABLES", "PostgresStreams"]

STREAM_TABLES = """
CREATE TABLE streams (
    id           text PRIMARY KEY,
    owner        text NOT NULL,
    thread_id    text NOT NULL,
    replica      text NOT NULL,
    status       text NOT NULL,
    started_at   double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    ended_at     double precision,
    last_seq     bigint NOT NULL DEFAULT 0
);
CREATE INDEX streams_by_thread ON streams (owner, thread_id, started_at);
CREATE INDEX streams_by_replica ON streams (replica, status);
CREATE TABLE stream_events (
    stream_id text NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    seq       bigint NOT NULL,
    name      text NOT NULL,
    data      text NOT NULL,
    PRIMARY KEY (stream_id, seq)
);
CREATE TABLE stream_signals (
    id         bigserial PRIMARY KEY,
    stream_id  text NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    kind       text NOT NULL,
    call_id    text,
    value      boolean NOT NULL DEFAULT false,
    taken      boolean NOT NULL DEFAULT false,
    created_at double precision NOT NULL
);
CREATE INDEX stream_signals_untaken ON stream_signals (stream_id) WHERE NOT taken;
CREATE FUNCTION chatwright_delete_thread_streams() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM streams WHERE owner = OLD.owner AND thread_id = OLD.id;
    RETURN OLD;
END $$;
CREATE TRIGGER threads_delete_streams AFTER DELETE ON threads
    FOR EACH ROW EXECUTE FUNCTION chatwright_delete_thread_streams();
"""

_COLUMNS = "id, owner, thread_id, replica, status, started_at, heartbeat_at, last_seq"


class PostgresStreams:
    """Streams in the store's database (see the module's docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record_async(self, replica: str, writes: Sequence[StreamWrite]) -> None:
        await asyncio.to_thread(self.record, replica, writes)

    def record(self, replica: str, writes: Sequence[StreamWrite]) -> None:
        now = time.time()
        with self._db.write() as conn, conn.cursor() as cur:
            for w in writes:
                last = w.events[-1][0] if w.events else 0
                ended = None if w.status == "running" else now
                cur.execute(
                    "INSERT INTO streams (id, owner, thread_id, replica, status, started_at,"
                    " heartbeat_at, ended_at, last_seq)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET status = excluded.status,"
                    " heartbeat_at = excluded.heartbeat_at, ended_at = excluded.ended_at,"
                    " last_seq = greatest(streams.last_seq, excluded.last_seq)"
                    " WHERE streams.status <> 'interrupted'",
                    (w.id, w.owner, w.thread_id, replica, w.status, now, now, ended, last),
                )
                if w.events:
                    cur.executemany(
                        "INSERT INTO stream_events (stream_id, seq, name, data)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(w.id, seq, name, data) for seq, name, data in w.events],
                    )
            cur.execute(
                "UPDATE streams SET heartbeat_at = %s WHERE replica = %s AND status = 'running'",
                (now, replica),
            )

    def _streams(self, where: str, args: tuple[Any, ...]) -> list[StreamInfo]:
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM streams WHERE {where}", args).fetchall()
        return [StreamInfo(*row) for row in rows]

    def get(self, owner: str, thread_id: str, stream_id: str) -> StreamInfo | None:
        found = self._streams(
            "id = %s AND owner = %s AND thread_id = %s", (stream_id, owner, thread_id)
        )
        return found[0] if found else None

    def latest(self, owner: str, thread_id: str) -> StreamInfo | None:
        found = self._streams(
            "owner = %s AND thread_id = %s ORDER BY started_at DESC, id DESC LIMIT 1",
            (owner, thread_id),
        )
        return found[0] if found else None

    def running(self, owner: str, thread_id: str) -> list[StreamInfo]:
        return self._streams(
            "owner = %s AND thread_id = %s AND status = 'running' ORDER BY started_at",
            (owner, thread_id),
        )

    def events(
        self, stream_id: str, after_seq: int, limit: int = 1000
    ) -> list[tuple[int, str, str]]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT seq, name, data FROM stream_events WHERE stream_id = %s AND seq > %s"
                " ORDER BY seq LIMIT %s",
                (stream_id, after_seq, limit),
            ).fetchall()
        return [(int(seq), name, data) for seq, name, data in rows]

    def interrupt(self, stream_id: str, name: str, data: str) -> bool:
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE streams SET status = 'interrupted', ended_at = %s,"
                " last_seq = last_seq + 1 WHERE id = %s AND status = 'running' RETURNING last_seq",
                (time.time(), stream_id),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT INTO stream_events (stream_id, seq, name, data) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (stream_id, seq) DO UPDATE SET name = excluded.name,"
                " data = excluded.data",
                (stream_id, row[0], name, data),
            )
        return True

    def signal(
        self, stream_id: str, kind: str, call_id: str | None = None, value: bool = False
    ) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO stream_signals (stream_id, kind, call_id, value, created_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (stream_id, kind, call_id, value, time.time()),
            )

    def take_signals(self, replica: str) -> list[Signal]:
        with self._db.write() as conn:
            rows = conn.execute(
                "UPDATE stream_signals g SET taken = true WHERE g.id IN ("
                " SELECT g2.id FROM stream_signals g2 JOIN streams s ON s.id = g2.stream_id"
                " WHERE NOT g2.taken AND s.replica = %s AND s.status = 'running'"
                " FOR UPDATE OF g2 SKIP LOCKED)"
                " RETURNING g.id, g.stream_id, g.kind, g.call_id, g.value",
                (replica,),
            ).fetchall()
        signals = [Signal(int(i), sid, kind, call, bool(v)) for i, sid, kind, call, v in rows]
        return sorted(signals, key=lambda g: g.id)

    def prune(self, ended_before: float) -> int:
        with self._db.write() as conn:
            cur = conn.execute(
                "DELETE FROM streams WHERE status <> 'running' AND ended_at < %s", (ended_before,)
            )
            return cur.rowcount
