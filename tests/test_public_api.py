"""The public API: exactly these names, all importable from the top-level package."""

from __future__ import annotations

import importlib

import pytest

import chatwright

EXPECTED = {
    "Answer",
    "ApprovalRequest",
    "Chatbot",
    "ChatwrightError",
    "CitationEvent",
    "CitationPart",
    "ConfigError",
    "Event",
    "InvalidMessage",
    "Message",
    "Model",
    "ModelError",
    "ModelRequest",
    "ModelResponseError",
    "ModelSettings",
    "ModelUnavailable",
    "SQLiteStore",
    "Settings",
    "StageTrace",
    "Store",
    "StoreError",
    "StoredMessage",
    "TextDelta",
    "TextPart",
    "ThreadInfo",
    "ThreadNotFound",
    "Tool",
    "ToolCallEvent",
    "ToolCallPart",
    "ToolContext",
    "ToolResultEvent",
    "ToolResultPart",
    "ToolRetry",
    "ToolSpec",
    "Toolset",
    "Trace",
    "TurnEnd",
    "TurnStart",
    "UnknownModel",
    "Usage",
    "UserError",
    "__version__",
    "get_model",
    "load_settings",
    "tool",
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(chatwright.__all__) == EXPECTED
    assert len(chatwright.__all__) == len(EXPECTED)  # no duplicates


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_public_name_is_importable(name: str) -> None:
    module = importlib.import_module("chatwright")
    assert getattr(module, name) is not None


def test_star_import_gives_the_public_api() -> None:
    namespace: dict[str, object] = {}
    exec("from chatwright import *", namespace)
    assert namespace.keys() >= EXPECTED


def test_errors_form_the_documented_tree() -> None:
    assert issubclass(chatwright.ConfigError, chatwright.UserError)
    assert issubclass(chatwright.InvalidMessage, chatwright.UserError)
    assert issubclass(chatwright.ThreadNotFound, chatwright.UserError)
    assert issubclass(chatwright.UnknownModel, chatwright.UserError)
    assert issubclass(chatwright.ModelUnavailable, chatwright.ModelError)
    assert issubclass(chatwright.ModelResponseError, chatwright.ModelError)
    for cls in (chatwright.UserError, chatwright.ModelError, chatwright.StoreError):
        assert issubclass(cls, chatwright.ChatwrightError)


def test_version_is_a_string() -> None:
    assert isinstance(chatwright.__version__, str) and chatwright.__version__
