"""SQLite's group commit (``store/sqlite_commit.py``): concurrent appends share transactions
and syncs, each is acknowledged only once on disk and fails alone, and the event loop never
waits for the disk."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chatwright.errors import ThreadNotFound
from chatwright.store import SQLiteStore
from chatwright.store.sqlite_commit import GroupCommit
from chatwright.types import Message

A = "alice"


def syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors ``os.fdatasync`` is called on from now on."""
    seen: list[int] = []
    sync = os.fdatasync

    def counted(fd: int) -> None:
        seen.append(fd)
        sync(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    return seen


async def test_concurrent_appends_share_syncs_and_all_survive_a_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db.sqlite"
    store = SQLiteStore(path)
    store.group_commit.enabled = True
    synced = syncs(monkeypatch)
    appends = [
        store.append_async(A, f"t{i}", [Message.user(f"hello {i}")], create=True, tokens=[3])
        for i in range(50)
    ]
    stored = await asyncio.gather(*appends)
    assert [s[0].seq for s in stored] == [1] * 50
    group = store.group_commit
    assert group.writes == 50 and 1 <= group.commits < 50  # batches: one transaction each
    assert 1 <= len(synced) == group.syncs <= group.commits  # a sync covers the batches before
    store.close()
    reopened = SQLiteStore(path)
    reopened.group_commit.enabled = True
    try:
        for i in range(50):
            [message] = reopened.messages(A, f"t{i}")
            assert message.message.text == f"hello {i}" and message.tokens == 3
    finally:
        reopened.close()


async def test_an_append_is_acknowledged_only_once_the_wal_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    store.group_commit.enabled = True
    syncing, release = threading.Event(), threading.Event()
    sync = GroupCommit._sync

    def slow_sync(self: GroupCommit) -> None:
        syncing.set()
        release.wait(5)
        sync(self)

    monkeypatch.setattr(GroupCommit, "_sync", slow_sync)
    task = asyncio.create_task(store.append_async(A, "t", [Message.user("hi")], create=True))
    await asyncio.to_thread(syncing.wait, 5)
    # Committed (another connection reads it), but not yet synced: not acknowledged.
    other = SQLiteStore(tmp_path / "db.sqlite")
    other.group_commit.enabled = True
    assert [m.message.text for m in other.messages(A, "t")] == ["hi"]
    await asyncio.sleep(0.05)
    assert not task.done()
    release.set()
    assert (await asyncio.wait_for(task, 5))[0].seq == 1
    other.close()
    store.close()


async def test_the_event_loop_runs_while_a_batch_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    store.group_commit.enabled = True
    sync = GroupCommit._sync

    def slow_sync(self: GroupCommit) -> None:  # a slow disk
        time.sleep(0.2)
        sync(self)

    monkeypatch.setattr(GroupCommit, "_sync", slow_sync)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    await store.append_async(A, "t", [Message.user("hi")], create=True)
    ticking.cancel()
    assert ticks >= 10  # the loop went on for the 0.2 s the sync took
    store.close()


async def test_a_failing_append_fails_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    store.group_commit.enabled = True
    store.create_thread(A, "t")
    results = await asyncio.gather(
        store.append_async(A, "t", [Message.user("one")]),
        store.append_async(A, "missing", [Message.user("lost")]),  # no create: not found
        store.append_async(A, "t", [Message.user("two")]),
        return_exceptions=True,
    )
    assert isinstance(results[1], ThreadNotFound)
    assert [r[0].seq for r in (results[0], results[2])] == [1, 2]  # type: ignore[index]
    assert [m.message.text for m in store.messages(A, "t")] == ["one", "two"]
    assert store.find_thread(A, "missing") is None
    store.close()


async def test_appends_on_a_memory_database_and_inside_a_transaction() -> None:
    store = SQLiteStore(":memory:")
    store.group_commit.enabled = True
    assert store.group_commit.wal is None
    [stored] = await store.append_async(A, "t", [Message.user("hi")], create=True)
    assert stored.seq == 1
    with store.transaction():  # an open transaction of this thread: the append joins it
        await store.append_async(A, "t", [Message.user("joined")])
        assert store.connection.in_transaction
    assert [m.message.text for m in store.messages(A, "t")] == ["hi", "joined"]
    store.close()


_WRITER = """
import asyncio, sys
from chatwright.store import SQLiteStore
from chatwright.types import Message

async def main() -> None:
    store = SQLiteStore(sys.argv[1])
    store.group_commit.enabled = True
    n = 0
    while True:
        batch = [f"t{n + i}" for i in range(20)]
        n += 20

        async def one(thread: str) -> None:
            await store.append_async("a", thread, [Message.user(thread)], create=True)
            print(thread, flush=True)  # acknowledged

        await asyncio.gather(*(one(t) for t in batch))

asyncio.run(main())
"""


def test_no_acknowledged_append_is_lost_when_the_process_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert writer.stdout is not None
    acknowledged = []
    try:
        while len(acknowledged) < 300:
            line = writer.stdout.readline()
            assert line, "the writer stopped"
            acknowledged.append(line.strip())
    finally:
        writer.send_signal(signal.SIGKILL)  # no handler, no flush: whatever is on disk stays
        writer.wait(10)
    acknowledged += [line.strip() for line in writer.stdout.read().splitlines()]
    store = SQLiteStore(path)
    store.group_commit.enabled = True
    try:
        for thread in acknowledged:
            assert [m.message.text for m in store.messages("a", thread)] == [thread]
    finally:
        store.close()
