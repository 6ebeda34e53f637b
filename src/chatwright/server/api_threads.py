"""``/api/threads``: threads, their history, traces, pins, and turns (streamed or not).

A turn (``POST /api/threads/{id}/messages``) is validated first (message, thread id, bot), so
a mistake is a plain 4xx JSON error; a thread waiting for an approval is a 409 that names the
call, and a user running ``max_turns_per_user`` turns gets a 429
(``ServerState.start_turn``). Then it runs as a background task (``turns.py``) and the
response waits for its first event: a turn that fails before producing anything is answered
with an error status too. After that the stream is Server-Sent Events (``events.py``) and a
failure is an ``error`` event. A thread id not seen before starts that thread; thread ids are
per user, so another user's thread of the same id is simply a different thread.
"""

from __future__ import annotations

import asyncio
from itertools import islice
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response

from chatwright.export import export_thread as render_export
from chatwright.server.deps import CurrentUser, State
from chatwright.server.errors import ApiError, SafeJSONResponse
from chatwright.server.events import (
    Framed,
    ResumeStream,
    TurnFailed,
    TurnStream,
    answer_json,
    error_json,
    error_status,
)
from chatwright.server.schemas import (
    BODY_ERRORS,
    MAX_INT,
    AnswerOut,
    ApprovalAnswer,
    ApprovalOut,
    Cancelled,
    MessageList,
    NewMessage,
    NewThread,
    PendingApprovals,
    Pins,
    ThreadList,
    ThreadOut,
    ThreadPatch,
    TraceOut,
    errors,
)
from chatwright.server.state import ServerState, waiting_calls
from chatwright.server.turns import TurnRun
from chatwright.store import StoredMessage, ThreadInfo
from chatwright.store.branches import alternatives
from chatwright.store.sqlite import check_thread_id
from chatwright.types import TurnEnd, _jsonable

__all__ = ["as_error", "collect", "router"]

router = APIRouter(
    prefix="/api",
    tags=["threads"],
    default_response_class=SafeJSONResponse,
    responses=errors(401, 422, 500),
)
NOT_FOUND = errors(404)

ThreadId = Annotated[str, Path(description="The thread's id (yours: ids are per user).")]
PING_S = 15  # an SSE comment this often keeps proxies from closing an idle stream


def thread_json(info: ThreadInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "title": info.title,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
        "message_count": info.message_count,
        "pinned": list(info.metadata.get("pinned_collections", [])),
        "branch": info.branch,
    }


def message_json(
    stored: StoredMessage, siblings: dict[int, list[tuple[int, int]]] | None = None
) -> dict[str, Any]:
    """A message; with its alternatives on other branches (``siblings``, from
    ``store.branches.alternatives``) when it has any."""
    m = stored.message
    out = {
        "seq": stored.seq,
        "role": m.role,
        "text": m.text,
        "parts": [_jsonable(p) for p in m.parts],
        "metadata": dict(m.metadata),
        "created_at": stored.created_at,
        "branch": stored.branch,
    }
    if siblings and stored.seq in siblings:
        out["siblings"] = [{"seq": seq, "branch": b} for seq, b in siblings[stored.seq]]
    return out


# -- threads ----------------------------------------------------------------------------------
@router.get("/threads", response_model=ThreadList)
def list_threads(
    user: CurrentUser,
    state: State,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> dict[str, Any]:
    """Your threads, most recently active first."""
    found = state.store.list_threads(user.user, limit=limit, offset=offset)
    return {"threads": [thread_json(t) for t in found], "limit": limit, "offset": offset}


@router.post(
    "/threads", status_code=201, response_model=ThreadOut, responses=errors(*BODY_ERRORS, 409)
)
def create_thread(user: CurrentUser, state: State, body: NewThread | None = None) -> Any:
    """Start a thread (an id is generated unless given; a taken id is 409)."""
    body = body or NewThread()
    title = " ".join(body.title.split()) if body.title else None
    info = state.store.create_thread(user.user, body.id, title=title or None)
    return thread_json(info)


@router.get("/threads/{thread_id}", response_model=ThreadOut, responses=NOT_FOUND)
def get_thread(thread_id: ThreadId, user: CurrentUser, state: State) -> Any:
    return thread_json(state.store.get_thread(user.user, thread_id))


@router.patch("/threads/{thread_id}", response_model=ThreadOut, responses=errors(*BODY_ERRORS, 404))
def rename_thread(thread_id: ThreadId, body: ThreadPatch, user: CurrentUser, state: State) -> Any:
    title = " ".join(body.title.split())
    if not title:
        raise ApiError(422, "the title is blank", hint="give a title with some text", param="title")
    return thread_json(state.store.rename_thread(user.user, thread_id, title))


@router.delete("/threads/{thread_id}", status_code=204, responses=NOT_FOUND)
def delete_thread(thread_id: ThreadId, user: CurrentUser, state: State) -> Response:
    state.store.delete_thread(user.user, thread_id)
    return Response(status_code=204)


@router.get(
    "/threads/{thread_id}/export",
    responses={200: {"content": {"application/json": {}, "text/markdown": {}}}, **NOT_FOUND},
)
def export_thread(
    thread_id: ThreadId,
    user: CurrentUser,
    state: State,
    format: Annotated[Literal["json", "markdown", "md"], Query()] = "json",
) -> Response:
    """The whole transcript, as a file to download."""
    markdown = format != "json"
    text = render_export(state.store, user.user, thread_id, format)
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in thread_id)
    filename = f"thread-{safe[:80]}.{'md' if markdown else 'json'}"
    return Response(
        text.encode("utf-8"),
        media_type="text/markdown; charset=utf-8" if markdown else "application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/threads/{thread_id}/messages", response_model=MessageList, responses=NOT_FOUND)
