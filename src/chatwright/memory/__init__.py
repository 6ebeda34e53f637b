"""Memory: what of a thread the model sees. Plain functions over message lists, plus the
:class:`Memory` object that loads, builds and keeps the running summary for a chatbot."""

from __future__ import annotations

from chatwright.memory.context import (
    Budget,
    Context,
    Entry,
    Recalled,
    Turn,
    build_context,
    group_turns,
    whole_turns,
)
from chatwright.memory.manager import STRATEGIES, Loaded, Memory, Recall
from chatwright.memory.tokens import TokenCounter, count_message, counter_for, estimate_tokens

__all__ = [
    "STRATEGIES",
    "Budget",
    "Context",
    "Entry",
    "Loaded",
    "Memory",
    "Recall",
    "Recalled",
    "TokenCounter",
    "Turn",
    "build_context",
    "count_message",
    "counter_for",
    "estimate_tokens",
    "group_turns",
    "whole_turns",
]
