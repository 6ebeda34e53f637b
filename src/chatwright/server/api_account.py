"""``/api/me``, ``/api/memory``, ``/api/tools``, ``/api/bots``: the user and what the bots offer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from chatwright import __version__
from chatwright.bot import Chatbot
from chatwright.server.deps import CurrentUser, State
from chatwright.server.errors import SafeJSONResponse
from chatwright.server.schemas import (
    BODY_ERRORS,
    MAX_INT,
    BotList,
    MemoryOut,
    MemoryText,
    MeOut,
    ToolList,
    errors,
)
from chatwright.store.base import MemoryItem

__all__ = ["router"]

router = APIRouter(
    prefix="/api",
    tags=["account"],
    default_response_class=SafeJSONResponse,
    responses=errors(401, 422, 500),
)

MemoryId = Annotated[int, Path(ge=1, le=MAX_INT, description="The memory's id.")]


def memory_json(item: MemoryItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "text": item.text,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
        "untrusted": item.untrusted,
    }


def bot_json(name: str, bot: Chatbot, state: Any) -> dict[str, Any]:
    section = state.settings.bots.get(name)
    return {
        "name": name,
        "model": bot.model.name,
        "description": section.description if section else "",
        "default": name == state.default_name,
    }


@router.get("/me", response_model=MeOut)
def me(user: CurrentUser, state: State) -> dict[str, Any]:
    """Who you are here, how you were recognised, and the server's limits and bots."""
    settings = state.settings
    return {
        "user": user.user,
        "auth": user.via,
        "key": {"id": user.key_id, "name": user.key_name} if user.key_id else None,
        "version": __version__,
        "default_bot": state.default_name,
        "bots": [bot_json(n, b, state) for n, b in state.bots.items()],
        "limits": {
            "max_message_chars": state.default.settings.max_message_chars,
            "max_body_bytes": settings.server.max_body_bytes,
            "max_upload_bytes": settings.server.max_upload_bytes,
            "max_jobs_per_user": settings.server.max_jobs_per_user,
            "max_turns_per_user": settings.server.max_turns_per_user,
        },
    }


@router.get("/bots", response_model=BotList)
def list_bots(user: CurrentUser, state: State) -> dict[str, Any]:
    """The bots this server runs (``bot`` in a message body picks one)."""
    return {"bots": [bot_json(n, b, state) for n, b in state.bots.items()]}


@router.get("/tools", tags=["tools"], response_model=ToolList, responses=errors(404))
def list_tools(user: CurrentUser, state: State, bot: str | None = None) -> dict[str, Any]:
    """The tools the bot may call in your turns (``side_effects``: they ask before running,
    unless ``auto_approve``), and the state of its MCP servers."""
    chatbot = state.bot(bot)
    servers = [{"name": s.name, "status": s.status()} for s in chatbot.mcp_servers]
    return {"tools": chatbot.describe_tools(user.user), "mcp_servers": servers}


# -- user memory ------------------------------------------------------------------------------
@router.get("/memory", tags=["memory"])
def list_memory(user: CurrentUser, state: State) -> dict[str, list[MemoryOut]]:
    """What the bots remember about you, in every thread."""
    items = state.default.memories(owner=user.user)
    return {"memories": [MemoryOut(**memory_json(m)) for m in items]}


@router.post(
    "/memory",
    tags=["memory"],
    status_code=201,
    response_model=MemoryOut,
    responses=errors(*BODY_ERRORS),
)
def add_memory(body: MemoryText, user: CurrentUser, state: State) -> Any:
    """Remember a short fact (at most 500 characters)."""
    return memory_json(state.default.remember(body.text, owner=user.user))


@router.patch(
    "/memory/{memory_id}",
    tags=["memory"],
    response_model=MemoryOut,
    responses=errors(*BODY_ERRORS, 404),
)
def edit_memory(memory_id: MemoryId, body: MemoryText, user: CurrentUser, state: State) -> Any:
    return memory_json(state.default.edit_memory(memory_id, body.text, owner=user.user))


@router.delete("/memory/{memory_id}", tags=["memory"], status_code=204, responses=errors(404))
def forget_memory(memory_id: MemoryId, user: CurrentUser, state: State) -> Response:
    state.default.forget(memory_id, owner=user.user)
    return Response(status_code=204)
