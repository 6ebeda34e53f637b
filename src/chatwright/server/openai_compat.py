"""The OpenAI-compatible endpoint: ``/v1/models``, ``/v1/chat/completions``, ``/v1/embeddings``.

Any OpenAI client works unchanged (``base_url=http://host:port/v1``, ``api_key`` = a chatwright
key, or anything on a loopback server without keys). ``model`` names a bot (``support``) or a
model a bot runs (``openai:gpt-4o-mini``); ``test:*`` models are served too. Anything else is
a 404 in OpenAI's error shape, as are all errors here.

Two ways to talk:

- **Stateless** (no header): the request's messages are the whole conversation, as with
  OpenAI. They go to the bot's model as given (the bot's system prompt is put first when the
  request has no system message); nothing is stored, and the bot's own tools and documents
  are not used. The client's ``tools`` work as on OpenAI: the model may answer with
  ``tool_calls`` (``finish_reason: "tool_calls"``), which the *client* runs, sending the
  results back as ``role: "tool"`` messages in its next request. ``tool_choice`` is
  ``auto``, ``none``, ``required`` or a named function; ``response_format`` is ``text``,
  ``json_object`` or ``json_schema``; ``stop`` ends the answer. On the embedded model a
  forced tool call and JSON answers are held to the schema by a llama.cpp grammar (a schema
  it cannot express is a 400); remote models get them passed through.
- **A chatwright thread**: with ``X-Chatwright-Thread: <id>``, only the last user message is
  taken, as a new turn of that thread (the rest comes from the thread's memory), through the
  full engine: memory, documents, the bot's own tools (calls that need approval are refused:
  nobody could answer), all stored. The turn runs to the end even if the client goes away.
  The client's ``tools`` are offered beside the bot's (a name of the bot's is a 400): the
  bot's calls run here; a call of the client's ends the turn, stored in the thread (the
  assistant message with its calls, metadata ``client_calls``), and comes back as
  ``tool_calls`` (``finish_reason: "tool_calls"``). The client's next request ends with its
  ``role: "tool"`` results (after the history, as OpenAI clients send it: only the trailing
  tool messages count): they are stored as the thread's tool message, untrusted tool output
  like any (``chatwright.trust``), and the same turn goes on, with no new user message. A
  result for a call the thread does not wait for, two for one call, or a waiting call left
  without one is a 400, and nothing is stored; a new user message instead closes the
  waiting calls as not answered. The bot's settings run the turn, so ``tool_choice`` other
  than ``auto``, ``parallel_tool_calls``, ``response_format``, ``stop``, ``temperature`` and
  ``max_tokens`` are refused there (400) rather than dropped.

Streaming sends ``chat.completion.chunk`` objects as ``data:`` lines and ends with
``data: [DONE]``; a tool call comes whole in one ``delta.tool_calls`` chunk; with
``stream_options: {"include_usage": true}`` a last chunk carries ``usage``. An error after
the stream began is one ``data: {"error": {...}}`` line.

The body is checked strictly, as OpenAI does, and a mistake is a 400 (``openai_request.py``):
``"stream": "yes"`` is not a boolean, a message's ``content`` may be null (or missing) only in
an assistant message that calls tools, and a parameter that cannot be honoured (``n`` > 1,
``logprobs``, ``seed``, penalties, unknown fields) is refused, never ignored. A user's turns
running at once count against ``max_turns_per_user`` either way (429). Embeddings:
``openai_embeddings.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Header
from sse_starlette import EventSourceResponse

from chatwright.agent import Generation, generate
from chatwright.bot import Chatbot
from chatwright.errors import ChatwrightError
from chatwright.models.base import ModelRequest
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
from chatwright.server.openai_embeddings import embeddings
from chatwright.server.openai_request import (
    ChatRequest,
    client_tools,
    refuse_in_thread,
    response_format,
    thread_tool_choice,
    tool_choice,
)
from chatwright.server.schemas import BODY_ERRORS, OpenAIErrorOut, errors
from chatwright.server.state import ServerState
from chatwright.store.sqlite import check_thread_id
from chatwright.types import (
    Message,
    TextDelta,
    ToolCallEvent,
    ToolCallPart,
    TurnEnd,
    _jsonable,
    from_openai,
)

__all__ = ["router"]

router = APIRouter(
    prefix="/v1",
    tags=["openai"],
    default_response_class=SafeJSONResponse,
    responses=errors(400, 401, 500, model=OpenAIErrorOut),
)
STARTED = int(time.time())
THREAD_HEADER = "X-Chatwright-Thread"


@dataclass
class _Finish:
    """How a completion ended: the reason, token counts, chatwright's extras."""

    reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


