"""Group commit for the SQLite store: concurrent turns' writes share a transaction and an
``fdatasync``, and the event loop never waits for the disk.

``await store.append_async(...)`` (or ``streams.record_async``) queues the write. The first
write queued on an event loop starts a batch there: every write queued by then runs in one
transaction, each in a savepoint of its own (a write that fails is rolled back alone, and
raises in its caller), committed without waiting for the disk (``synchronous = NORMAL`` for
that commit: the rows are in the WAL file, in the OS's cache, so a process killed now keeps
them). The store's sync thread then ``fdatasync``\\ s the WAL file, which is the sync that
``synchronous = FULL`` makes inside every commit, and only then are the batch's callers
answered: what an ``await`` returned is on disk, as with
:meth:`~chatwright.store.sqlite.SQLiteStore.append`. A sync covers every batch committed
before it began, and writes queued meanwhile form the next batch at once, so under load one
transaction and one sync serve many turns; alone, a write costs one commit and one sync, as
before.

A batch's statements run on the event loop (about 0.05 ms a write; a thread hop per write
would cost more), unless another thread holds the store's lock: then in a worker thread. A
database without a WAL file (``:memory:`` aside) or a platform without ``fsync`` on a
read-only file (Windows) commits each batch with ``FULL`` in a worker thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from chatwright.errors import StoreError

__all__ = ["GroupCommit", "write_error"]

T = TypeVar("T")
_Queued = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]
_Outcome = tuple[bool, Any]  # (True, result) or (False, the exception to raise)
_Done = list[tuple["asyncio.Future[Any]", Any]]  # futures and their results, once synced


def write_error(path: str, error: BaseException) -> BaseException:
    """What a failed write raises: a :class:`StoreError` for the database's own errors."""
    if isinstance(error, (sqlite3.Error, OverflowError)):
        failed = StoreError(
            f"cannot write to {path}: {error}; nothing was written",
            hint="check free disk space and that the file is writable",
        )
        failed.__cause__ = error
        return failed
    return error


def _fail(batch: list[_Queued], error: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)


def _answer(done: _Done, error: BaseException | None) -> None:
    for future, value in done:
        if not future.done():
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)


