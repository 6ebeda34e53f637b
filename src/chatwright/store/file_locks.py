"""The SQLite store's turn locks: one writer per thread, across processes sharing a data directory.

Within a process an exact per-thread lock; across processes sharing a data directory, an
advisory ``flock`` on one of a fixed set of lock files chosen by hashing the thread's key
(a fixed set, so no lock file outlives or races with its thread's deletion).

A process takes a bucket's ``flock`` once and shares it among all its turns whose threads hash
to that bucket (counted; released when the last one ends): the exact per-thread lock already
keeps those turns apart. Taking it per turn serialised unrelated threads of one process that
share a bucket (measured under load: 31 of 200 threads did, and waited seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: in-process serialisation only
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileTurnLocks"]

_BUCKETS = 1024
_POLL_S = 0.002


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


@dataclass
class _Bucket:
    """A bucket's lock file as this process holds it: ``fd`` is None while being taken."""

    fd: int | None = None
    users: int = 0


class FileTurnLocks:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._locks: dict[tuple[str, str], _Entry] = {}  # only threads with a turn under way
        self._guard = threading.Lock()
        self._buckets: dict[int, _Bucket] = {}
        self._made = False

    def _local(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            entry = self._locks.setdefault(key, _Entry())
            entry.users += 1
            return entry.lock

    def _release_local(self, key: tuple[str, str]) -> None:
        with self._guard:
            entry = self._locks[key]
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    @contextlib.asynccontextmanager
    async def hold(self, owner: str, thread_id: str) -> AsyncIterator[None]:
        key = (owner, thread_id)
        lock = self._local(key)
        try:
            while not lock.acquire(blocking=False):
                await asyncio.sleep(_POLL_S)
            try:
                async with self._across_processes(key):
                    yield
            finally:
                lock.release()
        finally:
            self._release_local(key)

    @contextlib.asynccontextmanager
    async def _across_processes(self, key: tuple[str, str]) -> AsyncIterator[None]:
        if self.directory is None or fcntl is None:
            yield
            return
        digest = hashlib.blake2b("\0".join(key).encode("utf-8", "surrogatepass"), digest_size=8)
        bucket = int.from_bytes(digest.digest(), "big") % _BUCKETS
        await self._take(bucket)
        try:
            yield
        finally:
            self._give(bucket)

    async def _take(self, bucket: int) -> None:
        """Join this process's hold on ``bucket``, taking its flock if nobody here has it."""
        while True:
            with self._guard:
                held = self._buckets.get(bucket)
                if held is not None and held.fd is not None:
                    held.users += 1
                    return
                taker = held is None
                if taker:
                    self._buckets[bucket] = _Bucket()
            if not taker:  # another turn of this process is taking it: wait for that
                await asyncio.sleep(_POLL_S)
                continue
            fd = None
            try:
                fd = await self._open(bucket)
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(_POLL_S)
            except BaseException:
                with self._guard:
                    del self._buckets[bucket]
                if fd is not None:
                    os.close(fd)
                raise
            with self._guard:
                entry = self._buckets[bucket]
                entry.fd, entry.users = fd, entry.users + 1
            return

    def _give(self, bucket: int) -> None:
        with self._guard:
            entry = self._buckets[bucket]
            entry.users -= 1
            if entry.users:
                return
            del self._buckets[bucket]
        assert entry.fd is not None
        os.close(entry.fd)  # closing the descriptor releases the lock

    async def _open(self, bucket: int) -> int:
        """The bucket's lock file. One not made yet is made in a worker thread: creating a
        file took 0.3-0.7 ms on a busy disk (opening one, microseconds), too long for the
        event loop when a burst of new turns lands on new buckets."""
        assert self.directory is not None
        path = self.directory / f"{bucket:04d}.lock"
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return await asyncio.to_thread(self._create, path)

    def _create(self, path: Path) -> int:
        if not self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made = True
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
