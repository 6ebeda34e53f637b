"""Turns that outlive their HTTP connection, and the approvals they wait for.

A turn runs in its own asyncio task (:meth:`Turns.start`) that drains ``Chatbot.stream`` into
a queue; the response reads the queue. A client that goes away stops reading, nothing else:
the turn still completes and its answer is stored whole. On shutdown, running turns get
``shutdown_grace_s`` to finish, then are cancelled (the engine stores what arrived, marked
interrupted).

A tool call with side effects makes the engine emit an ``ApprovalRequest`` and await the
approver it was given; :class:`Approvals` keys a future by ``(owner, thread, call id)``, which
``POST /api/threads/{id}/approvals/{call_id}`` resolves. The future is registered as the event
passes through the queue, before the client can see it, so an answer that comes back at once
still finds it. No answer within ``[tools] approval_timeout_s`` means no (the engine's rule).

Several replicas (``chatwright serve`` processes on one database) behave as one server: each
event of a turn is numbered (its SSE id is ``<stream id>:<seq>``) and the :class:`Recorder`
writes them to the store within ``flush_s``, so a client that lost its connection resumes the
stream on any replica (``GET /api/threads/{id}/stream`` with ``Last-Event-ID``). An approval
or a cancel posted to another replica is left in the store as a signal, which the recorder of
the replica running the turn takes at its next flush. A replica that dies stops
heartbeating: a reader then marks its streams interrupted (what was stored is kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chatwright.bot import Chatbot
from chatwright.errors import ChatwrightError
from chatwright.server.events import Frame, Framed, TurnFailed, frames_of
from chatwright.store.base import Signal, Store, StreamWrite
from chatwright.types import ApprovalRequest

__all__ = ["Approvals", "FirstEvents", "Recorder", "TurnFailed", "TurnRun", "Turns", "read_store"]

log = logging.getLogger("chatwright.server")

Key = tuple[str, str, str]  # (owner, thread id, tool call id)
T = TypeVar("T")


class _End:
    """Marks the end of a turn's queue."""


class _Wake:
    """Wakes a turn's reader with nothing to read (see :meth:`TurnRun.wake`)."""


_END = _End()
_WAKE = _Wake()


class Approvals:
    """Pending approvals of running turns (see the module's docstring)."""

    def __init__(self) -> None:
        self._pending: dict[Key, asyncio.Future[bool]] = {}
        self._requests: dict[Key, ApprovalRequest] = {}  # what each pending call asks

    def expect(self, key: Key) -> asyncio.Future[bool]:
        future = self._pending.get(key)
        if future is None or future.done():
            future = self._pending[key] = asyncio.get_running_loop().create_future()
        return future

    def resolve(self, key: Key, approved: bool) -> bool:
        """Answer a pending approval; False when none is waiting under ``key``."""
        future = self._pending.get(key)
        if future is None or future.done():
            return False
        future.set_result(approved)
        return True

    def describe(self, key: Key, request: ApprovalRequest) -> None:
        """Remember what the pending call ``key`` asks, for a client that reconnects."""
        self._requests[key] = request

    def requests(self, owner: str, thread_id: str) -> list[ApprovalRequest]:
        """The approval requests waiting for this user's answer in this thread."""
        return [
            self._requests[key]
            for key, future in self._pending.items()
            if key[:2] == (owner, thread_id) and not future.done() and key in self._requests
        ]

    def discard(self, key: Key) -> None:
        self._requests.pop(key, None)
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.cancel()

    def pending(self, owner: str, thread_id: str) -> list[str]:
        """The call ids waiting for this user's answer in this thread."""
        return [
            call
            for (o, t, call), future in self._pending.items()
            if o == owner and t == thread_id and not future.done()
        ]

    def approver(self, owner: str, thread_id: str) -> Any:
        """The approver for ``Chatbot.stream``: waits for the user's answer."""

        async def ask(request: ApprovalRequest, tool: Any) -> bool:
            key = (owner, thread_id, request.call.id)
            try:
                return await self.expect(key)
            finally:
                self.discard(key)

        return ask


