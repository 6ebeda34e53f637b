"""Memory: what of a thread the model sees. Plain functions over message lists."""

from __future__ import annotations

from chatwright.memory.context import build_context, whole_turns

__all__ = ["build_context", "whole_turns"]
