"""``/api/threads/{id}/…``: branches. Regenerate an answer, edit a message and resend, list
a thread's branches and switch between them.

Nothing is overwritten: a regeneration forks a branch before the answer and answers the same
user message again; an edit forks before the user message and sends the new text there. Both
run as a turn like ``POST /api/threads/{id}/messages`` (``api_threads.py``): streamed as
Server-Sent Events, or one JSON answer with ``"stream": false``, and a mistake (a seq that is
not an answer / not your message, a branch that does not exist, another user's thread) is a
4xx before anything is stored. ``GET /api/threads/{id}/messages`` lists the active branch,
each message with its ``branch`` and, where it has versions on other branches, ``siblings``.
A thread with too many versions (``store/branches.py``: ``MAX_BRANCHES``, ``MAX_BRANCH_DEPTH``)
refuses another regeneration or edit with 409 ``too_many_branches``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from chatwright.server.api_threads import (
    NOT_FOUND,
    PING_S,
    ThreadId,
    as_error,
    collect,
    thread_json,
)
from chatwright.server.deps import CurrentUser, State
from chatwright.server.errors import ApiError, SafeJSONResponse, type_of
from chatwright.server.events import Framed, TurnFailed, TurnStream
from chatwright.server.schemas import BODY_ERRORS, MAX_INT, AnswerOut, ThreadOut, _Body, errors
from chatwright.server.turns import TurnRun
from chatwright.store.branches import TooManyBranches
from chatwright.store.sqlite import check_thread_id

__all__ = ["router"]

router = APIRouter(
    prefix="/api",
    tags=["branches"],
    default_response_class=SafeJSONResponse,
    responses=errors(401, 422, 500),
)

Seq = Annotated[int, Path(ge=1, le=MAX_INT, description="the message's seq")]
_TURN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "see docs/api.md"},
    **errors(*BODY_ERRORS, 404, 409, 429, 502, 503),
}


class Regenerate(_Body):
    stream: bool = True
    bot: str | None = Field(default=None, description="which bot answers; default: the default")
    answer_mode: Literal["auto", "generate", "extract"] | None = None


class Edit(Regenerate):
    text: str


class BranchSwitch(_Body):
    branch: int = Field(ge=0, le=MAX_INT, description="the branch to show and continue (0: main)")


class BranchOut(BaseModel):
    id: int
    parent: int | None = Field(description="the branch it forks from (null: main)")
    fork_seq: int = Field(description="the parent's message it continues after (0: the start)")
    created_at: float
    first_seq: int | None = Field(description="its first own message (null: none yet)")
    last_seq: int | None
    messages: int = Field(description="how many messages it holds itself")
    replaces: int | None = Field(description="the parent's message it is an alternative to")


class BranchList(BaseModel):
    thread_id: str
    active: int
    branches: list[BranchOut]


@router.get("/threads/{thread_id}/branches", response_model=BranchList, responses=NOT_FOUND)
def list_branches(thread_id: ThreadId, user: CurrentUser, state: State) -> dict[str, Any]:
    """The thread's branches (main first) and which one is active."""
    info = state.store.get_thread(user.user, thread_id)
    found = state.store.branches(user.user, thread_id)
    return {
        "thread_id": thread_id,
        "active": info.branch,
        "branches": [
            {
                "id": b.id,
                "parent": b.parent,
                "fork_seq": b.fork_seq,
                "created_at": b.created_at,
                "first_seq": b.first_seq,
                "last_seq": b.last_seq,
                "messages": b.messages,
                "replaces": b.replaces,
            }
            for b in found
        ],
    }


@router.put(
    "/threads/{thread_id}/branch", response_model=ThreadOut, responses=errors(*BODY_ERRORS, 404)
)
async def switch_branch(
    thread_id: ThreadId, body: BranchSwitch, user: CurrentUser, state: State
) -> Any:
    """Show and continue another branch (once the thread's running turn, if any, ended; a
    turn waiting for your approval of a tool call is a 409)."""
    if await state.pending_calls(user.user, thread_id):
        raise ApiError(
            409,
            f"thread {thread_id!r} is waiting for your approval of a tool call",
            hint=f"answer it first (GET /api/threads/{thread_id}/approvals), or stop the turn",
            type="approval_pending",
        )
    info = await state.default.aswitch_branch(thread_id, body.branch, owner=user.user)
    return thread_json(info)


@router.post(
    "/threads/{thread_id}/messages/{seq}/regenerate",
    response_model=AnswerOut,
    responses=_TURN_RESPONSES,
)
async def regenerate(
    thread_id: ThreadId, seq: Seq, user: CurrentUser, state: State, body: Regenerate | None = None
) -> Any:
    """Answer again: a new branch forks before answer ``seq`` and the same message of yours
    is answered there (the old answer stays on its branch)."""
    body = body or Regenerate()
    bot = state.bot(body.bot)
    check_thread_id(thread_id)
    state.store.get_thread(user.user, thread_id)  # 404 before a turn starts

    def events(thread: str, _text: str, **kwargs: Any) -> Any:
        return bot.regenerate_stream(thread, seq, **kwargs)

    run = await state.start_turn(
        bot,
        user.user,
        thread_id,
        "",
        interactive=body.stream,
        answer_mode=body.answer_mode,
        events=events,
    )
    return await _respond(run, body.stream)


@router.post(
    "/threads/{thread_id}/messages/{seq}/edit", response_model=AnswerOut, responses=_TURN_RESPONSES
)
async def edit(thread_id: ThreadId, seq: Seq, body: Edit, user: CurrentUser, state: State) -> Any:
    """Resend your message ``seq`` as ``text``: a new branch forks before it and the turn
    runs there (the old message and what followed stay on their branch)."""
    bot = state.bot(body.bot)
    bot.check_message(body.text)
    check_thread_id(thread_id)
    state.store.get_thread(user.user, thread_id)

    def events(thread: str, text: str, **kwargs: Any) -> Any:
        return bot.edit_stream(thread, seq, text, **kwargs)

    run = await state.start_turn(
        bot,
        user.user,
        thread_id,
        body.text,
        interactive=body.stream,
        answer_mode=body.answer_mode,
        events=events,
    )
    return await _respond(run, body.stream)


async def _respond(run: TurnRun, stream: bool) -> Any:
    """As ``send_message``: one JSON answer, or the event stream once its first event came
    (a turn that fails first, a bad seq included, is an error status; a thread with too many
    versions to fork again, 409)."""
    try:
        if not stream:
            return await collect(run)
        first = await run.batch()
        if not first:
            raise ApiError(500, "the turn ended without an answer", hint="see the server's log")
        head = first[0].item if isinstance(first[0], Framed) else first[0]
        if isinstance(head, TurnFailed):
            raise as_error(head)
        return TurnStream(run, first, ping_s=PING_S)
    except ApiError as e:
        if e.type == _TOO_MANY:  # a conflict with the thread's state, not a bad request
            e.status = 409
        raise


_TOO_MANY = type_of(TooManyBranches("-"))  # "too_many_branches"
