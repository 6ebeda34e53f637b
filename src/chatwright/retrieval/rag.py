"""Answering from documents: a follow-up made standalone, passages retrieved, citations kept.

The bot runs these in a turn's rewrite and retrieve stages, only when the user has
collections, so a plain chat pays nothing for them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatwright.memory.context import Passage
from chatwright.memory.tokens import TokenCounter
from chatwright.models.base import Model, ModelRequest, ModelSettings, complete_text
from chatwright.retrieval.index import Hit, Nearest, SearchIndex
from chatwright.types import CitationPart, Message

__all__ = [
    "Retrieved",
    "headings_of",
    "is_follow_up",
    "passages_from",
    "retrieve",
    "rewrite_query",
    "unique_hits",
]

_REFERS_BACK = re.compile(
    r"\b(it|its|it's|they|them|their|theirs|this|that|these|those|he|him|his|she|her|hers|"
    r"there|then|the same|the other|one|ones|former|latter)\b",
    re.IGNORECASE,
)
_CONTINUES = re.compile(
    r"^\s*(and|or|but|also|so|what about|how about|and what|why|how come|then|more|"
    r"tell me more|what else|which one|same for)\b",
    re.IGNORECASE,
)

REWRITE_INSTRUCTIONS = (
    "Rewrite the user's last message as a standalone search query that can be understood "
    "without the conversation: replace pronouns with what they refer to and keep every "
    "specific name, number and term. Reply with the query only."
)


def is_follow_up(text: str, history: Sequence[Message]) -> bool:
    """Does ``text`` lean on the conversation (pronouns, "and ...?", very short)?"""
    if not any(m.role == "user" for m in history):
        return False
    words = text.split()
    return bool(_CONTINUES.match(text) or _REFERS_BACK.search(text) or len(words) <= 3)


async def rewrite_query(
    text: str,
    history: Sequence[Message],
    *,
    mode: str,
    model: Model,
    timeout_s: float,
) -> tuple[str, str]:
    """``(query, how)``: the standalone query and how it was made, for the trace.

    ``mode``: llm, concat, or off. A failing or empty model answer falls back to concat.
    """
    previous = next((m.text for m in reversed(history) if m.role == "user"), "")
    if mode == "off" or not is_follow_up(text, history):
        return text, "standalone" if mode != "off" else "off"
    concat = f"{previous} {text}".strip()
    if mode == "concat":
        return concat, "concat"
    transcript = "\n".join(
        f"{m.role.capitalize()}: {' '.join(m.text.split())[:500]}"
        for m in history[-6:]
        if m.role in ("user", "assistant") and m.text
    )
    request = ModelRequest(
        messages=(
            Message.system(REWRITE_INSTRUCTIONS),
            Message.user(f"Conversation:\n{transcript}\n\nLast message: {text}\n\nQuery:"),
        ),
        settings=ModelSettings(max_tokens=64, temperature=0.0),
    )
    try:
        answer = await complete_text(model, request, timeout_s)
    except Exception as e:
        return concat, f"llm failed ({type(e).__name__}), concat"
    query = " ".join(answer.split()).strip().strip('"')
    return (query, "llm") if query else (concat, "llm empty, concat")


@dataclass(frozen=True)
class Retrieved:
    """A hit made into a numbered passage and the citation that goes with it."""

    passage: Passage
    citation: CitationPart
    score: float


def headings_of(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """A chunk's heading path: its ``headings`` list, or (chunks ingested before it was
    stored) its ``heading_path`` string split at " > "."""
    headings = meta.get("headings")
    if isinstance(headings, list):
        return tuple(str(h) for h in headings if h)
    joined = str(meta.get("heading_path") or "")
    return tuple(h for h in joined.split(" > ") if h)


def _label(hit: Hit) -> str:
    meta = hit.metadata
    title = str(meta.get("title") or meta.get("source") or hit.key)
    parts = [title]
    headings = headings_of(meta)
    if headings and headings[0] == title:  # a document's h1 is usually its title: say it once
        headings = headings[1:]
    if headings:
        parts.append(" > ".join(headings))
    if meta.get("page"):
        parts.append(f"page {meta['page']}")
    return " · ".join(parts)


def passages_from(hits: Sequence[Hit], counter: TokenCounter) -> list[Retrieved]:
    """Number the hits 1..n (best first) as passages with their citations."""
    out = []
    for i, hit in enumerate(hits, start=1):
        meta = hit.metadata
        page = meta.get("page")
        citation = CitationPart(
            index=i,
            text=hit.text,
            document_id=str(meta["document_id"]) if meta.get("document_id") is not None else None,
            chunk_id=hit.key,
            source=meta.get("source"),
            title=meta.get("title"),
            page=int(page) if isinstance(page, int) else None,
            heading_path=headings_of(meta),
        )
        passage = Passage(index=i, text=hit.text, label=_label(hit), tokens=counter.count(hit.text))
        out.append(Retrieved(passage, citation, hit.score))
    return out


def retrieve(
    index: SearchIndex,
    query: str,
    namespaces: Sequence[str],
    k: int,
    counter: TokenCounter,
    *,
    query_vector: Any = None,
    nearest: Nearest | None = None,
) -> list[Retrieved]:
    """The ``k`` best passages for ``query`` across ``namespaces`` (hybrid when possible;
    ``query_vector``: the query's embedding, when the caller already has it; ``nearest``: the
    router's vector search with it, reused instead of searching the vectors again). A chunk
    found again in another collection (the same file ingested into both) is cited once."""
    if not namespaces or not query.strip():
        return []
    many = len(set(namespaces)) > 1  # duplicates come from several collections: ask for more
    hits = index.search(
        query,
        list(namespaces),
        k=2 * k if many else k,
        mode="hybrid",
        query_vector=query_vector,
        nearest=nearest,
    )
    return passages_from(unique_hits(hits)[:k] if many else hits, counter)


def unique_hits(hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` without repeats of a chunk (same source, same text), the best kept."""
    seen: set[tuple[Any, str]] = set()
    out = []
    for hit in hits:
        key = (hit.metadata.get("source"), hit.text)
        if key not in seen:
            seen.add(key)
            out.append(hit)
    return out
