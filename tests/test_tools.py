"""Tools from typed functions: schema, validation, running, and containing their failures."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Literal

import pytest
from pydantic import BaseModel

from chatwright.errors import ConfigError
from chatwright.tools import ApprovalPolicy, Tool, ToolContext, ToolRetry, Toolset, tool

CTX = ToolContext(owner="ada", thread_id="t1")


def run(t: Tool, arguments: str, context: ToolContext = CTX):
    return asyncio.run(t.call(arguments, context))


@tool
def weather(city: str, unit: Literal["c", "f"] = "c", days: int = 1) -> dict:
    """Get the weather forecast for a city.

    Args:
        city: The city's name, e.g. Paris.
        unit: Celsius or Fahrenheit.
        days: How many days ahead.
    """
    return {"city": city, "unit": unit, "days": days, "temp": 21}


def test_schema_comes_from_hints_and_docstring():
    assert weather.name == "weather"
    assert weather.description == "Get the weather forecast for a city."
    p = weather.parameters
    assert p["type"] == "object" and p["required"] == ["city"]
    assert p["properties"]["city"] == {
        "type": "string",
        "description": "The city's name, e.g. Paris.",
    }
    assert p["properties"]["unit"]["enum"] == ["c", "f"]
    assert p["properties"]["days"]["default"] == 1
    assert p["additionalProperties"] is False
    assert "title" not in p and all("title" not in v for v in p["properties"].values())
    assert weather.spec.name == "weather" and weather.spec.parameters == p


class Address(BaseModel):
    street: str
    zip: str


def test_rest_docstrings_and_nested_models():
    def ship(address: Address, express: bool = False) -> str:
        """Ship the order.

        :param address: Where to.
        :param express: Faster, costs more.
        """
        return f"to {address.street}"

    t = Tool.from_function(ship, side_effects=True)
    assert t.side_effects
    assert t.parameters["properties"]["express"]["description"] == "Faster, costs more."
    assert run(t, '{"address": {"street": "Main 1", "zip": "1000"}}').content == "to Main 1"


def test_valid_call_runs_and_renders_json():
    out = run(weather, '{"city": "Oslo", "days": 2}')
    assert not out.is_error
    assert out.content == '{"city":"Oslo","unit":"c","days":2,"temp":21}'


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"city": "Oslo", "unit": "k"}', "unit: Input should be 'c' or 'f'"),
        ('{"unit": "c"}', "city: Field required"),
        ('{"city": "Oslo", "color": "red"}', "color: Extra inputs are not permitted"),
        ('{"city": "Oslo", "days": "many"}', "days: Input should be a valid integer"),
        ('{"city": "Oslo"', "not valid JSON"),
        ('["Oslo"]', "must be a JSON object"),
    ],
)
def test_invalid_arguments_go_back_to_the_model_without_calling(arguments, expected):
    calls = []

    @tool
    def spy(city: str, unit: Literal["c", "f"] = "c", days: int = 1) -> str:
        calls.append(city)
        return "ran"

    out = run(spy, arguments)
    assert out.is_error and expected in out.content and "retry" in out.content
    assert calls == []


def test_async_tools_and_sync_tools_off_the_loop():
    loop_threads = []

    @tool
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        return f"got {url}"

    @tool
    def blocking(n: int) -> int:
        loop_threads.append(threading.current_thread().name)
        return n * 2

    assert run(fetch, '{"url": "x"}').content == "got x"
    assert run(blocking, '{"n": 4}').content == "8"
    assert loop_threads[0].startswith("chatwright-tool")


def test_tool_context_is_injected_and_hidden_from_the_schema():
    @tool
    def whoami(context: ToolContext, greeting: str = "hi") -> str:
        return f"{greeting} {context.owner}/{context.thread_id}"

    assert list(whoami.parameters["properties"]) == ["greeting"]
    assert run(whoami, "{}").content == "hi ada/t1"


def test_a_tool_that_raises_is_an_error_result():
    @tool
    def broken() -> str:
        raise RuntimeError("disk on fire")

    out = run(broken, "{}")
    assert out.is_error and out.content == "broken failed: RuntimeError: disk on fire"


def test_tool_retry_sends_its_message_back():
    @tool
    def pick(n: int) -> int:
        if n > 3:
            raise ToolRetry("n must be at most 3")
        return n

    out = run(pick, '{"n": 9}')
    assert out.is_error and "n must be at most 3" in out.content


def test_a_hanging_tool_times_out():
    @tool(timeout_s=0.2)
    async def hang() -> str:
        await asyncio.sleep(30)
        return "never"

    @tool(timeout_s=0.2)
    def hang_sync() -> str:
        time.sleep(1)
        return "late"

    start = time.perf_counter()
    out = run(hang, "{}")
    assert out.is_error and "timed out after 0.2 s" in out.content
    assert run(hang_sync, "{}").content == "hang_sync timed out after 0.2 s"
    assert time.perf_counter() - start < 1.0


def test_unserialisable_output_is_an_error_and_huge_output_is_cut():
    @tool
    def odd() -> object:
        return {"lock": threading.Lock()}

    @tool(max_output_chars=1000)
    def huge() -> str:
        return "x" * 1_000_000

    out = run(odd, "{}")
    assert out.is_error and "cannot be shown as text" in out.content
    big = run(huge, "{}")
    assert big.truncated and not big.is_error
    assert big.content.startswith("x" * 1000)
    assert big.content.endswith("[output truncated: showing 1,000 of 1,000,000 characters]")
    assert run(Tool.from_function(lambda: None, name="nothing"), "{}").content == "(no output)"


def test_bad_definitions_are_config_errors():
    with pytest.raises(ConfigError, match="invalid tool name"):
        Tool.from_function(weather.function, name="has space")

    def star(*args: int) -> int:
        return 0

    with pytest.raises(ConfigError, match="named parameters only"):
        Tool.from_function(star)
    with pytest.raises(ConfigError, match="two tools are named 'weather'"):
        Toolset([weather, weather])


def test_toolset_accepts_plain_callables():
    def plain(x: int) -> int:
        """Double x."""
        return 2 * x

    ts = Toolset([plain, weather])
    assert ts.names == ["plain", "weather"] and "plain" in ts and len(ts) == 2
    assert ts.get("plain").description == "Double x."


def test_approval_policy():
    safe, risky = weather, Tool.from_function(lambda: "", name="send", side_effects=True)
    policy = ApprovalPolicy(frozenset({"send"}))
    assert policy.reason(safe, untrusted=True) is None
    assert policy.reason(risky, untrusted=False) is None  # auto-approved, nothing untrusted
    assert "could have asked" in policy.reason(risky, untrusted=True)
    assert ApprovalPolicy().reason(risky, untrusted=False) == "send has side effects"
    assert ApprovalPolicy(frozenset({"*"})).reason(risky, untrusted=False) is None
    assert policy.auto(risky) and not policy.auto(safe) and not ApprovalPolicy().auto(risky)
