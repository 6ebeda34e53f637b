"""Trust: which text in a turn's context the user did not write, kept across turns.

The user's own messages, the system prompt and the memories the user saved are trusted.
Retrieved passages, tool output, recalled turns and the running summary are not: they may hold
orders that the user never gave (prompt injection). While any of them is in the model's
context, tools with side effects ask for approval even when auto-approved
(:class:`chatwright.tools.ApprovalPolicy`).

What the model writes while untrusted text is in its context (an answer, tool calls) may quote
or obey that text, so it is *tainted*: stored with ``metadata["untrusted"]``, the sources it
came from. A later turn whose context holds a tainted message is untrusted too, so an order
cannot outlive its document by being repeated from the model's own earlier answer. A memory
that ``remember`` saved in an untrusted turn is stored as untrusted, even when the user
approved the call: while it is in the context, every turn of that user is untrusted, until
the user edits it (their own words then) or deletes it. Summaries and recalled turns always
count as untrusted: they are the model's retelling of turns that may have held such text.

An imported conversation (``importing.py``) was written elsewhere, by whoever made the file:
every message of it is stored with ``metadata["untrusted"] = [IMPORTED]``, its user messages
too, and counts as untrusted while it is in the context. Only a message carrying that key is:
a user message typed here is never tainted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from chatwright.types import Message

__all__ = [
    "EARLIER_ANSWER",
    "IMPORTED",
    "KEY",
    "MEMORY",
    "PASSAGES",
    "RECALLED",
    "SUMMARY",
    "TOOL_OUTPUT",
    "context_sources",
    "merge",
    "tainted",
]

KEY = "untrusted"  # the metadata key of a tainted message: the sources, a list of strings
PASSAGES = "retrieved documents"
TOOL_OUTPUT = "tool output"
RECALLED = "recalled turns"
SUMMARY = "the conversation summary"
EARLIER_ANSWER = "an earlier answer that quoted untrusted text"
MEMORY = "a memory saved from an untrusted turn"
IMPORTED = "an imported conversation"


def tainted(message: Message) -> bool:
    """Whether ``message`` was written with untrusted text in view, or (an imported one, of
    any role) by someone else: whether it carries the key. A user message typed here never
    does."""
    return bool(message.metadata.get(KEY))


def _sources(message: Message) -> list[str]:
    """The sources a tainted user message names (an imported one: ``IMPORTED``)."""
    named = message.metadata.get(KEY)
    found = [s for s in named if isinstance(s, str) and s] if isinstance(named, list) else []
    return found or [IMPORTED]


def merge(*groups: Iterable[str]) -> tuple[str, ...]:
    """The sources of ``groups``, each once, in order of first mention."""
    return tuple(dict.fromkeys(s for group in groups for s in group))


def context_sources(
    messages: Sequence[Message],
    *,
    passages: bool = False,
    recalled: bool = False,
    summary: bool = False,
    memory: bool = False,
) -> tuple[str, ...]:
    """Why a context is untrusted (empty: it holds only what the user and the bot's own
    configuration wrote). ``messages`` are the turns in the window; the flags say whether
    passages, recalled turns, a summary or an untrusted memory made it into the context."""
    found = [
        PASSAGES if passages else "",
        RECALLED if recalled else "",
        SUMMARY if summary else "",
        MEMORY if memory else "",
        *(TOOL_OUTPUT for m in messages if m.role == "tool"),
        *(EARLIER_ANSWER for m in messages if m.role == "assistant" and tainted(m)),
        *(s for m in messages if m.role == "user" and tainted(m) for s in _sources(m)),
    ]
    return merge(s for s in found if s)
