"""``openai:<model>``: OpenAI and every OpenAI-compatible server, through the official SDK.

The server is ``[openai] base_url`` in chatwright.toml, else ``$OPENAI_BASE_URL``, else
api.openai.com. The key is ``[openai] api_key``, else ``$OPENAI_API_KEY``; local servers
(Ollama, vLLM, llama.cpp, LM Studio) need none, so a placeholder is sent when a base_url is
set. The SDK is imported on first use and every failure, a missing package included, is
raised while the stream is iterated, as a :class:`chatwright.errors.ModelError`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from chatwright.config import OpenAISettings
from chatwright.errors import ModelError, ModelResponseError, ModelUnavailable
from chatwright.models.base import ModelEvent, ModelRequest, ToolSpec
from chatwright.types import Done, TextDelta, ToolCallEvent, ToolCallPart, Usage, to_openai

__all__ = ["OpenAIModel"]

_NO_KEY = "not-needed"  # sent to servers that ignore the key
_DEFAULT_URL = "https://api.openai.com/v1"


def _import_sdk() -> Any:
    try:
        import openai
    except ImportError:
        raise ModelUnavailable(
            "the openai provider needs the openai package",
            hint='pip install "chatwright[openai]"',
        ) from None
    return openai


class OpenAIModel:
    """A chat model served over the OpenAI chat-completions API."""

    def __init__(self, model: str, settings: OpenAISettings | None = None) -> None:
        self.model = model
        self.name = f"openai:{model}"
        self.settings = settings or OpenAISettings()
        self._client: Any = None

    @property
    def base_url(self) -> str | None:
        """The configured server, or ``None`` for the SDK's default (api.openai.com)."""
        return self.settings.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def _api_key(self) -> str:
        key = self.settings.api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        if self.base_url:
            return _NO_KEY
        raise ModelUnavailable(
            f"no API key for {self.name}",
            hint="set OPENAI_API_KEY, or api_key under [openai] in chatwright.toml "
            "(or base_url there for a local OpenAI-compatible server)",
        )

    def _get_client(self, sdk: Any) -> Any:
        if self._client is None:
            self._client = sdk.AsyncOpenAI(
                api_key=self._api_key(),
                base_url=self.base_url,
                timeout=self.settings.timeout_s,
                max_retries=self.settings.max_retries,
            )
        return self._client

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        sdk = _import_sdk()
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

    def _error(self, sdk: Any, error: Any) -> ModelError:
        where = self.base_url or _DEFAULT_URL
        if isinstance(error, sdk.APIConnectionError):
            return ModelUnavailable(
                f"cannot reach the OpenAI-compatible server at {where}: {error.message}",
                hint="is the server running? check [openai] base_url in chatwright.toml "
                "or OPENAI_BASE_URL",
            )
        detail = _server_message(error)
        if isinstance(error, sdk.AuthenticationError):
            return ModelUnavailable(
                f"{where} rejected the API key (HTTP 401): {detail}",
                hint="check OPENAI_API_KEY, or api_key under [openai] in chatwright.toml",
            )
        if isinstance(error, sdk.NotFoundError):
            return ModelUnavailable(
                f"model {self.model!r} was not found at {where} (HTTP 404): {detail}",
                hint="check the model name after 'openai:' and that base_url ends in /v1",
            )
        if isinstance(error, sdk.APIStatusError):
            return ModelResponseError(f"{where} answered HTTP {error.status_code}: {detail}")
        return ModelResponseError(f"{where} sent an error: {detail}")


def _tool(spec: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": spec.name, "parameters": spec.parameters}
    if spec.description:
        function["description"] = spec.description
    return {"type": "function", "function": function}


def _server_message(error: Any) -> str:
    """The server's own words: ``error.message`` of the body when there is one."""
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(error.message)


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
