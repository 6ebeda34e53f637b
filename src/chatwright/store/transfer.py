"""Moving a SQLite store into an empty PostgreSQL one (``chatwright db migrate``), and the
counts that check the copy (also shown by ``chatwright db info``).

The copy keeps every primary key (``threads.pk``, ``collections.pk``, ``documents.pk``,
``memories.pk``, ``api_keys.pk``): chunk namespaces name their owner by key
(``thread:<pk>``, ``collection:<pk>``), so a thread's recall and a collection's chunks stay
theirs. Times, seqs, token counts, traces (their compressed bytes), titles and metadata are
copied as stored; API keys keep their secret's hash, so every key keeps working.

Everything is written in *one* PostgreSQL transaction, under a write lock on the tables, and
checked before it commits: counts per table and chunks per namespace, read back inside the
transaction, must equal the source's. Any failure (a mismatch included) rolls back, leaving
the target as empty as it was. The source is read in one SQLite read transaction: a snapshot,
even while a server keeps writing to it.

Tables are streamed with ``COPY`` (100,000 messages take seconds). Chunks go through
``PostgresStore.chunks.write`` in batches (which checks dimensions and keeps the namespace
counters), their stored vectors made float32 unit vectors again; each dimension's HNSW index
is built once its vectors are in (:func:`_index_afterwards`). What is transient is not copied:
turn event streams, the job queue, the SQLite search index's segment files (PostgreSQL
searches in SQL and needs none).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatwright.errors import StoreError, UserError
from chatwright.store.base import IndexedChunk
from chatwright.store.sqlite import SQLiteStore, _decode
from chatwright.store.sqlite_chunks import _blob_dim, _unblob
from chatwright.types import dump_json

if TYPE_CHECKING:
    import psycopg

    from chatwright.store.base import Store
    from chatwright.store.postgres import PostgresStore

__all__ = [
    "COPIED_TABLES",
    "Count",
    "Progress",
    "StoreSummary",
    "TransferMismatch",
    "TransferReport",
    "copy_store",
    "open_source",
    "summarize",
]

#: ``progress(table, rows copied so far, rows in all)``: called as each batch lands.
Progress = Callable[[str, int, int], None]

_READ_BATCH = 5000  # rows read from SQLite at a time
_CHUNK_BATCH = 1000  # chunks per chunks.write call


@dataclass(frozen=True, slots=True)
class _Table:
    """A table copied column for column (same names on both sides), read in key order."""

    name: str
    columns: tuple[str, ...]
    order: str
    identity: str | None = None  # a GENERATED identity column: its sequence is moved on
    convert: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None


def _message_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A message row as PostgreSQL stores it: a plain text holding NUL (which ``text``
    cannot) goes serialized, as ``PostgresStore.append`` does (``_encode_pg``)."""
    thread_pk, seq, role, created_at, text, data, tokens, branch = row
    if text is not None and "\x00" in text:
        text, data = None, dump_json(_decode(role, text, None))
    return thread_pk, seq, role, created_at, text, _bytes(data), tokens, branch


def _thread_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*row[:6], _bytes(row[6]), *row[7:])


def _trace_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[0], row[1], _bytes(row[2])


