"""Recall of old turns: a thread's turns are indexed like documents and searched like them.

Each turn that fell out of the context window (a user message and its answers) becomes one
chunk in the namespace ``thread:<uid>`` of the shared :class:`SearchIndex`: keyword BM25 and,
with an embedder, vectors. Deleting the thread deletes the namespace (a trigger, in the same
transaction). A recalled turn must match: share a keyword with the query, or be close enough
in meaning (cosine >= ``min_similarity``), so unrelated turns are never pushed into a prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from chatwright.memory.context import Recalled, Turn
from chatwright.retrieval.index import Chunk, SearchIndex
from chatwright.store.base import Store

__all__ = ["ThreadRecall", "turn_text"]

log = logging.getLogger("chatwright.memory")

_MAX_CHARS = 4000  # of a turn's text indexed (the stored transcript keeps everything)


def turn_text(turn: Turn) -> str:
    """A turn as the plain transcript that is indexed and, when recalled, quoted."""
    lines = []
    for entry in turn.entries:
        message = entry.message
        text = " ".join(message.text.split())
        for call in message.tool_calls:
            text += f" [called {call.name}]"
        for result in message.tool_results:
            text += f" [{result.name or 'tool'}: {' '.join(result.content.split())[:300]}]"
        if text:
            lines.append(f"{message.role.capitalize()}: {text}")
    joined = "\n".join(lines)
    return joined if len(joined) <= _MAX_CHARS else joined[: _MAX_CHARS - 1] + "…"


class ThreadRecall:
    """The :class:`chatwright.memory.Recall` of a chatbot, over a shared search index."""

    def __init__(self, index: SearchIndex, store: Store, *, min_similarity: float = 0.35) -> None:
        self.index = index
        self.store = store
        self.min_similarity = min_similarity
        self._through: dict[int, int] = {}  # thread uid -> last seq indexed

    def _namespace(self, owner: str, thread_id: str) -> tuple[str, int] | None:
        info = self.store.find_thread(owner, thread_id)
        return (f"thread:{info.uid}", info.uid) if info else None

    def indexed_through(self, owner: str, thread_id: str) -> int:
        """The last message seq whose turn is indexed (0: none)."""
        found = self._namespace(owner, thread_id)
        if found is None:
            return 0
        namespace, uid = found
        if uid not in self._through:
            last = self.index.chunks.last(namespace)
            self._through[uid] = int(last.metadata["last_seq"]) if last else 0
        return self._through[uid]

    def index_turns(self, owner: str, thread_id: str, turns: Sequence[Turn]) -> int:
        """Index ``turns`` (embedding them when the index has an embedder); returns how many."""
        found = self._namespace(owner, thread_id)
        if found is None or not turns:
            return 0
        namespace, uid = found
        chunks = [
            Chunk(
                key=f"{t.first_seq:012d}",  # ordered keys: the newest is the last by key
                text=turn_text(t),
                metadata={
                    "first_seq": t.first_seq,
                    "last_seq": t.entries[-1].seq,
                    "created_at": t.entries[0].created_at,
                },
            )
            for t in turns
        ]
        added = self.index.add(namespace, chunks)
        self._through[uid] = max(self._through.get(uid, 0), turns[-1].entries[-1].seq)
        return added

    def recall(
        self, owner: str, thread_id: str, query: str, *, k: int, before_seq: int
    ) -> list[Recalled]:
        """The ``k`` best-matching indexed turns that start before ``before_seq``."""
        found = self._namespace(owner, thread_id)
        if found is None or not query.strip() or k <= 0:
            return []
        hits = self.index.search(query, [found[0]], k=k * 3, mode="hybrid")
        out: list[Recalled] = []
        for hit in hits:
            first = int(hit.metadata["first_seq"])
            matched = "keyword" in hit.ranks or hit.scores.get("vector", 0.0) >= self.min_similarity
            if first < before_seq and matched:
                out.append(
                    Recalled(first, float(hit.metadata["created_at"]), hit.text, 0, hit.score)
                )
            if len(out) == k:
                break
        return out
