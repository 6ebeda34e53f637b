"""FastAPI dependencies: the server's state and the user a request acts as."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from chatwright.server.auth import Principal
from chatwright.server.state import ServerState

__all__ = ["CurrentUser", "State", "current_user", "get_state"]


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.chatwright
    return state


def current_user(
    request: Request,
    authorization: Annotated[
        str | None, Header(description="Bearer <API key>; see `chatwright keys create`")
    ] = None,
) -> Principal:
    return get_state(request).auth.authenticate(authorization)


State = Annotated[ServerState, Depends(get_state)]
CurrentUser = Annotated[Principal, Depends(current_user)]
