"""The openai SDK against ``/v1`` on the embedded model: structured output and forced tool
calls held to their schemas by llama.cpp grammars, stop sequences, usage. LangChain's own
suites on the same model: ``test_langchain_standard.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from chatwright.server import create_app
from test_server_live import make_settings, serving

pytest.importorskip("llama_cpp", reason="needs the [local] extra (llama-cpp-python)")
openai = pytest.importorskip("openai")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = make_settings(tmp_path_factory.mktemp("local"), model="local:gemma-3-270m")
    with serving(create_app(settings)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="anything", max_retries=0)


class City(BaseModel):
    city: str
    country: str
    population_millions: float


def test_structured_output_on_the_embedded_model(client: Any) -> None:
    done = client.chat.completions.parse(
        model="default",
        messages=[{"role": "user", "content": "Paris is the capital of France."}],
        response_format=City,
        max_tokens=80,
        temperature=0,
    )
    city = done.choices[0].message.parsed
    assert isinstance(city, City)  # valid for the schema: the grammar allows nothing else
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    mode = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "A JSON object with 'name' and 'age' keys."}],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
    )
    assert isinstance(json.loads(mode.choices[0].message.content), dict)


def test_a_forced_tool_call_has_arguments_valid_for_its_schema(client: Any) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "set_alarm",
            "description": "Set an alarm.",
            "parameters": {
                "type": "object",
                "properties": {
                    "hour": {"type": "integer"},
                    "label": {"type": "string", "enum": ["work", "gym"]},
                },
                "required": ["hour", "label"],
            },
        },
    }
    done = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Hello there!"}],  # not asking: forced
        tools=[tool],
        tool_choice="required",
    )
    assert done.choices[0].finish_reason == "tool_calls"
    (call,) = done.choices[0].message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["hour"], int) and arguments["label"] in ("work", "gym")
    free = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Hello there!"}],
        tools=[tool],
        tool_choice="none",
    )
    assert free.choices[0].message.tool_calls is None and free.choices[0].message.content


def test_stop_sequences_end_the_embedded_models_answer(client: Any) -> None:
    asked = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model="default", messages=asked, temperature=0)
    assert "Paris" in whole.choices[0].message.content
    cut = client.chat.completions.create(
        model="default", messages=asked, temperature=0, stop=["Paris"]
    )
    assert "Paris" not in (cut.choices[0].message.content or "")
