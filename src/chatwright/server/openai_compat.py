"""The OpenAI-compatible endpoint: ``/v1/models`` and ``/v1/chat/completions``.

Any OpenAI client works unchanged (``base_url=http://host:port/v1``, ``api_key`` = a chatwright
key, or anything on a loopback server without keys). ``model`` names a bot (``support``) or a
model a bot runs (``openai:gpt-4o-mini``); ``test:*`` models are served too. Anything else is
a 404 in OpenAI's error shape, as are all errors here.

Two ways to talk:

- **Stateless** (no header): the request's messages are the whole conversation, as with
  OpenAI. They go to the bot's model as given (the bot's system prompt is put first when the
  request has no system message); nothing is stored, no documents or tools are used.
- **A chatwright thread**: with ``X-Chatwright-Thread: <id>``, only the last user message is
  taken, as a new turn of that thread (the rest comes from the thread's memory), through the
  full engine: memory, documents, tools (calls that need approval are refused: nobody could
  answer), all stored. The turn runs to the end even if the client goes away.

Streaming sends ``chat.completion.chunk`` objects as ``data:`` lines and ends with
``data: [DONE]``; an error after the stream began is one ``data: {"error": {...}}`` line.

The body is checked strictly, as OpenAI does, and a mistake is a 400: ``"stream": "yes"`` is
not a boolean, and a message's ``content`` may be null (or missing) only in an assistant
message that calls tools. A user's turns running at once count against ``max_turns_per_user``
either way (429).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette import EventSourceResponse

from chatwright.agent import Generation, generate
from chatwright.bot import Chatbot
from chatwright.errors import ChatwrightError
from chatwright.models import ModelRequest, ModelSettings
from chatwright.server.deps import CurrentUser, State
from chatwright.server.errors import (
    ApiError,
    SafeJSONResponse,
    error_body,
    status_of,
    to_json,
    type_of,
)
from chatwright.server.events import TurnFailed, error_json, error_status
from chatwright.server.schemas import BODY_ERRORS, OpenAIErrorOut, errors
from chatwright.server.state import ServerState
from chatwright.store.sqlite import check_thread_id
from chatwright.types import Message, TextDelta, TurnEnd, _jsonable, from_openai

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["openai"],
    default_response_class=SafeJSONResponse,
    responses=errors(400, 401, 500, model=OpenAIErrorOut),
)
STARTED = int(time.time())
THREAD_HEADER = "X-Chatwright-Thread"


class ChatRequest(BaseModel):
    """The fields read, strictly typed; others OpenAI defines are accepted and ignored."""

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
    tools: list[Any] | None = None
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


@dataclass
class _Finish:
    """How a completion ended: the reason, token counts, chatwright's extras."""

    reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# -- /v1/models -------------------------------------------------------------------------------
@router.get("/models")
def list_models(user: CurrentUser, state: State) -> dict[str, Any]:
    """The bots (by name) and the models they run; ``chatwright.kind`` says which is which."""
    data: list[dict[str, Any]] = []
    models: dict[str, str] = {}
    for name, bot in state.bots.items():
        section = state.settings.bots.get(name)
        info = {
            "kind": "bot",
            "model": bot.model.name,
            "description": section.description if section else "",
            "default": name == state.default_name,
        }
        data.append(_model_entry(name, info))
        models.setdefault(bot.model.name, name)
    for model, bot_name in models.items():
        info = {"kind": "model", "bot": bot_name, "description": f"served by bot {bot_name!r}"}
        data.append(_model_entry(model, info))
    return {"object": "list", "data": data}


def _model_entry(name: str, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": STARTED,
        "owned_by": "chatwright",
        "chatwright": info,
    }


# -- /v1/chat/completions ---------------------------------------------------------------------
@router.post(
    "/chat/completions",
    response_model=None,
    responses=errors(*BODY_ERRORS, 404, 409, 429, 502, 503, model=OpenAIErrorOut),
)
async def chat_completions(
    body: ChatRequest,
    user: CurrentUser,
    state: State,
    thread: Annotated[
        str | None,
        Header(alias=THREAD_HEADER, description="continue this chatwright thread"),
    ] = None,
) -> Any:
    """Chat completions, streamed or not (see the module's docstring)."""
    bot = _bot(state, body.model)
    if body.n not in (None, 1):
        raise ApiError(400, "only n = 1 is supported", type="unsupported", param="n")
    if body.tools:
        raise ApiError(
            400,
            "request tools are not supported: a bot's tools run on the server",
            hint="configure tools on the bot, or leave tools out",
            type="unsupported",
            param="tools",
        )
    if thread is not None:
        source = await _thread_turn(state, bot, user.user, thread, body)
    else:
        source = _stateless(state, user.user, bot, body)
    completion = _Completion(body, thread)
    if not body.stream:
        return await completion.collect(source)
    first = await _first(source)
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    return EventSourceResponse(
        completion.chunks(first, source, include_usage),
        headers=completion.headers(),
        ping=15,
    )


def _bot(state: ServerState, model: str) -> Chatbot:
    bot = state.bot_for_model(model)
    if bot is None:
        known = ", ".join([*state.bots, *{b.model.name for b in state.bots.values()}])
        raise ApiError(
            404,
            f"the model {model!r} does not exist here",
            hint=f"use a bot or model this server runs ({known}); see GET /v1/models",
            type="model_not_found",
            param="model",
        )
    return bot


