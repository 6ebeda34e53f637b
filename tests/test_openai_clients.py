"""Real OpenAI clients against a live ``/v1`` (uvicorn on a loopback port): the official SDK
and LangChain (``ChatOpenAI``, ``OpenAIEmbeddings``), with client-side tools, tool_choice,
structured output, JSON mode, stop sequences, usage and embeddings, on the test models.
The same features on the embedded model: ``test_langchain_standard.py``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import BaseModel

from chatwright.models.embeddings import HashEmbedder
from chatwright.server import create_app
from test_server_live import make_settings, serving

openai = pytest.importorskip("openai")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("clients")
    with serving(create_app(make_settings(tmp, model="test:tools"))) as base:
        yield base


def sdk(url: str) -> Any:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="anything", max_retries=0)


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def refusal(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """The OpenAI-shaped error of a refused request (asserting it is a 400)."""
    full = {"model": "test:tools", "messages": ask("hi"), **body}
    response = httpx.post(f"{url}/v1/chat/completions", json=full, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- the openai SDK -------------------------------------------------------------------------------
def test_client_tools_come_back_as_tool_calls_and_their_results_are_answered(url: str) -> None:
    client = sdk(url)
    messages = ask('call get_weather {"city": "Paris"}')
    done = client.chat.completions.create(model="test:tools", messages=messages, tools=[WEATHER])
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert done.usage.prompt_tokens > 0 and done.usage.total_tokens >= done.usage.prompt_tokens
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    answer = client.chat.completions.create(model="test:tools", messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == "tool said: get_weather: sunny, 21 C"
    assert answer.choices[0].finish_reason == "stop"


def test_tool_calls_stream_as_delta_chunks_with_usage_last(url: str) -> None:
    stream = sdk(url).chat.completions.create(
        model="test:tools",
        messages=ask('call get_weather {"city": "Oslo"}\ncall get_time {"city": "Rome"}'),
        tools=[WEATHER, TIME],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [(p.index, p.function.name) for p in pieces] == [(0, "get_weather"), (1, "get_time")]
    assert all(p.id and p.type == "function" for p in pieces)
    assert json.loads(pieces[1].function.arguments) == {"city": "Rome"}
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0


def test_tool_choice_forces_names_or_forbids_a_call(url: str) -> None:
    client = sdk(url)
    tools = [WEATHER, TIME]
    required = client.chat.completions.create(
        model="test:tools", messages=ask("Hello!"), tools=tools, tool_choice="required"
    )
    assert required.choices[0].message.tool_calls[0].function.name == "get_weather"
    named = client.chat.completions.create(
        model="test:tools",
        messages=ask("Hello!"),
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {"city": "Hello!"}  # valid for its schema
    none = client.chat.completions.create(
        model="test:tools",
        messages=ask('call get_weather {"city": "Oslo"}'),
        tools=tools,
        tool_choice="none",
    )
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason == "stop"
    one = client.chat.completions.create(
        model="test:tools",
        messages=ask("call get_weather {}\ncall get_time {}"),
        tools=tools,
        parallel_tool_calls=False,
    )
    assert len(one.choices[0].message.tool_calls) == 1


class Person(BaseModel):
    name: str
    age: int


def test_structured_output_and_json_mode(url: str) -> None:
    client = sdk(url)
    parsed = client.chat.completions.parse(
        model="test:echo", messages=ask("Ada is 36"), response_format=Person
    )
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person) and person.name == "Ada is 36" and person.age == 3
    obj = client.chat.completions.create(
        model="test:echo", messages=ask("json please"), response_format={"type": "json_object"}
    )
    assert json.loads(obj.choices[0].message.content) == {"echo": "json please"}
    text = client.chat.completions.create(
        model="test:echo", messages=ask("plain"), response_format={"type": "text"}
    )
    assert text.choices[0].message.content == "echo: plain"


def test_stop_sequences_end_the_answer(url: str) -> None:
    client = sdk(url)
    cut = client.chat.completions.create(
        model="test:echo", messages=ask("the sky is blue"), stop=["is"]
    )
    assert cut.choices[0].message.content == "echo: the sky "
    streamed = client.chat.completions.create(
        model="test:echo", messages=ask("the sky is blue"), stop="blue", stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "echo: the sky is "


def test_embeddings_in_openai_shape_float_and_base64(url: str) -> None:
    client = sdk(url)
    expected = HashEmbedder().embed(["first text", "second"])
    floats = client.embeddings.create(
        model="test:hash", input=["first text", "second"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert np.allclose(floats.data[0].embedding, expected[0], atol=1e-6)
    assert floats.usage.prompt_tokens == 3
    packed = client.embeddings.create(model="default", input="second")  # the SDK asks base64
    assert np.allclose(packed.data[0].embedding, expected[1], atol=1e-6)
    raw = httpx.post(
        f"{url}/v1/embeddings",
        json={"model": "test:hash", "input": "second", "encoding_format": "base64"},
    ).json()
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert raw["object"] == "list" and np.allclose(vector, expected[1], atol=1e-6)
    same = client.embeddings.create(model="test:hash", input="x", dimensions=256)
    assert len(same.data[0].embedding) == 256


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": [[1, 2, 3]]}, "input", "token ids"),
        ({"input": []}, "input", "empty"),
        ({"input": ["ok", ""]}, "input", "empty string"),
        ({"input": "x", "dimensions": 64}, "dimensions", "256 dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", ""),
        ({"input": "x", "model": "text-embedding-3-small"}, "model", "does not exist"),
    ],
)
def test_embeddings_refuse_what_they_cannot_do(
    url: str, body: dict[str, Any], param: str, words: str
) -> None:
    response = httpx.post(f"{url}/v1/embeddings", json={"model": "test:hash", **body})
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]


# -- bad input: a clear 400, never ignored --------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "unknown tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice", "object"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "not one of the tools",
        ),
        ({"tool_choice": "required"}, "tool_choice", "only allowed when tools"),
        ({"tools": [{"type": "web_search"}]}, "tools", "only function tools"),
        ({"tools": [{"type": "function"}]}, "tools", "function must be an object"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools", "name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools",
            "type object",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
                ]
            },
            "tools",
            "type object",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools", "two tools"),
        ({"response_format": {"type": "yaml"}}, "response_format", "unknown response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "with a name"),
        ({"n": 2}, "n", "one choice"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"top_p": 0.5}, "top_p", "not supported"),
        ({"presence_penalty": 1}, "presence_penalty", "not supported"),
        ({"seed": 1}, "seed", "seeded"),
        ({"functions": []}, "functions", "legacy"),
        ({"reasoning_effort": "low"}, "reasoning_effort", "does not support"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "up to 4"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream = true"),
        ({"answer_mode": "extract"}, "answer_mode", "turn of a thread"),
    ],
)
def test_what_cannot_be_honoured_is_a_clear_400(
    url: str, body: dict[str, Any], param: str, words: str
) -> None:
    error = refusal(url, body)
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_neutral_values_and_informational_fields_are_accepted(url: str) -> None:
    neutral = {"n": 1, "logprobs": False, "top_p": 1, "presence_penalty": 0, "user": "ada"}
    body = {"model": "test:echo", "messages": ask("hi"), **neutral, "metadata": {"k": "v"}}
    response = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]


def test_a_thread_refuses_settings_it_would_drop(url: str) -> None:
    thread = {"X-Chatwright-Thread": "t1"}  # client tools work there: test_openai_thread_tools
    for body in (
        {"tool_choice": "required", "tools": [WEATHER]},
        {"response_format": {"type": "json_object"}},
        {"stop": ["x"]},
        {"temperature": 0.5},
    ):
        error = refusal(url, body, thread)
        assert error["param"] == next(iter(body)) and "X-Chatwright-Thread" in error["message"]
    assert httpx.get(f"{url}/api/threads").json()["threads"] == []  # nothing stored


def test_a_schema_the_embedded_models_grammar_cannot_express_is_a_400(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    bad = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}
    settings = make_settings(tmp_path, model="local:gemma-3-270m")
    with serving(create_app(settings)) as base:
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": bad}}
        error = refusal(base, {"model": "default", "response_format": fmt})
        assert error["param"] is None and "cannot be turned into a grammar" in error["message"]
        tool = {"type": "function", "function": {"name": "f", "parameters": bad}}
        error = refusal(base, {"model": "default", "tools": [tool]})
        assert "the parameters of the tool 'f'" in error["message"]
        odd = {"type": "object", "properties": {"a": {"type": "array", "items": 5}}}
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": odd}}
        error = refusal(base, {"model": "default", "response_format": fmt})  # not a 500
        assert "cannot be turned into a grammar" in error["message"]


# -- LangChain ------------------------------------------------------------------------------------
def chat(url: str, model: str = "test:tools", **kwargs: Any) -> Any:
    lc = pytest.importorskip("langchain_openai")
    return lc.ChatOpenAI(
        model=model, base_url=f"{url}/v1", api_key="anything", max_retries=0, **kwargs
    )


def test_a_langchain_bind_tools_agent_loop_with_two_tools(url: str) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    @tool
    def get_time(city: str) -> str:
        """The time in a city."""
        return f"noon in {city}"

    tools = {t.name: t for t in (get_weather, get_time)}
    model = chat(url).bind_tools(list(tools.values()))
    messages: list[Any] = [
        HumanMessage('call get_weather {"city": "Oslo"}\ncall get_time {"city": "Rome"}')
    ]
    for _ in range(3):  # the loop a LangChain agent runs
        reply = model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            result = tools[call["name"]].invoke(call["args"])
            messages.append(ToolMessage(result, tool_call_id=call["id"], name=call["name"]))
    assert [m.type for m in messages] == ["human", "ai", "tool", "tool", "ai"]
    assert "sunny in Oslo" in messages[-1].content and "noon in Rome" in messages[-1].content
    assert messages[1].usage_metadata["input_tokens"] > 0
    forced = chat(url).bind_tools(list(tools.values()), tool_choice="get_time").invoke("Hello!")
    assert forced.tool_calls[0]["name"] == "get_time"
    chunks = list(chat(url).bind_tools([get_weather], tool_choice="any").stream("Hi"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.tool_calls[0]["name"] == "get_weather"


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(url: str, method: str) -> None:
    model = chat(url, model="test:tools").with_structured_output(Person, method=method)
    if method == "json_mode":  # the schema is not sent: the answer is {"echo": ...}
        with pytest.raises(Exception, match="validation error"):
            model.invoke("Ada is 36, answer in JSON")
        return
    person = model.invoke("Ada is 36")
    assert isinstance(person, Person) and person.name == "Ada is 36"


def test_langchain_stop_and_stream_usage(url: str) -> None:
    model = chat(url, model="test:echo", stream_usage=True)
    assert model.invoke("the sky is blue", stop=["is"]).content == "echo: the sky "
    chunks = list(model.stream("count me"))
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == 3


def test_langchain_openai_embeddings(url: str) -> None:
    lc = pytest.importorskip("langchain_openai")
    embeddings = lc.OpenAIEmbeddings(
        model="test:hash",
        base_url=f"{url}/v1",
        api_key="anything",
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    expected = HashEmbedder().embed(["alpha beta", "gamma"])
    documents = embeddings.embed_documents(["alpha beta", "gamma"])
    assert np.allclose(documents, expected, atol=1e-6)
    assert np.allclose(embeddings.embed_query("gamma"), expected[1], atol=1e-6)


def test_a_langchain_create_agent_with_two_tools_runs_unchanged(url: str) -> None:
    agents = pytest.importorskip("langchain.agents")
    from langchain_core.tools import tool

    ran: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(f"weather {city}")
        return f"sunny in {city}"

    @tool
    def get_time(city: str) -> str:
        """The time in a city."""
        ran.append(f"time {city}")
        return f"noon in {city}"

    agent = agents.create_agent(chat(url), tools=[get_weather, get_time])
    asked = 'call get_weather {"city": "Oslo"}\ncall get_time {"city": "Rome"}'
    state = agent.invoke({"messages": [{"role": "user", "content": asked}]})
    assert sorted(ran) == ["time Rome", "weather Oslo"]
    answer = state["messages"][-1]
    assert answer.type == "ai" and not answer.tool_calls
    assert "sunny in Oslo" in answer.content and "noon in Rome" in answer.content
