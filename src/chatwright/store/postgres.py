"""A store in PostgreSQL (with pgvector): for servers with several replicas sharing one database.

It keeps what the SQLite store keeps, in the same shape (tables in ``postgres_migrations.py``),
with the same answers and errors; only the search index differs in how it searches (in SQL,
see ``postgres_chunks.py``). Connections come from a pool; :meth:`PostgresStore.transaction`
binds one to the current context (a :mod:`contextvars` variable), so every call of the store
and of ``store.chunks`` made inside it, from any thread or task that inherits the context,
joins its transaction. Outside one, each write is its own transaction, committed before it
returns (``synchronous_commit`` as the server has it: on by default, so it survives a crash).

Turns are serialised per thread across replicas by session-level advisory locks, held on one
connection per store (:class:`PostgresTurnLocks`).

PostgreSQL text cannot hold NUL characters or lone surrogates, which Python strings can: a
message keeps them (stored serialized, as SQLite does for any message that is not plain text),
and any other text has them replaced by U+FFFD, the same way on writes and look-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from types import EllipsisType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from chatwright.errors import StoreError, ThreadNotFound, UserError
from chatwright.store.base import (
    ApiKeyInfo,
    CollectionInfo,
    DocumentInfo,
    MemoryItem,
    SharedParts,
    StoredMessage,
    Summary,
    ThreadInfo,
    UserInfo,
    hash_secret,
    new_secret,
)
from chatwright.store.branches import BY_BRANCH, Run, thread_row
from chatwright.store.common import StoreCommon, prune_summaries
from chatwright.store.postgres_chunks import PostgresChunks, register_vector
from chatwright.store.postgres_jobs import PostgresJobs
from chatwright.store.postgres_migrations import migrate
from chatwright.store.postgres_streams import PostgresStreams
from chatwright.store.sqlite import (
    SUMMARY_VERSIONS,
    _decode,
    _document,
    _encode,
    _memory_key,
    _memory_not_found,
    _pack_trace,
    _title_from,
    _unpack_trace,
    _user_not_found,
    check_collection_name,
    check_thread_id,
    check_user_name,
)
from chatwright.types import Message, Trace, dump_json, load_json

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["PostgresStore", "PostgresTurnLocks", "redact_url"]


_CONNECT_TIMEOUT_S = 10
_THREAD_COLUMNS = "id, owner, title, created_at, updated_at, last_seq, metadata, pk, branch"
_KEY_COLUMNS = "id, owner, name, prefix, created_at, last_used_at, revoked_at"
_CONNECT_HINT = (
    "is PostgreSQL running and reachable? check database_url "
    "(postgresql://user:password@host:5432/dbname)"
)
_SURROGATE = re.compile("[\ud800-\udfff]")

# The connection each open PostgresStore.transaction() bound, by id(store): a context
# variable, so tasks and threads started inside the transaction (which copy the context) join
# it, and nothing else does.
_bound: ContextVar[dict[int, psycopg.Connection] | None] = ContextVar(
    "chatwright_postgres_transaction", default=None
)


def _import_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise StoreError(
            "PostgreSQL support is not installed", hint='pip install "chatwright[postgres]"'
        ) from None


def redact_url(url: str) -> str:
    """``url`` without its password (a ``postgresql://`` URL or a ``key=value`` string)."""
    if "://" not in url:
        return re.sub(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", "password=***", url)
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = userinfo.split(":", 1)[0] + "@" + host
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _clean(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL and lone surrogates become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return text


def _configure(conn: psycopg.Connection, vector_oids: tuple[int, int]) -> None:
    """What every connection of the store gets: strings made storable, pgvector's type."""
    from psycopg.types.string import StrDumperUnknown

    class CleanStrDumper(StrDumperUnknown):
        def dump(self, obj: str) -> bytes:
            return super().dump(_clean(obj))  # type: ignore[return-value]

    conn.adapters.register_dumper(str, CleanStrDumper)
    register_vector(conn, *vector_oids)


def _encode_pg(message: Message) -> tuple[str | None, bytes | None]:
    """As SQLite's ``_encode``, but a text PostgreSQL cannot hold (NUL) goes serialized."""
    text, data = _encode(message)
    if text is not None and "\x00" in text:
        return None, dump_json(message)
    return text, data


def _stored(row: tuple[Any, ...]) -> StoredMessage:
    seq, at, role, text, data, tokens, branch = row
    return StoredMessage(seq, at, _decode(role, text, data), tokens, branch)


def _runner(conn: psycopg.Connection) -> Run:
    """``run(sql, params)`` for the branch queries (written with ``?`` placeholders)."""

    def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        sql = sql.replace(BY_BRANCH, "messages").replace("?", "%s")
        cur = conn.execute(sql, tuple(params))
        return cur.fetchall() if cur.description else []

    return run


def _thread(row: tuple[Any, ...]) -> ThreadInfo:
    tid, owner, title, created, updated, last_seq, metadata, pk, branch = row
    return ThreadInfo(
        id=tid,
        owner=owner,
        title=title,
        created_at=created,
        updated_at=updated,
        message_count=last_seq,
        metadata=load_json(metadata) if metadata else {},
        uid=pk,
        branch=branch,
    )


class Database:
    """The pool, and the connection a transaction binds to the current context."""

    def __init__(self, pool: ConnectionPool, location: str) -> None:
        self.pool = pool
        self.location = location

    def bound(self) -> psycopg.Connection | None:
        """The connection of the transaction open in this context, if any."""
        bound = _bound.get()
        return bound.get(id(self)) if bound else None

    @contextlib.contextmanager
    def _checkout(self, *, write: bool) -> Iterator[psycopg.Connection]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as e:
            action = "write to" if write else "read"
            done = "; nothing was written" if write else ""
            raise StoreError(
                f"cannot {action} {self.location}: {_first_line(e)}{done}", hint=_CONNECT_HINT
            ) from e
        except psycopg.DataError as e:
            raise StoreError(f"cannot write to {self.location}: {_first_line(e)}") from e

    @contextlib.contextmanager
    def read(self) -> Iterator[psycopg.Connection]:
        """A connection to read with: the transaction's, or a pooled one (autocommit)."""
        conn = self.bound()
        if conn is not None:
            yield conn
            return
        with self._checkout(write=False) as conn:
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[psycopg.Connection]:
        """One atomic write: its own transaction, or a savepoint of the open one (so a
        failed call, caught, leaves the open transaction usable, as in SQLite)."""
        conn = self.bound()
        if conn is not None:
            with conn.transaction():
                yield conn
            return
        with self._checkout(write=True) as conn, conn.transaction():
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        conn = self.bound()
        if conn is not None:  # nested: a savepoint of the outer transaction
            with conn.transaction():
                yield conn
            return
        with self._checkout(write=True) as conn:
            token = _bound.set({**(_bound.get() or {}), id(self): conn})
            try:
                with conn.transaction():
                    yield conn
            finally:
                _bound.reset(token)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PostgresStore(StoreCommon):
    """Everything chatwright stores, in one PostgreSQL database with pgvector.

    ``url``: a libpq connection string (``postgresql://user:password@host:5432/dbname``).
    ``min_connections``/``max_connections`` size the pool; the turn locks use one more.
    """

    def __init__(self, url: str, *, min_connections: int = 1, max_connections: int = 10) -> None:
        _import_psycopg()
        from psycopg_pool import ConnectionPool

        self.url = url
        self.location = redact_url(url)
        oids = self._prepare()
        self._pool = ConnectionPool(
            url,
            min_size=min_connections,
            max_size=max(max_connections, min_connections),
            kwargs={"autocommit": True, "connect_timeout": _CONNECT_TIMEOUT_S},
            configure=lambda conn: _configure(conn, oids),
            check=ConnectionPool.check_connection,
            name="chatwright",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=_CONNECT_TIMEOUT_S + 5)
        except Exception as e:
            self._pool.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.location}: {_first_line(e)}",
                hint=_CONNECT_HINT,
            ) from None
        self._db = Database(self._pool, self.location)
        self.chunks = PostgresChunks(self._db)
        self.jobs = PostgresJobs(self._db)
        self.locks = PostgresTurnLocks(self._connect)
        self.streams = PostgresStreams(self._db)
        self._shared = SharedParts()

    def _connect(self) -> psycopg.Connection:
        import psycopg

        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)
        except (psycopg.OperationalError, psycopg.ProgrammingError) as e:
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.location}: {_first_line(e)}",
                hint=_CONNECT_HINT,
            ) from None

    def _prepare(self) -> tuple[int, int]:
        """Migrate the schema; the oids of pgvector's ``vector`` and ``vector[]``."""
        import psycopg

        with self._connect() as conn:
            try:
                migrate(conn)
                row = conn.execute(
                    "SELECT oid, typarray FROM pg_type WHERE typname = 'vector'"
                    " AND pg_type_is_visible(oid)"
                ).fetchone()
            except psycopg.Error as e:
                raise StoreError(
                    f"cannot prepare the database {self.location}: {_first_line(e)}",
                    hint="check that the user may create tables in it",
                ) from None
        assert row is not None, "m001 created the vector extension"
        return int(row[0]), int(row[1])

    # -- plumbing -------------------------------------------------------------------------
    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """``with store.transaction():`` — the writes inside (the store's and its chunks')
        commit together or not at all; nesting is a savepoint of the outer one."""
        return self._db.transaction()

    def close(self) -> None:
        self.locks.close()
        self._pool.close()

    _FOR_UPDATE = " FOR UPDATE"

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Run]:
        with self._db.read() as conn:
            yield _runner(conn)

    @contextlib.contextmanager
    def _writer(self) -> Iterator[Run]:
        with self._db.write() as conn:
            yield _runner(conn)

    def _stored(self, row: tuple[Any, ...]) -> StoredMessage:
        return _stored(row)

    def _pk(
        self, conn: psycopg.Connection, owner: str, thread_id: str, *, lock: bool = False
    ) -> tuple[int, int]:
        """(pk, last_seq) of the thread, or ThreadNotFound; ``lock``: FOR UPDATE."""
        row = conn.execute(
            "SELECT pk, last_seq FROM threads WHERE owner = %s AND id = %s"
            + (" FOR UPDATE" if lock else ""),
            (owner, thread_id),
        ).fetchone()
        if row is None:
            raise ThreadNotFound(thread_id)
        return row[0], row[1]

    # -- threads --------------------------------------------------------------------------
    def find_thread(self, owner: str, thread_id: str) -> ThreadInfo | None:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE owner = %s AND id = %s",
                (owner, thread_id),
            ).fetchone()
        return _thread(row) if row else None

    def create_thread(
        self,
        owner: str,
        thread_id: str | None = None,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ThreadInfo:
        thread_id = check_thread_id(thread_id, new=True) if thread_id else uuid.uuid4().hex[:12]
        with self._db.write() as conn:
            self._insert_thread(conn, owner, thread_id, title, metadata)
        return self.get_thread(owner, thread_id)

    def _insert_thread(
        self,
        conn: psycopg.Connection,
        owner: str,
        thread_id: str,
        title: str | None,
        metadata: dict[str, Any] | None,
    ) -> int:
        now = time.time()
        row = conn.execute(
            "INSERT INTO threads (owner, id, title, created_at, updated_at, metadata)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (owner, id) DO NOTHING RETURNING pk",
            (owner, thread_id, title, now, now, dump_json(metadata) if metadata else None),
        ).fetchone()
        if row is None:
            raise UserError(f"thread {thread_id!r} already exists")
        return int(row[0])

    def list_threads(self, owner: str, *, limit: int = 50, offset: int = 0) -> list[ThreadInfo]:
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE owner = %s"
                " ORDER BY updated_at DESC, pk DESC LIMIT %s OFFSET %s",
                (owner, limit, offset),
            ).fetchall()
        return [_thread(r) for r in rows]

    def rename_thread(
        self, owner: str, thread_id: str, title: str, *, only_if: str | EllipsisType | None = ...
    ) -> ThreadInfo:
        with self._db.write() as conn:
            pk, _ = self._pk(conn, owner, thread_id)
            if only_if is ...:
                conn.execute("UPDATE threads SET title = %s WHERE pk = %s", (title, pk))
            else:  # in one statement: a rename in between is never overwritten
                conn.execute(
                    "UPDATE threads SET title = %s WHERE pk = %s AND title IS NOT DISTINCT FROM %s",
                    (title, pk, only_if),
                )
        return self.get_thread(owner, thread_id)

    def update_thread_metadata(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadInfo:
        with self._db.write() as conn:
            pk, _ = self._pk(conn, owner, thread_id)
            conn.execute(
                "UPDATE threads SET metadata = %s WHERE pk = %s",
                (dump_json(metadata) if metadata else None, pk),
            )
        return self.get_thread(owner, thread_id)

    def delete_thread(self, owner: str, thread_id: str) -> None:
        """Delete the thread, its messages, summaries, traces and (by triggers) its recall
        chunks and search text, in one transaction."""
        with self._db.write() as conn:
            pk, _ = self._pk(conn, owner, thread_id)
            conn.execute("DELETE FROM threads WHERE pk = %s", (pk,))

    # -- messages -------------------------------------------------------------------------
    def append(
        self,
        owner: str,
        thread_id: str,
        messages: Sequence[Message],
        *,
        trace: Trace | None = None,
        create: bool = False,
        tokens: Sequence[int | None] | None = None,
    ) -> list[StoredMessage]:
        rows = [(m.role, *_encode_pg(m)) for m in messages]  # serialize before the transaction
        counts = list(tokens) if tokens is not None else [None] * len(messages)
        trace_data = _pack_trace(trace) if trace else None
        now = time.time()
        stored: list[StoredMessage] = []
        with self._db.write() as conn:
            try:
                # FOR UPDATE: concurrent appends to one thread take turns over its seq
                pk, seq, branch = thread_row(_runner(conn), owner, thread_id, self._FOR_UPDATE)
            except ThreadNotFound:
                if not create:
                    raise
                new_id = check_thread_id(thread_id, new=True)
                pk, seq, branch = self._insert_thread(conn, owner, new_id, None, None), 0, 0
            params = []
            for message, (role, text, data), count in zip(messages, rows, counts, strict=True):
                seq += 1
                params.append((pk, seq, role, now, text, data, count, branch))
                stored.append(StoredMessage(seq, now, message, count, branch))
            if params:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO messages (thread_pk, seq, role, created_at, text, data,"
                        " tokens, branch) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        params,
                    )
            if trace_data is not None and stored:
                conn.execute(
                    "INSERT INTO traces (thread_pk, seq, data) VALUES (%s, %s, %s)"
                    " ON CONFLICT (thread_pk, seq) DO UPDATE SET data = excluded.data",
                    (pk, seq, trace_data),
                )
            conn.execute(
                "UPDATE threads SET last_seq = %s, updated_at = %s,"
                " title = COALESCE(title, %s) WHERE pk = %s",
                (seq, now, _title_from(messages), pk),
            )
        return stored

    def traces(self, owner: str, thread_id: str, *, limit: int = 20) -> list[tuple[int, Trace]]:
        with self._db.read() as conn:
            pk, _ = self._pk(conn, owner, thread_id)
            rows = conn.execute(
                "SELECT seq, data FROM traces WHERE thread_pk = %s ORDER BY seq DESC LIMIT %s",
                (pk, limit),
            ).fetchall()
        return [(seq, _unpack_trace(d)) for seq, d in reversed(rows)]

    def get_trace(self, owner: str, thread_id: str, seq: int) -> Trace | None:
        with self._db.read() as conn:
            pk, _ = self._pk(conn, owner, thread_id)
            row = conn.execute(
                "SELECT data FROM traces WHERE thread_pk = %s AND seq = %s", (pk, seq)
            ).fetchone()
        return _unpack_trace(row[0]) if row else None

    # -- summaries ------------------------------------------------------------------------
    def save_summary(self, owner: str, thread_id: str, summary: Summary) -> None:
        """Store a new summary version; only the newest ``SUMMARY_VERSIONS`` of its branch
        are kept (``prune_summaries``; the transcript they summarize always is)."""
        with self._db.write() as conn:
            pk, _ = self._pk(conn, owner, thread_id)
            conn.execute(
                "INSERT INTO summaries (thread_pk, through_seq, text, tokens, model, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (thread_pk, through_seq)"
                " DO UPDATE SET text = excluded.text, tokens = excluded.tokens,"
                " model = excluded.model, created_at = excluded.created_at",
                (
                    pk,
                    summary.through_seq,
                    summary.text,
                    summary.tokens,
                    summary.model,
                    summary.created_at or time.time(),
                ),
            )
            prune_summaries(_runner(conn), pk, summary.through_seq, SUMMARY_VERSIONS)

    def _summaries(self, owner: str, thread_id: str, order: str) -> list[Summary]:
        with self._db.read() as conn:
            pk, _ = self._pk(conn, owner, thread_id)
            rows = conn.execute(
                "SELECT through_seq, text, tokens, created_at, model FROM summaries"
                f" WHERE thread_pk = %s ORDER BY through_seq {order}",
                (pk,),
            ).fetchall()
        return [Summary(*row) for row in rows]

    # -- user memory ----------------------------------------------------------------------
    def add_memory(self, owner: str, text: str, *, untrusted: str | None = None) -> MemoryItem:
        now = time.time()
        with self._db.write() as conn:
            row = conn.execute(
                "INSERT INTO memories (owner, text, created_at, updated_at, untrusted)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING pk, text, untrusted",
                (owner, text, now, now, untrusted),
            ).fetchone()
        assert row is not None
        return MemoryItem(int(row[0]), row[1], now, now, row[2])

    def list_memories(self, owner: str) -> list[MemoryItem]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT pk, text, created_at, updated_at, untrusted FROM memories"
                " WHERE owner = %s ORDER BY pk",
                (owner,),
            ).fetchall()
        return [MemoryItem(*row) for row in rows]

    def update_memory(self, owner: str, memory_id: int, text: str) -> MemoryItem:
        now = time.time()
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE memories SET text = %s, updated_at = %s, untrusted = NULL"
                " WHERE pk = %s AND owner = %s RETURNING text, created_at",
                (text, now, _memory_key(memory_id), owner),
            ).fetchone()
            if row is None:
                raise _memory_not_found(memory_id)
        return MemoryItem(memory_id, row[0], row[1], now)

    def delete_memory(self, owner: str, memory_id: int) -> None:
        with self._db.write() as conn:
            cur = conn.execute(
                "DELETE FROM memories WHERE pk = %s AND owner = %s", (_memory_key(memory_id), owner)
            )
            if cur.rowcount == 0:
                raise _memory_not_found(memory_id)

    # -- collections and documents --------------------------------------------------------
    def create_collection(self, owner: str, name: str, description: str = "") -> CollectionInfo:
        check_collection_name(name)
        now = time.time()
        with self._db.write() as conn:
            row = conn.execute(
                "INSERT INTO collections (owner, name, description, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (owner, name) DO NOTHING RETURNING pk",
                (owner, name, description, now, now),
            ).fetchone()
            if row is None:
                raise UserError(f"collection {name!r} already exists")
        return self.get_collection(owner, name)

    def _collections(self, owner: str, name: str | None) -> list[CollectionInfo]:
        where, args = (
            ("c.owner = %s AND c.name = %s", (owner, name)) if name else ("c.owner = %s", (owner,))
        )
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT c.name, c.owner, c.description, c.created_at, c.updated_at,"
                " (SELECT count(*) FROM documents d WHERE d.collection_pk = c.pk),"
                " (SELECT coalesce(max(n.chunks), 0) FROM chunk_namespaces n"
                "  WHERE n.namespace = 'collection:' || c.pk), c.pk"
                f' FROM collections c WHERE {where} ORDER BY c.name COLLATE "C"',
                args,
            ).fetchall()
        return [CollectionInfo(*row) for row in rows]

    def update_collection(self, owner: str, name: str, description: str) -> CollectionInfo:
        info = self.get_collection(owner, name)
        with self._db.write() as conn:
            conn.execute(
                "UPDATE collections SET description = %s, updated_at = %s WHERE pk = %s",
                (description, time.time(), info.uid),
            )
        return self.get_collection(owner, name)

    def delete_collection(self, owner: str, name: str) -> None:
        """Delete the collection, its documents and (by trigger) its chunks."""
        info = self.get_collection(owner, name)
        with self._db.write() as conn:
            conn.execute("DELETE FROM collections WHERE pk = %s", (info.uid,))

    def list_documents(self, owner: str, collection: str) -> list[DocumentInfo]:
        info = self.get_collection(owner, collection)
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT pk, source, title, content_hash, bytes, chunks, ingested_at, metadata"
                ' FROM documents WHERE collection_pk = %s ORDER BY source COLLATE "C"',
                (info.uid,),
            ).fetchall()
        return [_document(collection, row) for row in rows]

    def find_document(self, owner: str, collection: str, source: str) -> DocumentInfo | None:
        info = self.get_collection(owner, collection)
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT pk, source, title, content_hash, bytes, chunks, ingested_at, metadata"
                " FROM documents WHERE collection_pk = %s AND source = %s",
                (info.uid, source),
            ).fetchone()
        return _document(collection, row) if row else None

    def put_document(
        self,
        owner: str,
        collection: str,
        source: str,
        *,
        title: str | None,
        content_hash: str,
        size: int,
        chunks: int,
        metadata: dict[str, Any] | None = None,
    ) -> DocumentInfo:
        """Insert or replace the record of ``source`` (call inside :meth:`transaction` with
        the writes of its chunks, so a document is never half in the index)."""
        info = self.get_collection(owner, collection)
        now = time.time()
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO documents (collection_pk, source, title, content_hash, bytes,"
                " chunks, metadata, ingested_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (collection_pk, source) DO UPDATE SET title = excluded.title,"
                " content_hash = excluded.content_hash, bytes = excluded.bytes,"
                " chunks = excluded.chunks, metadata = excluded.metadata,"
                " ingested_at = excluded.ingested_at",
                (
                    info.uid,
                    source,
                    title,
                    content_hash,
                    size,
                    chunks,
                    json.dumps(metadata) if metadata else None,
                    now,
                ),
            )
            conn.execute("UPDATE collections SET updated_at = %s WHERE pk = %s", (now, info.uid))
        found = self.find_document(owner, collection, source)
        assert found is not None
        return found

    def delete_document(self, owner: str, collection: str, source: str) -> None:
        """Forget ``source``'s record (remove its chunks from the index in the same
        :meth:`transaction`)."""
        info = self.get_collection(owner, collection)
        with self._db.write() as conn:
            conn.execute(
                "DELETE FROM documents WHERE collection_pk = %s AND source = %s",
                (info.uid, source),
            )

    # -- users and API keys ----------------------------------------------------------------
    def create_user(self, name: str) -> UserInfo:
        check_user_name(name)
        with self._db.write() as conn:
            row = conn.execute(
                "INSERT INTO users (name, created_at) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, time.time()),
            ).fetchone()
            if row is None:
                raise UserError(
                    f"user {name!r} already exists", hint="list users with `chatwright users list`"
                )
        found = self.find_user(name)
        assert found is not None
        return found

    def _users(self, name: str | None) -> list[UserInfo]:
        where, args = ("WHERE u.name = %s", (name,)) if name is not None else ("", ())
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT u.name, u.created_at, (SELECT count(*) FROM api_keys k"
                "  WHERE k.owner = u.name AND k.revoked_at IS NULL)"
                f' FROM users u {where} ORDER BY u.name COLLATE "C"',
                args,
            ).fetchall()
        return [UserInfo(*row) for row in rows]

    def delete_user(self, name: str) -> None:
        with self._db.write() as conn:
            if conn.execute("DELETE FROM users WHERE name = %s", (name,)).rowcount == 0:
                raise _user_not_found(name)

    def create_api_key(self, user: str, name: str = "") -> tuple[str, str]:
        if self.find_user(user) is None:
            raise _user_not_found(user)
        secret = new_secret()
        key_id = "key_" + uuid.uuid4().hex[:12]
        import psycopg

        try:
            with self._db.write() as conn:
                conn.execute(
                    "INSERT INTO api_keys (id, owner, name, secret_hash, prefix, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (key_id, user, name, hash_secret(secret), secret[:7], time.time()),
                )
        except psycopg.errors.ForeignKeyViolation:  # the user was deleted meanwhile
            raise _user_not_found(user) from None
        return key_id, secret

    def find_key(self, secret_hash: str, *, revoked: bool = False) -> ApiKeyInfo | None:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE secret_hash = %s", (secret_hash,)
            ).fetchone()
        key = ApiKeyInfo(*row) if row else None
        return key if key is not None and (revoked or key.active) else None

    def list_keys(self, user: str | None = None) -> list[ApiKeyInfo]:
        where, args = ("WHERE owner = %s", (user,)) if user is not None else ("", ())
        with self._db.read() as conn:
            rows = conn.execute(
                f'SELECT {_KEY_COLUMNS} FROM api_keys {where} ORDER BY owner COLLATE "C",'
                " created_at",
                args,
            ).fetchall()
        return [ApiKeyInfo(*row) for row in rows]

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, %s) WHERE id = %s"
                f" RETURNING {_KEY_COLUMNS}",
                (time.time(), key_id),
            ).fetchone()
        if row is None:
            raise UserError(
                f"API key {key_id!r} not found", hint="list keys with `chatwright keys list`"
            )
        return ApiKeyInfo(*row)

    def touch_key(self, key_id: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE api_keys SET last_used_at = %s WHERE id = %s", (time.time(), key_id)
            )

    def has_api_keys(self) -> bool:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)"
            ).fetchone()
        return bool(row and row[0])