class GroupCommit:
    """The store's batched writes (see the module's docstring). ``wal``: the WAL file to sync
    after a commit made with ``synchronous = NORMAL``; None where commits sync themselves.
    ``commits``, ``writes`` and ``syncs`` count batches, the writes in them, and syncs.
    ``enabled``: whether :meth:`SQLiteStore.append_async` uses it (the server turns it on;
    a lone turn pays less for a plain commit)."""

    def __init__(
        self, db: sqlite3.Connection, lock: threading.RLock, path: str, wal: str | None
    ) -> None:
        self.db = db
        self.lock = lock
        self.path = path
        self.wal = wal if wal is not None and os.name == "posix" else None
        self.memory = path == ":memory:"
        self.enabled = False
        self.commits = 0
        self.writes = 0
        self.syncs = 0
        self._queues: dict[asyncio.AbstractEventLoop, list[_Queued]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._fd: int | None = None
        # batches committed and not yet synced, for the sync thread (None: stop)
        self._unsynced: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, _Done] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    async def run(self, write: Callable[[sqlite3.Connection], T]) -> T:
        """``write(db)`` in the next batch; its result once the batch is on disk."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        pending = self._queues.get(loop)
        if pending is None:  # the first write since the last batch: the next one starts
            pending = self._queues[loop] = []
            loop.call_soon(self._flush, loop)
        pending.append((write, future))
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit what is queued on ``loop`` (the writes of one pass of the loop)."""
        batch = [item for item in self._queues.pop(loop) if not item[1].done()]
        if not batch:
            return
        if self.lock.acquire(blocking=False):
            try:
                # Inline unless the commit would wait for the disk.
                if self.wal is not None or self.memory or self.db.in_transaction:
                    try:
                        self._settle(loop, batch, *self._write(batch))
                    except Exception as e:  # the store itself failed (closed, say)
                        _fail(batch, e)
                    return
            finally:
                self.lock.release()
        # Another thread holds the lock, or the commit syncs: off the loop.
        task = loop.create_task(self._off_loop(loop, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _off_loop(self, loop: asyncio.AbstractEventLoop, batch: list[_Queued]) -> None:
        try:
            outcomes, synced = await asyncio.to_thread(self._write, batch)
        except Exception as e:
            _fail(batch, e)
            return
        except BaseException:  # cancelled (the loop is closing): so is whoever waits
            for _, future in batch:
                future.cancel()
            raise
        self._settle(loop, batch, outcomes, synced)

    def _settle(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Queued],
        outcomes: list[_Outcome],
        synced: bool,
    ) -> None:
        """Answer the writes that failed; the others now (``synced``) or after a sync."""
        done: _Done = []
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if not ok:
                future.set_exception(value)
            elif synced:
                future.set_result(value)
            else:
                done.append((future, value))
        if done:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._syncing, name="chatwright-sync", daemon=True
                    )
                    self._thread.start()
            self._unsynced.put((loop, done))

    def _write(self, batch: list[_Queued]) -> tuple[list[_Outcome], bool]:
        """One transaction: each write in a savepoint, then the commit, which does not wait
        for the disk where the sync thread follows; (outcomes, whether they are durable
        already). Inside the calling thread's own open transaction (``with
        store.transaction():`` around the ``await``), the writes join it instead, and its
        commit decides."""
        db = self.db
        with self.lock:
            if db.in_transaction:
                return self._run(batch), True
            deferred = self.wal is not None
            if deferred:
                db.execute("PRAGMA synchronous = NORMAL")
            try:
                return self._transaction(batch), not deferred
            finally:
                if deferred:
                    db.execute("PRAGMA synchronous = FULL")

    def _transaction(self, batch: list[_Queued]) -> list[_Outcome]:
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            return [(False, write_error(self.path, e)) for _ in batch]
        try:
            outcomes = self._run(batch)
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if not isinstance(e, Exception):
                raise
            return [(False, write_error(self.path, e)) for _ in batch]
        self.commits += 1
        self.writes += len(batch)
        return outcomes

    def _run(self, batch: list[_Queued]) -> list[_Outcome]:
        db = self.db
        outcomes: list[_Outcome] = []
        for write, _ in batch:
            db.execute("SAVEPOINT chatwright_batch")
            try:
                value = write(db)
            except Exception as e:
                db.execute("ROLLBACK TO chatwright_batch")
                db.execute("RELEASE chatwright_batch")
                outcomes.append((False, write_error(self.path, e)))
            else:
                db.execute("RELEASE chatwright_batch")
                outcomes.append((True, value))
        return outcomes

    # -- the sync thread -------------------------------------------------------------------
    def _syncing(self) -> None:
        """Sync for every batch handed over so far, answer them (on their loops), again."""
        while True:
            items = [self._unsynced.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._unsynced.get_nowait())
            batches = [item for item in items if item is not None]
            if batches:
                self._sync_and_answer(batches)
            if len(batches) < len(items):  # closed, once everyone before is answered
                return

    def _sync_and_answer(self, batches: list[tuple[asyncio.AbstractEventLoop, _Done]]) -> None:
        error = None
        try:
            self._sync()
        except OSError as e:
            error = StoreError(
                f"cannot write to {self.path}: syncing it to disk failed ({e})",
                hint="check the disk: what was written last may not survive a power loss",
            )
        self.syncs += 1
        by_loop: dict[asyncio.AbstractEventLoop, _Done] = {}
        for loop, done in batches:
            by_loop.setdefault(loop, []).extend(done)
        for loop, done in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_answer, done, error)

    def _sync(self) -> None:
        """``fdatasync`` the WAL file, reopened if it was replaced: a sync must reach the
        file SQLite writes."""
        assert self.wal is not None
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            os.close(self._fd)
            self._fd = None
        if self._fd is None:
            self._fd = os.open(self.wal, os.O_RDONLY)
        getattr(os, "fdatasync", os.fsync)(self._fd)

    def close(self) -> None:
        """Stop the sync thread once it has answered everyone waiting."""
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._unsynced.put(None)
            thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
