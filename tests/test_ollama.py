"""The ollama provider against a local fake server speaking Ollama's API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from chatwright import Chatbot, SQLiteStore
from chatwright.config import OpenAISettings
from chatwright.errors import ModelUnavailable, UnknownModel
from chatwright.models import get_model
from chatwright.models.base import ModelEvent, ModelRequest, ToolSpec
from chatwright.models.ollama import OllamaModel, ollama_models, ollama_url
from chatwright.types import Done, Message, TextDelta, Usage
from fake_servers import FakeOllama, closed_port_url


@pytest.fixture
def ollama(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOllama]:
    with FakeOllama(("llama3:latest", "qwen2.5:0.5b")) as fake:
        monkeypatch.setenv("OLLAMA_HOST", fake.host_port)  # as people write it: no scheme
        yield fake


async def collect(model: Any, *messages: Message, **kwargs: Any) -> list[ModelEvent]:
    request = ModelRequest(messages=messages or (Message.user("Hi there"),), **kwargs)
    return [event async for event in model.stream(request)]


@pytest.mark.parametrize(
    ("value", "url"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("127.0.0.1:11500", "http://127.0.0.1:11500"),
        ("example.org", "http://example.org:11434"),
        (":8080", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:9999", "http://127.0.0.1:9999"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("::1", "http://[::1]:11434"),
        ("::", "http://127.0.0.1:11434"),
        ("http://gpu-box:11434/", "http://gpu-box:11434"),
        ("https://ollama.example.org", "https://ollama.example.org:443"),
        ("http://proxy.local/ollama", "http://proxy.local:80/ollama"),
    ],
)
def test_ollama_host_is_read_as_ollama_reads_it(
    value: str | None, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("OLLAMA_HOST", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_HOST", value)
    assert ollama_url() == url


@pytest.mark.parametrize("value", ["ftp://host", "http://host:notaport"])
def test_a_bad_ollama_host_says_how_to_write_it(value: str) -> None:
    with pytest.raises(ModelUnavailable) as raised:
        ollama_url(value)
    assert "OLLAMA_HOST" in str(raised.value.hint)


async def test_chat_streams_through_the_openai_compatible_api(ollama: FakeOllama) -> None:
    model = get_model("ollama:llama3")
    assert isinstance(model, OllamaModel)
    assert model.name == "ollama:llama3"
    events = await collect(model, Message.user("what is up"))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "llama3:latest says: what is up"
    assert isinstance(events[-1], Done) and events[-1].reason == "stop"
    assert any(isinstance(e, Usage) for e in events)
    sent = ollama.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "llama3"
    assert sent.headers["authorization"] == "Bearer ollama"  # Ollama ignores it; the SDK wants one


async def test_tools_are_offered_in_the_openai_format(ollama: FakeOllama) -> None:
    spec = ToolSpec(name="weather", parameters={"type": "object", "properties": {}})
    await collect(get_model("ollama:qwen2.5:0.5b"), tools=(spec,))
    body = ollama.requests[-1].body
    assert body["model"] == "qwen2.5:0.5b"  # the tag after the first ':' is kept
    assert body["tools"][0]["function"]["name"] == "weather"


async def test_a_model_not_pulled_says_to_pull_it(ollama: FakeOllama) -> None:
    with pytest.raises(ModelUnavailable) as raised:
        await collect(get_model("ollama:mistral"))
    assert "has no model 'mistral'" in raised.value.message
    assert "not found, try pulling it first" in raised.value.message  # Ollama's own words
    assert raised.value.hint is not None and "ollama pull mistral" in raised.value.hint


async def test_ollama_down_says_to_start_it_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_port_url()
    monkeypatch.setenv("OLLAMA_HOST", url)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as raised:
        await collect(get_model("ollama:llama3"))
    assert time.monotonic() - started < 3  # no retries with back-off
    assert f"cannot reach Ollama at {url}" in raised.value.message
    assert "ollama serve" in str(raised.value.hint)
    assert "OLLAMA_HOST" in str(raised.value.hint)


def test_a_turn_on_ollama_is_stored_and_a_down_ollama_loses_nothing(
    ollama: FakeOllama, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = Chatbot("ollama:llama3", store=store)
    assert bot.chat("t1", "hello").text == "llama3:latest says: hello"
    monkeypatch.setenv("OLLAMA_HOST", closed_port_url())
    down = Chatbot("ollama:llama3", store=store)
    with pytest.raises(ModelUnavailable):
        down.chat("t1", "are you there?")
    texts = [m.message.text for m in bot.history("t1")]
    assert texts[:2] == ["hello", "llama3:latest says: hello"]
    assert "are you there?" in texts  # the user's message is kept, as with any model failure
    bot.close()
    down.close()


def test_ollama_models_lists_what_is_pulled(ollama: FakeOllama) -> None:
    found = ollama_models()
    assert [m["name"] for m in found] == ["llama3:latest", "qwen2.5:0.5b"]
    assert found[0]["family"] == "llama"
    assert found[0]["parameters"] == "8.0B"
    assert ollama.requests[-1].path == "/api/tags"


def test_ollama_models_when_down_or_not_ollama() -> None:
    with pytest.raises(ModelUnavailable) as raised:
        ollama_models(closed_port_url(), timeout_s=1.0)
    assert "ollama serve" in str(raised.value.hint)
    with FakeOllama() as other:  # a server that is not Ollama: /api/tags is not there
        other.answer = lambda *a: FakeOllama.answer(other, "/nowhere", "GET", {}, None)  # type: ignore[method-assign]
        with pytest.raises(ModelUnavailable):
            ollama_models(other.url, timeout_s=1.0)


def test_unknown_provider_lists_ollama() -> None:
    with pytest.raises(UnknownModel) as raised:
        get_model("olama:llama3")
    assert "ollama" in str(raised.value.hint)


def test_the_context_window_is_what_ollama_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_CONTEXT_LENGTH", raising=False)
    assert OllamaModel("llama3").context_window == 4096
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "32768")
    assert OllamaModel("llama3").context_window == 32768
    monkeypatch.setenv("OLLAMA_CONTEXT_LENGTH", "lots")
    assert OllamaModel("llama3").context_window == 4096


async def test_a_slow_ollama_times_out_with_a_hint(ollama: FakeOllama) -> None:
    ollama.delay_s = 1.0
    model = OllamaModel("llama3", OpenAISettings(timeout_s=0.3))
    with pytest.raises(ModelUnavailable) as raised:
        await collect(model)
    assert "did not answer ollama:llama3 within 0.3 s" in raised.value.message
    assert "ollama ps" in str(raised.value.hint)