async def read_store(store: Store, read: Callable[..., T], *args: Any) -> T:
    """``read(*args)``, a short read of ``store``: inline while no other thread holds the
    store's lock (it takes microseconds; a worker thread costs more, and under load waits
    behind the others), else in a worker thread, so the loop never waits for another
    thread's transaction. Stores without such a lock (PostgreSQL) always read in a thread."""
    lock = getattr(store, "lock", None)
    if lock is not None and lock.acquire(blocking=False):
        try:
            return read(*args)
        finally:
            lock.release()
    return await asyncio.to_thread(read, *args)


def _stream_id() -> str:
    return "st_" + uuid.uuid4().hex[:20]


@dataclass(eq=False)  # hashed by identity: kept in sets of running turns
class TurnRun:
    """One running turn: who, where, the queue of its events, and what of them is recorded
    (``stream_id``, the numbered frames not yet written to the store)."""

    owner: str
    thread_id: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    stream_id: str = field(default_factory=_stream_id)

    ended: bool = False
    stopped: bool = False  # cancelled by the user (POST .../cancel)
    status: str = "running"  # then done | failed | interrupted, as recorded
    last_seq: int = 0
    unflushed: list[Frame] = field(default_factory=list)

    def record(self, item: Any) -> Framed:
        """Number ``item``'s events after the last ones and keep them for the store."""
        frames = frames_of(item, self.last_seq + 1)
        if frames:
            self.last_seq = frames[-1][0]
            self.unflushed.extend(frames)
        return Framed(item, frames)

    def take(self) -> StreamWrite:
        """What the store has not seen of this stream yet."""
        frames, self.unflushed = self.unflushed, []
        return StreamWrite(self.stream_id, self.owner, self.thread_id, frames, self.status)

    async def events(self) -> AsyncIterator[Any]:
        """The turn's events (and a final :class:`TurnFailed` if it failed), as they come."""
        while (items := await self.batch()) is not None:
            for item in items:
                yield item.item if isinstance(item, Framed) else item

    async def batch(self) -> list[Any] | None:
        """The next events: waits for one, then takes all that are ready too (a reader that
        sends them in one write sends fewer). ``[]`` when :meth:`wake` woke the reader; None
        once the turn has ended and everything was read."""
        if self.ended:
            return None
        items = []
        item = await self.queue.get()
        while True:
            if item is _END:
                self.ended = True
                return items or None
            if item is not _WAKE:
                items.append(item)
            if self.queue.empty():
                return items
            item = self.queue.get_nowait()

    def wake(self) -> None:
        """Make the reader's pending :meth:`batch` return (with ``[]`` if nothing came): for
        a reader that also waits for something else (a ping due, a client gone)."""
        self.queue.put_nowait(_WAKE)


