"""The one interface every chat model implements, and what a request to it holds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from chatwright.types import Done, Message, TextDelta, ToolCallEvent, Usage

__all__ = [
    "Model",
    "ModelEvent",
    "ModelRequest",
    "ModelSettings",
    "ResponseFormat",
    "ToolChoice",
    "ToolSpec",
    "complete_text",
]

ModelEvent: TypeAlias = TextDelta | ToolCallEvent | Usage | Done


class ToolSpec(BaseModel):
    """A tool the model may call: its name, what it does, and a JSON schema for its arguments."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolChoice(BaseModel):
    """Whether the model may (``auto``), must not (``none``) or must (``required``) call one of
    the request's tools; ``name``: it must call that one (``mode`` is then ``required``)."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["auto", "none", "required"] = "auto"
    name: str | None = None


class ResponseFormat(BaseModel):
    """The answer must be a JSON object (``json_object``), or JSON valid for ``json_schema``."""

    model_config = ConfigDict(frozen=True)

    type: Literal["json_object", "json_schema"]
    name: str = "response"
    json_schema: dict[str, Any] | None = None
    strict: bool | None = None


class ModelSettings(BaseModel):
    """Sampling settings for one request; ``None`` leaves the provider's default."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    timeout_s: float | None = None
    parallel_tool_calls: bool | None = None  # False: at most one tool call per answer


class ModelRequest(BaseModel):
    """Everything a model receives for one call."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    settings: ModelSettings = ModelSettings()
    tool_choice: ToolChoice = ToolChoice()
    response_format: ResponseFormat | None = None


@runtime_checkable
class Model(Protocol):
    """A chat model. One required method: :meth:`stream`.

    ``stream`` yields :class:`TextDelta` pieces as they come, one :class:`ToolCallEvent` per
    complete tool call, at most one :class:`Usage`, and ends with exactly one :class:`Done`.
    It raises :class:`chatwright.errors.ModelError` subclasses on failure.

    Optional: ``check()`` raises :class:`chatwright.errors.ModelUnavailable` when no call can
    be made (a missing key or SDK) without calling the model; a turn calls it before it
    stores the user's message, so such a failure leaves no thread behind.
    """

    name: str

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]: ...


async def complete_text(model: Model, request: ModelRequest, timeout_s: float) -> str:
    """The text ``model`` answers ``request`` with, whole (a side call: a rewrite, a summary,
    a title); raises what the model raises, or TimeoutError after ``timeout_s``."""
    pieces: list[str] = []
    async with asyncio.timeout(timeout_s):
        async for event in model.stream(request):
            if isinstance(event, TextDelta):
                pieces.append(event.text)
    return "".join(pieces)
