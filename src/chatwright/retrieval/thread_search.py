"""Search over a user's threads: their titles and the text of their messages.

It uses the engine that documents and recall use: the store's chunk index (``store.chunks``),
ranked by BM25 over every thread of the owner at once. Each thread's searchable text lives in
its own namespace, ``threadtext:<uid>`` (apart from recall's ``thread:<uid>``, which holds
only turns that left the context window): one chunk per message with text, of every branch
(key: its seq, zero-padded; seqs grow across branches, so "after the last seq read" misses
none), one for the title (key ``!t:`` and a digest of the title) and a *mark* (key ``~``,
no text, last in the namespace) saying what is indexed: the last seq read, and the thread's
message count, title and update time when it was. One read of the mark says whether a
thread is current, in this process or any later one.

The index is written when searches ask for it, never by a turn: a turn's cost and storage
stay the conversation's (indexing every turn in the background doubled the bytes stored per
turn and took a 10,000-turn thread from 2 to 8 ms a turn in ``benchmarks/turn_cost.py``), and
a user who never searches pays nothing. Every write is a short transaction of its own
(``_catch_up_thread``): at most ``_BATCH`` messages and the mark, so the store's
lock is never held long by this work. A search (:meth:`ThreadSearch.find`) lists the owner's
threads, reads the marks of those not known current in this process, and indexes only the
threads behind (new messages since the last search, imports), newest first and bounded per
request
(``_CATCH_UP_THREADS`` threads, ``_CATCH_UP_S`` of work). It answers from what is indexed,
says how many threads are not indexed yet (``pending``; the API's ``"partial": true``) and
leaves them to a background thread (:meth:`ThreadSearch.catch_up_later`). The ranking's
segments are loaded ``_PRELOAD`` namespaces per lock hold, not all under one.

Measured on SQLite, 1,000 threads x 20 messages written without turns (an import; 2 shared
cores, ``benchmarks``-style script kept out of the repo): the first search answers in
70-150 ms (20 threads indexed, 980 pending), the background indexes the rest in 3.4 s, and
no hold of the store's lock by this work exceeds 18 ms. A search once indexed takes
35-80 ms; after a restart the first takes 0.6-0.9 s (1,000 mark reads, and the chunk index
loading 1,000 small segments, 21,000 chunks, into memory: its design, one segment per
namespace), holding the lock 43 ms at most; the next 30-80 ms. Only the owner's namespaces
are searched, so another user's threads cannot match. Deleting a thread deletes its
namespace's chunks by the ``threads_after_delete`` trigger, as recall's.

The listing is taken before the index is written, so a listed thread may be gone by then,
and SQLite may have given its key to another user's new thread. Each thread is read again
inside the transaction that writes its namespace, and skipped unless its key, owner and
creation time are still the listed ones: text is only ever written to the namespace of the
thread it was read from.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass

from chatwright.search.text import analyze
from chatwright.store.base import IndexedChunk, Store, ThreadInfo

__all__ = ["Found", "ThreadHit", "ThreadSearch", "thread_search"]

log = logging.getLogger(__name__)

NAMESPACE = "threadtext:{uid}"
TITLE_PREFIX = "!t:"
MARK = "~"  # sorts after every seq and title key: the namespace's last key
_MAX_CHARS = 8000  # of a message indexed (the transcript keeps everything)
_BATCH = 500  # messages read and written per transaction at most
_PAGE = 500  # threads listed per store call
_CATCH_UP_THREADS = 20  # threads a search indexes at most (the rest: pending)
_CATCH_UP_S = 0.2  # seconds of indexing a search spends at most
_PRELOAD = 10  # namespaces loaded for ranking per lock hold (~20 ms)
_TITLE_BOOST = 1.5
_SNIPPET = 160
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class ThreadHit:
    """A thread that matched: where (``seq`` None: its title), and a snippet around it."""

    thread: ThreadInfo
    score: float
    seq: int | None
    role: str | None
    snippet: str


@dataclass(frozen=True, slots=True)
class Found:
    """A search's hits, and how many of the owner's threads are not fully indexed yet (their
    newest messages or title not searched; a later search or background job indexes them)."""

    hits: list[ThreadHit]
    pending: int = 0


def namespace(info: ThreadInfo) -> str:
    return NAMESPACE.format(uid=info.uid)


def _key(info: ThreadInfo) -> tuple[int, float]:
    return (info.uid, info.created_at)  # with created_at: SQLite may reuse a deleted uid


def _state(info: ThreadInfo) -> tuple[int, str | None, float]:
    return (info.message_count, info.title, info.updated_at)


def title_key(title: str) -> str:
    return TITLE_PREFIX + hashlib.sha256(title.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _snippet(text: str, terms: set[str]) -> str:
    """The part of ``text`` around its first word that matches a query term."""
    flat = " ".join(text.split())
    start = 0
    for match in _WORD.finditer(flat):
        if set(analyze(match.group())) & terms:
            start = match.start()
            break
    begin = max(0, start - _SNIPPET // 3)
    if begin:
        space = flat.find(" ", begin)
        begin = space + 1 if 0 <= space < start else begin
    piece = flat[begin : begin + _SNIPPET]
    return ("…" if begin else "") + piece + ("…" if begin + _SNIPPET < len(flat) else "")


class ThreadSearch:
    """Keyword search over an owner's threads (see the module's docstring). One per store:
    :func:`thread_search`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # _key(thread) -> _state(thread) known indexed (in this process)
        self._seen: dict[tuple[int, float], tuple[int, str | None, float]] = {}
        self._lock = threading.Lock()  # one indexer at a time: a thread is never written twice
        self._catching: dict[str, threading.Thread] = {}  # owner -> its background catch-up
        self._catching_lock = threading.Lock()

    def threads(self, owner: str) -> list[ThreadInfo]:
        out: list[ThreadInfo] = []
        while True:
            page = self.store.list_threads(owner, limit=_PAGE, offset=len(out))
            out += page
            if len(page) < _PAGE:
                return out

    # -- indexing ---------------------------------------------------------------------------
    def catch_up(
        self, owner: str, *, max_threads: int | None = None, max_s: float | None = None
    ) -> tuple[list[ThreadInfo], int]:
        """Index what changed in the owner's threads, newest first, stopping once
        ``max_threads`` were written to or ``max_s`` seconds spent (None: no bound); returns
        them all and how many are still behind."""
        threads = self.threads(owner)
        todo = [t for t in threads if self._seen.get(_key(t)) != _state(t)]
        todo.sort(key=lambda t: -t.updated_at)
        deadline = None if max_s is None else time.perf_counter() + max_s
        written = behind = 0
        for info in todo:
            if self._current(info):  # one read; not bounded (after a restart: every thread)
                continue
            out_of_time = deadline is not None and time.perf_counter() > deadline
            if out_of_time or (max_threads is not None and written >= max_threads):
                behind += 1
                continue
            done = self._catch_up_thread(info, deadline)
            behind += done is False  # stopped by the deadline, indexed in part
            written += done is not None
        return threads, behind

    def catch_up_later(self, owner: str) -> None:
        """Catch the owner's threads up in a background thread (unless one already is): what
        a bounded search left behind. Each batch commits on its own, so one stopped midway
        (the process exits) loses nothing; the next search resumes it."""
        with self._catching_lock:
            if owner in self._catching:
                return
            job = threading.Thread(
                target=self._catch_up_job,
                args=(owner,),
                name="chatwright-thread-search",
                daemon=True,
            )
            self._catching[owner] = job
        job.start()

    def _catch_up_job(self, owner: str) -> None:
        try:
            self.catch_up(owner)
        except Exception as e:  # the next search tries again
            log.warning("indexing threads for search failed: %s", e)
        finally:
            with self._catching_lock:
                del self._catching[owner]

    def wait(self, timeout: float | None = None) -> None:
        """Wait for background catch-ups (tests, and before the store is closed)."""
        with self._catching_lock:
            jobs = list(self._catching.values())
        for job in jobs:
            job.join(timeout)

    def _current(self, info: ThreadInfo) -> bool:
        """Whether the thread's mark says it is indexed as listed (one read)."""
        mark = self.store.chunks.last(namespace(info))
        if mark is None or mark.key != MARK:
            return False
        m = mark.metadata
        if (m.get("created"), m.get("count"), m.get("title"), m.get("updated")) != (
            info.created_at,
            info.message_count,
            info.title,
            info.updated_at,
        ):
            return False
        self._seen[_key(info)] = _state(info)
        return True

    def _catch_up_thread(self, info: ThreadInfo, deadline: float | None) -> bool | None:
        """Index the listed thread ``info`` batch by batch until it is current (True) or the
        deadline passed (False, indexed in part); None (nothing written) when it is no
        longer that thread: deleted, or its key reused by another."""
        with self._lock:
            while True:
                done = self._index_batch(info)
                if done is None:
                    return None
                if done:
                    return True
                if deadline is not None and time.perf_counter() > deadline:
                    return False

    def _index_batch(self, info: ThreadInfo) -> bool | None:
        """One transaction: up to ``_BATCH`` new messages, the title if it changed, and the
        mark. True: the thread is now current; False: more to do; None: not that thread."""
        chunks = self.store.chunks
        ns = namespace(info)
        with self.store.transaction():
            now = self.store.find_thread(info.owner, info.id)
            if now is None or (now.uid, now.owner, now.created_at) != (
                info.uid,
                info.owner,
                info.created_at,
            ):
                return None
            mark = chunks.last(ns)
            through = int(mark.metadata.get("through", 0)) if mark and mark.key == MARK else 0
            held = list(chunks.vectors(ns, TITLE_PREFIX))
            key = title_key(now.title) if now.title else None
            if key not in held:
                chunks.delete(ns, held)
                if now.title and key:
                    chunks.write(ns, [IndexedChunk(key, now.title, {"role": "title"})])
            batch: list[IndexedChunk] = []
            read = 0
            every = self.store.messages(now.owner, now.id, after_seq=through, all_branches=True)
            for stored in every:
                text = stored.message.text
                if stored.message.role in ("user", "assistant") and text.strip():
                    meta = {"seq": stored.seq, "role": stored.message.role}
                    batch.append(IndexedChunk(f"{stored.seq:012d}", text[:_MAX_CHARS], meta))
                through = stored.seq
                read += 1
                if read >= _BATCH:
                    break
            complete = read < _BATCH
            state = {"through": through, "created": now.created_at}
            if complete:  # what the listing will show while nothing changes
                state |= {"count": now.message_count, "title": now.title}
                state["updated"] = now.updated_at
            chunks.write(ns, [*batch, IndexedChunk(MARK, "", state)])
        if complete:
            self._seen[_key(now)] = _state(now)
        return complete

    # -- searching --------------------------------------------------------------------------
    def find(
        self,
        owner: str,
        query: str,
        *,
        limit: int = 20,
        max_threads: int | None = _CATCH_UP_THREADS,
        max_s: float | None = _CATCH_UP_S,
    ) -> Found:
        """The owner's threads that match ``query`` best, one hit (its best) per thread, after
        catching up at most ``max_threads`` threads / ``max_s`` seconds of indexing."""
        terms = set(analyze(query))
        if not terms or limit <= 0:
            return Found([])
        listed, pending = self.catch_up(owner, max_threads=max_threads, max_s=max_s)
        try:
            hits = self._ranked(query, terms, listed, limit)
        finally:  # after the ranking: the answer is what was indexed, less ``pending``
            if pending:
                self.catch_up_later(owner)
        return Found(hits, pending)

    def _ranked(
        self, query: str, terms: set[str], listed: list[ThreadInfo], limit: int
    ) -> list[ThreadHit]:
        threads = {namespace(t): t for t in listed}
        if not threads:
            return []
        chunks = self.store.chunks
        names = list(threads)
        for start in range(0, len(names), _PRELOAD):  # short lock holds, not one long one
            chunks.preload(names[start : start + _PRELOAD])
        ranking = chunks.keyword(query, names, None, max(50, limit * 10))
        rows = chunks.fetch([pk for pk, _ in ranking])
        best: dict[str, ThreadHit] = {}
        for pk, score in ranking:
            row = rows.get(pk)
            info = threads.get(row.namespace) if row is not None else None
            if row is None or info is None or row.key == MARK:
                continue
            is_title = row.key.startswith(TITLE_PREFIX)
            score *= _TITLE_BOOST if is_title else 1.0
            held = best.get(row.namespace)
            if held is None or score > held.score:
                seq = None if is_title else int(row.key)
                role = None if is_title else str(row.metadata.get("role"))
                best[row.namespace] = ThreadHit(info, score, seq, role, _snippet(row.text, terms))
        hits = sorted(best.values(), key=lambda h: (-h.score, -h.thread.updated_at))
        return hits[:limit]

    def search(self, owner: str, query: str, *, limit: int = 20) -> list[ThreadHit]:
        """:meth:`find` with every thread caught up first (the CLI: one process, one search)."""
        return self.find(owner, query, limit=limit, max_threads=None, max_s=None).hits


def thread_search(store: Store) -> ThreadSearch:
    """The store's one :class:`ThreadSearch` (shared by every bot and request on it)."""
    return store.shared(("thread-search",), lambda: ThreadSearch(store))
