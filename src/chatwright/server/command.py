"""The ``chatwright serve``, ``chatwright users`` and ``chatwright keys`` commands.

:func:`register` adds them to the CLI's Typer app. This module imports neither FastAPI nor
uvicorn: ``serve`` does, when run, and says which extra to install when they are missing;
``users`` and ``keys`` need only the store.

``serve`` refuses to listen off loopback (``--host 0.0.0.0``) until API keys exist (see
``auth.py``): the first ``chatwright keys create USER`` makes the user and prints their key,
once (only its hash is stored).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from chatwright import __version__
from chatwright._cliutil import ConfigOpt, DataDirOpt, UserOpt, err, handles_errors, out
from chatwright.config import load_settings
from chatwright.store import Store, open_store

__all__ = ["keys_app", "missing_server_extra", "register", "serve", "users_app"]

users_app = typer.Typer(help="Users of the HTTP server (each with their own data).")
keys_app = typer.Typer(help="API keys of the HTTP server's users (stored hashed).")
for _sub in (users_app, keys_app):
    _sub.info.no_args_is_help = True

JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
_EXTRA_MODULES = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "sse_starlette": "sse-starlette",
    "multipart": "python-multipart",
}


def register(app: typer.Typer) -> None:
    """Add ``serve`` and the ``users`` and ``keys`` sub-commands to ``app``."""
    app.command("serve")(serve)
    app.add_typer(users_app, name="users")
    app.add_typer(keys_app, name="keys")


@contextmanager
def _store(data_dir: Path | None, config: Path | None) -> Iterator[Store]:
    settings = load_settings(config, data_dir=data_dir)
    store = open_store(settings)
    try:
        yield store
    finally:
        store.close()


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def missing_server_extra() -> list[str]:
    """The packages of the ``server`` extra that are not installed."""
    return [pkg for mod, pkg in _EXTRA_MODULES.items() if importlib.util.find_spec(mod) is None]


def _require_server_extra() -> None:
    missing = missing_server_extra()
    if missing:  # printed without markup: "[server]" is not a style
        verb = "is" if len(missing) == 1 else "are"
        err.print(
            f"error: the server needs {', '.join(missing)}, which {verb} not installed",
            markup=False,
        )
        err.print('hint: pip install "chatwright[server]"', markup=False)
        raise typer.Exit(2)


# -- serve ------------------------------------------------------------------------------------
@handles_errors("server stopped")
def serve(
    host: Annotated[
        str | None,
        typer.Option(
            "--host", help="Address to listen on \\[default: \\[server] host, 127.0.0.1]."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", "-p", min=0, max=65535, help="Port \\[default: 8000]."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="The default bot's model, as provider:name."),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    user: UserOpt = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Serve the HTTP API, the OpenAI-compatible endpoint (/v1) and the web page.

    chatwright serve                      # http://127.0.0.1:8000, as the local user
    chatwright keys create ada            # then, reachable from the network:
    chatwright serve --host 0.0.0.0
    """
    _require_server_extra()
    import uvicorn

    from chatwright.server.app import create_app
    from chatwright.server.auth import check_exposure
    from chatwright.server.connections import uvicorn_options

    settings = load_settings(config, model=model, data_dir=data_dir, user=user)
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    store = open_store(settings)
    try:
        check_exposure(settings.server.auth, host, store)
        keys = store.has_api_keys()
    finally:
        store.close()
    app = create_app(settings, host=host)
    state = app.state.chatwright
    shown = f"[{host}]" if ":" in host else host
    err.print(f"chatwright {__version__} · http://{shown}:{port} · data {state.store.location}")
    err.print(
        "bots: "
        + ", ".join(f"{n} ({b.model.name})" for n, b in state.bots.items())
        + f" · auth: {_auth_line(settings.server.auth, keys, state.auth.loopback, settings.user)}"
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.server.shutdown_grace_s) + 5,
        **uvicorn_options(settings.server),  # header and body timeouts, connections per client
    )