class Recorder:
    """Writes the streams of the turns this replica runs to the store, and takes the signals
    other replicas leave for them (see ``StreamLog``).

    One task per replica, alive while it runs turns: every ``flush_s`` (at once for an
    approval request or a turn's end) it writes what is new of every running stream in one
    transaction, which also tells the store this replica lives (at least every
    ``heartbeat_s``); then it takes the signals for its streams and hands them to ``apply``.
    A store that fails is logged and retried; the turn itself never waits for the store here.
    """

    def __init__(
        self,
        store: Store,
        apply: Callable[[TurnRun, Signal], None],
        *,
        flush_s: float = 0.1,
        heartbeat_s: float = 2.0,
        keep_s: float = 3600.0,
    ) -> None:
        self.store = store
        self.apply = apply
        self.flush_s = flush_s
        self.heartbeat_s = heartbeat_s
        self.keep_s = keep_s
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.runs: dict[str, TurnRun] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._written = 0.0
        self._pruned = 0.0

    def add(self, run: TurnRun) -> None:
        self.runs[run.stream_id] = run
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        assert self._wake is not None
        while self.runs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            await self.flush()
            await self._signals()

    async def flush(self) -> None:
        """Write what is new; forget the streams that ended once they are written."""
        due = time.monotonic() - self._written >= self.heartbeat_s
        runs = [r for r in self.runs.values() if r.unflushed or r.status != "running" or due]
        if not runs:
            return
        writes = [run.take() for run in runs]
        try:
            await self.store.streams.record_async(self.replica, writes)
        except Exception as e:  # the turns go on; their events are written next time
            log.warning("could not record turn events: %s", e)
            for run, write in zip(runs, writes, strict=True):
                run.unflushed[:0] = write.events
            return
        self._written = time.monotonic()
        for run in runs:
            if run.status != "running" and not run.unflushed:
                self.runs.pop(run.stream_id, None)
        if self._written - self._pruned > 600:
            self._pruned = self._written
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.streams.prune, time.time() - self.keep_s)

    async def _signals(self) -> None:
        try:
            signals = await asyncio.to_thread(self.store.streams.take_signals, self.replica)
        except Exception as e:
            log.warning("could not read signals: %s", e)
            return
        for signal in signals:
            run = self.runs.get(signal.stream_id)
            if run is not None:
                self.apply(run, signal)

    async def close(self) -> None:
        """Write the last events (at shutdown, once the turns ended)."""
        if self.runs:
            await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class FirstEvents:
    """First events before later work: the turns started and not yet at their first event
    (the user's message stored, ``start`` sent), and a wait for them.

    The event loop runs ready tasks in turn, so when a burst of turns arrives at once, every
    turn's every step (its model call, its answer, its ``done``) would queue among the
    others' first steps, and the last ``start`` would go out when nearly all the burst's work
    is done. A turn past its first event therefore waits (at most ``max_wait_s``) until the
    turns started before that moment have theirs: the burst is acknowledged first, then
    answered. Turns started later do not make it wait longer, and a turn queued behind
    another turn of its thread here does not count: it waits for that one.
    """

    def __init__(self, max_wait_s: float = 0.25) -> None:
        self.max_wait_s = max_wait_s
        self.runs: dict[TurnRun, int] = {}  # each counted turn's number, in start order
        self._started = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()  # (cut, waiter)

    def add(self, run: TurnRun) -> None:
        self._started += 1
        self.runs[run] = self._started

    def reached(self, run: TurnRun) -> None:
        """``run`` has its first event (or ended without one)."""
        if self.runs.pop(run, None) is None:
            return
        oldest = next(iter(self.runs.values()), None)
        while self._waiters and (oldest is None or self._waiters[0][0] < oldest):
            waiter = self._waiters.popleft()[1]
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        """Until every turn started so far has its first event, at most ``max_wait_s``; at
        least one pass of the loop (the response sends the first event meanwhile)."""
        if not self.runs:
            await asyncio.sleep(0)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((self._started, waiter))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_wait_s):
                await waiter


