"""The body of ``/v1/chat/completions``, checked as strictly as OpenAI does.

Every parameter OpenAI defines is either honoured, accepted only at the value that changes
nothing (``n = 1``, ``logprobs = false``, ``top_p = 1``, penalties 0), or a 400 in OpenAI's
error shape naming the parameter: never silently ignored. Informational fields that cannot
change an answer (``user``, ``metadata``, ``safety_identifier``, ``prompt_cache_key``,
``service_tier``) are accepted. The client's ``tools``, ``tool_choice`` and
``response_format`` become the :class:`ModelRequest` fields of the same names; in a turn of a
thread, ``tools`` are offered beside the bot's own, and ``tool_choice`` can only be ``auto``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chatwright.models.base import ModelSettings, ResponseFormat, ToolChoice, ToolSpec
from chatwright.server.errors import ApiError

__all__ = [
    "ChatRequest",
    "client_tools",
    "refuse_in_thread",
    "response_format",
    "thread_tool_choice",
    "tool_choice",
]

# What a parameter must be for it to change nothing here (anything else is a 400).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "top_p": (None, 1, 1.0),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "store": (None, False),
    "modalities": (None, ["text"]),
}
# Fields that describe the caller or the request and cannot change an answer.
_INFORMATIONAL = {"user", "metadata", "safety_identifier", "prompt_cache_key", "service_tier"}
_WHY = {
    "n": "one choice per request only: send n = 1 (or leave it out) and repeat the request",
    "seed": "sampling is not seeded per request here: leave seed out",
    "functions": "the legacy functions parameter is not supported: send tools instead",
    "function_call": "the legacy function_call parameter is not supported: send tool_choice",
}
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_THREAD_REFUSED = (
    "parallel_tool_calls",
    "response_format",
    "stop",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
)


class ChatRequest(BaseModel):
    """The fields read, strictly typed; the others OpenAI defines are checked by
    :meth:`check_unsupported`."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    # A C int at most: local models take it as one.
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    n: int | None = Field(default=None, ge=1)
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    # chatwright's extension, for a turn of a thread (X-Chatwright-Thread): see [knowledge]
    answer_mode: Literal["auto", "generate", "extract"] | None = None

    @field_validator("messages")
    @classmethod
    def _contents(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Content is text or a list of parts; null only beside an assistant's tool calls."""
        for i, message in enumerate(messages):
            content = message.get("content")
            calls = message.get("role") == "assistant" and (
                message.get("tool_calls") or message.get("function_call")
            )
            if content is None and not calls:
                raise ValueError(
                    f"messages[{i}].content is null or missing: only an assistant message"
                    " with tool_calls may leave it out"
                )
            if content is not None and not isinstance(content, str | list):
                raise ValueError(f"messages[{i}].content must be a string or a list of parts")
        return messages

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop is up to 4 non-empty strings")
        return stop

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, options: dict[str, Any] | None) -> dict[str, Any] | None:
        if options is not None and not isinstance(options.get("include_usage", False), bool):
            raise ValueError("stream_options.include_usage must be a boolean")
        return options

    def check_unsupported(self) -> None:
        """A 400 naming the first parameter that cannot be honoured as sent."""
        if self.n not in (None, 1):
            _unsupported("n", _WHY["n"])
        for name, value in (self.model_extra or {}).items():
            if name in _INFORMATIONAL:
                continue
            if name in _NEUTRAL:
                if value not in _NEUTRAL[name]:
                    allowed = _NEUTRAL[name][1]
                    _unsupported(name, f"{name} is not supported: leave it out (or {allowed!r})")
                continue
            _unsupported(name, _WHY.get(name, f"chatwright does not support {name}: leave it out"))
        if self.stream_options is not None and not self.stream:
            _unsupported("stream_options", "stream_options is only allowed with stream = true")

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def settings(self, max_tokens: int | None, temperature: float | None) -> ModelSettings:
        """The sampling settings: the request's, else the bot's (given)."""
        return ModelSettings(
            max_tokens=self.max_completion_tokens or self.max_tokens or max_tokens,
            temperature=self.temperature if self.temperature is not None else temperature,
            stop=self.stops(),
            parallel_tool_calls=self.parallel_tool_calls,
        )


def _unsupported(param: str, message: str, hint: str | None = None) -> None:
    raise ApiError(
        400,
        message,
        hint=hint or f"remove {param} from the request",
        type="unsupported",
        param=param,
    )


def _invalid(param: str, message: str, hint: str) -> ApiError:
    return ApiError(400, message, hint=hint, type="invalid_request", param=param)


