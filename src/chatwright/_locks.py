"""One writer per thread: turns on the same thread run one at a time.

Within a process an exact per-thread lock; across processes sharing a data directory, an
advisory ``flock`` on one of a fixed set of lock files chosen by hashing the thread's key
(a fixed set, so no lock file outlives or races with its thread's deletion).
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

__all__ = ["TurnLocks"]

_BUCKETS = 1024
_POLL_S = 0.002


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class TurnLocks:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._locks: dict[tuple[str, str], _Entry] = {}  # only threads with a turn under way
        self._guard = threading.Lock()
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
        if not self._made:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._made = True
        fd = os.open(self.directory / f"{bucket:04d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(_POLL_S)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
