"""Pure values: messages and their parts, stream events, traces.

Messages carry no identity: which thread they belong to and their sequence number are the
store's business, so the same value can be stored, sent to a model or exported unchanged.
One serializer (:func:`dump_json` / :func:`load_message`) writes every value to UTF-8 bytes and
back, exactly: any Unicode, lone surrogates included, and strings of any size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "Answer",
    "ApprovalRequest",
    "CitationEvent",
    "CitationPart",
    "Done",
    "Message",
    "Part",
    "Role",
    "StageTrace",
    "TextDelta",
    "TextPart",
    "ToolCallEvent",
    "ToolCallPart",
    "ToolResultEvent",
    "ToolResultPart",
    "Trace",
    "TurnEnd",
    "TurnStart",
    "Usage",
    "dump_json",
    "from_openai",
    "load_json",
    "load_message",
    "openai_content_text",
    "to_openai",
]

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TextPart(_Value):
    kind: Literal["text"] = "text"
    text: str


class ToolCallPart(_Value):
    """A model's request to call a tool. ``arguments`` is the JSON text exactly as sent."""

    kind: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """The arguments decoded from JSON; raises ``ValueError`` when they are not JSON."""
        return json.loads(self.arguments or "{}")


class ToolResultPart(_Value):
    """What a tool returned for the call ``tool_call_id``; tool output is data, never orders."""

    kind: Literal["tool_result"] = "tool_result"
    tool_call_id: str
    name: str = ""
    content: str
    is_error: bool = False


class CitationPart(_Value):
    """A source an answer cites as ``[index]``: the exact passage and where it came from."""

    kind: Literal["citation"] = "citation"
    index: int
    text: str
    document_id: str | None = None
    chunk_id: str | None = None
    source: str | None = None
    title: str | None = None
    page: int | None = None
    # the headings the passage sits under, outermost first: ("Install", "Linux", "Debian")
    heading_path: tuple[str, ...] = ()


Part = Annotated[
    TextPart | ToolCallPart | ToolResultPart | CitationPart, Field(discriminator="kind")
]


class Message(_Value):
    """One message of a conversation. Build with :meth:`user`, :meth:`assistant` and friends."""

    role: Role
    parts: tuple[Part, ...] = ()
    metadata: dict[str, Any] = Field(default_factory=dict)

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def system(cls, text: str, **metadata: Any) -> Message:
        return cls(role="system", parts=(TextPart(text=text),), metadata=metadata)

    @classmethod
    def user(cls, text: str, **metadata: Any) -> Message:
        return cls(role="user", parts=(TextPart(text=text),), metadata=metadata)

    @classmethod
    def assistant(
        cls, text: str = "", *, tool_calls: Sequence[ToolCallPart] = (), **metadata: Any
    ) -> Message:
        parts: list[Any] = [TextPart(text=text)] if text else []
        parts.extend(tool_calls)
        return cls(role="assistant", parts=tuple(parts), metadata=metadata)

    @classmethod
    def tool(cls, *results: ToolResultPart, **metadata: Any) -> Message:
        return cls(role="tool", parts=results, metadata=metadata)

    # -- views ----------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The message's text parts joined together."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    @property
    def tool_calls(self) -> list[ToolCallPart]:
        return [p for p in self.parts if isinstance(p, ToolCallPart)]

    @property
    def tool_results(self) -> list[ToolResultPart]:
        return [p for p in self.parts if isinstance(p, ToolResultPart)]

    @property
    def citations(self) -> list[CitationPart]:
        return [p for p in self.parts if isinstance(p, CitationPart)]

    def is_plain_text(self) -> bool:
        """True for a single text part and no metadata: the common, compactly stored case."""
        return len(self.parts) == 1 and isinstance(self.parts[0], TextPart) and not self.metadata


# -- stream events ------------------------------------------------------------------------
class TextDelta(_Value):
    """A piece of the answer's text, as it streams."""

    type: Literal["text_delta"] = "text_delta"
    text: str


class ToolCallEvent(_Value):
    """The model asked for a tool call (complete, arguments included)."""

    type: Literal["tool_call"] = "tool_call"
    call: ToolCallPart


class ToolResultEvent(_Value):
    type: Literal["tool_result"] = "tool_result"
    result: ToolResultPart


class ApprovalRequest(_Value):
    """A call to a tool with side effects waits for the user's yes or no.

    ``reason`` says why approval is needed; the decision arrives through the approver the turn
    was given (a CLI prompt, the HTTP approve endpoint); no approver means no.
    """

    type: Literal["approval_needed"] = "approval_needed"
    call: ToolCallPart
    reason: str = ""
    description: str = ""


class CitationEvent(_Value):
    """A source the answer may cite as ``[citation.index]``: sent before the turn ends."""

    type: Literal["citation"] = "citation"
    citation: CitationPart


class Usage(_Value):
    """Tokens a model call used, as the provider counted them (0 when it does not say)."""

    type: Literal["usage"] = "usage"
    input_tokens: int = 0
    output_tokens: int = 0