def _bytes(value: Any) -> bytes | None:
    """A BLOB as bytes (SQLite's columns are loosely typed: a value written as text reads
    back as ``str``)."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


def _table(name: str, columns: str, order: str, **options: Any) -> _Table:
    return _Table(name, tuple(columns.split()), order, **options)


# In an order that satisfies the foreign keys (users before keys, threads before messages).
_TABLES: tuple[_Table, ...] = (
    _table("users", "name created_at", "name"),
    _table(
        "api_keys",
        "pk id owner name secret_hash prefix created_at last_used_at revoked_at",
        "pk",
        identity="pk",
    ),
    _table(
        "threads",
        "pk owner id title created_at updated_at metadata last_seq branch",
        "pk",
        identity="pk",
        convert=_thread_row,
    ),
    _table(
        "messages",
        "thread_pk seq role created_at text data tokens branch",
        "thread_pk, seq",
        convert=_message_row,
    ),
    _table("branches", "thread_pk id parent fork_seq created_at", "thread_pk, id"),
    _table("traces", "thread_pk seq data", "thread_pk, seq", convert=_trace_row),
    _table(
        "summaries",
        "thread_pk through_seq text tokens model created_at",
        "thread_pk, through_seq",
    ),
    _table("memories", "pk owner text created_at updated_at untrusted", "pk", identity="pk"),
    _table("collections", "pk owner name description created_at updated_at", "pk", identity="pk"),
    _table(
        "documents",
        "pk collection_pk source title content_hash bytes chunks metadata ingested_at",
        "pk",
        identity="pk",
    ),
)

#: What is copied, in order (``chunks`` last, through the chunk index).
COPIED_TABLES: tuple[str, ...] = (*(t.name for t in _TABLES), "chunks")
# A target holding any of these is not empty: refused.
_OWNED = ("threads", "collections", "users", "memories", "api_keys", "chunks")


# -- reports ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Count:
    """Rows of one table (or chunks of one namespace) in the source and in the target."""

    name: str
    source: int
    target: int

    @property
    def ok(self) -> bool:
        return self.source == self.target


@dataclass(frozen=True, slots=True)
class TransferReport:
    """What was copied, as counted on both sides, and how long it took."""

    source: str
    target: str
    tables: list[Count]
    namespaces: list[Count]
    seconds: float = 0.0

    @property
    def mismatches(self) -> list[Count]:
        return [c for c in (*self.tables, *self.namespaces) if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.mismatches


class TransferMismatch(StoreError):
    """The copy's counts differ from the source's: it was rolled back (``.report`` says
    where)."""

    def __init__(self, report: TransferReport) -> None:
        wrong = ", ".join(f"{c.name} ({c.source} → {c.target})" for c in report.mismatches[:5])
        super().__init__(
            f"the copy does not match the source: {wrong}; nothing was written to {report.target}",
            hint="the source may have changed shape under the copy; run it again, and report "
            "it if it persists",
        )
        self.report = report


# -- the source ---------------------------------------------------------------------------
def open_source(path: str | Path) -> SQLiteStore:
    """The SQLite store at ``path`` (a file, or a data directory holding ``chatwright.db``) to
    copy from; a :class:`UserError` if there is none. It is brought to the current schema,
    as any chatwright command would."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "chatwright.db").is_file():
        path = path / "chatwright.db"
    if not path.is_file():
        raise UserError(
            f"no SQLite database at {path}",
            hint="name the file with --from PATH, or its data directory with --data-dir "
            "(the file is <data-dir>/chatwright.db)",
        )
    if _schema_version(path) == 0:
        raise UserError(
            f"{path} is not a chatwright database (it has no chatwright tables)",
            hint="name chatwright's database file with --from PATH",
        )
    return SQLiteStore(path)


def _schema_version(path: Path) -> int:
    """``PRAGMA user_version`` of the file, read without writing to it (0: none)."""
    try:
        with contextlib.closing(
            sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        ) as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as e:
        raise UserError(
            f"cannot read {path} as a SQLite database: {e}",
            hint="name chatwright's database file with --from PATH",
        ) from None


@contextlib.contextmanager
def _snapshot(source: SQLiteStore) -> Iterator[sqlite3.Connection]:
    """The source's connection inside one read transaction: every read sees one moment."""
    with source.lock:
        db = source.connection
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("ROLLBACK")


def _source_counts(db: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int]]:
    """(rows per copied table, chunks per namespace) of the source."""
    tables = {
        name: int(db.execute(f"SELECT count(*) FROM {name}").fetchone()[0])
        for name in COPIED_TABLES
    }
    namespaces = dict(db.execute("SELECT namespace, count(*) FROM chunks GROUP BY namespace"))
    return tables, namespaces


