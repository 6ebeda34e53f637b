"""What a store must do, and the values it hands back: the one seam between the engine and
its database.

A :class:`Store` holds everything chatwright keeps: threads and their append-only messages,
summaries, traces, user memories, users and API keys, collections and documents
(:class:`ThreadStore` … :class:`KnowledgeStore`), and the chunks of text that search reads
(:class:`ChunkIndex`, at ``store.chunks``). It also hands out what must be one per store and
not one per bot: the turn locks (``store.locks``: one writer per thread, across every process
sharing the database) and any shared part built once (``store.shared``: the search engine and
its embedder). A backend is one module and its migrations (``sqlite.py``, ``postgres.py``),
checked by one conformance suite (``tests/test_store_conformance.py``); no SQL lives outside
``store/``.

Every call names the owner: a thread belongs to exactly one owner, thread ids are scoped per
owner, and another owner's thread is indistinguishable from one that does not exist.

Users and their API keys (the HTTP server's) live here too. A key's secret is shown once, when
it is made, and only its SHA-256 is stored: a leaked database gives no working key. Secrets
are 256 random bits, so a plain hash (no salt, no slow KDF) is enough, and a key is found by
its hash with an ordinary index lookup.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from types import EllipsisType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np

from chatwright.types import Message, Trace

__all__ = [
    "AccountStore",
    "ApiKeyInfo",
    "BranchInfo",
    "ChunkIndex",
    "ChunkRecord",
    "CollectionInfo",
    "DocumentInfo",
    "IndexedChunk",
    "JobInfo",
    "JobQueue",
    "KnowledgeStore",
    "MemoryItem",
    "MemoryStore",
    "SharedParts",
    "Signal",
    "Store",
    "StoredMessage",
    "StreamInfo",
    "StreamLog",
    "StreamWrite",
    "Summary",
    "ThreadInfo",
    "ThreadStore",
    "TurnLocks",
    "UserInfo",
    "hash_secret",
    "new_secret",
]

T = TypeVar("T")

SECRET_PREFIX = "cw-"


def new_secret() -> str:
    """A fresh API key secret: ``cw-`` and 43 URL-safe characters (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What is stored of a secret, and looked up: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    id: str
    owner: str
    title: str | None
    created_at: float
    updated_at: float
    message_count: int
    metadata: dict[str, Any] = field(default_factory=dict)
    uid: int = 0  # the store's own key for the thread, unique among live threads
    branch: int = 0  # the active branch (0: main): what turns read and append to


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored: its place in the thread (seqs grow across all branches), when it
    was written, its token count, and the branch it was written on (0: main)."""

    seq: int
    created_at: float
    message: Message
    tokens: int | None = None
    branch: int = 0


@dataclass(frozen=True, slots=True)
class BranchInfo:
    """A branch of a thread: an alternative continuation after message ``fork_seq`` of
    ``parent`` (a regenerated answer, an edited message). Its path is its own messages after
    its parent's path up to ``fork_seq``; main (id 0) has no parent. ``first_seq`` is its
    first own message (None: none yet), ``replaces`` the parent's message after the fork that
    it is an alternative to (None: the parent had none)."""

    id: int
    parent: int | None
    fork_seq: int
    created_at: float
    first_seq: int | None = None
    last_seq: int | None = None
    messages: int = 0
    replaces: int | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """A version of a thread's running summary, covering every message up to ``through_seq``."""

    through_seq: int
    text: str
    tokens: int
    created_at: float = 0.0
    model: str | None = None


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    """A named set of documents; searched under :attr:`namespace`."""

    name: str
    owner: str
    description: str
    created_at: float
    updated_at: float
    documents: int = 0
    chunks: int = 0
    uid: int = 0

    @property
    def namespace(self) -> str:
        return f"collection:{self.uid}"


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """An ingested file: where it came from, its content hash, how many chunks it made."""

    id: int
    collection: str
    source: str
    title: str | None
    content_hash: str
    bytes: int
    chunks: int
    ingested_at: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """A fact a user asked to be remembered across their threads. ``untrusted``: why it may
    not be the user's own words (it was saved in a turn whose context held text the user did
    not write: ``chatwright.trust``); None for what the user wrote or edited."""

    id: int
    text: str
    created_at: float
    updated_at: float
    untrusted: str | None = None


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user of the HTTP server: the owner name their data is stored under."""

    name: str
    created_at: float
    keys: int = 0  # active (not revoked) API keys


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key, without its secret (only the secret's hash is stored)."""

    id: str  # public: shown by `chatwright keys list`, used to revoke
    user: str
    name: str
    prefix: str  # the secret's first characters, to recognise it
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class IndexedChunk:
    """A chunk to write: its key (unique in its namespace), text, metadata (JSON-able) and
    vector (a unit-length float32 array, or None when there is no embedder)."""

    key: str
    text: str
    metadata: Mapping[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A stored chunk as search returns it."""

    namespace: str
    key: str
    text: str
    metadata: dict[str, Any]


Ranking = list[tuple[int, float]]  # (chunk id, score), best first


class ChunkIndex(Protocol):
    """Chunks of text under namespaces (``collection:<uid>``, ``thread:<uid>``), and the two
    rankings that hybrid search fuses (``retrieval.SearchIndex`` does the fusing, the
    embedding and the checks, the same for every backend).

    Writes join the store's open :meth:`Store.transaction`, if any. Chunk ids are the
    backend's own (stable while the chunk is unchanged). ``filters`` are already checked
    (:func:`chatwright.search.filters.check_filters`): typed equality on top-level metadata
    keys, a list meaning any of its values, None meaning missing or null.
    """

    def write(self, namespace: str, chunks: Sequence[IndexedChunk]) -> None:
        """Store ``chunks``, replacing those with the same keys, atomically. Vectors of one
        namespace must have one dimension (a :class:`~chatwright.errors.UserError` if not)."""
        ...

    def delete(self, namespace: str, keys: Sequence[str]) -> int:
        """Delete the chunks with these keys; how many existed."""
        ...

    def clear(self, namespace: str) -> int:
        """Delete every chunk of ``namespace``; how many there were."""
        ...

    def count(self, namespace: str) -> int: ...

    def dimension(self, namespace: str) -> int:
        """The dimension of the namespace's vectors (0: it has none)."""
        ...

    def vectors(self, namespace: str, prefix: str) -> dict[str, np.ndarray | None]:
        """The chunks whose key starts with ``prefix``: key → vector (float32) or None."""
        ...

    def last(self, namespace: str) -> ChunkRecord | None:
        """The chunk with the greatest key in byte order, whatever the database's collation
        (ordered keys make it the newest)."""
        ...

    def newest(self, namespace: str, limit: int, *, below: str | None = None) -> list[ChunkRecord]:
        """The ``limit`` chunks with the greatest keys (less than ``below``) in byte order,
        greatest first: an index range, however many the namespace holds."""
        ...

    def centroid(self, namespace: str) -> tuple[np.ndarray | None, int]:
        """(the unit-length mean of the namespace's vectors or None, how many vectors);
        cheap when nothing changed since the last call."""
        ...

    def keyword(
        self,
        query: str,
        namespaces: Sequence[str],
        filters: Mapping[str, Sequence[Any]] | None,
        depth: int,
    ) -> Ranking:
        """The ``depth`` best chunks by keyword relevance (BM25 or the like), scores > 0."""
        ...

    def vector(
        self,
        query: np.ndarray,
        namespaces: Sequence[str],
        filters: Mapping[str, Sequence[Any]] | None,
        depth: int,
    ) -> Ranking:
        """The ``depth`` nearest chunks by cosine similarity to the unit vector ``query``."""
        ...

    def term_counts(
        self, query: str, namespaces: Sequence[str]
    ) -> dict[str, tuple[int, tuple[int, ...]]]:
        """Per namespace with chunks: (how many chunks it has, how many of them hold each of
        the query's keywords), the keywords as keyword search finds them (stemmed, stopwords
        dropped, without repeats) and in the same order for every namespace; ``{}`` when the
        query has no keyword, or where the backend cannot count them cheaply. Routing weighs
        how common the query's words are in each collection from these: counts from the
        keyword index, no scoring."""
        ...

    def fetch(self, ids: Sequence[int]) -> dict[int, ChunkRecord]:
        """The chunks with these ids (missing ones left out)."""
        ...

    def labels(self, ids: Sequence[int], field: str) -> dict[int, tuple[str, str, Any]]:
        """(namespace, key, the value of metadata ``field`` or None) of the chunks with these
        ids (missing ones left out): what ranking many candidates needs of them, without
        their text or the rest of their metadata (``fetch`` reads those for the few kept)."""
        ...

    def preload(self, namespaces: Sequence[str]) -> None:
        """Make the first search of ``namespaces`` fast (a no-op where nothing is cached)."""
        ...


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A turn's event stream as stored: which replica runs it, whether it still runs."""

    id: str
    owner: str
    thread_id: str
    replica: str
    status: str  # running | done | failed | interrupted
    started_at: float
    heartbeat_at: float
    last_seq: int  # the seq of its last stored event (0: none yet)


@dataclass(frozen=True, slots=True)
class StreamWrite:
    """What a replica writes of one running stream in one go: new events, and its status."""

    id: str
    owner: str
    thread_id: str
    events: Sequence[tuple[int, str, str]] = ()  # (seq, event name, JSON data)
    status: str = "running"


@dataclass(frozen=True, slots=True)
class Signal:
    """A message to the replica running a stream: an approval answer or a cancel."""

    id: int
    stream_id: str
    kind: str  # approval | cancel
    call_id: str | None = None
    value: bool = False


class StreamLog(Protocol):
    """Turns' events as they stream, so that a client can resume a turn on any replica
    (``Last-Event-ID``), and the signals (approvals, cancels) that reach the replica running
    it. Events are transient: streams ended long ago are pruned."""

    def record(self, replica: str, writes: Sequence[StreamWrite]) -> None:
        """Store, in one transaction, each stream (created at its first write), its new
        events and status, and mark every running stream of ``replica`` alive (heartbeat)."""
        ...

    async def record_async(self, replica: str, writes: Sequence[StreamWrite]) -> None:
        """:meth:`record` for the event loop (SQLite: in the store's group commit)."""
        ...

    def get(self, owner: str, thread_id: str, stream_id: str) -> StreamInfo | None: ...

    def latest(self, owner: str, thread_id: str) -> StreamInfo | None:
        """The thread's most recently started stream."""
        ...

    def running(self, owner: str, thread_id: str) -> list[StreamInfo]: ...

    def events(
        self, stream_id: str, after_seq: int, limit: int = 1000
    ) -> list[tuple[int, str, str]]:
        """(seq, name, JSON data) of the stream's events after ``after_seq``, in order."""
        ...

    def interrupt(self, stream_id: str, name: str, data: str) -> bool:
        """Mark a running stream whose replica stopped answering as interrupted, ending it
        with the event (``name``, JSON ``data``) numbered after its last one, for every
        reader; False if it was not running. Later writes of that replica change nothing."""
        ...

    def signal(
        self, stream_id: str, kind: str, call_id: str | None = None, value: bool = False
    ) -> None: ...

    def take_signals(self, replica: str) -> list[Signal]:
        """The signals not yet taken for the running streams of ``replica``, oldest first;
        each is taken once (marked, in the same transaction)."""
        ...

    def prune(self, ended_before: float) -> int:
        """Delete the streams (and their events and signals) that ended before then."""
        ...


class TurnLocks(Protocol):
    """One writer per thread: ``async with locks.hold(owner, thread_id):`` runs one turn at a
    time per thread, across every process sharing the store."""

    def hold(self, owner: str, thread_id: str) -> AbstractAsyncContextManager[None]: ...


class ThreadStore(Protocol):
    """Threads, their append-only messages, running summaries and turn traces."""

    def find_thread(self, owner: str, thread_id: str) -> ThreadInfo | None: ...

    def get_thread(self, owner: str, thread_id: str) -> ThreadInfo:
        """The thread, or :class:`~chatwright.errors.ThreadNotFound`."""
        ...

    def create_thread(
        self,
        owner: str,
        thread_id: str | None = None,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ThreadInfo: ...

    def list_threads(self, owner: str, *, limit: int = 50, offset: int = 0) -> list[ThreadInfo]: ...

    def rename_thread(
        self, owner: str, thread_id: str, title: str, *, only_if: str | EllipsisType | None = ...
    ) -> ThreadInfo:
        """Set the title; with ``only_if``, only if the title is still that (None: none),
        checked in the same statement. The thread as it is afterwards."""
        ...

    def delete_thread(self, owner: str, thread_id: str) -> None:
        """Delete the thread, its messages, summaries, traces and recall chunks."""
        ...

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
        """Append ``messages`` (with their token counts, and the turn's ``trace``) in one
        transaction, durably: when this returns, they survive a crash."""
        ...

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
        """:meth:`append` for the event loop: as durable when it returns, and the loop does
        not wait for the database meanwhile. Concurrent calls may share one commit (SQLite's
        group commit); each still succeeds or fails alone."""
        ...

    def update_thread_metadata(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadInfo: ...

    def recent(
        self, owner: str, thread_id: str, limit: int, *, before_seq: int | None = None
    ) -> list[StoredMessage]:
        """The newest ``limit`` messages of the active branch's path (before ``before_seq``),
        oldest first; cost does not grow with the thread (nor with its other branches)."""
        ...

    def messages(
        self, owner: str, thread_id: str, *, after_seq: int = 0, all_branches: bool = False
    ) -> Iterator[StoredMessage]:
        """Every message of the active branch's path (of every branch: ``all_branches``)
        after ``after_seq``, oldest first, read in batches."""
        ...

    def branches(self, owner: str, thread_id: str, *, counts: bool = True) -> list[BranchInfo]:
        """The thread's branches, main (0) first, then by id (the order they were made).
        ``counts`` False: ``messages`` is left 0 (counting costs time linear in a branch)."""
        ...

    def fork(self, owner: str, thread_id: str, after_seq: int) -> BranchInfo:
        """A new branch continuing after message ``after_seq`` (0: before the first), on the
        path of the branch that holds that message; it becomes the active branch. Nothing
        stored is changed: the log stays append-only."""
        ...

    def switch_branch(self, owner: str, thread_id: str, branch: int) -> ThreadInfo:
        """Make ``branch`` the active one (a UserError if the thread has no such branch)."""
        ...

    def on_path(self, owner: str, thread_id: str, seqs: Sequence[int]) -> set[int]:
        """Which of ``seqs`` are messages of the active branch's path."""
        ...

    def traces(self, owner: str, thread_id: str, *, limit: int = 20) -> list[tuple[int, Trace]]:
        """The newest traces as (assistant message seq, trace), oldest first."""
        ...

    def get_trace(self, owner: str, thread_id: str, seq: int) -> Trace | None:
        """The trace stored with the assistant message ``seq``, if any."""
        ...

    def save_summary(self, owner: str, thread_id: str, summary: Summary) -> None: ...

    def latest_summary(self, owner: str, thread_id: str) -> Summary | None:
        """The newest summary of the active branch's path (one that covers only messages on
        it: its ``through_seq`` is on the path)."""
        ...

    def summaries(self, owner: str, thread_id: str) -> list[Summary]: ...


class MemoryStore(Protocol):
    """Facts a user asked to be remembered across their threads."""

    def add_memory(self, owner: str, text: str, *, untrusted: str | None = None) -> MemoryItem: ...

    def list_memories(self, owner: str) -> list[MemoryItem]: ...

    def update_memory(self, owner: str, memory_id: int, text: str) -> MemoryItem:
        """Replace the text: the user's own words now, so no longer untrusted."""
        ...

    def delete_memory(self, owner: str, memory_id: int) -> None: ...


class KnowledgeStore(Protocol):
    """Collections (named sets of documents, searched under their namespace) and documents."""

    def create_collection(self, owner: str, name: str, description: str = "") -> CollectionInfo: ...

    def find_collection(self, owner: str, name: str) -> CollectionInfo | None: ...

    def get_collection(self, owner: str, name: str) -> CollectionInfo:
        """The collection, or a :class:`~chatwright.errors.UserError` naming it."""
        ...

    def list_collections(self, owner: str) -> list[CollectionInfo]: ...

    def update_collection(self, owner: str, name: str, description: str) -> CollectionInfo: ...

    def delete_collection(self, owner: str, name: str) -> None:
        """Delete the collection, its documents and its chunks."""
        ...

    def list_documents(self, owner: str, collection: str) -> list[DocumentInfo]: ...

    def find_document(self, owner: str, collection: str, source: str) -> DocumentInfo | None: ...

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
        """Insert or replace the record of ``source`` (call inside :meth:`Store.transaction`
        with the writes of its chunks, so a document is never half in the index)."""
        ...

    def delete_document(self, owner: str, collection: str, source: str) -> None: ...


class AccountStore(Protocol):
    """Users of the HTTP server and their API keys (only a secret's hash is stored)."""

    def create_user(self, name: str) -> UserInfo: ...

    def find_user(self, name: str) -> UserInfo | None: ...

    def list_users(self) -> list[UserInfo]: ...

    def delete_user(self, name: str) -> None:
        """Delete the user and their keys (their threads and collections stay)."""
        ...

    def create_api_key(self, user: str, name: str = "") -> tuple[str, str]:
        """A new key for ``user``: (its id, its secret). The secret is not stored."""
        ...

    def find_key(self, secret_hash: str, *, revoked: bool = False) -> ApiKeyInfo | None:
        """The active key with this :func:`hash_secret`, or None (unknown, or revoked unless
        ``revoked``)."""
        ...

    def list_keys(self, user: str | None = None) -> list[ApiKeyInfo]: ...

    def revoke_key(self, key_id: str) -> ApiKeyInfo: ...

    def touch_key(self, key_id: str) -> None:
        """Record that the key was just used."""
        ...

    def has_api_keys(self) -> bool:
        """Whether any active key exists."""
        ...


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A unit of background work in the :class:`JobQueue` (an upload to ingest), as stored."""

    id: str
    owner: str
    kind: str  # what to do, e.g. "ingest"; the worker reads ``payload`` accordingly
    state: str  # queued, running, done or failed
    payload: dict[str, Any]
    progress: dict[str, Any]
    result: dict[str, Any]
    errors: list[dict[str, Any]]
    attempts: int  # how many times a worker claimed it
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None  # the worker that holds it (or held it last)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


class JobQueue(Protocol):
    """Durable background jobs shared by every process on the store (``store.jobs``).

    A job and its files (the uploads: replicas share no disk) are stored by :meth:`enqueue`;
    any worker of any process :meth:`claim`\\ s it, proves it is alive with :meth:`heartbeat`
    and ends it with :meth:`finish` (or :meth:`release` at a graceful shutdown). A running job
    whose worker stopped beating (a crash) is claimed again by another. Claims are fair: the
    next job is the oldest queued one of the owner with the fewest running jobs and, of those,
    the one whose jobs last ran longest ago (never: first), so owners take turns. Reads are
    owner-scoped like everything else; only the newest finished jobs of each owner are kept.
    """

    def enqueue(
        self,
        owner: str,
        kind: str,
        payload: Mapping[str, Any],
        files: Sequence[tuple[str, bytes]] = (),
    ) -> JobInfo:
        """Store a queued job with its ``(name, content)`` files, in one transaction."""
        ...

    def claim(self, worker: str, *, stale_after_s: float, max_attempts: int = 3) -> JobInfo | None:
        """Take the next job (fair order) for ``worker``: it is running, attempts + 1. A
        running job not heartbeaten for ``stale_after_s`` is abandoned: queued again, or
        failed (with the reason in its errors) once claimed ``max_attempts`` times."""
        ...

    def files(self, job_id: str) -> list[tuple[str, bytes]]:
        """The job's files, in the order given (none once it finished)."""
        ...

    def heartbeat(
        self, job_id: str, worker: str, progress: Mapping[str, Any] | None = None
    ) -> bool:
        """Record that ``worker`` is alive on the job (and its ``progress``, unless None);
        False when the job is no longer ``worker``'s to run (taken over, or finished)."""
        ...

    def finish(
        self,
        job_id: str,
        worker: str,
        state: str,
        result: Mapping[str, Any],
        errors: Sequence[Mapping[str, Any]] = (),
    ) -> bool:
        """End the job as ``state`` (done or failed) and drop its files; False (and nothing
        changed) when it is no longer ``worker``'s."""
        ...

    def release(self, job_id: str, worker: str) -> bool:
        """Put the job back in the queue, not counting this attempt (a graceful shutdown, or
        giving way to another owner's job); False when it is no longer ``worker``'s."""
        ...

    def backlog(self, owner: str | None = None) -> dict[str, tuple[int, int]]:
        """``(queued, running)`` jobs of each owner that has any (of ``owner`` alone, if
        given): for per-owner limits, and for a running job to see who waits."""
        ...

    def get(self, owner: str, job_id: str) -> JobInfo | None:
        """The job, if it is ``owner``'s (another owner's job is not found)."""
        ...

    def list(self, owner: str, limit: int = 50) -> list[JobInfo]:
        """``owner``'s newest jobs, newest first."""
        ...


class Store(ThreadStore, MemoryStore, KnowledgeStore, AccountStore, Protocol):
    """Everything chatwright stores, behind one object (see the module's docstring)."""

    #: Where the data lives, for messages (a file path, or a URL without its password).
    location: str
    chunks: ChunkIndex
    locks: TurnLocks
    streams: StreamLog
    jobs: JobQueue

    def transaction(self) -> AbstractContextManager[Any]:
        """``with store.transaction():`` — the writes inside (the store's and its chunks')
        commit together or not at all; nesting joins the outer transaction."""
        ...

    def shared(self, key: Any, build: Callable[[], T]) -> T:
        """The part stored under ``key``, built by ``build()`` the first time: one per store,
        shared by every bot using it (see :class:`SharedParts`)."""
        ...

    def close(self) -> None: ...


class SharedParts:
    """Parts built once per store and shared by every bot on it (the search engine with its
    embedder: a server with N bots holds one). A backend's store keeps one of these."""

    def __init__(self) -> None:
        self._parts: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, build: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._parts:
                self._parts[key] = build()
            return self._parts[key]  # type: ignore[no-any-return]
