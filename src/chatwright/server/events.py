"""A turn's events as Server-Sent Events: ``event: <name>`` and one line of JSON ``data:``.

The names and payloads (docs/api.md is the reference for clients)::

    text_delta       {"text"}                               a piece of the answer
    tool_call        {"call": {id, name, arguments}}        the model called a tool
    approval_needed  {"call", "reason", "description"}      answer with POST .../approvals/{id}
    tool_result      {"result": {tool_call_id, name, content, is_error}}
    citation         {"citation": {index, text, source, title, page, document_id, chunk_id}}
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
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from chatwright.errors import ChatwrightError
from chatwright.server.errors import status_of, to_json, type_of
from chatwright.server.turns import TurnFailed, TurnRun
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

__all__ = ["TurnStream", "answer_json", "error_json", "error_status", "sse_frame"]


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


def sse_frame(item: Any) -> bytes:
    """The item's events as Server-Sent Events text: ``event:``, one ``data:`` line, a blank
    line (``to_json`` writes one line: newlines in strings are escaped)."""
    return b"".join(
        f"event: {name}\r\ndata: {to_json(data)}\r\n\r\n".encode()
        for name, data in event_payloads(item)
    )


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
                chunk = b"".join(sse_frame(item) for item in items)
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
