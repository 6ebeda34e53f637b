"""Context building: system prompt + the recent turns of a thread, whole turns only."""

from __future__ import annotations

from collections.abc import Sequence

from chatwright.types import Message

__all__ = ["build_context", "whole_turns"]


def whole_turns(history: Sequence[Message]) -> list[Message]:
    """``history`` without a leading partial turn.

    A window cut from the end of a thread can start mid-turn: with an assistant answer whose
    question fell outside it, or a tool result whose call did. Drop messages up to the first
    user message so the model never sees an answer without its question or a result without
    its call. (If there is no user message at all, keep everything.)
    """
    for i, message in enumerate(history):
        if message.role == "user":
            return list(history[i:])
    return list(history)


def build_context(system_prompt: str | None, history: Sequence[Message]) -> list[Message]:
    """What the model sees: the system prompt, then the recent turns (whole turns only).

    ``history`` ends with the new user message, which is always kept.
    """
    messages = [Message.system(system_prompt)] if system_prompt else []
    messages.extend(whole_turns(history))
    return messages