def _rows(db: sqlite3.Connection, query: str) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``query``, in batches (a large table is never all in memory)."""
    cur = db.execute(query)
    while batch := cur.fetchmany(_READ_BATCH):
        yield batch


# -- the target ---------------------------------------------------------------------------
def _lock_empty_target(conn: psycopg.Connection, location: str) -> None:
    """Lock the target's tables against writers until commit, then refuse it if it holds
    anything: a migration never merges into (or overwrites) existing data."""
    import psycopg
    from psycopg import sql

    names = sql.SQL(", ").join(map(sql.Identifier, (*COPIED_TABLES, "chunk_namespaces")))
    row = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
    conn.execute("SET LOCAL lock_timeout = '10s'")  # for the LOCK only: then as it was
    try:
        conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(names))
    except psycopg.errors.LockNotAvailable:
        raise StoreError(
            f"the target database {location} is in use (its tables stayed locked for 10 s)",
            hint="stop the servers using it, then migrate again",
        ) from None
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (row[0] if row else "0",))
    held = {name: _exists(conn, name) for name in _OWNED}
    found = [name for name, present in held.items() if present]
    if found:
        raise UserError(
            f"the target database {location} is not empty: it already holds " + ", ".join(found),
            hint="migrate into a new, empty database (e.g. `createdb chatwright_new`); "
            "chatwright db migrate never merges into or overwrites existing data",
        )


def _exists(conn: psycopg.Connection, table: str) -> bool:
    from psycopg import sql

    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
    row = conn.execute(query).fetchone()
    return bool(row and row[0])


def _count(conn: psycopg.Connection, table: str) -> int:
    from psycopg import sql

    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _target_counts(conn: psycopg.Connection) -> tuple[dict[str, int], dict[str, int]]:
    """(rows per copied table, chunks per namespace) of the target, as this transaction
    sees them. A namespace whose counter (``chunk_namespaces``, what the store reports)
    disagrees with its rows counts as -1: either way it must match the source."""
    tables = {name: _count(conn, name) for name in COPIED_TABLES}
    rows = conn.execute(
        "SELECT coalesce(c.namespace, n.namespace), coalesce(c.n, 0), coalesce(n.chunks, 0)"
        " FROM (SELECT namespace, count(*) AS n FROM chunks GROUP BY namespace) c"
        " FULL JOIN (SELECT namespace, chunks FROM chunk_namespaces WHERE chunks <> 0) n"
        " USING (namespace)"
    ).fetchall()
    return tables, {ns: int(n) if n == counted else -1 for ns, n, counted in rows}


def _copy_table(
    db: sqlite3.Connection,
    conn: psycopg.Connection,
    table: _Table,
    total: int,
    progress: Progress,
) -> None:
    """Stream ``table`` with ``COPY``, which writes the values given for an identity column
    (as ``INSERT … OVERRIDING SYSTEM VALUE`` would): every key is kept."""
    from psycopg import sql

    columns = ", ".join(table.columns)
    done = 0
    progress(table.name, done, total)
    query = f"SELECT {columns} FROM {table.name} ORDER BY {table.order}"
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, table.columns))
    )
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for batch in _rows(db, query):
            for row in batch:
                copy.write_row(table.convert(row) if table.convert else row)
            done += len(batch)
            progress(table.name, done, total)


def _restart_identity(conn: psycopg.Connection, table: _Table) -> None:
    """Move the table's key sequence past the largest copied key: new rows get new keys
    (and a deleted thread's or collection's key, hence its namespace, is never reused)."""
    from psycopg import sql

    assert table.identity is not None
    query = sql.SQL(
        "SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max({}), 0) + 1, false) FROM {}"
    ).format(sql.Identifier(table.identity), sql.Identifier(table.name))
    conn.execute(query, (table.name, table.identity))


def _unit(blob: bytes | None) -> np.ndarray | None:
    """A stored vector as the float32 unit vector the chunk index takes (an 8-bit one decodes
    to unit length already; rounding to float16 moved a length off 1 by up to ~1e-3)."""
    vector = _unblob(blob)
    if vector is None:
        return None
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _chunk_batches(
    rows: Iterable[tuple[Any, ...]],
) -> Iterator[tuple[str, list[IndexedChunk]]]:
    """(namespace, up to ``_CHUNK_BATCH`` chunks of it) from rows ordered by namespace."""
    for namespace, group in groupby(rows, key=lambda row: row[0]):
        batch: list[IndexedChunk] = []
        for _, key, text, metadata, vector in group:
            batch.append(IndexedChunk(key, text, _metadata(metadata), _unit(vector)))
            if len(batch) == _CHUNK_BATCH:
                yield namespace, batch
                batch = []
        if batch:
            yield namespace, batch


def _metadata(text: str | bytes | None) -> Mapping[str, Any]:
    return json.loads(text) if text else {}


def _copy_chunks(
    db: sqlite3.Connection, target: PostgresStore, total: int, progress: Progress
) -> None:
    done = 0
    progress("chunks", done, total)
    rows = (
        row
        for batch in _rows(
            db,
            "SELECT namespace, key, text, metadata, vector FROM chunks ORDER BY namespace, key",
        )
        for row in batch
    )
    for namespace, batch in _chunk_batches(rows):
        target.chunks.write(namespace, batch)
        done += len(batch)
        progress("chunks", done, total)


def _dimensions(db: sqlite3.Connection) -> set[int]:
    """The dimensions of the source's vectors (8-bit or, written before, float16)."""
    rows = db.execute("SELECT DISTINCT length(vector) FROM chunks WHERE vector IS NOT NULL")
    return {_blob_dim(int(size)) for (size,) in rows}


