"""The SQLite store's job queue (:class:`~chatwright.store.base.JobQueue`, at ``store.jobs``).

A job is a row of ``jobs`` and its files rows of ``job_files`` (tables: ``JOB_TABLES``,
created by ``m008_jobs``), so a job outlives the process that queued it. A claim is one
``BEGIN IMMEDIATE`` transaction: SQLite lets one writer in at a time, across every process on
the file, so two workers never take the same job. Times are this machine's clock (every
process on a SQLite file runs on one machine).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from chatwright.errors import StoreError
from chatwright.store.base import JobInfo

__all__ = [
    "BACKLOG",
    "FAIR_ORDER",
    "JOB_TABLES",
    "KEEP_FINISHED",
    "SQLiteJobs",
    "abandoned_error",
    "new_job_id",
]

KEEP_FINISHED = 500  # finished jobs kept per owner; older ones are deleted

JOB_TABLES: tuple[str, ...] = (
    # `heartbeat_at`: when the worker holding a running job last said it was alive.
    # payload, progress, result and errors are JSON.
    """
    CREATE TABLE jobs (
        pk           INTEGER PRIMARY KEY,
        id           TEXT NOT NULL UNIQUE,
        owner        TEXT NOT NULL,
        kind         TEXT NOT NULL,
        state        TEXT NOT NULL,
        payload      TEXT NOT NULL,
        progress     TEXT NOT NULL DEFAULT '{}',
        result       TEXT NOT NULL DEFAULT '{}',
        errors       TEXT NOT NULL DEFAULT '[]',
        attempts     INTEGER NOT NULL DEFAULT 0,
        created_at   REAL NOT NULL,
        started_at   REAL,
        finished_at  REAL,
        heartbeat_at REAL,
        worker       TEXT
    )
    """,
    "CREATE INDEX jobs_by_state ON jobs (state, owner, created_at)",
    "CREATE INDEX jobs_by_owner ON jobs (owner, created_at DESC)",
    """
    CREATE TABLE job_files (
        job_pk  INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        seq     INTEGER NOT NULL,
        name    TEXT NOT NULL,
        content BLOB NOT NULL,
        PRIMARY KEY (job_pk, seq)
    ) WITHOUT ROWID
    """,
)

JOB_COLUMNS = (
    "id, owner, kind, state, payload, progress, result, errors, attempts,"
    " created_at, started_at, finished_at, worker"
)

# The queued job to claim next: of the owner with the fewest running jobs, then of the one
# whose jobs last ran longest ago (a job's heartbeat_at stays when it ends or goes back in the
# queue; never ran: 0), so owners take turns even on one worker; oldest first. Only the
# owners with queued jobs are looked at.
FAIR_ORDER = """
    SELECT j.pk FROM jobs j
    JOIN (
        SELECT owner, sum(CASE WHEN state = 'running' THEN 1 ELSE 0 END) AS running,
            coalesce(max(heartbeat_at), 0) AS served
        FROM jobs
        WHERE owner IN (SELECT owner FROM jobs WHERE state = 'queued')
        GROUP BY owner
    ) o ON o.owner = j.owner
    WHERE j.state = 'queued'
    ORDER BY o.running, o.served, j.created_at, j.pk
    LIMIT 1
"""
# (queued, running) per owner, of unfinished jobs; `owner = ?` added for one owner.
BACKLOG = """
    SELECT owner, sum(CASE WHEN state = 'queued' THEN 1 ELSE 0 END),
        sum(CASE WHEN state = 'running' THEN 1 ELSE 0 END)
    FROM jobs WHERE state IN ('queued', 'running') {owner} GROUP BY owner
