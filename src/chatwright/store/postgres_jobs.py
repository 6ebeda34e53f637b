"""The PostgreSQL store's job queue (:class:`~chatwright.store.base.JobQueue`, at
``store.jobs``): what every replica's workers take their work from.

The tables (``JOB_TABLES``, created by ``m003_jobs``) are the SQLite store's
(``sqlite_jobs.py``). A claim locks the job it picks with ``FOR UPDATE SKIP LOCKED``, so
replicas claiming at once each get a different job and none waits for another. Every time is
the database server's clock: replicas' clocks may disagree, and a heartbeat judged stale by a
fast clock would hand a live job to a second worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from chatwright.store.base import JobInfo
from chatwright.store.sqlite_jobs import (
    BACKLOG,
    FAIR_ORDER,
    JOB_COLUMNS,
    KEEP_FINISHED,
    abandoned_error,
    dump,
    job_info,
    new_job_id,
)

if TYPE_CHECKING:
    import psycopg

    from chatwright.store.postgres import Database

__all__ = ["JOB_TABLES", "PostgresJobs"]

JOB_TABLES = """
    CREATE TABLE jobs (
        pk           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id           text NOT NULL UNIQUE,
        owner        text NOT NULL,
        kind         text NOT NULL,
        state        text NOT NULL,
        payload      text NOT NULL,
        progress     text NOT NULL DEFAULT '{}',
        result       text NOT NULL DEFAULT '{}',
        errors       text NOT NULL DEFAULT '[]',
        attempts     integer NOT NULL DEFAULT 0,
        created_at   double precision NOT NULL,
        started_at   double precision,
        finished_at  double precision,
        heartbeat_at double precision,
        worker       text
    );
    CREATE INDEX jobs_by_state ON jobs (state, owner, created_at);
    CREATE INDEX jobs_by_owner ON jobs (owner, created_at DESC);

    CREATE TABLE job_files (
        job_pk  bigint NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        seq     integer NOT NULL,
        name    text NOT NULL,
        content bytea NOT NULL,
        PRIMARY KEY (job_pk, seq)
    );
    -- uploads are mostly compressed already (PDF, DOCX): do not try again
    ALTER TABLE job_files ALTER COLUMN content SET STORAGE EXTERNAL
