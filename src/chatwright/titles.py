"""Automatic thread titles: a few words that say what a conversation is about.

A thread starts with a placeholder title (its first message, cut short: what the store writes
at the first append, or what a client sent). Once the first answer is in,
:func:`auto_title` replaces it:

- with a remote model (``openai:``, ``anthropic:``), by one short call to that model
  (:func:`model_title`): a title of at most six words, cleaned of quotes and labels;
- with the embedded model, or when the call fails or says nothing usable, by
  :func:`keyword_title`: the salient words of the first message (not stopwords, not filler
  such as "please" or "explain"), weighted by how often the exchange uses them, acronyms and
  names first, kept in the order the user wrote them. Deterministic: the same exchange always
  gets the same title.

A title the user chose is never replaced: only a missing title, or one that is the first
message cut short (:func:`is_placeholder`), counts as automatic.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from dataclasses import dataclass

from chatwright.models import is_remote
from chatwright.models.base import Model, ModelRequest, ModelSettings, complete_text
from chatwright.search.text import STOPWORDS, analyze
from chatwright.store import Store, ThreadInfo
from chatwright.types import Message

__all__ = ["Exchange", "auto_title", "is_placeholder", "keyword_title", "model_title"]

log = logging.getLogger("chatwright.titles")

MAX_WORDS = 5  # of a keyword title
MAX_CHARS = 80  # of any title
_FILLER_WORDS = """
    please help want need know tell explain show give get use using make makes made thanks
    thank hi hello hey ok okay like way one something anything question answer does work
    works let lets possible best good simple quick quickly example examples mean means sure
    really actually thing things anyone someone could would say says said
"""
_FILLER = frozenset(_FILLER_WORDS.split())
_TOKEN = re.compile(r"[^\W_](?:[\w'\u2019.+#/-]*[\w+#])?")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb*_#"
_LABEL = re.compile(r"^(?:title|subject|topic)\s*[:\-\u2013]\s*", re.IGNORECASE)
_INSTRUCTIONS = (
    "Write a short title for the conversation below: at most 6 words, in the language of the"
    " user's message, naming its topic. Reply with the title only: no quotes, no label, no"
    " final punctuation."
)


@dataclass(frozen=True, slots=True)
class Exchange:
    """The start of a thread: its first user message and the first answer ("" if none)."""

    question: str
    answer: str = ""


def _normal(text: str) -> str:
    return " ".join(text.split())


def is_placeholder(title: str | None, first_message: str) -> bool:
    """Whether ``title`` is automatic: missing, or ``first_message`` (or its first line)
    cut short, as the store and the web page write it before a title is made."""
    if title is None or not title.strip():
        return True
    cut = _normal(title).removesuffix("…").rstrip()
    return bool(cut) and _normal(first_message).startswith(cut)


def _capitalized(word: str) -> str:
    return word[:1].upper() + word[1:] if word[:1].islower() else word


def _salient(token: str) -> bool:
    folded = token.casefold()
    if folded in STOPWORDS or folded in _FILLER:
        return False
    return len(token) > 1 or token.isdigit()


def keyword_title(exchange: Exchange) -> str:
    """A title of the exchange's key words (see the module's docstring); never empty."""
    tokens = [t for t in _TOKEN.findall(exchange.question) if _salient(t)]
    if not tokens:
        words = _normal(exchange.question).split()[:MAX_WORDS]
        return _capitalized(" ".join(words))[:MAX_CHARS] if words else "New conversation"
    in_answer = Counter(analyze(exchange.answer))
    score: dict[str, float] = {}
    first: dict[str, tuple[int, str]] = {}
    for position, token in enumerate(tokens):
        stem = (analyze(token) or [token.casefold()])[0]
        marked = any(c.isupper() for c in token[1:]) or any(c.isdigit() for c in token)
        named = token[:1].isupper() and position > 0
        gain = 2.0 + (1.5 if marked else 0.0) + (0.5 if named else 0.0)
        score[stem] = score.get(stem, 0.0) + gain
        first.setdefault(stem, (position, token))
    for stem in score:
        score[stem] += min(in_answer[stem], 3) * 0.5
    best = sorted(score, key=lambda s: (-score[s], first[s][0]))[:MAX_WORDS]
    chosen = [first[s][1] for s in sorted(best, key=lambda s: first[s][0])]
    return _capitalized(" ".join(chosen))[:MAX_CHARS]


def _clean(reply: str) -> str:
    line = next((ln for ln in reply.splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line.strip().strip(_QUOTES).strip())
    line = _normal(line.strip(_QUOTES)).rstrip(".!?:;,")
    words = line.split()
    return " ".join(words[:8])[:MAX_CHARS] if words else ""


async def model_title(model: Model, exchange: Exchange, *, timeout_s: float = 20.0) -> str:
    """A title written by ``model``; the :func:`keyword_title` when the call fails, times
    out or returns nothing usable (logged)."""
    transcript = f"User: {exchange.question[:2000]}"
    if exchange.answer:
        transcript += f"\n\nAssistant: {exchange.answer[:1000]}"
    request = ModelRequest(
        messages=(Message.system(_INSTRUCTIONS), Message.user(transcript)),
        settings=ModelSettings(max_tokens=24, temperature=0.0),
    )
    try:
        text = await complete_text(model, request, timeout_s)
    except Exception as e:  # a title is a nicety: never fail the caller for it
        log.warning("%s could not write a title (%s): using keywords", model.name, e)
        return keyword_title(exchange)
    return _clean(text) or keyword_title(exchange)


def uses_model(model: Model) -> bool:
    """Whether titles come from ``model`` (a remote one) rather than from keywords."""
    return is_remote(model.name)


def first_exchange(store: Store, owner: str, thread_id: str) -> Exchange | None:
    """The thread's first user message and the answer after it (None: no user text yet)."""
    question: str | None = None
    for stored in store.messages(owner, thread_id):
        message = stored.message
        if question is None:
            if message.role == "user" and message.text.strip():
                question = message.text
        elif message.role == "assistant" and message.text.strip():
            return Exchange(question, message.text)
        elif message.role == "user":
            break
        if stored.seq > 20:
            break
    return Exchange(question) if question is not None else None


async def auto_title(
    store: Store, model: Model, owner: str, thread_id: str, *, use_model: bool | None = None
) -> ThreadInfo | None:
    """Give the thread an automatic title, unless it has one the user chose; returns the
    renamed thread, or None when nothing changed. ``use_model``: ask ``model`` (default:
    when it is a remote model) instead of taking keywords."""
    info = await asyncio.to_thread(store.get_thread, owner, thread_id)
    exchange = await asyncio.to_thread(first_exchange, store, owner, thread_id)
    if exchange is None or not is_placeholder(info.title, exchange.question):
        return None
    ask = uses_model(model) if use_model is None else use_model
    title = await model_title(model, exchange) if ask else keyword_title(exchange)
    if title == info.title:
        return None
    # Renamed meanwhile (by the user, or by a concurrent call)? Then keep theirs: the store
    # renames only if the title is still the one read above, in one statement.
    renamed = await asyncio.to_thread(
        store.rename_thread, owner, thread_id, title, only_if=info.title
    )
    return renamed if renamed.title == title else None
