"""The one serializer round-trips every message exactly; the OpenAI format converts both ways."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatwright.types import (
    CitationPart,
    Message,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Trace,
    dump_json,
    from_openai,
    load_json,
    load_message,
    load_messages,
    to_openai,
)

# -- strategies -----------------------------------------------------------------------------
# st.text() never draws surrogates, so mix lone surrogates (U+D800..U+DFFF) in by hand.
_lone_surrogates = st.integers(0xD800, 0xDFFF).map(chr)
any_text = st.lists(st.characters() | _lone_surrogates, max_size=30).map("".join)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
metadata = st.dictionaries(any_text, json_values, max_size=4)
text_parts = st.builds(TextPart, text=any_text)
tool_calls = st.builds(ToolCallPart, id=any_text, name=any_text, arguments=any_text)
tool_results = st.builds(
    ToolResultPart,
    tool_call_id=any_text,
    name=any_text,
    content=any_text,
    is_error=st.booleans(),
)
citations = st.builds(
    CitationPart,
    index=st.integers(),
    text=any_text,
    document_id=st.none() | any_text,
    chunk_id=st.none() | any_text,
    source=st.none() | any_text,
    title=st.none() | any_text,
    page=st.none() | st.integers(),
)
parts = st.one_of(text_parts, tool_calls, tool_results, citations)
messages = st.builds(
    Message,
    role=st.sampled_from(["system", "user", "assistant", "tool"]),
    parts=st.lists(parts, max_size=4).map(tuple),
    metadata=metadata,
)


def roundtrip(message: Message) -> Message:
    data = dump_json(message)
    assert isinstance(data, bytes)
    return load_message(data)


# -- the serializer -------------------------------------------------------------------------
@given(messages)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_message_round_trips_exactly(message: Message) -> None:
    assert roundtrip(message) == message


@given(st.lists(messages, max_size=5))
def test_message_lists_round_trip(values: list[Message]) -> None:
    assert load_messages(dump_json(values)) == values


@given(any_text)
def test_any_user_text_round_trips(text: str) -> None:
    assert roundtrip(Message.user(text)).text == text


def test_text_strategy_draws_lone_surrogates() -> None:
    """Guard: the property tests above really exercise lone surrogates."""
    found = []

    @given(any_text)
    @settings(max_examples=100)
    def probe(text: str) -> None:
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            found.append(text)

    probe()
    assert found


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\x00",
        "a\x00b\x00",
        "emoji 😀👩‍👩‍👧‍👦🏳️‍🌈",
        "lone high \ud800 and lone low \udfff",
        "reversed pair \udc00\ud800",
        "two lone halves that look like a pair \ud83d\ude00",
        "\u2028\u2029\ufeff\uffff",
        '"quotes" \\ backslash \n\t\r',
    ],
)
def test_edge_case_texts_round_trip(text: str) -> None:
    message = Message.user(text, note=text)
    back = roundtrip(message)
    assert back == message
    assert back.text == text
    assert back.metadata == {"note": text}


def test_multi_megabyte_string_round_trips() -> None:
    text = ("0123456789abcdef😀\ud800\x00" * 200_000)[:4_000_000]
    message = Message.assistant(text, tool_calls=[ToolCallPart(id="c", name="n", arguments=text)])
    back = roundtrip(message)
    assert back.text == text
    assert back.tool_calls[0].arguments == text


def test_every_constructor_round_trips() -> None:
    call = ToolCallPart(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')
    values = [
        Message.system("be brief"),
        Message.user("hi", client="cli"),
        Message.assistant("sure", tool_calls=[call]),
        Message.assistant(tool_calls=[call]),
        Message.assistant(""),
        Message.tool(ToolResultPart(tool_call_id="call_1", name="get_weather", content="sun")),
        Message.tool(ToolResultPart(tool_call_id="x", content="boom", is_error=True)),
        Message(
            role="assistant",
            parts=(TextPart(text="see [1]"), CitationPart(index=1, text="passage", page=3)),
        ),
    ]
    for value in values:
        assert roundtrip(value) == value


def test_loaders_accept_str_and_bytes() -> None:
    message = Message.user("h\u00e9llo \ud800")
    data = dump_json(message)
    assert load_message(data) == message
    assert load_message(data.decode("utf-8", "surrogatepass")) == message
    assert load_json(data)["role"] == "user"


def test_dump_json_writes_utf8_not_escapes() -> None:
    assert "é😀".encode() in dump_json(Message.user("é😀"))


def test_pydantic_values_other_than_messages_round_trip() -> None:
    trace = Trace(model="test:echo", input_tokens=3, notes=["n \ud800"])
    assert Trace.model_validate(load_json(dump_json(trace))) == trace


def test_load_message_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        load_message(b'{"role": "wizard", "parts": []}')
    with pytest.raises(ValueError):
        load_message(b"not json")


# -- OpenAI format --------------------------------------------------------------------------
def test_openai_text_messages_round_trip() -> None:
    values = [Message.system("sys"), Message.user("hi 😀"), Message.assistant("hello")]
    wire = to_openai(values)
    assert wire == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi 😀"},
        {"role": "assistant", "content": "hello"},
    ]
    assert from_openai(wire) == values


def test_openai_assistant_tool_calls_round_trip() -> None:
    calls = [
        ToolCallPart(id="call_1", name="get_weather", arguments='{"city":"Oslo"}'),
        ToolCallPart(id="call_2", name="get_time", arguments="{}"),
    ]
    for message in (Message.assistant(tool_calls=calls), Message.assistant("ok", tool_calls=calls)):
        wire = to_openai([message])
        assert wire[0]["tool_calls"][0] == {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
        assert wire[0]["content"] == (message.text or None)
        assert from_openai(wire) == [message]


def test_openai_tool_results_round_trip() -> None:
    message = Message.tool(ToolResultPart(tool_call_id="call_1", content="sunny"))
    wire = to_openai([message])
    assert wire == [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    assert from_openai(wire) == [message]


def test_openai_tool_message_with_two_results_becomes_two_items() -> None:
    message = Message.tool(
        ToolResultPart(tool_call_id="a", content="1"), ToolResultPart(tool_call_id="b", content="2")
    )
    wire = to_openai([message])
    assert [w["tool_call_id"] for w in wire] == ["a", "b"]
    assert [m.tool_results[0].content for m in from_openai(wire)] == ["1", "2"]


def test_from_openai_accepts_text_part_lists_dict_arguments_and_developer() -> None:
    wire: list[dict[str, Any]] = [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "done"},
    ]
    system, user, assistant, tool = from_openai(wire)
    assert system == Message.system("rules")
    assert user == Message.user("ab")
    assert assistant.tool_calls == [ToolCallPart(id="c1", name="f", arguments='{"x": 1}')]
    assert json.loads(assistant.tool_calls[0].arguments) == {"x": 1}
    assert tool.tool_results == [ToolResultPart(tool_call_id="c1", name="f", content="done")]


def test_from_openai_rejects_unknown_role() -> None:
    with pytest.raises(ValueError, match=r"messages\[1\]\.role"):
        from_openai([{"role": "user", "content": "ok"}, {"role": "wizard", "content": "x"}])


def test_from_openai_rejects_image_content() -> None:
    content = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    with pytest.raises(ValueError, match="image_url"):
        from_openai([{"role": "user", "content": content}])


def test_from_openai_rejects_tool_message_without_call_id() -> None:
    with pytest.raises(ValueError, match=r"messages\[0\]\.tool_call_id is required"):
        from_openai([{"role": "tool", "content": "result"}])


@pytest.mark.parametrize("item", ["just a string", None, 42])
def test_from_openai_rejects_non_object_items(item: Any) -> None:
    with pytest.raises(ValueError, match="must be an object"):
        from_openai([item])


def test_from_openai_rejects_non_text_content() -> None:
    with pytest.raises(ValueError, match="content"):
        from_openai([{"role": "user", "content": {"text": "x"}}])


@pytest.mark.parametrize("tool_calls", [["not a call"], [{"id": "c", "function": "not an object"}]])
def test_from_openai_rejects_malformed_tool_calls_with_value_error(tool_calls: Any) -> None:
    with pytest.raises(ValueError, match="tool_calls"):
        from_openai([{"role": "assistant", "content": None, "tool_calls": tool_calls}])
