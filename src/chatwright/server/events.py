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
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from chatwright.errors import ChatwrightError
from chatwright.server.errors import status_of, to_json, type_of
from chatwright.server.turns import TurnFailed
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

__all__ = ["answer_json", "error_json", "error_status", "sse_events"]


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


def sse_events(item: Any) -> list[dict[str, str]]:
    """The item as sse-starlette events: ``{"event": name, "data": json}``."""
    return [{"event": name, "data": to_json(data)} for name, data in event_payloads(item)]
