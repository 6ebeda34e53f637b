"""chatwright: stateful chatbots that hold long conversations, offline by default.

>>> from chatwright import Chatbot
>>> bot = Chatbot("test:echo", store=SQLiteStore(":memory:"))
>>> print(bot.chat("my-thread", "hello"))
echo: hello
"""

from __future__ import annotations

from chatwright.bot import Chatbot, Event
from chatwright.config import Settings, load_settings
from chatwright.errors import (
    ChatwrightError,
    ConfigError,
    InvalidMessage,
    ModelError,
    ModelResponseError,
    ModelUnavailable,
    StoreError,
    ThreadNotFound,
    UnknownModel,
    UserError,
)
from chatwright.models import Model, ModelRequest, ModelSettings, ToolSpec, get_model
from chatwright.store import SQLiteStore, Store, StoredMessage, ThreadInfo
from chatwright.tools import Tool, ToolContext, ToolRetry, Toolset, tool
from chatwright.types import (
    Answer,
    ApprovalRequest,
    CitationEvent,
    CitationPart,
    Message,
    StageTrace,
    TextDelta,
    TextPart,
    ToolCallEvent,
    ToolCallPart,
    ToolResultEvent,
    ToolResultPart,
    Trace,
    TurnEnd,
    TurnStart,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
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
]