"""


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex[:16]


def abandoned_error(attempts: int) -> dict[str, str]:
    """The error a job gets when its workers stopped beating ``attempts`` times."""
    return {
        "reason": f"abandoned {attempts} times (its worker stopped or crashed while running it);"
        " not tried again"
    }


def dump(value: Any) -> str:
    # ensure_ascii: lone surrogates and NUL travel as escapes, which any text column holds
    return json.dumps(value, ensure_ascii=True)


def job_info(row: Sequence[Any]) -> JobInfo:
    jid, owner, kind, state, payload, progress, result, errors, attempts, *times, worker = row
    return JobInfo(
        jid,
        owner,
        kind,
        state,
        json.loads(payload),
        json.loads(progress),
        json.loads(result),
        json.loads(errors),
        attempts,
        *times,
        worker,
    )


class SQLiteJobs:
    """The job queue in the store's SQLite database; ``lock`` is the store's (shared use of
    ``db``)."""

    def __init__(
        self, db: sqlite3.Connection, lock: threading.RLock, *, keep: int = KEEP_FINISHED
    ) -> None:
        self.db = db
        self._lock = lock
        self.keep = keep

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction (a savepoint inside an open one) under the lock."""
        with self._lock:
            nested = self.db.in_transaction
            try:
                self.db.execute("SAVEPOINT chatwright_jobs" if nested else "BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"cannot write to the job queue: {e}") from None
            try:
                yield self.db
            except BaseException as exc:
                if nested:
                    self.db.execute("ROLLBACK TO chatwright_jobs")
                    self.db.execute("RELEASE chatwright_jobs")
                else:
                    self.db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot write to the job queue: {exc}") from exc
                raise
            else:
                self.db.execute("RELEASE chatwright_jobs" if nested else "COMMIT")

    def enqueue(
        self,
        owner: str,
        kind: str,
        payload: Mapping[str, Any],
        files: Sequence[tuple[str, bytes]] = (),
    ) -> JobInfo:
        job_id = new_job_id()
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO jobs (id, owner, kind, state, payload, created_at)"
                " VALUES (?, ?, ?, 'queued', ?, ?)",
                (job_id, owner, kind, dump(payload), time.time()),
            )
            db.executemany(
                "INSERT INTO job_files (job_pk, seq, name, content) VALUES (?, ?, ?, ?)",
                [(cur.lastrowid, i, name, data) for i, (name, data) in enumerate(files)],
            )
        found = self.get(owner, job_id)
        assert found is not None
        return found

    def claim(self, worker: str, *, stale_after_s: float, max_attempts: int = 3) -> JobInfo | None:
        now = time.time()
        with self._transaction() as db:
            self._expire(now - stale_after_s, max_attempts, now)
            row = db.execute(FAIR_ORDER).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', worker = ?, attempts = attempts + 1,"
                " started_at = ?, heartbeat_at = ? WHERE pk = ?",
                (worker, now, now, row[0]),
            )
            found = db.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE pk = ?", row).fetchone()
        return job_info(found)

    def _expire(self, before: float, max_attempts: int, now: float) -> None:
        """Running jobs not heartbeaten since ``before``: queued again, or failed when they
        were claimed ``max_attempts`` times already."""
        stale = self.db.execute(
            "SELECT pk, attempts, errors FROM jobs WHERE state = 'running' AND heartbeat_at < ?",
            (before,),
        ).fetchall()
        for pk, attempts, errors in stale:
            if attempts < max_attempts:
                self.db.execute(
                    "UPDATE jobs SET state = 'queued', started_at = NULL WHERE pk = ?", (pk,)
                )
                continue
            failed = [*json.loads(errors), abandoned_error(attempts)]
            self.db.execute(
                "UPDATE jobs SET state = 'failed', errors = ?, finished_at = ? WHERE pk = ?",
                (dump(failed), now, pk),
            )
            self.db.execute("DELETE FROM job_files WHERE job_pk = ?", (pk,))

    def files(self, job_id: str) -> list[tuple[str, bytes]]:
        with self._lock:
            rows = self.db.execute(
                "SELECT f.name, f.content FROM job_files f JOIN jobs j ON j.pk = f.job_pk"
                " WHERE j.id = ? ORDER BY f.seq",
                (job_id,),
            ).fetchall()
        return [(name, bytes(content)) for name, content in rows]

    def heartbeat(
        self, job_id: str, worker: str, progress: Mapping[str, Any] | None = None
    ) -> bool:
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET heartbeat_at = ?, progress = coalesce(?, progress)"
                " WHERE id = ? AND worker = ? AND state = 'running'",
                (time.time(), None if progress is None else dump(progress), job_id, worker),
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
        with self._transaction() as db:
            row = db.execute(
                "SELECT pk, owner FROM jobs WHERE id = ? AND worker = ? AND state = 'running'",
                (job_id, worker),
            ).fetchone()
            if row is None:
                return False
            db.execute(
                "UPDATE jobs SET state = ?, result = ?, errors = ?, finished_at = ? WHERE pk = ?",
                (state, dump(result), dump(list(errors)), time.time(), row[0]),
            )
            db.execute("DELETE FROM job_files WHERE job_pk = ?", (row[0],))
            self._prune(row[1])
        return True

    def _prune(self, owner: str) -> None:
        self.db.execute(
            "DELETE FROM jobs WHERE pk IN (SELECT pk FROM jobs WHERE owner = ?"
            " AND state IN ('done', 'failed') ORDER BY finished_at DESC, pk DESC"
            " LIMIT -1 OFFSET ?)",
            (owner, self.keep),
        )

    def release(self, job_id: str, worker: str) -> bool:
        with self._transaction() as db:
            cur = db.execute(  # heartbeat_at stays: when the owner was last served
                "UPDATE jobs SET state = 'queued', attempts = max(attempts - 1, 0),"
                " started_at = NULL WHERE id = ? AND worker = ? AND state = 'running'",
                (job_id, worker),
            )
        return cur.rowcount == 1

    def backlog(self, owner: str | None = None) -> dict[str, tuple[int, int]]:
        where, args = ("AND owner = ?", (owner,)) if owner is not None else ("", ())
        with self._lock:
            rows = self.db.execute(BACKLOG.format(owner=where), args).fetchall()
        return {who: (queued, running) for who, queued, running in rows}

    def get(self, owner: str, job_id: str) -> JobInfo | None:
        with self._lock:
            row = self.db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE owner = ? AND id = ?", (owner, job_id)
            ).fetchone()
        return job_info(row) if row else None

    def list(self, owner: str, limit: int = 50) -> list[JobInfo]:
        with self._lock:
            rows = self.db.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE owner = ?"
                " ORDER BY created_at DESC, pk DESC LIMIT ?",
                (owner, limit),
            ).fetchall()
        return [job_info(row) for row in rows]
