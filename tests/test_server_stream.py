"""The streamed turn's plumbing, in process: ``TurnRun.batch``, ``TurnStream`` (pings,
batches, disconnects), the first event before the answer's commit, a burst's first events
before its answers, auth off the loop."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from chatwright import Chatbot
from chatwright.config import Settings
from chatwright.server.auth import Authenticator
from chatwright.server.events import TurnStream
from chatwright.server.turns import _END, Approvals, TurnRun, Turns
from chatwright.store import SQLiteStore
from chatwright.types import TextDelta, TurnEnd, TurnStart


class Client:
    """An ASGI peer: records what the response sends; ``leave()`` disconnects."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self.gone.set()

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


SCOPE = {"type": "http", "method": "POST", "path": "/api/threads/t/messages"}


async def test_batch_takes_what_is_ready_and_ends_after_the_end() -> None:
    run = TurnRun("u", "t")
    for piece in ("a", "b"):
        run.queue.put_nowait(TextDelta(text=piece))
    assert [e.text for e in await run.batch() or []] == ["a", "b"]
    run.wake()
    assert await run.batch() == []  # woken with nothing to read
    run.queue.put_nowait(TextDelta(text="c"))
    run.queue.put_nowait(_END)
    assert [e.text for e in await run.batch() or []] == ["c"]  # the last events, then...
    assert await run.batch() is None  # ...the end, for good
    assert await run.batch() is None


async def test_turn_stream_pings_batches_and_ends() -> None:
    run = TurnRun("u", "t")
    client = Client()
    stream = TurnStream(run, [TextDelta(text="first")], ping_s=0.05)
    task = asyncio.create_task(stream(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.12)  # two pings' worth of silence
    for piece in ("a", "b", "c"):
        run.queue.put_nowait(TextDelta(text=piece))
    await asyncio.sleep(0.01)
    run.queue.put_nowait(object())  # an item that is no event: nothing is sent for it
    run.queue.put_nowait(_END)
    await asyncio.wait_for(task, 1)
    start = client.sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    bodies = client.bodies
    assert bodies[0] == b'event: text_delta\r\ndata: {"text":"first"}\r\n\r\n'
    assert bodies.count(b": ping\r\n\r\n") >= 1
    # the three deltas that were ready together went out in one write
    assert [b.count(b"event: text_delta") for b in bodies if b"text_delta" in b] == [1, 3]
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_turn_stream_stops_at_a_disconnect_and_the_turn_goes_on() -> None:
    run = TurnRun("u", "t")
    client = Client()
    task = asyncio.create_task(
        TurnStream(run, [TextDelta(text="x")], ping_s=15)(SCOPE, client.receive, client.send)
    )
    await asyncio.sleep(0.01)
    client.leave()
    await asyncio.wait_for(task, 1)  # it returns, without waiting for the turn
    sent = len(client.sent)
    run.queue.put_nowait(TextDelta(text="later"))  # the turn can still put events
    await asyncio.sleep(0.01)
    assert len(client.sent) == sent


async def test_the_first_event_goes_out_before_the_answer_is_committed(tmp_path: Path) -> None:
    """test:echo answers without waiting: the response must not wait for the whole turn."""
    settings = Settings(model="test:echo", embedder=None, data_dir=tmp_path / "data")
    store = SQLiteStore(settings.db_path)
    bot = Chatbot(settings=settings, store=store)
    order: list[str] = []
    append = store.append_async

    async def recording_append(*args: Any, **kwargs: Any) -> Any:
        stored = await append(*args, **kwargs)  # returns once the commit is on disk
        order.append("commit answer" if kwargs.get("trace") is not None else "commit user")
        return stored

    store.append_async = recording_append  # type: ignore[method-assign]
    client = Client()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            order.append("sent")
        await client.send(message)

    run = Turns(Approvals()).start(bot, "u", "t", "hello there")
    first = await run.batch()
    assert first is not None
    await TurnStream(run, first, ping_s=15)(SCOPE, client.receive, send)
    # The first event once the user's message is on disk, the answer's text while the answer
    # commits, `done` (the last write) once it is on disk.
    assert order[:2] == ["commit user", "sent"]
    assert order.index("commit answer") > 1 and order[-1] == "sent"
    items = [f.item for f in first]
    assert isinstance(items[0], TurnStart) and not any(isinstance(e, TurnEnd) for e in items)
    bot.close()


async def test_a_burst_of_turns_is_acknowledged_before_any_is_answered(tmp_path: Path) -> None:
    """Every turn's ``start`` (its message on disk) before any turn's model output: the
    turns past their first event wait for the others' (``FirstEvents``)."""
    settings = Settings(model="test:echo", embedder=None, data_dir=tmp_path / "data")
    store = SQLiteStore(settings.db_path)
    bot = Chatbot(settings=settings, store=store)
    turns = Turns(Approvals(), store)
    turns.first_events.max_wait_s = 10  # a slow machine must not make this test pass late
    order: list[str] = []

    async def read(run: TurnRun) -> None:
        async for item in run.events():
            if isinstance(item, (TurnStart, TextDelta)):
                order.append(type(item).__name__)

    runs = [turns.start(bot, "u", f"t{i}", "hello there") for i in range(30)]
    await asyncio.gather(*(read(run) for run in runs))
    assert order.index("TextDelta") == 30 and order.count("TurnStart") == 30
    assert not turns.first_events.runs
    await turns.shutdown(5)
    bot.close()


async def test_a_turn_waiting_for_its_thread_does_not_hold_back_others(tmp_path: Path) -> None:
    settings = Settings(model="test:slow", embedder=None, data_dir=tmp_path / "data")
    bot = Chatbot(settings=settings, store=SQLiteStore(settings.db_path))
    turns = Turns(Approvals())
    first = turns.start(bot, "u", "t", "one two")
    second = turns.start(bot, "u", "t", "three")  # waits for the first: not counted
    assert list(turns.first_events.runs) == [first]
    assert [type(f.item) for f in await first.batch() or []] == [TurnStart]
    assert not turns.first_events.runs
    assert turns.cancel("u", "t") == 2
    await turns.shutdown(5)
    assert second.status == "interrupted"
    bot.close()


async def test_auth_waits_for_a_busy_store_off_the_loop(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    auth = Authenticator(store, mode="auto", local_user="local", loopback=True)
    assert (await auth.authenticate_async(None)).user == "local"  # inline: the store is free
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.lock:
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not release.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    ticking = asyncio.create_task(ticker())
    asyncio.get_running_loop().call_later(0.1, release.set)
    started = time.monotonic()
    principal = await auth.authenticate_async("Bearer anything")
    assert principal.user == "local" and time.monotonic() - started >= 0.09
    await ticking
    assert ticks >= 5  # the loop kept running while the lookup waited for the lock
    holder.join()
    store.close()
