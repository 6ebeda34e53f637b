"""The default store: one SQLite file, WAL journal, synchronous commits.

Messages are an append-only log keyed by (thread, seq). A turn reads the newest messages by
key range, so its cost and the bytes it adds do not grow with the thread. A commit that
returned is on disk (``synchronous=FULL``): an acknowledged message survives a crash.
``append_async`` (a turn's writes, from the event loop) commits in groups, as durably
(``sqlite_commit.py``).
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import EllipsisType
from typing import Any

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
from chatwright.store.branches import Run, thread_row
from chatwright.store.common import StoreCommon, prune_summaries
from chatwright.store.file_locks import FileTurnLocks
from chatwright.store.migrations import migrate
from chatwright.store.sqlite_chunks import SQLiteChunks
from chatwright.store.sqlite_commit import GroupCommit, write_error
from chatwright.store.sqlite_jobs import SQLiteJobs
from chatwright.store.sqlite_streams import SQLiteStreams
from chatwright.types import Message, TextPart, Trace, dump_json, load_json, load_message

__all__ = ["MAX_THREAD_ID_LENGTH", "SQLiteStore"]

MAX_THREAD_ID_LENGTH = 200
_TITLE_LENGTH = 80
SUMMARY_VERSIONS = 10  # summary versions kept per branch (each says which messages it covers)
_THREAD_COLUMNS = "id, owner, title, created_at, updated_at, last_seq, metadata, pk, branch"


def _encode(message: Message) -> tuple[str | None, bytes | None]:
    """(text, None) for a plain-text message whose text is valid UTF-8; else (None, json)."""
    if message.is_plain_text():
        text = message.text
        if text.isascii():
            return text, None
        try:
            text.encode("utf-8")
            return text, None
        except UnicodeEncodeError:  # lone surrogates: only the serializer keeps them
            pass
    return None, dump_json(message)


def _decode(role: str, text: str | None, data: bytes | None) -> Message:
    if data is None:  # our own plain-text row: already valid, so skip re-validation (hot path)
        part = TextPart.model_construct(text=text or "")
        return Message.model_construct(role=role, parts=(part,), metadata={})
    return load_message(data)


def _stored(row: tuple[Any, ...]) -> StoredMessage:
    seq, at, role, text, data, tokens, branch = row
    return StoredMessage(seq, at, _decode(role, text, data), tokens, branch)


def _thread(row: sqlite3.Row | tuple[Any, ...]) -> ThreadInfo:
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


def check_thread_id(thread_id: str, *, new: bool = False) -> str:
    """``thread_id`` if it can name a thread; a ``new`` one may also not contain ``/`` or be
    ``.`` or ``..``: it would not fit in a URL path (``/api/threads/{id}``)."""
    if not thread_id or len(thread_id) > MAX_THREAD_ID_LENGTH or not thread_id.isprintable():
        raise UserError(
            f"invalid thread id {thread_id[:40]!r}",
            hint=f"use 1-{MAX_THREAD_ID_LENGTH} printable characters",
        )
    if new and ("/" in thread_id or thread_id in (".", "..")):
        raise UserError(
            f"invalid thread id {thread_id[:40]!r}: it cannot contain '/' or be '.' or '..'",
            hint="use letters, digits, '-', '_' or ':' instead",
        )
    return thread_id


class SQLiteStore(StoreCommon):
    """Everything in one SQLite database file (``":memory:"`` for tests).

    Its chunks (``.chunks``) share the connection and lock; its turn locks (``.locks``) are
    ``flock`` files in ``locks/`` beside the database, so processes sharing the file keep one
    writer per thread.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.location = self.path
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(
                    f"cannot create the data directory for {self.path}: {e.strerror}",
                    hint="set --data-dir or CHATWRIGHT_DATA_DIR to a writable directory",
                ) from None
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            journal = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA busy_timeout = 10000")
            migrate(self._db)
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"cannot open the database {self.path}: {e}",
                hint="the file may be corrupt or not a chatwright database; "
                "move it aside or point --data-dir elsewhere",
            ) from None
        self.chunks = SQLiteChunks(self._db, lock=self._lock)
        self.jobs = SQLiteJobs(self._db, self._lock)
        self.locks = FileTurnLocks(
            None if self.path == ":memory:" else Path(self.path).parent / "locks"
        )
        wal = self.path + "-wal" if journal == "wal" else None
        self.group_commit = GroupCommit(self._db, self._lock, self.path, wal)
        self.streams = SQLiteStreams(self._db, self._lock, self._write, self.group_commit)
        self._shared = SharedParts()

    # -- plumbing -------------------------------------------------------------------------
    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, for components sharing the database (the search index)."""
        return self._db

    @property
    def lock(self) -> threading.RLock:
        """Hold this while using :attr:`connection` from another component."""
        return self._lock

    def _write(self) -> _Transaction:
        return _Transaction(self)

    def transaction(self) -> _Transaction:
        """``with store.transaction():`` — one atomic write, nesting as a savepoint; the
        search index sharing :attr:`connection` joins it."""
        return _Transaction(self)

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Run]:
        with self._lock:
            yield lambda sql, params: self._db.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _writer(self) -> Iterator[Run]:
        with self._write() as db:
            yield lambda sql, params: db.execute(sql, params).fetchall()

    def _stored(self, row: tuple[Any, ...]) -> StoredMessage:
        return _stored(row)

    def _pk(self, owner: str, thread_id: str) -> tuple[int, int]:
        row = self._db.execute(
            "SELECT pk, last_seq FROM threads WHERE owner = ? AND id = ?", (owner, thread_id)
        ).fetchone()
        if row is None:
            raise ThreadNotFound(thread_id)
        return row[0], row[1]

    def close(self) -> None:
        self.group_commit.close()
        with self._lock:
            self._db.close()

    # -- threads --------------------------------------------------------------------------
    def find_thread(self, owner: str, thread_id: str) -> ThreadInfo | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE owner = ? AND id = ?",
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
        with self._write() as db:
            self._insert_thread(db, owner, thread_id, title, metadata)
        return self.get_thread(owner, thread_id)

    def _insert_thread(
        self,
        db: sqlite3.Connection,
        owner: str,
        thread_id: str,
        title: str | None,
        metadata: dict[str, Any] | None,
    ) -> int:
        now = time.time()
        try:
            cur = db.execute(
                "INSERT INTO threads (owner, id, title, created_at, updated_at, metadata)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (owner, thread_id, title, now, now, dump_json(metadata) if metadata else None),
            )
        except sqlite3.IntegrityError:
            raise UserError(f"thread {thread_id!r} already exists") from None
        return int(cur.lastrowid or 0)

    def list_threads(self, owner: str, *, limit: int = 50, offset: int = 0) -> list[ThreadInfo]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_THREAD_COLUMNS} FROM threads WHERE owner = ?"
                " ORDER BY updated_at DESC LIMIT ? OFFSET ?",
                (owner, limit, offset),
            ).fetchall()
        return [_thread(r) for r in rows]

    def rename_thread(
        self, owner: str, thread_id: str, title: str, *, only_if: str | EllipsisType | None = ...
    ) -> ThreadInfo:
        with self._write() as db:
            pk, _ = self._pk(owner, thread_id)
            if only_if is ...:
                db.execute("UPDATE threads SET title = ? WHERE pk = ?", (title, pk))
            else:  # in one statement: a rename in between is never overwritten
                db.execute(
                    "UPDATE threads SET title = ? WHERE pk = ? AND title IS ?",
                    (title, pk, only_if),
                )
        return self.get_thread(owner, thread_id)

    def update_thread_metadata(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadInfo:
        with self._write() as db:
            pk, _ = self._pk(owner, thread_id)
            db.execute(
                "UPDATE threads SET metadata = ? WHERE pk = ?",
                (dump_json(metadata) if metadata else None, pk),
            )
        return self.get_thread(owner, thread_id)

    def delete_thread(self, owner: str, thread_id: str) -> None:
        with self._write() as db:
            pk, _ = self._pk(owner, thread_id)
            db.execute("DELETE FROM threads WHERE pk = ?", (pk,))

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
        write = self._appending(owner, thread_id, messages, trace, create, tokens)
        with self._write() as db:
            return write(db)

    async def append_async(
        self,
        owner: str,
        thread_id: str,
        messages: Sequence[Message],
        *,
        trace: Trace | None = None,
        create: bool = False,
        tokens: Sequence[int | None] | None = None,
    ) -> list[StoredMessage]:
        """:meth:`append` by group commit (``sqlite_commit.py``) where it is on (a server:
        concurrent appends share a transaction and a sync, and the event loop does not wait
        for the disk); else :meth:`append` itself, which costs a lone turn less (the CLI, the
        Python API: 2.4 vs 1.8 ms a turn by ``benchmarks/turn_cost.py``)."""
        if not self.group_commit.enabled:
            return self.append(
                owner, thread_id, messages, trace=trace, create=create, tokens=tokens
            )
        write = self._appending(owner, thread_id, messages, trace, create, tokens)
        return await self.group_commit.run(write)

    def _appending(
        self,
        owner: str,
        thread_id: str,
        messages: Sequence[Message],
        trace: Trace | None,
        create: bool,
        tokens: Sequence[int | None] | None,
    ) -> Callable[[sqlite3.Connection], list[StoredMessage]]:
        """The write of an append, to run in a transaction; serialized now, outside the lock."""
        rows = [(m.role, *_encode(m)) for m in messages]
        counts = list(tokens) if tokens is not None else [None] * len(messages)
        trace_data = _pack_trace(trace) if trace else None

        def write(db: sqlite3.Connection) -> list[StoredMessage]:
            now = time.time()
            stored: list[StoredMessage] = []
            try:
                pk, seq, branch = thread_row(
                    lambda q, p: db.execute(q, p).fetchall(), owner, thread_id
                )
            except ThreadNotFound:
                if not create:
                    raise
                new_id = check_thread_id(thread_id, new=True)
                pk, seq, branch = self._insert_thread(db, owner, new_id, None, None), 0, 0
            for message, (role, text, data), count in zip(messages, rows, counts, strict=True):
                seq += 1
                db.execute(
                    "INSERT INTO messages"
                    " (thread_pk, seq, role, created_at, text, data, tokens, branch)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (pk, seq, role, now, text, data, count, branch),
                )
                stored.append(StoredMessage(seq, now, message, count, branch))
            if trace_data is not None and stored:
                db.execute(
                    "INSERT OR REPLACE INTO traces (thread_pk, seq, data) VALUES (?, ?, ?)",
                    (pk, seq, trace_data),
                )
            title = _title_from(messages)
            db.execute(
                "UPDATE threads SET last_seq = ?, updated_at = ?,"
                " title = COALESCE(title, ?) WHERE pk = ?",
                (seq, now, title, pk),
            )
            return stored

        return write

    def traces(self, owner: str, thread_id: str, *, limit: int = 20) -> list[tuple[int, Trace]]:
        with self._lock:
            pk, _ = self._pk(owner, thread_id)
            rows = self._db.execute(
                "SELECT seq, data FROM traces WHERE thread_pk = ? ORDER BY seq DESC LIMIT ?",
                (pk, limit),
            ).fetchall()
        return [(seq, _unpack_trace(d)) for seq, d in reversed(rows)]

    def get_trace(self, owner: str, thread_id: str, seq: int) -> Trace | None:
        with self._lock:
            pk, _ = self._pk(owner, thread_id)
            row = self._db.execute(
                "SELECT data FROM traces WHERE thread_pk = ? AND seq = ?", (pk, seq)
            ).fetchone()
        return _unpack_trace(row[0]) if row else None

    # -- summaries ------------------------------------------------------------------------
    def save_summary(self, owner: str, thread_id: str, summary: Summary) -> None:
        """Store a new summary version; only the newest ``SUMMARY_VERSIONS`` of its branch
        are kept (``prune_summaries``; the transcript they summarize always is)."""
        with self._write() as db:
            pk, _ = self._pk(owner, thread_id)
            db.execute(
                "INSERT OR REPLACE INTO summaries"
                " (thread_pk, through_seq, text, tokens, model, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    pk,
                    summary.through_seq,
                    summary.text,
                    summary.tokens,
                    summary.model,
                    summary.created_at or time.time(),
                ),
            )
            prune_summaries(
                lambda sql, params: db.execute(sql, params).fetchall(),
                pk,
                summary.through_seq,
                SUMMARY_VERSIONS,
            )

    def _summaries(self, owner: str, thread_id: str, order: str) -> list[Summary]:
        with self._lock:
            pk, _ = self._pk(owner, thread_id)
            rows = self._db.execute(
                "SELECT through_seq, text, tokens, created_at, model FROM summaries"
                f" WHERE thread_pk = ? ORDER BY through_seq {order}",
                (pk,),
            ).fetchall()
        return [Summary(*row) for row in rows]

    # -- user memory ----------------------------------------------------------------------
    def add_memory(self, owner: str, text: str, *, untrusted: str | None = None) -> MemoryItem:
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO memories (owner, text, created_at, updated_at, untrusted)"
                " VALUES (?, ?, ?, ?, ?)",
                (owner, text, now, now, untrusted),
            )
        return MemoryItem(int(cur.lastrowid or 0), text, now, now, untrusted)

    def list_memories(self, owner: str) -> list[MemoryItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT pk, text, created_at, updated_at, untrusted FROM memories"
                " WHERE owner = ? ORDER BY pk",
                (owner,),
            ).fetchall()
        return [MemoryItem(*row) for row in rows]

    def update_memory(self, owner: str, memory_id: int, text: str) -> MemoryItem:
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                "UPDATE memories SET text = ?, updated_at = ?, untrusted = NULL"
                " WHERE pk = ? AND owner = ?",
                (text, now, _memory_key(memory_id), owner),
            )
            if cur.rowcount == 0:
                raise _memory_not_found(memory_id)
            created = db.execute(
                "SELECT created_at FROM memories WHERE pk = ?", (memory_id,)
            ).fetchone()[0]
        return MemoryItem(memory_id, text, created, now)

    def delete_memory(self, owner: str, memory_id: int) -> None:
        with self._write() as db:
            cur = db.execute(
                "DELETE FROM memories WHERE pk = ? AND owner = ?", (_memory_key(memory_id), owner)
            )
            if cur.rowcount == 0:
                raise _memory_not_found(memory_id)

    # -- collections and documents --------------------------------------------------------
    def create_collection(self, owner: str, name: str, description: str = "") -> CollectionInfo:
        check_collection_name(name)
        now = time.time()
        with self._write() as db:
            try:
                db.execute(
                    "INSERT INTO collections (owner, name, description, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (owner, name, description, now, now),
                )
            except sqlite3.IntegrityError:
                raise UserError(f"collection {name!r} already exists") from None
        return self.get_collection(owner, name)

    def _collections(self, owner: str, name: str | None) -> list[CollectionInfo]:
        where, args = (
            ("c.owner = ? AND c.name = ?", (owner, name)) if name else ("c.owner = ?", (owner,))
        )
        with self._lock:
            rows = self._db.execute(
                "SELECT c.name, c.owner, c.description, c.created_at, c.updated_at,"
                " (SELECT count(*) FROM documents d WHERE d.collection_pk = c.pk),"
                " (SELECT coalesce(max(n.chunks), 0) FROM chunk_namespaces n"
                "  WHERE n.namespace = 'collection:' || c.pk), c.pk"
                f" FROM collections c WHERE {where} ORDER BY c.name",
                args,
            ).fetchall()
        return [CollectionInfo(*row) for row in rows]

    def update_collection(self, owner: str, name: str, description: str) -> CollectionInfo:
        info = self.get_collection(owner, name)
        with self._write() as db:
            db.execute(
                "UPDATE collections SET description = ?, updated_at = ? WHERE pk = ?",
                (description, time.time(), info.uid),
            )
        return self.get_collection(owner, name)

    def delete_collection(self, owner: str, name: str) -> None:
        """Delete the collection, its documents and (by trigger) its indexed chunks."""
        info = self.get_collection(owner, name)
        with self._write() as db:
            db.execute("DELETE FROM collections WHERE pk = ?", (info.uid,))

    def list_documents(self, owner: str, collection: str) -> list[DocumentInfo]:
        info = self.get_collection(owner, collection)
        with self._lock:
            rows = self._db.execute(
                "SELECT pk, source, title, content_hash, bytes, chunks, ingested_at, metadata"
                " FROM documents WHERE collection_pk = ? ORDER BY source",
                (info.uid,),
            ).fetchall()
        return [_document(collection, row) for row in rows]

    def find_document(self, owner: str, collection: str, source: str) -> DocumentInfo | None:
        info = self.get_collection(owner, collection)
        with self._lock:
            row = self._db.execute(
                "SELECT pk, source, title, content_hash, bytes, chunks, ingested_at, metadata"
                " FROM documents WHERE collection_pk = ? AND source = ?",
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
        with self._write() as db:
            db.execute(
                "INSERT INTO documents (collection_pk, source, title, content_hash, bytes,"
                " chunks, metadata, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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
                    time.time(),
                ),
            )
            db.execute(
                "UPDATE collections SET updated_at = ? WHERE pk = ?", (time.time(), info.uid)
            )
        found = self.find_document(owner, collection, source)
        assert found is not None
        return found

    def delete_document(self, owner: str, collection: str, source: str) -> None:
        """Forget ``source``'s record (remove its chunks from the index in the same
        :meth:`transaction`)."""
        info = self.get_collection(owner, collection)
        with self._write() as db:
            db.execute(
                "DELETE FROM documents WHERE collection_pk = ? AND source = ?", (info.uid, source)
            )

    # -- users and API keys ----------------------------------------------------------------
    def create_user(self, name: str) -> UserInfo:
        check_user_name(name)
        with self._write() as db:
            try:
                db.execute(
                    "INSERT INTO users (name, created_at) VALUES (?, ?)", (name, time.time())
                )
            except sqlite3.IntegrityError:
                raise UserError(
                    f"user {name!r} already exists", hint="list users with `chatwright users list`"
                ) from None
        found = self.find_user(name)
        assert found is not None
        return found

    def _users(self, name: str | None) -> list[UserInfo]:
        where, args = ("WHERE u.name = ?", (name,)) if name is not None else ("", ())
        with self._lock:
            rows = self._db.execute(
                "SELECT u.name, u.created_at, (SELECT count(*) FROM api_keys k"
                "  WHERE k.owner = u.name AND k.revoked_at IS NULL)"
                f" FROM users u {where} ORDER BY u.name",
                args,
            ).fetchall()
        return [UserInfo(*row) for row in rows]

    def delete_user(self, name: str) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise _user_not_found(name)

    def create_api_key(self, user: str, name: str = "") -> tuple[str, str]:
        if self.find_user(user) is None:
            raise _user_not_found(user)
        secret = new_secret()
        key_id = "key_" + uuid.uuid4().hex[:12]
        with self._write() as db:
            db.execute(
                "INSERT INTO api_keys (id, owner, name, secret_hash, prefix, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, user, name, hash_secret(secret), secret[:7], time.time()),
            )
        return key_id, secret

    def find_key(self, secret_hash: str, *, revoked: bool = False) -> ApiKeyInfo | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?", (secret_hash,)
            ).fetchone()
        key = ApiKeyInfo(*row) if row else None
        return key if key is not None and (revoked or key.active) else None

    def list_keys(self, user: str | None = None) -> list[ApiKeyInfo]:
        where, args = ("WHERE owner = ?", (user,)) if user is not None else ("", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys {where} ORDER BY owner, created_at", args
            ).fetchall()
        return [ApiKeyInfo(*row) for row in rows]

    def revoke_key(self, key_id: str) -> ApiKeyInfo:
        with self._write() as db:
            db.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                (time.time(), key_id),
            )
            row = db.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        if row is None:
            raise UserError(
                f"API key {key_id!r} not found", hint="list keys with `chatwright keys list`"
            )
        return ApiKeyInfo(*row)

    def touch_key(self, key_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (time.time(), key_id))

    def has_api_keys(self) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)"
            ).fetchone()
        return bool(row[0])


_KEY_COLUMNS = "id, owner, name, prefix, created_at, last_used_at, revoked_at"
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def check_user_name(name: str) -> str:
    if not _USER_NAME.fullmatch(name or ""):
        raise UserError(
            f"invalid user name {name!r}",
            hint="use 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit",
        )
    return name


def _user_not_found(name: str) -> UserError:
    return UserError(
        f"user {name!r} not found",
        hint=f"add them with `chatwright users add {name}`"
        if _USER_NAME.fullmatch(name or "")
        else "list users with `chatwright users list`",
    )


def check_collection_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name or ""):
        raise UserError(
            f"invalid collection name {name!r}",
            hint="use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    return name


def _document(collection: str, row: tuple[Any, ...]) -> DocumentInfo:
    pk, source, title, digest, size, chunks, ingested, metadata = row
    return DocumentInfo(
        pk,
        collection,
        source,
        title,
        digest,
        size,
        chunks,
        ingested,
        json.loads(metadata) if metadata else {},
    )


def _memory_not_found(memory_id: int) -> UserError:
    return UserError(
        f"memory {memory_id} not found", hint="list them with `chatwright memory list`"
    )


def _memory_key(memory_id: int) -> int:
    """``memory_id`` if a memory could have it, else not found: the keys are 64-bit, and a
    larger number would fail as a storage error."""
    if not 0 < memory_id < 2**63:
        raise _memory_not_found(memory_id)
    return memory_id


def _pack_trace(trace: Trace) -> bytes:
    # A trace is stored with every turn, so its size counts: defaults left out, then zlib
    # (about 430 -> 210 bytes for a plain turn).
    return zlib.compress(dump_json(trace.model_dump(exclude_defaults=True)))


def _unpack_trace(data: bytes) -> Trace:
    return Trace.model_validate(load_json(zlib.decompress(data)))


def _title_from(messages: Sequence[Message]) -> str | None:
    first = next((m.text for m in messages if m.role == "user" and m.text.strip()), None)
    if first is None:
        return None
    line = " ".join(first.split())
    line = line.encode("utf-8", "replace").decode("utf-8")
    return line if len(line) <= _TITLE_LENGTH else line[: _TITLE_LENGTH - 1] + "…"


class _Transaction:
    """``with store._write() as db:`` — one IMMEDIATE transaction under the store's lock; inside
    another one (same thread, the lock is reentrant) it is a savepoint of it."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.nested = False

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        self.nested = self.store._db.in_transaction
        try:
            self.store._db.execute(
                "SAVEPOINT chatwright_store" if self.nested else "BEGIN IMMEDIATE"
            )
        except sqlite3.Error as e:
            self.store._lock.release()
            raise StoreError(f"cannot write to {self.store.path}: {e}") from None
        return self.store._db

    def _rollback(self) -> None:
        if self.nested:
            self.store._db.execute("ROLLBACK TO chatwright_store")
            self.store._db.execute("RELEASE chatwright_store")
        else:
            self.store._db.execute("ROLLBACK")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                try:
                    self.store._db.execute("RELEASE chatwright_store" if self.nested else "COMMIT")
                except sqlite3.Error as e:
                    self._rollback()
                    raise StoreError(f"cannot write to {self.store.path}: {e}") from None
            else:
                self._rollback()
                if isinstance(exc, (sqlite3.Error, OverflowError)):
                    raise write_error(self.store.path, exc) from exc
        finally:
            self.store._lock.release()