Item = str | ToolCallPart | _Finish  # a piece of text, a whole tool call, the end


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
    body.check_unsupported()
    if thread is not None:
        refuse_in_thread(body, THREAD_HEADER)
        source = await _thread_turn(state, bot, user.user, thread, body)
    elif body.answer_mode is not None:
        raise ApiError(
            400,
            f"answer_mode applies to a turn of a thread: send it with {THREAD_HEADER}",
            hint=f"add the header {THREAD_HEADER}: <thread id>, or leave answer_mode out",
            type="unsupported",
            param="answer_mode",
        )
    else:
        request = _model_request(bot, body)
        source = _stateless(state, user.user, bot, request)
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


router.add_api_route(
    "/embeddings",
    embeddings,
    methods=["POST"],
    response_model=None,
    responses=errors(*BODY_ERRORS, 404, 503, model=OpenAIErrorOut),
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
) -> AsyncIterator[Item]:
    """A turn of ``thread`` through the whole engine: the last user message as a new turn,
    or the trailing tool messages as the results that resume the turn waiting for them."""
    check_thread_id(thread)
    specs = client_tools(body.tools)
    thread_tool_choice(body.tool_choice, specs, THREAD_HEADER)
    messages = _parse(body.messages)
    last = messages[-1]
    if last.role not in ("user", "tool"):
        raise ApiError(
            400,
            f"with {THREAD_HEADER}, the last message must be the user's new message, or the"
            " tool messages answering the thread's tool calls",
            hint="send the thread's new user message (or your tools' results) last; earlier"
            " messages are ignored",
            type="invalid_request",
            param="messages",
        )
    bot.check_client_tools(specs, owner)  # a name clash: 400 before anything is stored
    # Offered tools are meant to be called: the model answers (never quoted passages alone).
    mode = body.answer_mode or ("generate" if specs else None)
    text = ""
    if last.role == "tool":
        results = last.tool_results

        def turn(thread_id: str, said: str, **kwargs: Any) -> AsyncIterator[Any]:
            return bot.resume_stream(thread_id, results, client_tools=specs, **kwargs)

    else:
        text = bot.check_message(last.text)

        def turn(thread_id: str, said: str, **kwargs: Any) -> AsyncIterator[Any]:
            return bot.stream(thread_id, said, client_tools=specs, **kwargs)

    run = await state.start_turn(
        bot, owner, thread, text, interactive=False, answer_mode=mode, events=turn
    )

    async def events() -> AsyncIterator[Item]:
        async for item in run.events():
            if isinstance(item, TextDelta):
                yield item.text
            elif isinstance(item, TurnEnd):
                waiting = set(item.answer.message.metadata.get("client_calls") or ())
                for call in item.answer.message.tool_calls:
                    if call.id in waiting:  # the client runs them; the bot's ran here
                        yield call
                yield _turn_finish(item)
            elif isinstance(item, TurnFailed):
                raise _failure(item)

    return events()


