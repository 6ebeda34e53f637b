"""The running summary: older turns folded, a batch at a time, into the previous summary.

Never re-summarizes the whole thread: each update reads the previous summary plus only the
messages after the seq it covers, and stores a new version covering up to the last message it
folded in. Runs after the answer was delivered, never on the user's wait.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from chatwright.memory.context import Entry
from chatwright.memory.tokens import TokenCounter
from chatwright.models.base import Model, ModelRequest, ModelSettings, complete_text
from chatwright.store.base import Summary
from chatwright.types import Message

__all__ = ["SUMMARY_INSTRUCTIONS", "select_batch", "summarize"]

SUMMARY_INSTRUCTIONS = (
    "You maintain a running summary of a conversation between a user and an assistant. "
    "Update the summary with the new messages: keep names, facts, numbers, decisions, open "
    "questions and what the user wants; drop small talk. Write plain sentences, at most "
    "{limit} words. Reply with the updated summary only."
)


def _line(message: Message) -> str:
    text = " ".join(message.text.split())
    for call in message.tool_calls:
        text += f" [called {call.name}({call.arguments})]"
    for result in message.tool_results:
        text += f" [{result.name or 'tool'} returned: {' '.join(result.content.split())[:500]}]"
    return f"{message.role.capitalize()}: {text}"


def select_batch(pending: Sequence[Entry], max_tokens: int) -> list[Entry]:
    """The oldest pending messages, whole turns where possible, up to ``max_tokens``.

    At least one message is taken, so an enormous single message still makes progress.
    """
    batch: list[Entry] = []
    used = 0
    for entry in pending:
        if batch and used + entry.tokens > max_tokens:
            break
        batch.append(entry)
        used += entry.tokens
    # End on a turn boundary when the batch stopped mid-turn and holds more than that turn.
    if len(batch) < len(pending) and pending[len(batch)].message.role != "user":
        starts = [i for i, e in enumerate(batch) if e.message.role == "user"]
        if starts and starts[-1] > 0:
            batch = batch[: starts[-1]]
    return batch


def summary_request(
    previous: Summary | None, batch: Sequence[Entry], limit_words: int
) -> ModelRequest:
    before = previous.text if previous else "(none yet)"
    transcript = "\n".join(_line(e.message) for e in batch)
    return ModelRequest(
        messages=(
            Message.system(SUMMARY_INSTRUCTIONS.format(limit=limit_words)),
            Message.user(f"Summary so far:\n{before}\n\nNew messages:\n{transcript}"),
        ),
        settings=ModelSettings(max_tokens=max(64, int(limit_words * 1.6)), temperature=0.0),
    )


async def summarize(
    model: Model,
    previous: Summary | None,
    batch: Sequence[Entry],
    counter: TokenCounter,
    *,
    max_tokens: int,
    timeout_s: float,
) -> Summary:
    """Fold ``batch`` into ``previous``; raises on model failure or timeout (caller retries)."""
    request = summary_request(previous, batch, limit_words=max(20, int(max_tokens * 0.7)))
    text = (await complete_text(model, request, timeout_s)).strip()
    if not text:
        raise ValueError(f"{model.name} returned an empty summary")
    return Summary(
        through_seq=batch[-1].seq,
        text=text,
        tokens=counter.count(text),
        created_at=time.time(),
        model=model.name,
    )
