"""The openai provider against a local fake server speaking the chat-completions wire format."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chatwright.config import OpenAISettings, Settings
from chatwright.errors import ModelError, ModelResponseError, ModelUnavailable
from chatwright.models import get_model
from chatwright.models.base import ModelEvent, ModelRequest, ModelSettings, ToolSpec
from chatwright.models.openai import OpenAIModel
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
    closed_port_url,
    openai_chunk,
    openai_error,
    openai_stream,
    openai_text,
    openai_tool_call,
    openai_usage,
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
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def settings_for(server: FakeServer, **overrides: Any) -> OpenAISettings:
    values = {"base_url": f"{server.url}/v1", "api_key": "sk-test", "max_retries": 0}
    return OpenAISettings(**{**values, "timeout_s": 5.0, **overrides})


def request(*messages: Message, **kwargs: Any) -> ModelRequest:
    return ModelRequest(messages=messages or (Message.user("Hi"),), **kwargs)


async def collect(model: Any, req: ModelRequest | None = None) -> list[ModelEvent]:
    return [event async for event in model.stream(req or request())]


async def test_text_streams_in_pieces_with_usage_and_reason(server: FakeServer) -> None:
    server.add(
        openai_stream(
            *openai_text("Hel", "lo", " world"),
            openai_chunk(finish_reason="stop"),
            openai_usage(12, 3),
        )
    )
    model = OpenAIModel("gpt-test", settings_for(server))
    events = await collect(model)
    assert model.name == "openai:gpt-test"
    assert events == [
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
        TextDelta(text=" world"),
        Usage(input_tokens=12, output_tokens=3),
        Done(reason="stop"),
    ]
    sent = server.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body["model"] == "gpt-test"
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert not {"tools", "max_tokens", "temperature", "stop"} & sent.body.keys()


async def test_sampling_settings_are_sent(server: FakeServer) -> None:
    server.add(openai_stream(*openai_text("ok")))
    settings = ModelSettings(max_tokens=50, temperature=0.2, stop=("END",))
    req = request(settings=settings, tools=(NOW,))
    await collect(OpenAIModel("gpt-test", settings_for(server)), req)
    body = server.last_body
    assert (body["max_tokens"], body["temperature"], body["stop"]) == (50, 0.2, ["END"])
    function = {"name": "now", "parameters": NOW.parameters}  # no empty description
    assert body["tools"] == [{"type": "function", "function": function}]


async def test_tool_call_split_across_chunks_arrives_whole(server: FakeServer) -> None:
    server.add(
        openai_stream(
            *openai_tool_call(0, "call_1", "get_weather", '{"ci', 'ty": "Pa', 'ris"}'),
            openai_chunk(finish_reason="tool_calls"),
        )
    )
    model = OpenAIModel("gpt-test", settings_for(server))
    events = await collect(model, request(tools=(WEATHER,)))
    call = ToolCallPart(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    assert events == [ToolCallEvent(call=call), Done(reason="tool_calls")]
    function = {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER.parameters,
    }
    assert server.last_body["tools"] == [{"type": "function", "function": function}]


async def test_two_parallel_tool_calls_with_interleaved_pieces(server: FakeServer) -> None:
    first = openai_tool_call(0, "call_a", "get_weather", '{"city":', ' "Oslo"}')
    second = openai_tool_call(1, "call_b", "get_time", '{"tz":', ' "UTC"}')
    interleaved = [chunk for pair in zip(first, second, strict=True) for chunk in pair]
    server.add(openai_stream(*interleaved, openai_chunk(finish_reason="tool_calls")))
    events = await collect(OpenAIModel("gpt-test", settings_for(server)))
    weather = ToolCallPart(id="call_a", name="get_weather", arguments='{"city": "Oslo"}')
    clock = ToolCallPart(id="call_b", name="get_time", arguments='{"tz": "UTC"}')
    assert events == [
        ToolCallEvent(call=weather),
        ToolCallEvent(call=clock),
        Done(reason="tool_calls"),
    ]


async def test_tool_calls_without_finish_reason_or_ids_or_arguments(server: FakeServer) -> None:
    """Some compatible servers end without a finish_reason, or omit ids and arguments."""
    no_id = {"index": 1, "function": {"name": "get_time", "arguments": ""}}
    weather = openai_tool_call(0, "call_abc", "get_weather")
    server.add(openai_stream(*weather, openai_chunk({"tool_calls": [no_id]})))
    events = await collect(OpenAIModel("gpt-test", settings_for(server)))
    assert events == [
        ToolCallEvent(call=ToolCallPart(id="call_abc", name="get_weather", arguments="{}")),
        ToolCallEvent(call=ToolCallPart(id="call_1", name="get_time", arguments="{}")),
        Done(reason="tool_calls"),
    ]


@pytest.mark.parametrize(
    ("finish_reason", "expected"),
    [("length", "length"), ("content_filter", "content_filter"), (None, "stop")],
)
async def test_finish_reason_mapping(
    server: FakeServer, finish_reason: str | None, expected: str
) -> None:
    server.add(openai_stream(*openai_text("x"), openai_chunk(finish_reason=finish_reason)))
    events = await collect(OpenAIModel("gpt-test", settings_for(server)))
    assert events == [TextDelta(text="x"), Done(reason=expected)]


async def test_tool_round_trip_is_sent_in_openai_format(server: FakeServer) -> None:
    server.add(openai_stream(*openai_text("It is sunny.")))
    call = ToolCallPart(id="call_1", name="get_weather", arguments='{"city":"Paris"}')
    conversation = (
        Message.system("Be brief."),
        Message.user("Weather in Paris?"),
        Message.assistant(tool_calls=[call]),
        Message.tool(ToolResultPart(tool_call_id="call_1", name="get_weather", content="sunny")),
    )
    await collect(OpenAIModel("gpt-test", settings_for(server)), request(*conversation))
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    assert server.last_body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (401, ModelUnavailable, "rejected the API key"),
        (404, ModelUnavailable, "'gpt-test' was not found"),
        (500, ModelResponseError, "HTTP 500"),
    ],
)
async def test_http_errors_map_to_chatwright_errors(
    server: FakeServer, status: int, error: type[ModelError], words: str
) -> None:
    server.add(openai_error(status, "the server says no"))
    with pytest.raises(error) as raised:
        await collect(OpenAIModel("gpt-test", settings_for(server)))
    assert type(raised.value) is error
    assert words in raised.value.message
    assert raised.value.message.endswith(": the server says no")  # the server's own words
    assert server.url in str(raised.value)


async def test_error_in_the_middle_of_the_stream(server: FakeServer) -> None:
    server.add(openai_stream(*openai_text("Hi"), {"error": {"message": "overloaded"}}))
    model = OpenAIModel("gpt-test", settings_for(server))
    received = []
    with pytest.raises(ModelResponseError, match="sent an error: overloaded"):
        async for event in model.stream(request()):
            received.append(event)
    assert received == [TextDelta(text="Hi")]


async def test_connection_dropped_mid_stream_is_unavailable(server: FakeServer) -> None:
    cut = openai_stream(*openai_text("Hi")).body.removesuffix(b"data: [DONE]\n\n")
    server.add(Reply(200, cut, cut_short=True))
    received = []
    with pytest.raises(ModelUnavailable, match=server.url):
        async for event in OpenAIModel("gpt-test", settings_for(server)).stream(request()):
            received.append(event)
    assert received == [TextDelta(text="Hi")]


async def test_request_timeout_is_unavailable(server: FakeServer) -> None:
    slow = openai_stream(*openai_text("late"))
    server.add(Reply(slow.status, slow.body, delay_s=10.0))
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="timed out"):
        await collect(
            OpenAIModel("gpt-test", settings_for(server)),
            request(settings=ModelSettings(timeout_s=0.3)),
        )
    assert time.monotonic() - started < 5


async def test_server_down_is_unavailable_quickly() -> None:
    url = f"{closed_port_url()}/v1"
    model = OpenAIModel("gpt-test", OpenAISettings(base_url=url, max_retries=0, timeout_s=2.0))
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as raised:
        await collect(model)
    assert time.monotonic() - started < 5
    assert url in str(raised.value)
    assert "is the server running?" in str(raised.value.hint)


async def test_missing_key_without_base_url_is_unavailable() -> None:
    model = OpenAIModel("gpt-test", OpenAISettings(max_retries=0))
    with pytest.raises(ModelUnavailable) as raised:
        await collect(model)
    assert "OPENAI_API_KEY" in str(raised.value.hint)


async def test_base_url_without_key_sends_a_placeholder_key(server: FakeServer) -> None:
    server.add(openai_stream(*openai_text("a")), openai_stream(*openai_text("b")))
    model = OpenAIModel("llama3", settings_for(server, api_key=None))
    assert await collect(model) == [TextDelta(text="a"), Done(reason="stop")]
    client = model._client
    assert await collect(model) == [TextDelta(text="b"), Done(reason="stop")]
    assert model._client is client
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


async def test_base_url_and_key_come_from_the_environment(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.add(openai_stream(*openai_text("a")), openai_stream(*openai_text("b")))
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
    await collect(OpenAIModel("llama3", OpenAISettings(max_retries=0)))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    await collect(OpenAIModel("gpt-test", OpenAISettings(max_retries=0)))
    keys = [r.headers["authorization"] for r in server.requests]
    assert keys == ["Bearer not-needed", "Bearer sk-from-env"]


async def test_get_model_builds_the_provider_from_settings(server: FakeServer) -> None:
    server.add(openai_stream(*openai_text("hello")))
    model = get_model("openai:gpt-test", Settings(openai=settings_for(server)))
    assert model.name == "openai:gpt-test"
    assert await collect(model) == [TextDelta(text="hello"), Done(reason="stop")]


async def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    model = OpenAIModel("gpt-test", OpenAISettings(api_key="sk-test"))
    with pytest.raises(ModelUnavailable) as raised:
        await collect(model)
    assert raised.value.hint == 'pip install "chatwright[openai]"'
