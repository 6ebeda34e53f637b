"""LangChain's own standard integration suites (``langchain-tests``) against ``chatwright
serve`` on the embedded model, through ``ChatOpenAI(base_url=.../v1)`` and
``OpenAIEmbeddings``: what a LangChain user expects of an OpenAI-compatible server.

Declared, as for OpenAI itself: tool calling, tool_choice, structured output (json_schema,
the ``with_structured_output`` default), JSON mode, usage in invoke and stream, a model
override per call. Tool calls and JSON are forced with llama.cpp grammars, so a 270M base
model passes what checks shape, not wit.

Skipped (7), with the reason:

- image, audio and PDF inputs, and images or PDFs in tool messages (5 tests): chatwright's
  endpoint takes text only, as its models read text (a documented 400);
- Anthropic-format inputs: not an OpenAI feature;
- ``test_stream_time``: a benchmark replayed from VCR cassettes; the server here is live.

Measured: 48 passed, 7 skipped in 92 s on 2 shared cores; the structured-output and JSON-mode
tests are the slowest (5-25 s each).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatwright.server import create_app
from test_server_live import make_settings, serving

pytest.importorskip("llama_cpp", reason="needs the [local] extra (llama-cpp-python)")
langchain_openai = pytest.importorskip("langchain_openai")
integration = pytest.importorskip("langchain_tests.integration_tests")

pytestmark = pytest.mark.e2e

EMBEDDER = "local:all-minilm-l6-v2"
_url: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``chatwright serve`` on the embedded model and the default embedder."""
    tmp: Path = tmp_path_factory.mktemp("langchain")
    settings = make_settings(tmp, model="local:gemma-3-270m", embedder=EMBEDDER)
    with serving(create_app(settings)) as url:
        _url["v1"] = f"{url}/v1"
        yield url
    _url.clear()


class TestChatwrightChatModel(integration.ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[Any]:
        return langchain_openai.ChatOpenAI  # type: ignore[no-any-return]

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": "default",
            "base_url": _url["v1"],
            "api_key": "not-needed",
            "stream_usage": True,
            "max_retries": 0,
            # one per model: langchain-openai's shared default client outlives the event
            # loop of the async test that made it, and the next async test fails on it
            "http_async_client": httpx.AsyncClient(timeout=120),
        }

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "local:gemma-3-270m"  # the model the default bot runs, named as a model


class TestChatwrightEmbeddings(integration.EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Any]:
        return langchain_openai.OpenAIEmbeddings  # type: ignore[no-any-return]

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {
            "model": EMBEDDER,
            "base_url": _url["v1"],
            "api_key": "not-needed",
            "check_embedding_ctx_length": False,  # it would send token ids
            "max_retries": 0,
        }
