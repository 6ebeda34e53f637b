"""Deterministic models for tests, shipped in the package so users can test their own bots.

- ``test:echo`` answers ``echo: <last user message>``; ``test:slow`` does too, one word every
  50 ms (for testing streaming and interruption).
- ``test:context`` answers with the JSON of exactly the request it received (messages, tools).
- ``test:tools`` echoes too, but a message ``call NAME {json}`` naming an offered tool makes it
  call that tool (several ``call`` lines: parallel calls); after the results it answers
  ``tool said: ...`` (for testing tool use end to end: CLI, server, web page). A forced
  ``tool_choice`` (``required`` or a name) makes it call that tool (or the first) with
  arguments from :func:`example_json`.
- ``test:echo``, ``test:slow`` and ``test:tools`` honour ``stop`` (the answer ends before the
  first stop sequence) and ``response_format``: asked for JSON they answer
  ``{"echo": <message>}``, or :func:`example_json` of the schema.
- ``test:obedient`` (:class:`ObedientModel`) does what any text in its context tells it to:
  a model that falls for prompt injection, for testing that it cannot act unapproved.
- :class:`ScriptedModel` plays back replies and tool calls that a test sets, in order.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from chatwright.errors import ModelResponseError, UnknownModel
from chatwright.models.base import ModelEvent, ModelRequest
from chatwright.types import (
    Done,
    Message,
    TextDelta,
    ToolCallEvent,
    ToolCallPart,
    Usage,
    _jsonable,
)

__all__ = [
    "ContextModel",
    "EchoModel",
    "ObedientModel",
    "ScriptedModel",
    "ToolsModel",
    "example_json",
    "test_model",
]

_PIECES = re.compile(r"\S+\s*|\s+")


def _count_words(messages: Sequence[Message]) -> int:
    return sum(len(m.text.split()) for m in messages)


async def _stream_text(
    text: str, request: ModelRequest, delay: float = 0.0
) -> AsyncIterator[ModelEvent]:
    max_tokens = request.settings.max_tokens
    reason = "stop"
    cuts = [i for i in (text.find(stop) for stop in request.settings.stop if stop) if i >= 0]
    if cuts:  # a stop sequence ends the answer before it, as a real model's would
        text = text[: min(cuts)]
    pieces = _PIECES.findall(text)
    if max_tokens is not None and len(pieces) > max_tokens:
        pieces, reason = pieces[:max_tokens], "length"
    for piece in pieces:
        if delay:
            await asyncio.sleep(delay)
        yield TextDelta(text=piece)
    yield Usage(input_tokens=_count_words(request.messages), output_tokens=len(pieces))
    yield Done(reason=reason)


class EchoModel:
    """Answers ``echo: <last user message>``, streamed word by word."""

    def __init__(self, name: str = "test:echo", *, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        last = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        return _stream_text(_answer(f"echo: {last}", last, request), request, self.delay)


def _answer(text: str, said: str, request: ModelRequest) -> str:
    """``text``, or JSON when the request asks for it (:func:`example_json`)."""
    fmt = request.response_format
    if fmt is None:
        return text
    schema = fmt.json_schema if fmt.type == "json_schema" and fmt.json_schema else None
    value = example_json(schema, said) if schema else {"echo": said}
    return json.dumps(value, ensure_ascii=False)


def example_json(schema: dict[str, Any], text: str) -> Any:
    """A value valid for the JSON ``schema``, built from ``text``: every property filled in,
    strings are ``text``, numbers its word count, booleans true, arrays one item, the first
    of an enum or a union. What the test models answer when asked for structured output."""
    defs = {
        str(k): v
        for key in ("definitions", "$defs")
        if isinstance(schema.get(key), dict)
        for k, v in schema[key].items()
    }

    def build(node: Any, depth: int) -> Any:
        if not isinstance(node, dict) or depth > 16:
            return text
        if "$ref" in node:
            return build(defs.get(str(node["$ref"]).rsplit("/", 1)[-1]), depth + 1)
        if "const" in node:
            return node["const"]
        if node.get("enum"):
            return node["enum"][0]
        for key in ("anyOf", "oneOf", "allOf"):
            listed = node.get(key) if isinstance(node.get(key), list) else []
            options = [o for o in listed if not isinstance(o, dict) or o.get("type") != "null"]
            if options:
                return build(options[0], depth + 1)
        kind = node.get("type", "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        words = len(text.split())
        simple = {"string": text, "integer": words, "number": float(words), "boolean": True}
        if kind in simple:
            return simple[kind]
        if kind == "object":
            props = node.get("properties")
            props = props if isinstance(props, dict) else {}
            return {str(name): build(sub, depth + 1) for name, sub in props.items()}
        if kind == "array":
            return [build(node.get("items", {}), depth + 1)]
        return None

    return build(schema, 0)


_CALL = re.compile(r"^\s*call ([A-Za-z0-9_-]{1,64})[ \t]*(\{.*\})?[ \t]*$", re.MULTILINE)


class ToolsModel:
    """Echoes, except that ``call NAME {json}`` lines call offered tools; then reports results."""

    def __init__(self, name: str = "test:tools") -> None:
        self.name = name

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        last = request.messages[-1] if request.messages else None
        if last is not None and last.role == "tool":
            said = "; ".join(f"{r.name}: {r.content}" for r in last.tool_results)
            return _stream_text(f"tool said: {said}", request)
        text = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        choice = request.tool_choice
        offered = {t.name for t in request.tools} if choice.mode != "none" else set()
        if choice.name is not None:
            offered &= {choice.name}
        calls = [
            ToolCallPart(id=f"call_{i}", name=name, arguments=args or "{}")
            for i, (name, args) in enumerate(_CALL.findall(text))
            if name in offered
        ]
        if not calls and (choice.mode == "required" or choice.name is not None):
            tool = next(t for t in request.tools if t.name in offered)
            args = json.dumps(example_json(tool.parameters, text), ensure_ascii=False)
            calls = [ToolCallPart(id="call_0", name=tool.name, arguments=args)]
        if request.settings.parallel_tool_calls is False:
            calls = calls[:1]
        if calls:
            return _message_events(Message.assistant(tool_calls=calls), request)
        return _stream_text(_answer(f"echo: {text}", text, request), request)


_ORDER = re.compile(r"\bcall ([A-Za-z0-9_-]{1,64})\b[ \t]*")


def _orders(text: str) -> list[tuple[str, str]]:
    """Each ``call NAME {json}`` (or bare ``call NAME``) anywhere in ``text``: (name, args)."""
    found = []
    for match in _ORDER.finditer(text):
        args = "{}"
        if text.startswith("{", match.end()):
            try:
                value, _ = json.JSONDecoder().raw_decode(text, match.end())
            except ValueError:
                continue
            args = json.dumps(value, sort_keys=True)
        found.append((match.group(1), args))
    return found


def _normal(args: str) -> str:
    try:
        return json.dumps(json.loads(args or "{}"), sort_keys=True)
    except ValueError:
        return args


class ObedientModel:
    """Does what any text it reads tells it to: the worst case of prompt injection.

    Every ``call NAME {json}`` in any message of its context (system prompt, user memory,
    summary, recalled turns, passages, earlier answers, tool results, the user's message) that
    names an offered tool, it calls, each once per turn. With nothing left to call it answers by
    quoting what it was told, ``I read: call NAME {json}`` (``echo: <message>`` when told
    nothing), so its answer repeats the orders, as a model quoting a document would. With
    ``obey = False`` it only quotes (set it between turns to script a model that quotes first
    and obeys later).
    """

    def __init__(self, name: str = "test:obedient", *, obey: bool = True) -> None:
        self.name = name
        self.obey = obey

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        messages = request.messages
        orders: dict[tuple[str, str], None] = {}
        for m in messages:
            texts = [m.text, *(r.content for r in m.tool_results)]
            orders.update(dict.fromkeys(o for t in texts for o in _orders(t)))
        start = max((i for i, m in enumerate(messages) if m.role == "user"), default=0)
        made = {(c.name, _normal(c.arguments)) for m in messages[start:] for c in m.tool_calls}
        offered = {t.name for t in request.tools}
        calls = [
            ToolCallPart(id=f"call_{i}", name=name, arguments=args)
            for i, (name, args) in enumerate(o for o in orders if o not in made)
            if self.obey and name in offered
        ]
        if calls:
            return _message_events(Message.assistant(tool_calls=calls), request)
        if orders:
            said = "; ".join(f"call {name} {args}" for name, args in orders)
            return _stream_text(f"I read: {said}", request)
        last = next((m.text for m in reversed(messages) if m.role == "user"), "")
        return _stream_text(f"echo: {last}", request)


class ContextModel:
    """Answers with the JSON of the request it received: ``{"messages": [...], "tools": [...]}``.

    Tests parse the answer to assert exactly what a model would have been sent.
    """

    def __init__(self, name: str = "test:context") -> None:
        self.name = name

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        payload = {
            "messages": _jsonable(list(request.messages)),
            "tools": _jsonable(list(request.tools)),
        }
        text = json.dumps(payload, ensure_ascii=False)
        return _single(text, request)


async def _single(text: str, request: ModelRequest) -> AsyncIterator[ModelEvent]:
    yield TextDelta(text=text)
    yield Usage(input_tokens=_count_words(request.messages), output_tokens=1)
    yield Done(reason="stop")


Reply = str | Message | Exception | Callable[[ModelRequest], "str | Message"]


class ScriptedModel:
    """Plays back ``replies`` in order, one per call; records every request it receives.

    A reply is a string (the answer), a :class:`Message` (its text and tool calls), an
    exception (raised), or a function of the request returning either. Call
    :meth:`assert_complete` at the end of a test to check that every reply was used.
    """

    def __init__(self, replies: Sequence[Reply], name: str = "test:scripted") -> None:
        self.name = name
        self.replies = list(replies)
        self.requests: list[ModelRequest] = []

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.requests.append(request)
        index = len(self.requests) - 1
        if index >= len(self.replies):
            raise ModelResponseError(
                f"ScriptedModel got call {index + 1} but has only {len(self.replies)} replies"
            )
        reply = self.replies[index]
        if callable(reply) and not isinstance(reply, Exception):
            reply = reply(request)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, str):
            return _stream_text(reply, request)
        return _message_events(reply, request)

    def assert_complete(self) -> None:
        if len(self.requests) != len(self.replies):
            raise AssertionError(
                f"ScriptedModel used {len(self.requests)} of {len(self.replies)} replies"
            )


async def _message_events(message: Message, request: ModelRequest) -> AsyncIterator[ModelEvent]:
    if message.text:
        yield TextDelta(text=message.text)
    for call in message.tool_calls:
        yield ToolCallEvent(call=call)
    yield Usage(input_tokens=_count_words(request.messages), output_tokens=1)
    yield Done(reason="tool_calls" if message.tool_calls else "stop")


def tool_call(
    name: str, arguments: dict[str, Any] | str | None = None, id: str = ""
) -> ToolCallPart:
    """Shorthand for a :class:`ToolCallPart` in a script."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ToolCallPart(id=id or f"call_{name}", name=name, arguments=args)


def test_model(name: str) -> EchoModel | ContextModel | ToolsModel | ObedientModel:
    """Resolve ``test:<name>``."""
    if name == "echo":
        return EchoModel()
    if name == "slow":
        return EchoModel("test:slow", delay=0.05)
    if name == "context":
        return ContextModel()
    if name == "tools":
        return ToolsModel()
    if name == "obedient":
        return ObedientModel()
    raise UnknownModel(
        f"unknown test model 'test:{name}'",
        hint="use test:echo, test:slow, test:context, test:tools or test:obedient, or a "
        "ScriptedModel in code",
    )


test_model.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