class Done(_Value):
    """The model finished: ``reason`` is stop, length, tool_calls, or interrupted."""

    type: Literal["done"] = "done"
    reason: str = "stop"


# -- traces -------------------------------------------------------------------------------
class StageTrace(BaseModel):
    """What one stage of a turn did and how long it took."""

    name: str
    ms: float = 0.0
    skipped: bool = False
    note: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Trace(BaseModel):
    """The record of one turn: stages run, time per stage, token counts, notes."""

    model: str = ""
    stages: list[StageTrace] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    total_ms: float = 0.0
    notes: list[str] = Field(default_factory=list)

    def stage(self, name: str) -> StageTrace | None:
        return next((s for s in self.stages if s.name == name), None)


class Answer(BaseModel):
    """The result of a turn: the answer's text, the stored assistant message, the trace."""

    thread_id: str
    text: str
    message: Message
    seq: int = 0
    trace: Trace = Field(default_factory=Trace)
    interrupted: bool = False

    @property
    def citations(self) -> list[CitationPart]:
        return self.message.citations

    def __str__(self) -> str:
        return self.text


class TurnStart(_Value):
    """The first event of a turn's stream: the user's message is stored (durably) as
    ``user_seq`` of ``thread_id``; the model has not been called yet."""

    type: Literal["start"] = "start"
    thread_id: str
    user_seq: int


class TurnEnd(_Value):
    """The last event of a turn's stream: the whole answer, stored."""

    type: Literal["turn_end"] = "turn_end"
    answer: Answer


# -- the one serializer -------------------------------------------------------------------
_MESSAGE = TypeAdapter(Message)
_MESSAGES = TypeAdapter(list[Message])


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python", exclude_none=True)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def dump_json(value: Any) -> bytes:
    """Serialize a message, a list of messages or any pydantic value to UTF-8 JSON bytes.

    Lone surrogates are kept (encoded with ``surrogatepass``), so :func:`load_json` gives back
    exactly the same strings.
    """
    text = json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


def load_json(data: bytes | str) -> Any:
    """Parse what :func:`dump_json` wrote."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "surrogatepass")
    return json.loads(data)


def load_message(data: bytes | str) -> Message:
    return _MESSAGE.validate_python(load_json(data))


def load_messages(data: bytes | str) -> list[Message]:
    return _MESSAGES.validate_python(load_json(data))


# -- OpenAI chat format -------------------------------------------------------------------
def to_openai(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Messages in the OpenAI chat-completions format (a tool message becomes one per result)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            for r in m.tool_results:
                out.append({"role": "tool", "tool_call_id": r.tool_call_id, "content": r.content})
            continue
        item: dict[str, Any] = {"role": m.role, "content": m.text}
        if m.role == "assistant" and m.tool_calls:
            item["content"] = m.text or None
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        out.append(item)
    return out


def openai_content_text(content: Any, *, skip_other: bool = False) -> str:
    """The text of an OpenAI-format message's ``content``: a string, or a list of parts whose
    text parts are joined. A part that is not text raises ``ValueError`` naming it, or with
    ``skip_other`` (importing a saved conversation, whose images are not kept) is left out;
    there a bare string and any part with a string ``text`` count as text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") in ("text", "input_text"):
                texts.append(str(block.get("text", "")))
            elif skip_other and isinstance(block, str):
                texts.append(block)
            elif skip_other and isinstance(block, dict) and isinstance(block.get("text"), str):
                texts.append(block["text"])  # "output_text" and kin
            elif not skip_other:
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise ValueError(f"unsupported content part {kind!r}: only text is supported")
        return "".join(texts)
    raise ValueError(f"message content must be a string or a list of parts, not {content!r}")


def from_openai(items: Iterable[dict[str, Any]]) -> list[Message]:
    """Parse OpenAI chat-format messages; raises ``ValueError`` naming what is wrong."""
    out: list[Message] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"messages[{i}] must be an object")
        role = item.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"messages[{i}].role must be system, user, assistant or tool")
        text = openai_content_text(item.get("content"))
        if role == "tool":
            call_id = item.get("tool_call_id")
            if not isinstance(call_id, str):
                raise ValueError(f"messages[{i}].tool_call_id is required for a tool message")
            part = ToolResultPart(tool_call_id=call_id, name=item.get("name") or "", content=text)
            out.append(Message.tool(part))
            continue
        if role == "assistant":
            calls = []
            for j, call in enumerate(item.get("tool_calls") or []):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    raise ValueError(f"messages[{i}].tool_calls[{j}] needs a function object")
                args = fn.get("arguments")
                calls.append(
                    ToolCallPart(
                        id=str(call.get("id", "")),
                        name=str(fn.get("name", "")),
                        arguments=args if isinstance(args, str) else json.dumps(args or {}),
                    )
                )
            out.append(Message.assistant(text, tool_calls=calls))
            continue
        out.append(Message(role=role, parts=(TextPart(text=text),)))
    return out