def _auth_line(mode: str, keys: bool, loopback: bool, user: str) -> str:
    if mode == "none" or (mode == "auto" and loopback and not keys):
        return f"open (no keys yet: every request is user {user!r}; a key makes them required)"
    return "API keys required"


# -- users ------------------------------------------------------------------------------------
@users_app.command("add")
@handles_errors()
def users_add(
    name: Annotated[str, typer.Argument(help="The user's name (their data's owner).")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add a user; give them a key with `chatwright keys create NAME`."""
    with _store(data_dir, config) as store:
        store.create_user(name)
    err.print(f"added user {name} · give them a key: chatwright keys create {name}")


@users_app.command("list")
@handles_errors()
def users_list(
    as_json: JsonOpt = False, data_dir: DataDirOpt = None, config: ConfigOpt = None
) -> None:
    """List users and how many active keys each has."""
    with _store(data_dir, config) as store:
        users = store.list_users()
    if as_json:
        rows = [{"name": u.name, "keys": u.keys, "created_at": u.created_at} for u in users]
        out.file.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    if not users:
        err.print("no users yet · add one with: chatwright keys create NAME")
        return
    table = Table("name", "active keys", "added", box=None, pad_edge=False)
    for u in users:
        table.add_row(u.name, str(u.keys), _when(u.created_at))
    out.print(table)


@users_app.command("delete")
@handles_errors()
def users_delete(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    yes: YesOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete a user and their keys (their threads and collections are kept)."""
    with _store(data_dir, config) as store:
        if store.find_user(name) is None:
            store.delete_user(name)  # raises: not found
        if not yes:
            typer.confirm(f"delete user {name} and revoke their keys?", abort=True)
        store.delete_user(name)
    err.print(f"deleted user {name}; their keys no longer work (their data is kept)")


# -- keys -------------------------------------------------------------------------------------
@keys_app.command("create")
@handles_errors()
def keys_create(
    user: Annotated[str, typer.Argument(help="Whose key (the user is added if new).")],
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. laptop.")] = "",
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create an API key and print its secret (shown this once; only its hash is kept)."""
    with _store(data_dir, config) as store:
        if store.find_user(user) is None:
            store.create_user(user)
            err.print(f"added user {user}")
        key_id, secret = store.create_api_key(user, name)
    out.file.write(secret + "\n")
    out.file.flush()
    err.print(
        f"key {key_id} for {user} · copy the secret above now, it is not shown again\n"
        f"use it as: Authorization: Bearer <secret> · revoke: chatwright keys revoke {key_id}"
    )


@keys_app.command("list")
@handles_errors()
def keys_list(
    user: Annotated[str | None, typer.Argument(help="Only this user's keys.")] = None,
    as_json: JsonOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List API keys (never their secrets)."""
    with _store(data_dir, config) as store:
        keys = store.list_keys(user)
    if as_json:
        rows = [
            {
                "id": k.id,
                "user": k.user,
                "name": k.name,
                "prefix": k.prefix,
                "created_at": k.created_at,
                "last_used_at": k.last_used_at,
                "revoked_at": k.revoked_at,
            }
            for k in keys
        ]
        out.file.write(json.dumps(rows, ensure_ascii=False) + "\n")
        return
    if not keys:
        err.print("no keys yet · create one with: chatwright keys create USER")
        return
    table = Table("id", "user", "name", "starts", "created", "last used", "state", box=None)
    for k in keys:
        state = "active" if k.active else f"revoked {_when(k.revoked_at)}"
        table.add_row(
            k.id, k.user, k.name, k.prefix + "…", _when(k.created_at), _when(k.last_used_at), state
        )
    out.print(table)


@keys_app.command("revoke")
@handles_errors()
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `chatwright keys list`).")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke an API key: it stops working at once."""
    with _store(data_dir, config) as store:
        key = store.revoke_key(key_id)
    err.print(f"revoked {key.id} ({key.user}{', ' + key.name if key.name else ''})")
