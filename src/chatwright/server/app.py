"""``create_app``: the FastAPI application of ``chatwright serve``.

Routes: ``/api/...`` (``api_threads``, ``api_knowledge``, ``api_account``), ``/v1/...``
(``openai_compat``), ``/`` and ``/static/...`` (``web``), ``/openapi.json`` and ``/docs``.
Middleware, outermost first: security headers, CORS (only when ``cors_origins`` is set),
body limits. Errors are JSON everywhere (``errors.py``).

Everything the handlers share is one :class:`~chatwright.server.state.ServerState` on
``app.state.chatwright``, built here: bots are constructed before the app is returned (a
broken configuration fails ``create_app``, not the first request), the users' collections are
loaded into the search index in a worker thread after start-up, and shutdown lets running
turns finish before closing the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from chatwright import __version__
from chatwright.bot import Chatbot
from chatwright.config import Settings, load_settings
from chatwright.server import (
    api_account,
    api_branches,
    api_knowledge,
    api_thread_admin,
    api_threads,
    openai_compat,
)
from chatwright.server.auth import Authenticator, is_loopback
from chatwright.server.errors import SafeJSONResponse, allowed_methods, install_error_handlers
from chatwright.server.middleware import Guard, LimitBody, SecurityHeaders
from chatwright.server.state import ServerState, build_bots
from chatwright.server.web import STATIC_DIR, mount_web_page
from chatwright.store import Store, open_store

__all__ = ["create_app"]

log = logging.getLogger("chatwright.server")

_DESCRIPTION = """\
Stateful chatbots over HTTP: threads that persist, answers streamed as Server-Sent Events,
document collections, user memory, tools with approvals. Authenticate with
`Authorization: Bearer <key>` (`chatwright keys create USER`). The OpenAI-compatible endpoint
is under `/v1`. Event formats: docs/api.md.
"""


def create_app(
    settings: Settings | None = None,
    *,
    host: str | None = None,
    store: Store | None = None,
    bots: Mapping[str, Chatbot] | None = None,
    static_dir: Path = STATIC_DIR,
) -> FastAPI:
    """The server's app. ``host`` is where it will listen (default ``[server] host``): on
    loopback, auth "auto" lets requests without a key in while no key exists. ``store`` and
    ``bots`` are for tests and embedding (default: built from ``settings``; a store given is
    not closed at shutdown)."""
    settings = settings or load_settings()
    host = host or settings.server.host
    owns_store = store is None and bots is None
    if store is None:
        store = next(iter(bots.values())).store if bots else open_store(settings)
    if (group_commit := getattr(store, "group_commit", None)) is not None:
        group_commit.enabled = True  # concurrent turns share commits (SQLite)
    built = dict(bots) if bots else build_bots(settings, store)
    auth = Authenticator(
        store, mode=settings.server.auth, local_user=settings.user, loopback=is_loopback(host)
    )
    state = ServerState(settings, store, built, auth, owns_store=owns_store)
    app = FastAPI(
        title="chatwright",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=_lifespan(state),
        default_response_class=SafeJSONResponse,
        docs_url=None,  # /docs is served by web.py from vendored files (no CDN)
        redoc_url=None,
    )
    app.state.chatwright = state
    install_error_handlers(app)
    routers = (api_account, api_threads, api_thread_admin, api_branches, api_knowledge)
    for module in (*routers, openai_compat):
        app.include_router(module.router)
    mount_web_page(app, static_dir)
    _add_middleware(app, settings, auth)
    return app


def _add_middleware(app: FastAPI, settings: Settings, auth: Authenticator) -> None:
    # Added innermost first: each add_middleware wraps what is there.
    app.add_middleware(
        LimitBody,
        max_body_bytes=settings.server.max_body_bytes,
        max_upload_bytes=settings.server.max_upload_bytes,
        routed=lambda method, path: method in (allowed_methods(app, path) or {method}),
    )
    app.add_middleware(
        Guard,
        authenticate=auth.authenticate_async,
        loopback=auth.loopback,
        origins=settings.server.cors_origins,
    )
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", openai_compat.THREAD_HEADER],
            expose_headers=[openai_compat.THREAD_HEADER, "Location"],
        )
    app.add_middleware(SecurityHeaders)


def _lifespan(state: ServerState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.jobs.start()  # and jobs queued before, here or by a replica gone
        preload = None
        if state.settings.server.preload:
            preload = asyncio.get_running_loop().run_in_executor(None, _preload, state)
        try:
            yield
        finally:
            if preload is not None:
                with suppress(Exception):
                    await preload
            await state.shutdown()

    return lifespan


def _preload(state: ServerState) -> None:
    try:
        state.preload()
    except Exception as e:  # a cache warm-up: searching still works, only slower at first
        log.warning("could not preload collections: %s", e)
