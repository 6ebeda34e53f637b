"""FastAPI dependencies: the server's state and the user a request acts as.

Both are ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per dependency per request (and at most 40 at a time), which cost more than the work itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from chatwright.server.auth import Principal
from chatwright.server.state import ServerState

__all__ = ["CurrentUser", "State", "current_user", "get_state"]


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.chatwright
    return state


async def state_dependency(request: Request) -> ServerState:
    return get_state(request)


async def current_user(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="Bearer <API key>; see `chatwright keys create`")
    ] = None,
) -> Principal:
    """The user the ``Guard`` middleware authenticated (before the body was read); apps
    without it authenticate here."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is not None:
        return principal
    return await get_state(request).auth.authenticate_async(authorization)


State = Annotated[ServerState, Depends(state_dependency)]
CurrentUser = Annotated[Principal, Depends(current_user)]