@contextlib.contextmanager
def _index_afterwards(
    target: PostgresStore, conn: psycopg.Connection, dims: set[int], progress: Progress
) -> Iterator[None]:
    """Build each dimension's HNSW index once its vectors are in, not before
    (``PostgresChunks.indexes_deferred``: 10,000 chunks took 42 s the other way)."""
    chunks = target.chunks
    with chunks.indexes_deferred(dims) as pending:
        yield
    for built, dim in enumerate(pending):
        progress("vector index", built, len(pending))
        chunks.build_index(conn, dim)
        progress("vector index", built + 1, len(pending))


def _compare(expected: Mapping[str, int], found: Mapping[str, int]) -> list[Count]:
    return [Count(name, expected.get(name, 0), found.get(name, 0)) for name in expected] + [
        Count(name, 0, n) for name, n in found.items() if name not in expected
    ]


def copy_store(
    source: SQLiteStore, target: PostgresStore, progress: Progress | None = None
) -> TransferReport:
    """Copy everything ``source`` keeps (but what is transient) into ``target``, which must
    be empty (a :class:`UserError` if not), in one transaction; check the counts before
    committing (a :class:`TransferMismatch` if they differ: nothing is kept)."""
    started = time.perf_counter()
    report = progress or (lambda table, done, total: None)
    with _snapshot(source) as db, target.transaction() as conn:
        _lock_empty_target(conn, target.location)
        tables, namespaces = _source_counts(db)
        for table in _TABLES:
            _copy_table(db, conn, table, tables[table.name], report)
        with _index_afterwards(target, conn, _dimensions(db), report):
            _copy_chunks(db, target, tables["chunks"], report)
        found_tables, found_namespaces = _target_counts(conn)
        result = TransferReport(
            source=source.location,
            target=target.location,
            tables=_compare(tables, found_tables),
            namespaces=_compare(namespaces, found_namespaces),
            seconds=time.perf_counter() - started,
        )
        if not result.ok:
            raise TransferMismatch(result)
        # Last: a sequence's setval is not undone by a rollback.
        for table in _TABLES:
            if table.identity:
                _restart_identity(conn, table)
    return result


# -- describing a store -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoreSummary:
    """Which backend a store is, where, at which schema version, holding how much."""

    backend: str  # sqlite | postgresql
    location: str
    schema_version: int
    latest_version: int
    counts: dict[str, int] = field(default_factory=dict)  # rows per table (COPIED_TABLES)
    namespaces: int = 0  # chunk namespaces holding chunks


def summarize(store: Store) -> StoreSummary:
    """The :class:`StoreSummary` of a SQLite or PostgreSQL store."""
    if isinstance(store, SQLiteStore):
        return _summarize_sqlite(store)
    from chatwright.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        return _summarize_postgres(store)
    raise UserError(f"cannot describe a {type(store).__name__}")


def _summarize_sqlite(store: SQLiteStore) -> StoreSummary:
    from chatwright.store.migrations import MIGRATIONS

    with _snapshot(store) as db:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        counts, namespaces = _source_counts(db)
    return StoreSummary("sqlite", store.location, version, len(MIGRATIONS), counts, len(namespaces))


def _summarize_postgres(store: PostgresStore) -> StoreSummary:
    from chatwright.store.postgres_migrations import MIGRATIONS, schema_version

    with store.transaction() as conn:
        version = schema_version(conn)
        counts, namespaces = _target_counts(conn)
    return StoreSummary(
        "postgresql", store.location, version, len(MIGRATIONS), counts, len(namespaces)
    )
