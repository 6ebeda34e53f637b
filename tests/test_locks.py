"""One writer per thread: exact within a process, per lock-file bucket across processes."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time

import pytest

from chatwright.store.file_locks import _BUCKETS
from chatwright.store.file_locks import FileTurnLocks as TurnLocks


def bucket_of(owner: str, thread: str) -> int:
    digest = hashlib.blake2b(f"{owner}\0{thread}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def two_threads_in_one_bucket() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in range(10_000):
        b = bucket_of("u", f"t{i}")
        if b in seen:
            return seen[b], f"t{i}"
        seen[b] = f"t{i}"
    raise AssertionError("no collision found")


async def hold_for(locks: TurnLocks, thread: str, seconds: float, log: list) -> None:
    async with locks.hold("u", thread):
        log.append(("in", thread, time.perf_counter()))
        await asyncio.sleep(seconds)
        log.append(("out", thread, time.perf_counter()))


def test_threads_sharing_a_bucket_do_not_wait_for_each_other(tmp_path):
    a, b = two_threads_in_one_bucket()
    locks, log = TurnLocks(tmp_path), []

    async def both():
        await asyncio.gather(hold_for(locks, a, 0.2, log), hold_for(locks, b, 0.2, log))

    start = time.perf_counter()
    asyncio.run(both())
    assert time.perf_counter() - start < 0.35  # together, not one after the other
    assert locks._buckets == {}  # released


def test_turns_on_one_thread_run_one_at_a_time(tmp_path):
    locks, log = TurnLocks(tmp_path), []

    async def both():
        await asyncio.gather(hold_for(locks, "t", 0.1, log), hold_for(locks, "t", 0.1, log))

    asyncio.run(both())
    assert [e[0] for e in log] == ["in", "out", "in", "out"]


def test_another_process_holding_the_bucket_blocks_until_it_lets_go(tmp_path):
    path = tmp_path / f"{bucket_of('u', 't'):04d}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    pid = os.fork()
    if pid == 0:  # the other process: hold the bucket for 0.3 s
        fcntl.flock(fd, fcntl.LOCK_EX)
        time.sleep(0.3)
        os._exit(0)
    os.close(fd)
    time.sleep(0.1)  # the child has it now
    locks, log = TurnLocks(tmp_path), []
    start = time.perf_counter()
    asyncio.run(hold_for(locks, "t", 0.0, log))
    os.waitpid(pid, 0)
    assert log[0][2] - start >= 0.15
    # And we let go: the file can be locked again at once.
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_a_turn_cancelled_while_waiting_leaves_nothing_behind(tmp_path):
    locks = TurnLocks(tmp_path)
    path = tmp_path / f"{bucket_of('u', 't'):04d}.lock"
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    pid = os.fork()
    if pid == 0:
        fcntl.flock(fd, fcntl.LOCK_EX)
        time.sleep(0.5)
        os._exit(0)
    os.close(fd)
    time.sleep(0.1)

    async def give_up():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await hold_for(locks, "t", 0.0, [])

    asyncio.run(give_up())
    os.waitpid(pid, 0)
    assert locks._buckets == {} and locks._locks == {}