class Turns:
    """Starts turns as tasks, keeps them alive, and lets them finish at shutdown. With a
    ``store``, their events are recorded (resumable from any replica) and signals from other
    replicas reach them. Turns' first events go before other turns' later work
    (:class:`FirstEvents`)."""

    def __init__(
        self,
        approvals: Approvals,
        store: Store | None = None,
        *,
        flush_s: float = 0.1,
        heartbeat_s: float = 2.0,
    ) -> None:
        self.approvals = approvals
        self.first_events = FirstEvents()
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_thread: dict[tuple[str, str], set[TurnRun]] = {}
        self.recorder = (
            Recorder(store, self._apply, flush_s=flush_s, heartbeat_s=heartbeat_s)
            if store is not None
            else None
        )

    @property
    def replica(self) -> str | None:
        return self.recorder.replica if self.recorder is not None else None

    def _apply(self, run: TurnRun, signal: Signal) -> None:
        """A signal from another replica: an approval answer, or a cancel."""
        if signal.kind == "approval" and signal.call_id:
            self.approvals.resolve((run.owner, run.thread_id, signal.call_id), signal.value)
        elif signal.kind == "cancel":
            self._stop(run)

    def find(self, owner: str, thread_id: str, stream_id: str) -> TurnRun | None:
        """This replica's running turn with that stream, if it is this user's thread."""
        for run in self._by_thread.get((owner, thread_id), ()):
            if run.stream_id == stream_id:
                return run
        return None

    def start(
        self,
        bot: Chatbot,
        owner: str,
        thread_id: str,
        text: str,
        *,
        interactive: bool = True,
        answer_mode: str | None = None,
        events: Callable[..., AsyncIterator[Any]] | None = None,
    ) -> TurnRun:
        """Run a turn in the background; ``interactive``: tool calls may wait for approval
        (else they are refused at once, as nobody could answer); ``answer_mode``: the
        request's (None: the bot's); ``events(thread_id, text, **kwargs)``: the turn's
        events (default: ``bot.stream``; a regeneration or an edit passes its own)."""
        run = TurnRun(owner, thread_id)
        if self.recorder is not None:
            self.recorder.add(run)
        key = (owner, thread_id)
        if not self._by_thread.get(key):  # else it waits for the thread's running turn
            self.first_events.add(run)
        task = asyncio.create_task(
            self._drive(events or bot.stream, run, text, interactive, answer_mode)
        )
        run.task = task
        self._tasks.add(task)
        self._by_thread.setdefault(key, set()).add(run)
        task.add_done_callback(lambda t: self._forget(key, run))
        return run

    def _forget(self, key: tuple[str, str], run: TurnRun) -> None:
        self.first_events.reached(run)  # a task cancelled before it ran did not say so
        if run.task is not None:
            self._tasks.discard(run.task)
        runs = self._by_thread.get(key)
        if runs is not None:
            runs.discard(run)
            if not runs:
                del self._by_thread[key]

    def cancel(self, owner: str, thread_id: str) -> int:
        """Stop this user's running turns in this thread (what arrived is stored, marked
        interrupted); how many were stopped."""
        runs = [
            r
            for r in self._by_thread.get((owner, thread_id), ())
            if r.task is not None and not r.task.done()
        ]
        for run in runs:
            self._stop(run)
        return len(runs)

    @staticmethod
    def _stop(run: TurnRun) -> None:
        if run.task is not None and not run.task.done():
            run.stopped = True
            run.task.cancel()

    async def _drive(
        self,
        stream: Callable[..., AsyncIterator[Any]],
        run: TurnRun,
        text: str,
        interactive: bool,
        answer_mode: str | None,
    ) -> None:
        keys: list[Key] = []
        approver = self.approvals.approver(run.owner, run.thread_id) if interactive else None
        kwargs: dict[str, Any] = {
            "owner": run.owner,
            "approver": approver,
            "answer_mode": answer_mode,
        }
        first = True
        try:
            async with aclosing(stream(run.thread_id, text, **kwargs)) as events:
                async for event in events:
                    if isinstance(event, ApprovalRequest) and interactive:
                        key = (run.owner, run.thread_id, event.call.id)
                        self.approvals.expect(key)
                        self.approvals.describe(key, event)
                        keys.append(key)
                    run.queue.put_nowait(run.record(event))
                    if isinstance(event, ApprovalRequest):
                        self._wake()  # another replica may be asked to answer it
                    if first:
                        # Let the response send its headers and this event now, and other
                        # turns theirs: a model that answers without waiting (test:echo, a
                        # cache) would otherwise run the whole turn, its final commit
                        # included, before anything is sent. Later events go out in batches
                        # of what is ready.
                        first = False
                        self.first_events.reached(run)
                        await self.first_events.wait()
            run.status = "done"
        except asyncio.CancelledError as e:
            if run.stopped:
                failed = TurnFailed(e, "stopped: the turn was cancelled; what arrived is kept")
            else:
                failed = TurnFailed.of(e)
            run.status = "interrupted"
            run.queue.put_nowait(run.record(failed))
            raise
        except Exception as e:
            if not isinstance(e, ChatwrightError):
                log.error("turn in thread %r failed", run.thread_id, exc_info=e)
            run.status = "failed"
            run.queue.put_nowait(run.record(TurnFailed.of(e)))
        finally:
            self.first_events.reached(run)
            for key in keys:
                self.approvals.discard(key)
            if run.status == "running":  # ended some other way (GeneratorExit)
                run.status = "interrupted"
            run.queue.put_nowait(_END)
            self._wake()

    def _wake(self) -> None:
        if self.recorder is not None:
            self.recorder.wake()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def shutdown(self, grace_s: float) -> None:
        """Let running turns finish within ``grace_s``, then cancel the rest."""
        tasks = list(self._tasks)
        if tasks:
            log.info("waiting up to %g s for %d running turn(s)", grace_s, len(tasks))
            waited = await asyncio.wait(tasks, timeout=grace_s) if grace_s > 0 else None
            late = waited[1] if waited is not None else set(tasks)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.recorder is not None:
            await self.recorder.close()