"""

_NOW = "extract(epoch FROM clock_timestamp())"
# The advisory lock class of pruning (two-key locks: apart from the store's 64-bit keys).
_PRUNE_LOCK = 0x636A  # "cj"


class PostgresJobs:
    """The job queue in the store's PostgreSQL database."""

    def __init__(self, db: Database, *, keep: int = KEEP_FINISHED) -> None:
        self.db = db
        self.keep = keep

    def enqueue(
        self,
        owner: str,
        kind: str,
        payload: Mapping[str, Any],
        files: Sequence[tuple[str, bytes]] = (),
    ) -> JobInfo:
        with self.db.write() as conn:
            row = conn.execute(
                "INSERT INTO jobs (id, owner, kind, state, payload, created_at)"
                f" VALUES (%s, %s, %s, 'queued', %s, {_NOW}) RETURNING pk, {JOB_COLUMNS}",
                (new_job_id(), owner, kind, dump(payload)),
            ).fetchone()
            assert row is not None
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO job_files (job_pk, seq, name, content) VALUES (%s, %s, %s, %s)",
                    [(row[0], i, name, data) for i, (name, data) in enumerate(files)],
                )
        return job_info(row[1:])

    def claim(self, worker: str, *, stale_after_s: float, max_attempts: int = 3) -> JobInfo | None:
        with self.db.write() as conn:
            self._expire(conn, stale_after_s, max_attempts)
            row = conn.execute(FAIR_ORDER + " FOR UPDATE OF j SKIP LOCKED").fetchone()
            if row is None:
                return None
            found = conn.execute(
                "UPDATE jobs SET state = 'running', worker = %s, attempts = attempts + 1,"
                f" started_at = {_NOW}, heartbeat_at = {_NOW} WHERE pk = %s"
                f" RETURNING {JOB_COLUMNS}",
                (worker, row[0]),
            ).fetchone()
        assert found is not None
        return job_info(found)

    def _expire(self, conn: psycopg.Connection, stale_after_s: float, max_attempts: int) -> None:
        """Running jobs not heartbeaten for ``stale_after_s``: queued again, or failed when
        they were claimed ``max_attempts`` times already. Rows another claim holds are left
        to it."""
        stale = conn.execute(
            "SELECT pk, attempts, errors FROM jobs"
            f" WHERE state = 'running' AND heartbeat_at < {_NOW} - %s FOR UPDATE SKIP LOCKED",
            (stale_after_s,),
        ).fetchall()
        again = [pk for pk, attempts, _ in stale if attempts < max_attempts]
        if again:
            conn.execute(
                "UPDATE jobs SET state = 'queued', started_at = NULL WHERE pk = ANY(%s)", (again,)
            )
        for pk, attempts, errors in stale:
            if attempts >= max_attempts:
                failed = [*json.loads(errors), abandoned_error(attempts)]
                conn.execute(
                    f"UPDATE jobs SET state = 'failed', errors = %s, finished_at = {_NOW}"
                    " WHERE pk = %s",
                    (dump(failed), pk),
                )
                conn.execute("DELETE FROM job_files WHERE job_pk = %s", (pk,))

    def files(self, job_id: str) -> list[tuple[str, bytes]]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT f.name, f.content FROM job_files f JOIN jobs j ON j.pk = f.job_pk"
                " WHERE j.id = %s ORDER BY f.seq",
                (job_id,),
            ).fetchall()
        return [(name, bytes(content)) for name, content in rows]

    def heartbeat(
        self, job_id: str, worker: str, progress: Mapping[str, Any] | None = None
    ) -> bool:
        with self.db.write() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET heartbeat_at = {_NOW}, progress = coalesce(%s, progress)"
                " WHERE id = %s AND worker = %s AND state = 'running'",
                (None if progress is None else dump(progress), job_id, worker),
            )
        return cur.rowcount == 1

    def finish(
        self,
        job_id: str,
        worker: str,
        state: str,
        result: Mapping[str, Any],
        errors: Sequence[Mapping[str, Any]] = (),
    ) -> bool:
        if state not in ("done", "failed"):
            raise ValueError(f"a job finishes as done or failed, not {state!r}")
        with self.db.write() as conn:
            row = conn.execute(
                f"UPDATE jobs SET state = %s, result = %s, errors = %s, finished_at = {_NOW}"
                " WHERE id = %s AND worker = %s AND state = 'running' RETURNING pk, owner",
                (state, dump(result), dump(list(errors)), job_id, worker),
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM job_files WHERE job_pk = %s", (row[0],))
            self._prune(conn, row[1])
        return True

    def _prune(self, conn: psycopg.Connection, owner: str) -> None:
        """Delete the owner's finished jobs past the newest ``keep``. One pruner per owner at
        a time (two deleting the same rows in different orders could deadlock); a finish
        that finds another pruning leaves it to that one."""
        taken = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", (_PRUNE_LOCK, owner)
        ).fetchone()
        if not (taken and taken[0]):
            return
        conn.execute(
            "DELETE FROM jobs WHERE pk IN (SELECT pk FROM jobs WHERE owner = %s"
            " AND state IN ('done', 'failed') ORDER BY finished_at DESC, pk DESC OFFSET %s)",
            (owner, self.keep),
        )

    def release(self, job_id: str, worker: str) -> bool:
        with self.db.write() as conn:
            cur = conn.execute(  # heartbeat_at stays: when the owner was last served
                "UPDATE jobs SET state = 'queued', attempts = greatest(attempts - 1, 0),"
                " started_at = NULL WHERE id = %s AND worker = %s AND state = 'running'",
                (job_id, worker),
            )
        return cur.rowcount == 1

    def backlog(self, owner: str | None = None) -> dict[str, tuple[int, int]]:
        where, args = ("AND owner = %s", (owner,)) if owner is not None else ("", ())
        with self.db.read() as conn:
            rows = conn.execute(BACKLOG.format(owner=where), args).fetchall()
        return {who: (int(queued), int(running)) for who, queued, running in rows}

    def get(self, owner: str, job_id: str) -> JobInfo | None:
        with self.db.read() as conn:
            row = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE owner = %s AND id = %s", (owner, job_id)
            ).fetchone()
        return job_info(row) if row else None

    def list(self, owner: str, limit: int = 50) -> list[JobInfo]:
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE owner = %s"
                " ORDER BY created_at DESC, pk DESC LIMIT %s",
                (owner, limit),
            ).fetchall()
        return [job_info(row) for row in rows]
