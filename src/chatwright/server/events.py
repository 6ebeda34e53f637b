"""A turn's events as Server-Sent Events: ``event: <name>`` and one line of JSON ``data:``.

The names and payloads (docs/api.md is the reference for clients)::

    text_delta       {"text"}                               a piece of the answer
    tool_call        {"call": {id, name, arguments}}        the model called a tool
    approval_needed  {"call", "reason", "description"}      answer with POST .../approvals/{id}
    tool_result      {"result": {tool_call_id, name, content, is_error}}
    citation         {"citation": {index, text, source, title, page, heading_path, document_id,
                                  chunk_id}}
    trace            {"trace": {model, stages, input_tokens, output_tokens, total_ms, notes}}
    done             {"thread_id", "seq", "text", "message", "interrupted"}   the last event
    error            {"message", "hint", "type"}            the turn failed; the last event

An event type this module does not know (a newer engine) is passed on under its own ``type``
with its other fields, so clients can ignore what they do not handle.

:class:`TurnStream` is the response that sends them. It is a plain ASGI response rather than
sse-starlette's ``EventSourceResponse`` (an anyio task group of four tasks, and a cancel scope
and a lock around every send, cost more per turn than the turn's own work): one write per batch
of ready events, a ``: ping`` comment every ``ping_s``, and it stops at a disconnect (the turn
goes on without it; see ``turns.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from chatwright.errors import ChatwrightError
from chatwright.server.errors import http_hint, status_of, to_json, type_of
from chatwright.types import (
    Answer,
    ApprovalRequest,
    CitationEvent,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    TurnEnd,
    _jsonable,
)

__all__ = [
    "Frame",
    "Framed",
    "ResumeStream",
    "TurnFailed",
    "TurnStream",
    "answer_json",
    "error_json",
    "error_status",
    "frames_of",
    "sse_frame",
]

Frame = tuple[int, str, str]  # (seq, event name, JSON data): an event as sent and stored


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


@dataclass(frozen=True)
class Framed:
    """An item of a turn's queue with its events as numbered, stored and sent: the numbers
    are the SSE ids (``<stream id>:<seq>``) that a client resumes from."""

    item: Any
    frames: list[Frame]


def _dump(value: BaseModel) -> Any:
    return _jsonable(value)


def answer_json(answer: Answer) -> dict[str, Any]:
    """The ``done`` payload (and the non-streaming answer, with its trace and citations)."""
    return {
        "thread_id": answer.thread_id,
        "seq": answer.seq,
        "text": answer.text,
        "message": _dump(answer.message),
        "interrupted": answer.interrupted,
    }


def error_json(failed: TurnFailed) -> dict[str, Any]:
    error = failed.error
    kind = type_of(error) if isinstance(error, ChatwrightError) else "internal_error"
    if not isinstance(error, ChatwrightError) and failed.message.startswith("the server"):
        kind = "shutting_down"
    return {"message": failed.message, "hint": failed.hint, "type": kind}


def error_status(failed: TurnFailed) -> int:
    error = failed.error
    return status_of(error) if isinstance(error, ChatwrightError) else 500


def event_payloads(item: Any) -> list[tuple[str, dict[str, Any]]]:
    """(event name, payload) pairs for one item of a turn's queue."""
    if isinstance(item, TextDelta):
        return [("text_delta", {"text": item.text})]
    if isinstance(item, ToolCallEvent):
        return [("tool_call", {"call": _dump(item.call)})]
    if isinstance(item, ToolResultEvent):
        return [("tool_result", {"result": _dump(item.result)})]
    if isinstance(item, ApprovalRequest):
        payload = {"call": _dump(item.call), "reason": item.reason}
        return [("approval_needed", {**payload, "description": item.description})]
    if isinstance(item, CitationEvent):
        return [("citation", {"citation": _dump(item.citation)})]
    if isinstance(item, TurnEnd):
        trace = item.answer.trace.model_dump(mode="json")
        return [("trace", {"trace": trace}), ("done", answer_json(item.answer))]
    if isinstance(item, TurnFailed):
        return [("error", error_json(item))]
    if isinstance(item, BaseModel):  # an event type added to the engine later
        data = item.model_dump(mode="json")
        return [(str(data.pop("type", type(item).__name__)), data)]
    return []


def frames_of(item: Any, first_seq: int) -> list[Frame]:
    """The item's events, numbered from ``first_seq``, with their data as one line of JSON
    (``to_json`` escapes newlines in strings)."""
    return [
        (first_seq + i, name, to_json(data)) for i, (name, data) in enumerate(event_payloads(item))
    ]


