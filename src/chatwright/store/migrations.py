"""Versioned schema migrations for the SQLite store, applied in order, once each.

The schema version lives in ``PRAGMA user_version``. Each migration is a function named
``mNNN_what`` that runs inside the transaction that also bumps the version, so a crash leaves
the database at the old version or the new one, never between.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from chatwright.errors import StoreError

__all__ = ["MIGRATIONS", "migrate"]


def _run(db: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, and a migration must stay one transaction.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def m001_initial(db: sqlite3.Connection) -> None:
    _run(
        db,
        """
        CREATE TABLE threads (
            pk         INTEGER PRIMARY KEY,
            owner      TEXT NOT NULL,
            id         TEXT NOT NULL,
            title      TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            metadata   BLOB,
            last_seq   INTEGER NOT NULL DEFAULT 0,
            UNIQUE (owner, id)
        );
        CREATE INDEX threads_by_owner_updated ON threads (owner, updated_at DESC);

        -- Append-only log. A plain-text message keeps its text in `text`, any other message
        -- is the serialized value in `data`. `tokens` caches the message's token count.
        CREATE TABLE messages (
            thread_pk  INTEGER NOT NULL REFERENCES threads (pk) ON DELETE CASCADE,
            seq        INTEGER NOT NULL,
            role       TEXT NOT NULL,
            created_at REAL NOT NULL,
            text       TEXT,
            data       BLOB,
            tokens     INTEGER,
            PRIMARY KEY (thread_pk, seq)
        ) WITHOUT ROWID;

        -- One trace per turn, keyed by the seq of the turn's final assistant message
        -- (zlib-compressed JSON).
        CREATE TABLE traces (
            thread_pk  INTEGER NOT NULL REFERENCES threads (pk) ON DELETE CASCADE,
            seq        INTEGER NOT NULL,
            data       BLOB NOT NULL,
            PRIMARY KEY (thread_pk, seq)
        ) WITHOUT ROWID;
        """,
    )


def m002_memory(db: sqlite3.Connection) -> None:
    _run(
        db,
        """
        -- Running summaries, one row per version: each covers the thread up to through_seq.
        CREATE TABLE summaries (
            thread_pk   INTEGER NOT NULL REFERENCES threads (pk) ON DELETE CASCADE,
            through_seq INTEGER NOT NULL,
            text        TEXT NOT NULL,
            tokens      INTEGER NOT NULL,
            model       TEXT,
            created_at  REAL NOT NULL,
            PRIMARY KEY (thread_pk, through_seq)
        ) WITHOUT ROWID;

        -- Facts a user asked to be remembered, shown in all of that user's threads.
        CREATE TABLE memories (
            pk         INTEGER PRIMARY KEY,
            owner      TEXT NOT NULL,
            text       TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX memories_by_owner ON memories (owner, pk);
        """,
    )


# The search index's tables (retrieval/): ``chunks`` holds every indexed piece of text, one row
# per (namespace, key), with its metadata (JSON, for filters) and embedding (bytes: 8-bit from
# schema 12, float16 before; NULL without an embedder; see sqlite_chunks.py); ``chunks_fts`` is
# an external-content FTS5 index over its text (``porter unicode61 remove_diacritics 2``), kept
# in step by triggers (from schema 12 only where the FTS5 backend is used: ``ensure_fts``);
# ``chunk_namespaces`` counts each namespace's chunks and bumps a version on every write, so a
# process caching a namespace in memory notices writes made by another.
_SEARCH_INDEX: tuple[str, ...] = (
    """
    CREATE TABLE chunks (
        pk        INTEGER PRIMARY KEY,
        namespace TEXT NOT NULL,
        key       TEXT NOT NULL,
        text      TEXT NOT NULL,
        metadata  TEXT,
        vector    BLOB,
        UNIQUE (namespace, key)
    )
    """,
    """
    CREATE VIRTUAL TABLE chunks_fts USING fts5(
        text, content = 'chunks', content_rowid = 'pk',
        tokenize = 'porter unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TABLE chunk_namespaces (
        namespace TEXT PRIMARY KEY,
        version   INTEGER NOT NULL DEFAULT 0,
        chunks    INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID
    """,
    """
    CREATE TRIGGER chunks_after_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts (rowid, text) VALUES (new.pk, new.text);
        INSERT INTO chunk_namespaces (namespace, version, chunks) VALUES (new.namespace, 1, 1)
            ON CONFLICT (namespace) DO UPDATE SET version = version + 1, chunks = chunks + 1;
    END
    """,
    """
    CREATE TRIGGER chunks_after_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.pk, old.text);
        UPDATE chunk_namespaces SET version = version + 1, chunks = chunks - 1
            WHERE namespace = old.namespace;
    END
    """,
    """
    CREATE TRIGGER chunks_after_update AFTER UPDATE ON chunks BEGIN
        INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.pk, old.text);
        INSERT INTO chunks_fts (rowid, text) VALUES (new.pk, new.text);
        UPDATE chunk_namespaces SET version = version + 1, chunks = chunks - 1
            WHERE namespace = old.namespace;
        INSERT INTO chunk_namespaces (namespace, version, chunks) VALUES (new.namespace, 1, 1)
            ON CONFLICT (namespace) DO UPDATE SET version = version + 1, chunks = chunks + 1;
    END
    """,
)


def m003_search_index(db: sqlite3.Connection) -> None:
    for statement in _SEARCH_INDEX:
        db.execute(statement)


def m004_thread_recall_cleanup(db: sqlite3.Connection) -> None:
    # A thread's older turns are indexed for recall under namespace 'thread:<pk>'; deleting the
    # thread deletes them too, in the same transaction.
    db.execute(
        """
        CREATE TRIGGER threads_after_delete AFTER DELETE ON threads BEGIN
            DELETE FROM chunks WHERE namespace = 'thread:' || old.pk;
        END
        """
    )


def m005_collections(db: sqlite3.Connection) -> None:
    for statement in (
        # Named sets of documents, owned; searched under namespace 'collection:<pk>'.
        """
        CREATE TABLE collections (
            pk          INTEGER PRIMARY KEY,
            owner       TEXT NOT NULL,
            name        TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL,
            UNIQUE (owner, name)
        )
        """,
        # One row per ingested file: its content hash makes re-ingest idempotent.
        """
        CREATE TABLE documents (
            pk            INTEGER PRIMARY KEY,
            collection_pk INTEGER NOT NULL REFERENCES collections (pk) ON DELETE CASCADE,
            source        TEXT NOT NULL,
            title         TEXT,
            content_hash  TEXT NOT NULL,
            bytes         INTEGER NOT NULL DEFAULT 0,
            chunks        INTEGER NOT NULL DEFAULT 0,
            metadata      TEXT,
            ingested_at   REAL NOT NULL,
            UNIQUE (collection_pk, source)
        )
        """,
        """
        CREATE TRIGGER collections_after_delete AFTER DELETE ON collections BEGIN
            DELETE FROM chunks WHERE namespace = 'collection:' || old.pk;
        END
        """,
    ):
        db.execute(statement)


def m006_users_and_keys(db: sqlite3.Connection) -> None:
    for statement in (
        # Users of the HTTP server; `name` is the owner their data is stored under.
        """
        CREATE TABLE users (
            name       TEXT PRIMARY KEY,
            created_at REAL NOT NULL
        ) WITHOUT ROWID
        """,
        # API keys: only the SHA-256 of the secret is kept; `id` is public (to list and
        # revoke), `prefix` the secret's first characters (to recognise it).
        """
        CREATE TABLE api_keys (
            pk           INTEGER PRIMARY KEY,
            id           TEXT NOT NULL UNIQUE,
            owner        TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
            name         TEXT NOT NULL DEFAULT '',
            secret_hash  TEXT NOT NULL UNIQUE,
            prefix       TEXT NOT NULL,
            created_at   REAL NOT NULL,
            last_used_at REAL,
            revoked_at   REAL
        )
        """,
        "CREATE INDEX api_keys_by_owner ON api_keys (owner)",
    ):
        db.execute(statement)


def m007_database_id(db: sqlite3.Connection) -> None:
    # A random id made once per database. Files derived from the database and kept beside it
    # (the search index's persisted segments, store/sqlite_chunks.py) record it, so that a
    # database deleted and created again at the same path never uses the old one's files.
    for statement in (
        "CREATE TABLE database_info (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        "INSERT INTO database_info (key, value) VALUES ('id', lower(hex(randomblob(16))))",
    ):
        db.execute(statement)


def m008_jobs(db: sqlite3.Connection) -> None:
    # The durable job queue (uploads to ingest, with their files): store/sqlite_jobs.py.
    from chatwright.store.sqlite_jobs import JOB_TABLES

    for statement in JOB_TABLES:
        db.execute(statement)


def m009_streams(db: sqlite3.Connection) -> None:
    # Turns' event streams (resumable with Last-Event-ID) and the signals (approvals,
    # cancels) for the process running them: store/sqlite_streams.py.
    from chatwright.store.sqlite_streams import STREAM_TABLES

    for statement in STREAM_TABLES:
        db.execute(statement)


def m010_memory_trust(db: sqlite3.Connection) -> None:
    # Why a memory may not be the user's own words: saved by `remember` in a turn whose
    # context held text the user did not write (chatwright/trust.py). NULL: the user's.
    db.execute("ALTER TABLE memories ADD COLUMN untrusted TEXT")


def m011_branches(db: sqlite3.Connection) -> None:
    # Branches (regenerated answers, edited messages): each message records the branch it was
    # written on, a thread its active branch, `branches` each branch's parent and the seq it
    # forks after. Existing messages and threads are on main (0). store/branches.py reads them.
    from chatwright.store.branches import BRANCH_TABLES

    for statement in BRANCH_TABLES:
        db.execute(statement)
    # A thread's search text (retrieval/thread_search.py, 'threadtext:<pk>') goes with it as
    # its recall chunks do. The namespace's row stays (count 0), as recall's: SQLite reuses
    # a deleted thread's pk, and the row's version, which keeps rising, is what tells a
    # process's cached segment of the old thread from the new one's (a new row restarts at 1).
    db.execute("DROP TRIGGER threads_after_delete")
    db.execute(
        """
        CREATE TRIGGER threads_after_delete AFTER DELETE ON threads BEGIN
            DELETE FROM chunks WHERE namespace IN ('thread:' || old.pk, 'threadtext:' || old.pk);
        END
        """
    )


# FTS5's index of chunks.text (about 10% of a collection's bytes, 180 of a recall unit's) is
# read only by SQLiteChunks(keyword_backend="fts5"); the default ranks BM25 in memory. So it
# exists only where that backend was opened (``ensure_fts``), kept by triggers of its own.
_COUNTERS: tuple[str, ...] = (
    """
    CREATE TRIGGER chunks_after_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO chunk_namespaces (namespace, version, chunks) VALUES (new.namespace, 1, 1)
            ON CONFLICT (namespace) DO UPDATE SET version = version + 1, chunks = chunks + 1;
    END
    """,
    """
    CREATE TRIGGER chunks_after_delete AFTER DELETE ON chunks BEGIN
        UPDATE chunk_namespaces SET version = version + 1, chunks = chunks - 1
            WHERE namespace = old.namespace;
    END
    """,
    """
    CREATE TRIGGER chunks_after_update AFTER UPDATE ON chunks BEGIN
        UPDATE chunk_namespaces SET version = version + 1, chunks = chunks - 1
            WHERE namespace = old.namespace;
        INSERT INTO chunk_namespaces (namespace, version, chunks) VALUES (new.namespace, 1, 1)
            ON CONFLICT (namespace) DO UPDATE SET version = version + 1, chunks = chunks + 1;
    END
    """,
)
_FTS: tuple[str, ...] = (
    """
    CREATE VIRTUAL TABLE chunks_fts USING fts5(
        text, content = 'chunks', content_rowid = 'pk',
        tokenize = 'porter unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER chunks_fts_after_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts (rowid, text) VALUES (new.pk, new.text);
    END
    """,
    """
    CREATE TRIGGER chunks_fts_after_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.pk, old.text);
    END
    """,
    """
    CREATE TRIGGER chunks_fts_after_update AFTER UPDATE ON chunks BEGIN
        INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.pk, old.text);
        INSERT INTO chunks_fts (rowid, text) VALUES (new.pk, new.text);
    END
    """,
)


def m012_fts_on_demand(db: sqlite3.Connection) -> None:
    # Vectors are written in 8 bits from this version on (sqlite_chunks.py), which older
    # versions cannot read: this migration also keeps them from opening the database.
    # (IF EXISTS: run again over its own result, it changes nothing)
    for name in ("chunks_after_insert", "chunks_after_delete", "chunks_after_update"):
        db.execute(f"DROP TRIGGER IF EXISTS {name}")
    for statement in _COUNTERS:
        db.execute(statement)
    for name in ("chunks_fts_after_insert", "chunks_fts_after_delete", "chunks_fts_after_update"):
        db.execute(f"DROP TRIGGER IF EXISTS {name}")
    db.execute("DROP TABLE IF EXISTS chunks_fts")


def ensure_fts(db: sqlite3.Connection) -> bool:
    """Create the FTS5 index of chunks.text and its triggers if the database has none (a
    database at schema 3..11 has it, kept by the counters' triggers); the caller holds a
    transaction. Returns whether it was created (and filled from the rows)."""
    found = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chunks_fts'"
    ).fetchone()
    if found:
        return False
    for statement in _FTS:
        db.execute(statement)
    db.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('rebuild')")
    return True


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    m001_initial,
    m002_memory,
    m003_search_index,
    m004_thread_recall_cleanup,
    m005_collections,
    m006_users_and_keys,
    m007_database_id,
    m008_jobs,
    m009_streams,
    m010_memory_trust,
    m011_branches,
    m012_fts_on_demand,
]


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` to the newest schema; returns the version it is at."""
    latest = len(MIGRATIONS)
    current = db.execute("PRAGMA user_version").fetchone()[0]
    if current > latest:
        raise StoreError(
            f"the database is at schema version {current}, newer than this chatwright ({latest})",
            hint="upgrade chatwright (pip install -U chatwright) or use another --data-dir",
        )
    for version in range(current + 1, latest + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            if db.execute("PRAGMA user_version").fetchone()[0] >= version:
                db.execute("ROLLBACK")
                continue
            MIGRATIONS[version - 1](db)
            db.execute(f"PRAGMA user_version = {version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return latest
