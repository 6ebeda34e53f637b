"""``openai:<model>``: OpenAI and every OpenAI-compatible server, through the official SDK.

The server is ``[openai] base_url`` in chatwright.toml, else ``$OPENAI_BASE_URL``, else
api.openai.com. The key is ``[openai] api_key``, else ``$OPENAI_API_KEY``; local servers
(Ollama, vLLM, llama.cpp, LM Studio) need none, so a placeholder is sent when a base_url is
set. The SDK is imported on first use and every failure, a missing package included, is
raised while the stream is iterated, as a :class:`chatwright.errors.ModelError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from chatwright.config import OpenAISettings
from chatwright.models._remote import RemoteModel
from chatwright.models.base import ModelEvent, ModelRequest, ResponseFormat, ToolChoice, ToolSpec
from chatwright.types import Done, TextDelta, ToolCallEvent, ToolCallPart, Usage, to_openai

__all__ = ["OpenAIModel"]


class OpenAIModel(RemoteModel):
    """A chat model served over the OpenAI chat-completions API."""

    provider = "openai"
    client_class = "AsyncOpenAI"
    default_url = "https://api.openai.com/v1"
    server_label = "OpenAI-compatible server"
    not_found_hint = "check the model name after 'openai:' and that base_url ends in /v1"

    def __init__(self, model: str, settings: OpenAISettings | None = None) -> None:
        super().__init__(model, settings or OpenAISettings())

    def _detail(self, error: Any) -> str:
        body = error.body
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body["message"]
        return str(error.message)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        sdk = self._sdk()
        client = self._get_client(sdk)
        try:
            chunks = await client.chat.completions.create(**self._params(request))
            async with chunks:
                async for event in _events(chunks):
                    yield event
        except sdk.APIError as error:
            raise self._error(sdk, error) from error

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai(request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            params["tools"] = [_tool(t) for t in request.tools]
            params["tool_choice"] = _tool_choice(request.tool_choice)
            if request.settings.parallel_tool_calls is not None:
                params["parallel_tool_calls"] = request.settings.parallel_tool_calls
        if request.response_format is not None:
            params["response_format"] = _response_format(request.response_format)
        settings = request.settings
        if settings.max_tokens is not None:
            params["max_tokens"] = settings.max_tokens
        if settings.temperature is not None:
            params["temperature"] = settings.temperature
        if settings.stop:
            params["stop"] = list(settings.stop)
        if settings.timeout_s is not None:
            params["timeout"] = settings.timeout_s
        return params


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.name is not None:
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.json_schema or {}}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def _tool(spec: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": spec.name, "parameters": spec.parameters}
    if spec.description:
        function["description"] = spec.description
    return {"type": "function", "function": function}


@dataclass
class _PendingCall:
    """A tool call whose pieces are still streaming in."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def part(self, index: int) -> ToolCallPart:
        args = "".join(self.arguments) or "{}"
        return ToolCallPart(id=self.id or f"call_{index}", name=self.name, arguments=args)


async def _events(chunks: AsyncIterator[Any]) -> AsyncIterator[ModelEvent]:
    """Turn streamed ``chat.completion.chunk`` objects into chatwright events."""
    assembler = _Assembler()
    async for chunk in chunks:
        for event in assembler.feed(chunk):
            yield event
    for event in assembler.finish():
        yield event


class _Assembler:
    """Collects text, tool-call pieces, usage and the finish reason from chunks."""

    def __init__(self) -> None:
        self.pending: dict[int, _PendingCall] = {}
        self.reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, chunk: Any) -> list[ModelEvent]:
        events: list[ModelEvent] = []
        if chunk.usage is not None:
            self.usage = Usage(
                input_tokens=chunk.usage.prompt_tokens or 0,
                output_tokens=chunk.usage.completion_tokens or 0,
            )
        for choice in chunk.choices:
            if choice.delta.content:
                events.append(TextDelta(text=choice.delta.content))
            for piece in choice.delta.tool_calls or ():
                self._add_piece(piece)
            self.reason = choice.finish_reason or self.reason
        return events

    def finish(self) -> list[ModelEvent]:
        """The complete tool calls (in index order), the usage, and :class:`Done`."""
        events: list[ModelEvent] = [
            ToolCallEvent(call=self.pending[i].part(i)) for i in sorted(self.pending)
        ]
        if self.usage is not None:
            events.append(self.usage)
        reason = self.reason
        if self.pending and reason in (None, "stop"):
            reason = "tool_calls"  # some compatible servers say "stop" after tool calls
        events.append(Done(reason=reason or "stop"))
        return events

    def _add_piece(self, piece: Any) -> None:
        call = self.pending.setdefault(piece.index, _PendingCall())
        if piece.id:
            call.id = piece.id
        if piece.function is None:
            return
        if piece.function.name:
            call.name = piece.function.name
        if piece.function.arguments:
            call.arguments.append(piece.function.arguments)
