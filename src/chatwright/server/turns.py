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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from chatwright.bot import Chatbot
from chatwright.errors import ChatwrightError
from chatwright.server.errors import http_hint
from chatwright.types import ApprovalRequest

__all__ = ["Approvals", "TurnFailed", "TurnRun", "Turns"]

log = logging.getLogger("chatwright.server")

Key = tuple[str, str, str]  # (owner, thread id, tool call id)


@dataclass(frozen=True)
class TurnFailed:
    """The last item of a failed turn's queue: the error, as the client will see it."""

    error: BaseException
    message: str
    hint: str | None = None

    @classmethod
    def of(cls, error: BaseException) -> TurnFailed:
        if isinstance(error, ChatwrightError):
            return cls(error, error.message, http_hint(error.hint))
        if isinstance(error, asyncio.CancelledError):
            return cls(error, "the server is shutting down", "send the message again later")
        return cls(
            error,
            f"internal server error ({type(error).__name__})",
            "this is a bug in chatwright: the server's log has the details",
        )


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


@dataclass(eq=False)  # hashed by identity: kept in sets of running turns
class TurnRun:
    """One running turn: who, where, and the queue of its events."""

    owner: str
    thread_id: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    ended: bool = False
    stopped: bool = False  # cancelled by the user (POST .../cancel)

    async def events(self) -> AsyncIterator[Any]:
        """The turn's events (and a final :class:`TurnFailed` if it failed), as they come."""
        while (items := await self.batch()) is not None:
            for item in items:
                yield item

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


class Turns:
    """Starts turns as tasks, keeps them alive, and lets them finish at shutdown."""

    def __init__(self, approvals: Approvals) -> None:
        self.approvals = approvals
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_thread: dict[tuple[str, str], set[TurnRun]] = {}

    def start(
        self, bot: Chatbot, owner: str, thread_id: str, text: str, *, interactive: bool = True
    ) -> TurnRun:
        """Run a turn in the background; ``interactive``: tool calls may wait for approval
        (else they are refused at once, as nobody could answer)."""
        run = TurnRun(owner, thread_id)
        task = asyncio.create_task(self._drive(bot, run, text, interactive))
        run.task = task
        self._tasks.add(task)
        key = (owner, thread_id)
        self._by_thread.setdefault(key, set()).add(run)
        task.add_done_callback(lambda t: self._forget(key, run))
        return run

    def _forget(self, key: tuple[str, str], run: TurnRun) -> None:
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
            run.stopped = True
            assert run.task is not None
            run.task.cancel()
        return len(runs)

    async def _drive(self, bot: Chatbot, run: TurnRun, text: str, interactive: bool) -> None:
        keys: list[Key] = []
        approver = self.approvals.approver(run.owner, run.thread_id) if interactive else None
        kwargs: dict[str, Any] = {"owner": run.owner, "approver": approver}
        first = True
        try:
            async with aclosing(bot.stream(run.thread_id, text, **kwargs)) as events:
                async for event in events:
                    if isinstance(event, ApprovalRequest) and interactive:
                        key = (run.owner, run.thread_id, event.call.id)
                        self.approvals.expect(key)
                        self.approvals.describe(key, event)
                        keys.append(key)
                    run.queue.put_nowait(event)
                    if first:
                        # Let the response send its headers and this event now: a model that
                        # answers without waiting (test:echo, a cache) would otherwise run the
                        # whole turn, its final commit included, before anything is sent.
                        # Later events go out in batches of what is ready.
                        first = False
                        await asyncio.sleep(0)
        except asyncio.CancelledError as e:
            if run.stopped:
                failed = TurnFailed(e, "stopped: the turn was cancelled; what arrived is kept")
            else:
                failed = TurnFailed.of(e)
            run.queue.put_nowait(failed)
            raise
        except Exception as e:
            if not isinstance(e, ChatwrightError):
                log.error("turn in thread %r failed", run.thread_id, exc_info=e)
            run.queue.put_nowait(TurnFailed.of(e))
        finally:
            for key in keys:
                self.approvals.discard(key)
            run.queue.put_nowait(_END)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def shutdown(self, grace_s: float) -> None:
        """Let running turns finish within ``grace_s``, then cancel the rest."""
        tasks = list(self._tasks)
        if not tasks:
            return
        log.info("waiting up to %g s for %d running turn(s)", grace_s, len(tasks))
        _, late = await asyncio.wait(tasks, timeout=grace_s) if grace_s > 0 else (set(), set(tasks))
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