def _turn_finish(end: TurnEnd) -> _Finish:
    answer = end.answer
    finish = answer.message.metadata.get("finish")
    reason = "length" if finish == "length" else "stop"
    if answer.message.metadata.get("client_calls"):
        reason = "tool_calls"
    return _Finish(
        reason=reason,
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
        return _paired(from_openai(items))
    except ValueError as e:
        raise ApiError(
            400,
            str(e),
            hint="messages are {role, content} objects",
            type="invalid_request",
            param="messages",
        ) from None


def _paired(messages: list[Message]) -> list[Message]:
    """The results of one step's calls as one tool message, as chatwright stores them, each
    named after its call (OpenAI's tool messages send one result each, without the name)."""
    names: dict[str, str] = {}
    out: list[Message] = []
    for message in messages:
        names.update((c.id, c.name) for c in message.tool_calls)
        if message.role != "tool":
            out.append(message)
            continue
        results = [
            r if r.name else r.model_copy(update={"name": names.get(r.tool_call_id, "")})
            for r in message.tool_results
        ]
        if out and out[-1].role == "tool":
            results = [*out.pop().tool_results, *results]
        out.append(Message.tool(*results))
    return out


def _model_request(bot: Chatbot, body: ChatRequest) -> ModelRequest:
    """The request as given, for the bot's model (its system prompt first when the request
    has none); a schema the model cannot be held to is a 400 now, before anything runs."""
    messages = _parse(body.messages)
    if not any(m.role == "system" for m in messages) and bot.system_prompt:
        messages.insert(0, Message.system(bot.system_prompt))
    tools = client_tools(body.tools)
    request = ModelRequest(
        messages=tuple(messages),
        tools=tools,
        tool_choice=tool_choice(body.tool_choice, tools),
        response_format=response_format(body.response_format),
        settings=body.settings(bot.settings.max_answer_tokens, bot.settings.temperature),
    )
    check = getattr(bot.model, "check_request", None)
    if check is not None:
        check(request)
    return request


async def _stateless(
    state: ServerState, owner: str, bot: Chatbot, request: ModelRequest
) -> AsyncIterator[str | ToolCallPart | _Finish]:
    """The messages as given, to the bot's model; nothing stored."""
    async with state.turn_slot(owner):
        async for item in _generate(bot, request):
            yield item


async def _generate(
    bot: Chatbot, request: ModelRequest
) -> AsyncIterator[str | ToolCallPart | _Finish]:
    generation = Generation()
    try:
        async with asyncio.timeout(bot.settings.model_timeout_s):
            async for event in generate(bot.model, request, generation):
                if isinstance(event, TextDelta):
                    yield event.text
                elif isinstance(event, ToolCallEvent):
                    yield event.call
    except TimeoutError:
        raise ApiError(
            503,
            f"{bot.model.name} did not finish within {bot.settings.model_timeout_s:g} s",
            hint="raise model_timeout_s in chatwright.toml, or check the model server",
            type="model_unavailable",
        ) from None
    reason = "length" if generation.finish == "length" else "stop"
    if generation.tool_calls:
        reason = "tool_calls"
    yield _Finish(
        reason=reason,
        prompt_tokens=generation.usage.input_tokens,
        completion_tokens=generation.usage.output_tokens,
    )


async def _first(source: AsyncIterator[Item]) -> Item | None:
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

    async def collect(self, source: AsyncIterator[Item]) -> SafeJSONResponse:
        text: list[str] = []
        calls: list[ToolCallPart] = []
        finish = _Finish()
        async for item in source:
            if isinstance(item, _Finish):
                finish = item
            elif isinstance(item, ToolCallPart):
                calls.append(item)
            else:
                text.append(item)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if calls:
            message["content"] = message["content"] or None
            message["tool_calls"] = [_call_json(c) for c in calls]
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
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
        first: Item | None,
        rest: AsyncIterator[Item],
        include_usage: bool,
    ) -> AsyncIterator[dict[str, str]]:
        yield self._chunk({"role": "assistant", "content": ""})
        calls = 0
        try:
            item = first
            while item is not None:
                if isinstance(item, _Finish):
                    yield self._chunk({}, item.reason)
                    if include_usage:
                        yield self._usage_chunk(item)
                elif isinstance(item, ToolCallPart):  # whole: the model's events carry them so
                    yield self._chunk({"tool_calls": [{"index": calls, **_call_json(item)}]})
                    calls += 1
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


def _call_json(call: ToolCallPart) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


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
