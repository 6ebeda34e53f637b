"""``chatwright serve``, ``users`` and ``keys``, run in process (CliRunner)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chatwright import SQLiteStore
from chatwright.cli import app
from chatwright.store.base import hash_secret


def run(data: Path, *args: str, code: int = 0, stdin: str | None = None) -> Any:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data)], input=stdin)
    assert result.exit_code == code, (result.output, result.exception)
    return result


def test_users_and_keys(tmp_path: Path) -> None:
    run(tmp_path, "users", "add", "ada")
    assert "already exists" in run(tmp_path, "users", "add", "ada", code=2).output
    assert "invalid user name" in run(tmp_path, "users", "add", "bad name", code=2).output
    created = run(tmp_path, "keys", "create", "bob", "--name", "laptop")  # bob is added too
    secret = created.stdout.strip().splitlines()[0]
    assert secret.startswith("cw-") and len(secret) == 46
    assert "not shown again" in created.output
    users = json.loads(run(tmp_path, "users", "list", "--json").stdout)
    assert [(u["name"], u["keys"]) for u in users] == [("ada", 0), ("bob", 1)]
    keys = json.loads(run(tmp_path, "keys", "list", "--json").stdout)
    assert [(k["user"], k["name"], k["revoked_at"]) for k in keys] == [("bob", "laptop", None)]
    assert secret not in run(tmp_path, "keys", "list").stdout  # never shown again
    store = SQLiteStore(tmp_path / "chatwright.db")
    try:
        assert store.find_key(hash_secret(secret)) is not None
        assert secret not in str(store.connection.execute("SELECT * FROM api_keys").fetchall())
        run(tmp_path, "keys", "revoke", keys[0]["id"])
        assert store.find_key(hash_secret(secret)) is None
    finally:
        store.close()
    assert "not found" in run(tmp_path, "keys", "revoke", "key_nope", code=2).output
    run(tmp_path, "users", "delete", "ada", "--yes")
    assert "not found" in run(tmp_path, "users", "delete", "ada", "--yes", code=2).output
    assert json.loads(run(tmp_path, "users", "list", "--json").stdout)[0]["name"] == "bob"


def test_serve_refuses_the_network_without_keys(tmp_path: Path) -> None:
    refused = run(tmp_path, "serve", "--host", "0.0.0.0", "--model", "test:echo", code=2)
    assert "refusing to listen on 0.0.0.0 without API keys" in refused.output
    assert "chatwright keys create USER" in refused.output
    config = tmp_path / "chatwright.toml"
    config.write_text('[server]\nauth = "none"\n')
    open_ = run(
        tmp_path, "serve", "--host", "::", "-c", str(config), "--model", "test:echo", code=2
    )
    assert "auth = 'none'" in open_.output


def test_serve_starts_uvicorn_with_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    seen: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        seen.update(kwargs, app=app)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    run(tmp_path, "keys", "create", "ada")
    result = run(tmp_path, "serve", "--host", "0.0.0.0", "--port", "9123", "-m", "test:echo")
    assert seen["host"] == "0.0.0.0" and seen["port"] == 9123
    assert seen["http"].header_timeout_s == 10 and seen["ws"] == "none"  # connections.py
    state = seen["app"].state.chatwright
    assert state.default.model.name == "test:echo" and state.auth.loopback is False
    assert "API keys required" in result.output
    state.store.close()


def test_serve_without_the_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    result = run(tmp_path, "serve", code=2)
    assert "uvicorn" in result.output and 'pip install "chatwright[server]"' in result.output
