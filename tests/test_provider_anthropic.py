"""The anthropic provider against a local fake server speaking the Messages API wire format."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chatwright.config import AnthropicSettings, Settings
from chatwright.errors import ModelError, ModelResponseError, ModelUnavailable
from chatwright.models import get_model
from chatwright.models.anthropic import AnthropicModel
from chatwright.models.base import ModelEvent, ModelRequest, ModelSettings, ToolSpec
from chatwright.types import (
    Done,
    Message,
    TextDelta,
    ToolCallEvent,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from fake_servers import (
    FakeServer,
    Reply,
    anthropic_error,
    anthropic_message_end,
    anthropic_message_start,
    anthropic_stream,
    anthropic_text_block,
    anthropic_tool_block,
    closed_port_url,
)

WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)

NOW = ToolSpec(name="now")


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_anthropic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


def settings_for(server: FakeServer, **overrides: Any) -> AnthropicSettings:
    values = {"base_url": server.url, "api_key": "sk-ant-test", "max_retries": 0}
    return AnthropicSettings(**{**values, "timeout_s": 5.0, **overrides})


def request(*messages: Message, **kwargs: Any) -> ModelRequest:
    return ModelRequest(messages=messages or (Message.user("Hi"),), **kwargs)


def reply(*blocks: list[dict[str, Any]], stop_reason: str = "end_turn") -> Any:
    events = [event for block in blocks for event in block]
    end = anthropic_message_end(stop_reason, output_tokens=7)
    return anthropic_stream(anthropic_message_start(input_tokens=25), *events, *end)


async def collect(model: Any, req: ModelRequest | None = None) -> list[ModelEvent]:
    return [event async for event in model.stream(req or request())]


async def test_text_streams_in_pieces_with_usage_and_reason(server: FakeServer) -> None:
    server.add(reply(anthropic_text_block(0, "Hel", "lo", " world")))
    model = AnthropicModel("claude-test", settings_for(server))
    events = await collect(model)
    assert model.name == "anthropic:claude-test"
    assert events == [
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
        TextDelta(text=" world"),
        Usage(input_tokens=25, output_tokens=7),
        Done(reason="stop"),
    ]
    sent = server.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["authorization"] == "Bearer sk-ant-test"
    assert sent.body["model"] == "claude-test"
    assert sent.body["stream"] is True
    assert sent.body["max_tokens"] == 1024
    assert sent.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert not {"system", "tools", "temperature", "stop_sequences"} & sent.body.keys()


async def test_sampling_settings_are_sent_except_temperature(server: FakeServer) -> None:
    server.add(reply(anthropic_text_block(0, "ok")))
    settings = ModelSettings(max_tokens=50, temperature=0.2, stop=("END",))
    req = request(settings=settings, tools=(NOW,))
    await collect(AnthropicModel("claude-test", settings_for(server)), req)
    body = server.last_body
    assert (body["max_tokens"], body["stop_sequences"]) == (50, ["END"])
    assert "temperature" not in body  # the Messages API has no sampling parameters
    assert body["tools"] == [{"name": "now", "input_schema": NOW.parameters}]  # no description


async def test_tool_use_with_input_split_in_pieces_arrives_whole(server: FakeServer) -> None:
    tool = anthropic_tool_block(1, "toolu_1", "get_weather", '{"ci', 'ty": "Pa', 'ris"}')
    server.add(reply(anthropic_text_block(0, "Checking."), tool, stop_reason="tool_use"))
    model = AnthropicModel("claude-test", settings_for(server))
    events = await collect(model, request(tools=(WEATHER,)))
    call = ToolCallPart(id="toolu_1", name="get_weather", arguments='{"city": "Paris"}')
    assert events == [
        TextDelta(text="Checking."),
        ToolCallEvent(call=call),
        Usage(input_tokens=25, output_tokens=7),
        Done(reason="tool_calls"),
    ]
    assert server.last_body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": WEATHER.parameters,
        }
    ]


async def test_two_parallel_tool_calls(server: FakeServer) -> None:
    first = anthropic_tool_block(0, "toolu_a", "get_weather", '{"city":', ' "Oslo"}')
    second = anthropic_tool_block(1, "toolu_b", "get_time")
    server.add(reply(first, second, stop_reason="tool_use"))
    events = await collect(AnthropicModel("claude-test", settings_for(server)))
    weather = ToolCallPart(id="toolu_a", name="get_weather", arguments='{"city": "Oslo"}')
    clock = ToolCallPart(id="toolu_b", name="get_time", arguments="{}")
    assert [e for e in events if isinstance(e, ToolCallEvent)] == [
        ToolCallEvent(call=weather),
        ToolCallEvent(call=clock),
    ]


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "refusal"),
    ],
)
async def test_stop_reason_mapping(server: FakeServer, stop_reason: str, expected: str) -> None:
    server.add(reply(anthropic_text_block(0, "x"), stop_reason=stop_reason))
    events = await collect(AnthropicModel("claude-test", settings_for(server)))
    assert events[-1] == Done(reason=expected)


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(call_id: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": "get_weather", "input": arguments}


def tool_result(call_id: str, content: str, is_error: bool = False) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error}


async def test_conversation_is_sent_in_messages_api_format(server: FakeServer) -> None:
    server.add(reply(anthropic_text_block(0, "It is sunny.")))
    good = ToolCallPart(id="toolu_1", name="get_weather", arguments='{"city":"Paris"}')
    bad = ToolCallPart(id="toolu_2", name="get_weather", arguments="not json")
    odd = ToolCallPart(id="toolu_3", name="get_weather", arguments='["Paris"]')
    conversation = (
        Message.system("Be brief."),
        Message.system("Answer in English."),
        Message.user("Weather in Paris?"),
        Message.assistant("Let me check.", tool_calls=[good]),
        Message.tool(ToolResultPart(tool_call_id="toolu_1", content="sunny")),
        Message.assistant(tool_calls=[bad, odd]),
        Message.tool(ToolResultPart(tool_call_id="toolu_2", content="bad args", is_error=True)),
        Message.tool(ToolResultPart(tool_call_id="toolu_3", content="ok")),
        Message.assistant(""),
        Message.user("Thanks!"),
    )
    await collect(AnthropicModel("claude-test", settings_for(server)), request(*conversation))
    body = server.last_body
    assert body["system"] == "Be brief.\n\nAnswer in English."
    assert body["messages"] == [
        {"role": "user", "content": [text("Weather in Paris?")]},
        {
            "role": "assistant",
            "content": [text("Let me check."), tool_use("toolu_1", {"city": "Paris"})],
        },
        {"role": "user", "content": [tool_result("toolu_1", "sunny")]},
        {"role": "assistant", "content": [tool_use("toolu_2", {}), tool_use("toolu_3", {})]},
        {
            "role": "user",
            "content": [
                tool_result("toolu_2", "bad args", is_error=True),
                tool_result("toolu_3", "ok"),
                text("Thanks!"),
            ],
        },
    ]


@pytest.mark.parametrize(
    ("status", "kind", "error", "words"),
    [
        (401, "authentication_error", ModelUnavailable, "rejected the API key"),
        (404, "not_found_error", ModelUnavailable, "'claude-test' was not found"),
        (500, "api_error", ModelResponseError, "HTTP 500"),
    ],
)
async def test_http_errors_map_to_chatwright_errors(
    server: FakeServer, status: int, kind: str, error: type[ModelError], words: str
) -> None:
    server.add(anthropic_error(status, "the server says no", kind))
    with pytest.raises(error) as raised:
        await collect(AnthropicModel("claude-test", settings_for(server)))
    assert type(raised.value) is error
    assert words in raised.value.message
    assert raised.value.message.endswith(": the server says no")  # the server's own words
    assert server.url in str(raised.value)


async def test_error_event_in_the_middle_of_the_stream(server: FakeServer) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    start = anthropic_message_start(input_tokens=3)
    server.add(anthropic_stream(start, *anthropic_text_block(0, "Hi"), overloaded))
    model = AnthropicModel("claude-test", settings_for(server))
    received = []
    with pytest.raises(ModelResponseError, match="sent an error: Overloaded"):
        async for event in model.stream(request()):
            received.append(event)
    assert received == [TextDelta(text="Hi")]


async def test_connection_dropped_mid_stream_is_unavailable(server: FakeServer) -> None:
    cut = anthropic_stream(anthropic_message_start(3), *anthropic_text_block(0, "Hi"))
    server.add(Reply(cut.status, cut.body, cut_short=True))
    received = []
    with pytest.raises(ModelUnavailable, match=server.url):
        async for event in AnthropicModel("claude-test", settings_for(server)).stream(request()):
            received.append(event)
    assert received == [TextDelta(text="Hi")]


async def test_request_timeout_is_unavailable(server: FakeServer) -> None:
    slow = reply(anthropic_text_block(0, "late"))
    server.add(Reply(slow.status, slow.body, delay_s=10.0))
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="timed out"):
        await collect(
            AnthropicModel("claude-test", settings_for(server)),
            request(settings=ModelSettings(timeout_s=0.3)),
        )
    assert time.monotonic() - started < 5


async def test_server_down_is_unavailable_quickly() -> None:
    url = closed_port_url()
    settings = AnthropicSettings(base_url=url, max_retries=0, timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as raised:
        await collect(AnthropicModel("claude-test", settings))
    assert time.monotonic() - started < 5
    assert url in str(raised.value)
    assert "is the server running?" in str(raised.value.hint)


async def test_missing_key_without_base_url_is_unavailable() -> None:
    model = AnthropicModel("claude-test", AnthropicSettings(max_retries=0))
    with pytest.raises(ModelUnavailable) as raised:
        await collect(model)
    assert "ANTHROPIC_API_KEY" in str(raised.value.hint)


async def test_base_url_without_key_sends_a_placeholder_key(server: FakeServer) -> None:
    server.add(reply(anthropic_text_block(0, "a")), reply(anthropic_text_block(0, "b")))
    model = AnthropicModel("claude-test", settings_for(server, api_key=None))
    assert (await collect(model))[0] == TextDelta(text="a")
    client = model._client
    assert (await collect(model))[0] == TextDelta(text="b")
    assert model._client is client
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


async def test_base_url_and_key_come_from_the_environment(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.add(reply(anthropic_text_block(0, "a")), reply(anthropic_text_block(0, "b")))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    await collect(AnthropicModel("claude-test", AnthropicSettings(max_retries=0)))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    await collect(AnthropicModel("claude-test", AnthropicSettings(max_retries=0)))
    keys = [r.headers["authorization"] for r in server.requests]
    assert keys == ["Bearer not-needed", "Bearer sk-ant-env"]


async def test_get_model_builds_the_provider_from_settings(server: FakeServer) -> None:
    server.add(reply(anthropic_text_block(0, "hello")))
    model = get_model("anthropic:claude-test", Settings(anthropic=settings_for(server)))
    assert model.name == "anthropic:claude-test"
    assert (await collect(model))[0] == TextDelta(text="hello")


async def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)
    model = AnthropicModel("claude-test", AnthropicSettings(api_key="sk-ant-test"))
    with pytest.raises(ModelUnavailable) as raised:
        await collect(model)
    assert raised.value.hint == 'pip install "chatwright[anthropic]"'
