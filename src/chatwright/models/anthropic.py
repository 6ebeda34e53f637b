"""``anthropic:<model>``: Anthropic's Messages API, through the official SDK.

The key is ``[anthropic] api_key`` in chatwright.toml, else ``$ANTHROPIC_API_KEY``; the
server is ``[anthropic] base_url``, else ``$ANTHROPIC_BASE_URL``, else api.anthropic.com
(with a base_url set and no key, a placeholder key is sent, for proxies that need none).
Messages are converted to the Messages API's shape: the system prompt as a top-level
parameter, tool calls as ``tool_use`` blocks, tool results as ``tool_result`` blocks in a
user message, and same-role neighbours merged since the API requires alternation.
``settings.temperature`` is not sent: the Messages API (and SDK) this targets has no sampling
parameters. Every failure is raised while the stream is iterated, as a
:class:`chatwright.errors.ModelError`.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from chatwright.config import AnthropicSettings
from chatwright.errors import ModelUnavailable, UserError
from chatwright.models._remote import RemoteModel
from chatwright.models.base import (
    ModelEvent,
    ModelRequest,
    ModelSettings,
    ToolChoice,
    ToolSpec,
)
from chatwright.types import Done, Message, TextDelta, ToolCallEvent, ToolCallPart, Usage

__all__ = ["AnthropicModel", "to_anthropic"]

_DEFAULT_MAX_TOKENS = 1024  # the API requires max_tokens
_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


class AnthropicModel(RemoteModel):
    """A chat model served over Anthropic's Messages API."""

    provider = "anthropic"
    client_class = "AsyncAnthropic"
    default_url = "https://api.anthropic.com"
    server_label = "Anthropic API"
    not_found_hint = "check the model name after 'anthropic:', e.g. anthropic:claude-sonnet-4-5"

    def __init__(self, model: str, settings: AnthropicSettings | None = None) -> None:
        super().__init__(model, settings or AnthropicSettings())

    def _detail(self, error: Any) -> str:
        return str(getattr(error, "api_message", None) or error.message)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        sdk = self._sdk()
        client = self._get_client(sdk)
        try:
            events = await client.messages.create(**self._params(request))
            async with events:
                async for event in _events(events):
                    yield event
        except sdk.APIError as error:
            raise self._error(sdk, error) from error
        except _network_errors() as error:
            raise ModelUnavailable(
                f"lost the connection to {self.base_url or self.default_url} mid-answer: {error}",
                hint="is the server running? check your network and try again",
            ) from error

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        system, messages = to_anthropic(request.messages)
        settings = request.settings
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": settings.max_tokens or _DEFAULT_MAX_TOKENS,
            "messages": messages,
            "stream": True,
        }
        if system:
            params["system"] = system
        if request.response_format is not None:
            raise UserError(
                f"{self.name} cannot be held to a response_format here",
                hint="leave response_format out, or use an openai: or local: model for JSON",
            )
        if request.tools:
            params["tools"] = [_tool(t) for t in request.tools]
            params["tool_choice"] = _tool_choice(request.tool_choice, settings)
        if settings.stop:
            params["stop_sequences"] = list(settings.stop)
        if settings.timeout_s is not None:
            params["timeout"] = settings.timeout_s
        return params


def _network_errors() -> tuple[type[Exception], ...]:
    """What the SDK's HTTP library (httpx2, or httpx before 2.0) raises when a stream breaks.

    The SDK turns network errors into ``APIConnectionError`` only until the response starts.
    """
    libraries = (sys.modules.get(name) for name in ("httpx2", "httpx"))
    return tuple(lib.TransportError for lib in libraries if lib is not None)


def _tool_choice(choice: ToolChoice, settings: ModelSettings) -> dict[str, Any]:
    """OpenAI's tool_choice in Anthropic's words (``required`` is ``any`` there)."""
    out: dict[str, Any] = {"type": {"required": "any"}.get(choice.mode, choice.mode)}
    if choice.name is not None:
        out = {"type": "tool", "name": choice.name}
    if settings.parallel_tool_calls is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _tool(spec: ToolSpec) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": spec.name, "input_schema": spec.parameters}
    if spec.description:
        tool["description"] = spec.description
    return tool


# -- messages -----------------------------------------------------------------------------
def to_anthropic(messages: Iterable[Message]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the Messages API ``messages`` for ``messages``."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            system.append(message.text)
            continue
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(t for t in system if t), out


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        results = [
            {
                "type": "tool_result",
                "tool_use_id": r.tool_call_id,
                "content": r.content,
                "is_error": r.is_error,
            }
            for r in message.tool_results
        ]
        return "user", results
    blocks: list[dict[str, Any]] = []
    if message.text:  # the API rejects empty text blocks
        blocks.append({"type": "text", "text": message.text})
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)})
    return message.role, blocks


def _input(call: ToolCallPart) -> dict[str, Any]:
    """The call's arguments as an object; ``{}`` when they are not a JSON object."""
    try:
        parsed = call.parsed_arguments()
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


# -- streaming ----------------------------------------------------------------------------
@dataclass
class _PendingCall:
    """A ``tool_use`` block whose input JSON is still streaming in."""

    id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    def part(self) -> ToolCallPart:
        return ToolCallPart(id=self.id, name=self.name, arguments="".join(self.arguments) or "{}")


async def _events(events: AsyncIterator[Any]) -> AsyncIterator[ModelEvent]:
    """Turn raw Messages API stream events into chatwright events."""
    assembler = _Assembler()
    async for event in events:
        for out in assembler.feed(event):
            yield out
    yield Usage(input_tokens=assembler.input_tokens, output_tokens=assembler.output_tokens)
    reason = assembler.stop_reason
    yield Done(reason=_REASONS.get(reason, reason) if reason else "stop")


class _Assembler:
    """Follows content blocks, usage and the stop reason through the raw events."""

    def __init__(self) -> None:
        self.calls: dict[int, _PendingCall] = {}
        self.input_tokens = 0
        self.output_tokens = 0
        self.stop_reason: str | None = None

    def feed(self, event: Any) -> list[ModelEvent]:
        if event.type == "message_start":
            self.input_tokens = event.message.usage.input_tokens
        elif event.type == "content_block_start" and event.content_block.type == "tool_use":
            block = event.content_block
            self.calls[event.index] = _PendingCall(id=block.id, name=block.name)
        elif event.type == "content_block_delta":
            return self._delta(event.index, event.delta)
        elif event.type == "content_block_stop" and event.index in self.calls:
            return [ToolCallEvent(call=self.calls.pop(event.index).part())]
        elif event.type == "message_delta":
            self.stop_reason = event.delta.stop_reason
            self.output_tokens = event.usage.output_tokens
        return []

    def _delta(self, index: int, delta: Any) -> list[ModelEvent]:
        if delta.type == "text_delta":
            return [TextDelta(text=delta.text)]
        if delta.type == "input_json_delta" and index in self.calls:
            self.calls[index].arguments.append(delta.partial_json)
        return []