# -- turn locks ---------------------------------------------------------------------------
_POLL_MIN_S = 0.002
_POLL_MAX_S = 0.05


def lock_id(owner: str, thread_id: str) -> int:
    """The advisory lock key of a thread: a signed 64-bit hash of ``owner\\0thread_id``."""
    digest = hashlib.blake2b(
        f"{owner}\0{thread_id}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresTurnLocks:
    """One turn at a time per thread, across every replica using the database.

    An exact in-process lock first (turns of this process on one thread queue here, without
    touching the database), then a session-level ``pg_try_advisory_lock`` on the thread's
    64-bit key, polled with short sleeps. All advisory locks of a store are taken on *one*
    connection (``connect`` opens it when first needed; calls on it are serialised): 200
    concurrent turns hold 200 locks there, not 200 pool connections. If the process dies, the
    connection closes and PostgreSQL frees its locks.

    The calls on that connection are short and made from the event loop: a thread lock guards
    it, and an advisory lock once taken is released in ``finally`` even if the turn is
    cancelled.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection]) -> None:
        self._connect = connect
        self._conn: psycopg.Connection | None = None
        self._io = threading.Lock()
        self._local: dict[tuple[str, str], tuple[threading.Lock, int]] = {}
        self._guard = threading.Lock()

    def _enter_local(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            lock, users = self._local.get(key) or (threading.Lock(), 0)
            self._local[key] = (lock, users + 1)
            return lock

    def _leave_local(self, key: tuple[str, str]) -> None:
        with self._guard:
            lock, users = self._local[key]
            if users == 1:
                del self._local[key]
            else:
                self._local[key] = (lock, users - 1)

    @contextlib.asynccontextmanager
    async def hold(self, owner: str, thread_id: str) -> AsyncIterator[None]:
        key = (owner, thread_id)
        local = self._enter_local(key)
        try:
            while not local.acquire(blocking=False):
                await asyncio.sleep(_POLL_MIN_S)
            try:
                ident = lock_id(owner, thread_id)
                delay = _POLL_MIN_S
                while not self._call("SELECT pg_try_advisory_lock(%s)", ident):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _POLL_MAX_S)
                try:
                    yield
                finally:
                    self._unlock(ident)
            finally:
                local.release()
        finally:
            self._leave_local(key)

    def _call(self, query: str, ident: int) -> bool:
        import psycopg

        with self._io:
            for attempt in (1, 2):  # a connection the server dropped (a restart): once more
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self._connect()
                    row = self._conn.execute(query, (ident,)).fetchone()  # type: ignore[arg-type]
                    return bool(row and row[0])
                except psycopg.Error as e:
                    self._drop()
                    if attempt == 2:
                        raise StoreError(
                            f"cannot take a turn lock: {_first_line(e)}", hint=_CONNECT_HINT
                        ) from None
        raise AssertionError("unreachable")

    def _unlock(self, ident: int) -> None:
        with contextlib.suppress(StoreError):  # connection lost: the server freed the lock
            if self._conn is not None and not self._conn.closed:
                self._call("SELECT pg_advisory_unlock(%s)", ident)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._io:
            self._drop()


@contextlib.contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A new, empty database on the server of ``url`` (whose user may create databases), for
    an evaluation or a benchmark: its URL; dropped afterwards."""
    _import_psycopg()
    import psycopg
    from psycopg import sql

    name = "cw_scratch_" + uuid.uuid4().hex[:12]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as e:
        raise StoreError(
            f"cannot create a database on {redact_url(url)}: {_first_line(e)}",
            hint="use a PostgreSQL user allowed to create databases (CREATEDB)",
        ) from None
    try:
        yield urlunsplit(urlsplit(url)._replace(path="/" + name))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