def refuse_in_thread(body: ChatRequest, header: str) -> None:
    """With a thread, the bot's own settings and prompt run the turn: a parameter that would
    change them is refused rather than dropped (the client's ``tools`` join the bot's)."""
    for name in _THREAD_REFUSED:
        if getattr(body, name) is not None:
            raise ApiError(
                400,
                f"{name} cannot be used with {header}: a thread's turn runs with the bot's "
                "own settings",
                hint=f"leave {name} out, or leave {header} out to send a stateless request "
                "(response_format and sampling settings all work there)",
                type="unsupported",
                param=name,
            )


# -- tools --------------------------------------------------------------------------------------
def client_tools(tools: list[Any] | None) -> tuple[ToolSpec, ...]:
    """The request's function tools, checked: a name, an optional description, parameters
    that are a JSON-schema object."""
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools or ()):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise _invalid(
                "tools",
                f"{where}: only function tools are supported, not {kind!r}",
                'send {"type": "function", "function": {"name": ..., "parameters": {...}}}',
            )
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _invalid("tools", f"{where}.function must be an object", "see OpenAI's tools")
        specs.append(_spec(where, fn))
    names = [s.name for s in specs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise _invalid("tools", f"two tools are called {duplicate!r}", "give each tool its name")
    return tuple(specs)


def _spec(where: str, fn: dict[str, Any]) -> ToolSpec:
    name = fn.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        raise _invalid(
            "tools",
            f"{where}.function.name must be 1-64 letters, digits, '_' or '-', not {name!r}",
            "rename the tool",
        )
    description = fn.get("description", "")
    if not isinstance(description, str):
        raise _invalid("tools", f"{where}.function.description must be a string", "fix it")
    parameters = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise _invalid(
            "tools",
            f"{where}.function.parameters must be a JSON schema of type object",
            'e.g. {"type": "object", "properties": {"city": {"type": "string"}}}',
        )
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict) or not all(
        isinstance(p, dict) for p in properties.values()
    ):
        raise _invalid(
            "tools",
            f"{where}.function.parameters.properties must map names to JSON schemas",
            'e.g. {"city": {"type": "string"}}',
        )
    return ToolSpec(name=name, description=description, parameters=parameters)


def tool_choice(value: str | dict[str, Any] | None, tools: tuple[ToolSpec, ...]) -> ToolChoice:
    """``auto`` (the default), ``none``, ``required``, or one named function of ``tools``."""
    if value is None:
        return ToolChoice()
    if not tools:
        raise _invalid(
            "tool_choice",
            "tool_choice is only allowed when tools are given",
            "send tools too, or leave tool_choice out",
        )
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise _invalid(
                "tool_choice",
                f"unknown tool_choice {value!r}",
                'use "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
            )
        return ToolChoice(mode=value)  # type: ignore[arg-type]
    fn = value.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if value.get("type") != "function" or not isinstance(name, str):
        raise _invalid(
            "tool_choice",
            'tool_choice as an object must be {"type": "function", "function": {"name": ...}}',
            'or use "auto", "none" or "required"',
        )
    if name not in {t.name for t in tools}:
        raise _invalid(
            "tool_choice",
            f"tool_choice names {name!r}, which is not one of the tools",
            f"name one of: {', '.join(t.name for t in tools)}",
        )
    return ToolChoice(mode="required", name=name)


def thread_tool_choice(
    value: str | dict[str, Any] | None, tools: tuple[ToolSpec, ...], header: str
) -> None:
    """In a turn of a thread the model chooses among the bot's tools and the client's at
    each step: only ``auto`` fits (anything forced would be forced at every step)."""
    if value is None:
        return
    tool_choice(value, tools)  # a malformed value is named as such first
    if value != "auto":
        raise ApiError(
            400,
            f"tool_choice {value!r} cannot be used with {header}: a thread's turn may take"
            " several steps, and the model chooses among the bot's tools and yours at each",
            hint='send tool_choice "auto" or leave it out; forced calls work without the'
            " thread header",
            type="unsupported",
            param="tool_choice",
        )


# -- response_format ------------------------------------------------------------------------------
def response_format(value: dict[str, Any] | None) -> ResponseFormat | None:
    """``text`` (or none): free text; ``json_object``; ``json_schema`` with its schema."""
    if value is None or value.get("type") == "text":
        return None
    kind = value.get("type")
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind != "json_schema":
        raise _invalid(
            "response_format",
            f"unknown response_format type {kind!r}",
            'use {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
            '"json_schema": {"name": ..., "schema": {...}}}',
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _invalid(
            "response_format",
            "response_format.json_schema must be an object with a name",
            'send {"name": "answer", "schema": {...}}',
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise _invalid(
            "response_format", "response_format.json_schema.schema must be an object", "fix it"
        )
    strict = spec.get("strict")
    return ResponseFormat(
        type="json_schema",
        name=spec["name"],
        json_schema=schema,
        strict=strict if isinstance(strict, bool) else None,
    )