def thread_messages(
    thread_id: ThreadId,
    user: CurrentUser,
    state: State,
    after: Annotated[int, Query(ge=0, le=MAX_INT, description="only messages after this seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> dict[str, Any]:
    """The active branch's messages in order: text, parts (tool calls and results,
    citations), and for a message with versions on other branches (a regenerated answer, an
    edited message) ``siblings``: every version's seq and the branch to switch to for it."""
    found = list(islice(state.store.messages(user.user, thread_id, after_seq=after), limit + 1))
    more = len(found) > limit
    found = found[:limit]
    branches = state.store.branches(user.user, thread_id, counts=False)  # no count per page
    siblings = alternatives(branches, [m.seq for m in found])
    return {
        "thread_id": thread_id,
        "messages": [message_json(m, siblings) for m in found],
        "next_after": found[-1].seq if more else None,
    }


@router.get("/threads/{thread_id}/trace/{seq}", response_model=TraceOut, responses=NOT_FOUND)
def thread_trace(
    thread_id: ThreadId,
    seq: Annotated[
        str, Path(pattern="^(latest|[0-9]+)$", description="the answer's seq, or 'latest'")
    ],
    user: CurrentUser,
    state: State,
) -> dict[str, Any]:
    """The stored trace of the turn whose answer is message ``seq``."""
    owner = user.user
    if seq == "latest":
        found = state.store.traces(owner, thread_id, limit=1)
        number, trace = found[-1] if found else (0, None)
    elif seq.isascii() and seq.isdigit():  # "²".isdigit() too, and int() refuses it
        number = int(seq)
        trace = state.store.get_trace(owner, thread_id, number) if number <= MAX_INT else None
    else:
        raise ApiError(422, f"{seq!r} is not a message seq", hint="give a number, or 'latest'")
    if trace is None:
        raise ApiError(
            404,
            f"no trace for message {seq} of thread {thread_id!r}",
            hint="traces are kept with answers (seq of an assistant message) "
            "when store_traces is on",
            type="not_found",
        )
    return {"thread_id": thread_id, "seq": number, "trace": trace.model_dump(mode="json")}


@router.put(
    "/threads/{thread_id}/pins", response_model=ThreadOut, responses=errors(*BODY_ERRORS, 404)
)
def pin_collections(thread_id: ThreadId, body: Pins, user: CurrentUser, state: State) -> Any:
    """Search only these collections in this thread; [] lets the router choose again."""
    names = list(dict.fromkeys(body.collections))
    info = state.default.pin_collections(thread_id, names or None, owner=user.user)
    return thread_json(info)


# -- turns ------------------------------------------------------------------------------------
@router.post(
    "/threads/{thread_id}/messages",
    response_model=AnswerOut,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "see docs/api.md"},
        **errors(*BODY_ERRORS, 404, 409, 429, 502, 503),
    },
)
async def send_message(
    thread_id: ThreadId, body: NewMessage, user: CurrentUser, state: State
) -> Any:
    """Send a message and get the answer: streamed as Server-Sent Events (``stream: true``,
    the default) or as one JSON answer. A thread waiting for your approval of a tool call is
    a 409 naming it (``pending``, ``calls``); too many turns of yours running, a 429."""
    bot = state.bot(body.bot)
    bot.check_message(body.text)
    check_thread_id(thread_id)
    run = await state.start_turn(
        bot,
        user.user,
        thread_id,
        body.text,
        interactive=body.stream,
        answer_mode=body.answer_mode,
    )
    if not body.stream:
        return await collect(run)
    first = await run.batch()
    if not first:  # a turn always ends with TurnEnd or TurnFailed: a bug if not
        raise ApiError(500, "the turn ended without an answer", hint="see the server's log")
    head = first[0].item if isinstance(first[0], Framed) else first[0]
    if isinstance(head, TurnFailed):
        raise as_error(head)
    return TurnStream(run, first, ping_s=PING_S)


async def collect(run: TurnRun) -> dict[str, Any]:
    """A turn run to its end, as the JSON answer (a failed turn: its :class:`ApiError`)."""
    async for item in run.events():
        if isinstance(item, TurnEnd):
            answer = item.answer
            return {
                **answer_json(answer),
                "citations": [_jsonable(c) for c in answer.citations],
                "trace": answer.trace.model_dump(mode="json"),
            }
        if isinstance(item, TurnFailed):
            raise as_error(item)
    raise ApiError(500, "the turn ended without an answer", hint="see the server's log")


def as_error(failed: TurnFailed) -> ApiError:
    """The API error a failed turn answers with."""
    data = error_json(failed)
    return ApiError(error_status(failed), data["message"], hint=data["hint"], type=data["type"])


@router.get("/threads/{thread_id}/approvals", response_model=PendingApprovals)
async def pending_approvals(thread_id: ThreadId, user: CurrentUser, state: State) -> dict[str, Any]:
    """Tool calls of a running turn waiting for your answer (with what each asks), whichever
    replica runs it."""
    calls = await state.pending_calls(user.user, thread_id)
    ids = [*state.approvals.pending(user.user, thread_id), *(c["id"] for c in calls)]
    return {"thread_id": thread_id, "pending": list(dict.fromkeys(ids)), "calls": calls}


@router.post("/threads/{thread_id}/cancel", response_model=Cancelled)
async def cancel_turn(thread_id: ThreadId, user: CurrentUser, state: State) -> dict[str, Any]:
    """Stop the running turn of this thread, if any, whichever replica runs it: what was
    streamed so far is stored, marked interrupted. (A client that only disconnects does not
    stop a turn.)"""
    cancelled = state.turns.cancel(user.user, thread_id)
    for stream in await state.remote_streams(user.user, thread_id):
        await asyncio.to_thread(state.store.streams.signal, stream.id, "cancel")
        cancelled += 1
    return {"thread_id": thread_id, "cancelled": cancelled}


@router.post(
    "/threads/{thread_id}/approvals/{call_id}",
    response_model=ApprovalOut,
    responses=errors(*BODY_ERRORS, 404),
)
async def answer_approval(
    thread_id: ThreadId, call_id: str, body: ApprovalAnswer, user: CurrentUser, state: State
) -> dict[str, Any]:
    """Approve or refuse a tool call that a running turn is waiting on, whichever replica
    runs it."""
    if not state.approvals.resolve(
        (user.user, thread_id, call_id), body.approved
    ) and not await _signal_approval(state, user.user, thread_id, call_id, body.approved):
        raise ApiError(
            404,
            f"no tool call {call_id!r} is waiting for approval in thread {thread_id!r}",
            hint="it may have been answered already, or timed out (then it was refused)",
            type="not_found",
        )
    return {"thread_id": thread_id, "call_id": call_id, "approved": body.approved}


async def _signal_approval(
    state: ServerState, owner: str, thread_id: str, call_id: str, approved: bool
) -> bool:
    """Leave the answer for the replica whose turn waits on ``call_id``; False if none does."""
    for stream in await state.remote_streams(owner, thread_id):
        if call_id in await asyncio.to_thread(waiting_calls, state.store, stream.id):
            await asyncio.to_thread(
                state.store.streams.signal, stream.id, "approval", call_id, approved
            )
            return True
    return False


@router.get(
    "/threads/{thread_id}/stream",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "see docs/api.md"},
        **errors(400, 404),
    },
)
async def resume_stream(
    thread_id: ThreadId,
    user: CurrentUser,
    state: State,
    last_event_id: Annotated[str | None, Header(max_length=200)] = None,
    stream: Annotated[str | None, Query(max_length=100)] = None,
    after: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> Any:
    """Resume a turn's event stream, on any replica: the events after ``Last-Event-ID``
    (``<stream>:<seq>``, as each event's ``id:`` says), or after ``?stream=&after=``, or the
    thread's latest turn from the start; then the rest as it comes, until the turn ends."""
    if last_event_id:
        stream, _, seq = last_event_id.rpartition(":")
        if not stream or not seq.isdigit():
            raise ApiError(
                400,
                f"invalid Last-Event-ID {last_event_id[:60]!r}",
                hint="send the id of the last event received: <stream>:<seq>",
                type="invalid_request",
            )
        after = int(seq)
    streams = state.store.streams
    found = await asyncio.to_thread(
        streams.get if stream else streams.latest,
        *((user.user, thread_id, stream) if stream else (user.user, thread_id)),
    )
    if found is None:
        raise ApiError(
            404,
            f"no recorded turn {'stream ' + repr(stream) + ' ' if stream else ''}"
            f"in thread {thread_id!r}",
            hint="streams are kept for an hour after their turn ends; read the thread's "
            "messages instead",
            type="not_found",
        )
    stale_s = state.settings.server.replica_stale_s
    return ResumeStream(state.store, found, after, ping_s=PING_S, stale_s=stale_s)