def sse_frame(item: Any, stream_id: str | None = None) -> bytes:
    """The item's events as Server-Sent Events text: ``id:`` (for a :class:`Framed` item of a
    recorded stream), ``event:``, one ``data:`` line, a blank line."""
    if isinstance(item, Framed):
        return sse_text(item.frames, stream_id)
    return sse_text(frames_of(item, 0), None)


def sse_text(frames: list[Frame], stream_id: str | None) -> bytes:
    """Frames as SSE text, each with its id when the stream has one."""
    out = []
    for seq, name, data in frames:
        if stream_id:
            out.append(f"id: {stream_id}:{seq}\r\n")
        out.append(f"event: {name}\r\ndata: {data}\r\n\r\n")
    return "".join(out).encode()


if TYPE_CHECKING:
    from chatwright.server.turns import TurnRun
    from chatwright.store.base import Store, StreamInfo

_PING = b": ping\r\n\r\n"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]


class TurnStream(Response):
    """A turn's events as a ``text/event-stream`` response, from ``first`` (the events
    already read) on (see the module's docstring)."""

    media_type = "text/event-stream"

    def __init__(self, run: TurnRun, first: list[Any], *, ping_s: float) -> None:
        self.run = run
        self.first = first
        self.ping_s = ping_s
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        loop = asyncio.get_running_loop()
        run = self.run
        state = {"ping": False, "gone": False}

        def ping_due() -> None:
            state["ping"] = True
            run.wake()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            state["gone"] = True
            run.wake()

        watcher = loop.create_task(watch())
        timer = loop.call_later(self.ping_s, ping_due)
        try:
            items: list[Any] | None = self.first
            while items is not None:
                if state["gone"]:
                    return  # nobody reads any more; the turn goes on
                chunk = b"".join(sse_frame(item, run.stream_id) for item in items)
                if state["ping"]:
                    state["ping"] = False
                    chunk += _PING
                    timer = loop.call_later(self.ping_s, ping_due)
                if chunk:
                    await send(_body(chunk, more=True))
                items = await run.batch()
            await send(_body(b"", more=False))
        finally:
            timer.cancel()
            watcher.cancel()
        if self.background is not None:
            await self.background()


def _body(chunk: bytes, *, more: bool) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": more}


class ResumeStream(Response):
    """A recorded turn's events after ``after_seq``, read from the store, then followed
    until the turn ends: for a client that lost its connection, on any replica.

    It polls the store every ``poll_s`` while the turn runs. A turn whose replica stopped
    heartbeating for ``stale_s`` is marked interrupted, and the stream ends with an ``error``
    event saying so (the thread keeps what was stored: the user's message at least).
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        store: Store,
        stream: StreamInfo,
        after_seq: int,
        *,
        ping_s: float,
        poll_s: float = 0.1,
        stale_s: float = 10.0,
    ) -> None:
        self.store = store
        self.stream = stream
        self.after = after_seq
        self.ping_s = ping_s
        self.poll_s = poll_s
        self.stale_s = stale_s
        self.status_code = 200
        self.background = None
        self.raw_headers = list(_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self._follow(send, gone)
        finally:
            watcher.cancel()

    async def _follow(self, send: Send, gone: asyncio.Event) -> None:
        sid, streams = self.stream.id, self.store.streams
        pinged = time.monotonic()
        while not gone.is_set():
            rows = await asyncio.to_thread(streams.events, sid, self.after)
            if rows:
                self.after = rows[-1][0]
                await send(_body(sse_text(rows, sid), more=True))
                continue
            info = await asyncio.to_thread(
                streams.get, self.stream.owner, self.stream.thread_id, sid
            )
            if info is None or (info.status != "running" and self.after >= info.last_seq):
                break
            if info.status == "running" and time.time() - info.heartbeat_at > self.stale_s:
                # the final event is stored: this reader and every later one read it next
                await asyncio.to_thread(streams.interrupt, sid, "error", _STOPPED)
                continue
            if time.monotonic() - pinged >= self.ping_s:
                pinged = time.monotonic()
                await send(_body(_PING, more=True))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), self.poll_s)
        if not gone.is_set():
            await send(_body(b"", more=False))


_STOPPED = to_json(
    {
        "message": "the server running this turn stopped; what it stored is kept",
        "hint": "send the message again",
        "type": "interrupted",
    }
)
