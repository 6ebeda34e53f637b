"""Client tools, tool_choice, response_format, stop and parallel_tool_calls reach remote
models as their APIs name them (what the request sent is checked; nothing is called)."""

from __future__ import annotations

import pytest

from chatwright.errors import UserError
from chatwright.models.anthropic import AnthropicModel
from chatwright.models.base import (
    ModelRequest,
    ModelSettings,
    ResponseFormat,
    ToolChoice,
    ToolSpec,
)
from chatwright.models.openai import OpenAIModel
from chatwright.models.test import example_json
from chatwright.types import Message

TOOL = ToolSpec(name="get_time", parameters={"type": "object", "properties": {}})
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def request(**fields: object) -> ModelRequest:
    return ModelRequest(messages=(Message.user("hi"),), **fields)  # type: ignore[arg-type]


def test_openai_gets_tool_choice_response_format_stop_and_parallel_calls() -> None:
    model = OpenAIModel("gpt-4o-mini")
    params = model._params(
        request(
            tools=(TOOL,),
            tool_choice=ToolChoice(mode="required", name="get_time"),
            response_format=ResponseFormat(type="json_schema", name="n", json_schema=SCHEMA),
            settings=ModelSettings(stop=("END",), parallel_tool_calls=False),
        )
    )
    assert params["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert params["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": SCHEMA},
    }
    assert params["stop"] == ["END"] and params["parallel_tool_calls"] is False
    plain = model._params(
        request(tools=(TOOL,), response_format=ResponseFormat(type="json_object"))
    )
    assert plain["tool_choice"] == "auto" and plain["response_format"] == {"type": "json_object"}
    assert "parallel_tool_calls" not in plain
    assert "tool_choice" not in model._params(request())


def test_anthropic_gets_its_own_tool_choice_and_refuses_response_format() -> None:
    model = AnthropicModel("claude-x")
    required = model._params(request(tools=(TOOL,), tool_choice=ToolChoice(mode="required")))
    assert required["tool_choice"] == {"type": "any"}
    named = model._params(
        request(
            tools=(TOOL,),
            tool_choice=ToolChoice(mode="required", name="get_time"),
            settings=ModelSettings(parallel_tool_calls=False),
        )
    )
    assert named["tool_choice"] == {
        "type": "tool",
        "name": "get_time",
        "disable_parallel_tool_use": True,
    }
    none = model._params(request(tools=(TOOL,), tool_choice=ToolChoice(mode="none")))
    assert none["tool_choice"] == {"type": "none"}
    with pytest.raises(UserError, match="response_format"):
        model._params(request(response_format=ResponseFormat(type="json_object")))


def test_example_json_is_valid_for_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["a", "b"]},
            "size": {"anyOf": [{"type": "null"}, {"type": "number"}]},
            "child": {"$ref": "#/$defs/Child"},
        },
        "$defs": {"Child": {"type": "object", "properties": {"ok": {"type": "boolean"}}}},
    }
    assert example_json(schema, "two words") == {
        "name": "two words",
        "tags": ["two words"],
        "kind": "a",
        "size": 2.0,
        "child": {"ok": True},
    }