async def _thread_turn(
    state: ServerState, bot: Chatbot, owner: str, thread: str, body: ChatRequest
) -> AsyncIterator[str | _Finish]:
    """The last user message as a new turn of ``thread``, through the whole engine."""
    check_thread_id(thread)
    messages = _parse(body.messages)
    if messages[-1].role != "user":
        raise ApiError(
            400,
            f"with {THREAD_HEADER}, the last message must be the user's new message",
            hint="send the thread's new user message last (earlier ones are ignored)",
            type="invalid_request",
            param="messages",
        )
    text = bot.check_message(messages[-1].text)
    run = await state.start_turn(
        bot, owner, thread, text, interactive=False, answer_mode=body.answer_mode
    )

    async def events() -> AsyncIterator[str | _Finish]:
        async for item in run.events():
            if isinstance(item, TextDelta):
                yield item.text
            elif isinstance(item, TurnEnd):
                yield _turn_finish(item)
            elif isinstance(item, TurnFailed):
                raise _failure(item)

    return events()


def _turn_finish(end: TurnEnd) -> _Finish:
    answer = end.answer
    finish = answer.message.metadata.get("finish")
    return _Finish(
        reason="length" if finish == "length" else "stop",
        prompt_tokens=answer.trace.input_tokens,
        completion_tokens=answer.trace.output_tokens,
        extra={
            "thread_id": answer.thread_id,
            "seq": answer.seq,
            "interrupted": answer.interrupted,
            "citations": [_jsonable(c) for c in answer.citations],
        },
    )


def _failure(failed: TurnFailed) -> Exception:
    if isinstance(failed.error, ChatwrightError):
        return failed.error
    data = error_json(failed)
    return ApiError(error_status(failed), data["message"], hint=data["hint"], type=data["type"])


def _parse(items: list[dict[str, Any]]) -> list[Message]:
    try:
        return from_openai(items)
    except ValueError as e:
        raise ApiError(
            400,
            str(e),
            hint="messages are {role, content} objects",
            type="invalid_request",
            param="messages",
        ) from None


async def _stateless(
    state: ServerState, owner: str, bot: Chatbot, body: ChatRequest
) -> AsyncIterator[str | _Finish]:
    """The messages as given, to the bot's model; nothing stored."""
    async with state.turn_slot(owner):
        async for item in _generate(bot, body):
            yield item


async def _generate(bot: Chatbot, body: ChatRequest) -> AsyncIterator[str | _Finish]:
    messages = _parse(body.messages)
    if not any(m.role == "system" for m in messages) and bot.system_prompt:
        messages.insert(0, Message.system(bot.system_prompt))
    settings = ModelSettings(
        max_tokens=body.max_completion_tokens or body.max_tokens or bot.settings.max_answer_tokens,
        temperature=body.temperature if body.temperature is not None else bot.settings.temperature,
    )
    request = ModelRequest(messages=tuple(messages), settings=settings)
    generation = Generation()
    try:
        async with asyncio.timeout(bot.settings.model_timeout_s):
            async for event in generate(bot.model, request, generation):
                if isinstance(event, TextDelta):
                    yield event.text
    except TimeoutError:
        raise ApiError(
            503,
            f"{bot.model.name} did not finish within {bot.settings.model_timeout_s:g} s",
            hint="raise model_timeout_s in chatwright.toml, or check the model server",
            type="model_unavailable",
        ) from None
    yield _Finish(
        reason="length" if generation.finish == "length" else "stop",
        prompt_tokens=generation.usage.input_tokens,
        completion_tokens=generation.usage.output_tokens,
    )


async def _first(source: AsyncIterator[str | _Finish]) -> str | _Finish | None:
    """The first item, so that a failure before any output is an HTTP error status."""
    return await anext(source, None)


class _Completion:
    """Builds the OpenAI response objects of one completion."""

    def __init__(self, body: ChatRequest, thread: str | None) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = body.model
        self.thread = thread

    def headers(self) -> dict[str, str]:
        return {THREAD_HEADER: self.thread} if self.thread else {}

    async def collect(self, source: AsyncIterator[str | _Finish]) -> SafeJSONResponse:
        text: list[str] = []
        finish = _Finish()
        async for item in source:
            if isinstance(item, _Finish):
                finish = item
            else:
                text.append(item)
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(text)},
                    "finish_reason": finish.reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(finish),
        }
        if finish.extra:
            body["chatwright"] = finish.extra
        return SafeJSONResponse(body, headers=self.headers())

    def _chunk(self, delta: dict[str, Any], reason: str | None = None) -> dict[str, str]:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
        }
        return {"data": to_json(chunk)}

    async def chunks(
        self,
        first: str | _Finish | None,
        rest: AsyncIterator[str | _Finish],
        include_usage: bool,
    ) -> AsyncIterator[dict[str, str]]:
        yield self._chunk({"role": "assistant", "content": ""})
        try:
            item = first
            while item is not None:
                if isinstance(item, _Finish):
                    yield self._chunk({}, item.reason)
                    if include_usage:
                        yield self._usage_chunk(item)
                elif item:
                    yield self._chunk({"content": item})
                item = await anext(rest, None)
        except (ChatwrightError, ApiError) as e:
            yield {"data": to_json(_error_payload(e))}
            return
        finally:  # a client gone mid-stream: the source ends now (its turn slot with it)
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                await aclose()
        yield {"data": "[DONE]"}

    def _usage_chunk(self, finish: _Finish) -> dict[str, str]:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": _usage(finish),
        }
        return {"data": to_json(chunk)}


def _usage(finish: _Finish) -> dict[str, int]:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    }


def _error_payload(e: Exception) -> dict[str, Any]:
    if isinstance(e, ApiError):
        return error_body("/v1/", e.status, e.message, e.hint, e.type, e.param)
    assert isinstance(e, ChatwrightError)
    return error_body("/v1/", status_of(e), e.message, e.hint, type_of(e))
