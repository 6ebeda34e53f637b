"""Answers quoted from the retrieved passages: the ``extract`` answer mode.

The embedded 270M model answers badly from documents even when retrieval is right (issue 19:
ROUGE-L 0.142 against MTRAG's gold answers, a citation in 7 of 100 answers, 7 of 100 running on
into the prompt's instructions), while the passages' best sentences, ranked by MiniLM against
the question, score 0.295. So for that model a turn with passages quotes instead of generating:

1. the passages are split into sentences (:func:`sentences`): Markdown headings, questions and
   fragments dropped, a sentence that introduces a list (``…:`` then bullets or steps) kept
   together with the list;
2. the few sentences sharing the most keywords with the user's question are embedded in one
   batch and ranked by cosine similarity with the query embedding the turn already has, plus
   a small share of keyword overlap and a small bonus for coming early in their passage (a
   passage's lead sentences carry its point);
3. near-duplicates (overlapping chunks repeat sentences) are dropped, and the best few are
   quoted in passage order, each with its ``[n]``;
4. when even the best sentence is far from the question, the answer says the documents do not
   seem to answer it and names the closest sources instead of quoting noise.

Pure: no model, no store. The caller passes the embedder and the query's vector.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatwright.memory.context import Passage
from chatwright.search.text import analyze

__all__ = [
    "LEAD",
    "Extraction",
    "Unit",
    "asks_about_user",
    "extract",
    "from_user",
    "render",
    "resolve_answer_mode",
    "sentences",
    "split_sentences",
    "units",
]

LEAD = "From your documents:"
NOT_FOUND = "Your documents don't seem to answer this."
MAX_UNIT_CHARS = 400  # a longer "sentence" (a table, code, a run-on) is cut into pieces this size
MAX_LIST_ITEMS = 12
MAX_LIST_CHARS = 1200
# Sentences embedded per turn, shortlisted by keyword overlap with the question. Embedding is
# the extractor's whole cost (~9 ms a sentence for MiniLM on one core), and on MTRAG dev 5 did
# as well as 16 (ROUGE-L 0.306 vs 0.302, with the settings below), so 5 bound the time spent.
MAX_CANDIDATES = 5
# The bonus of a passage's first sentence (then 1/2, 1/3 … of it): +0.005 ROUGE-L on MTRAG dev.
POSITION_WEIGHT = 0.1
MIN_WORDS = 4  # fewer is a fragment ("Lifespan.", "See also")

# A sentence ends at . ! ? (then closing quotes or brackets) before whitespace and a capital,
# digit or opening quote; or at CJK full stops, which need no space after them.
_BOUNDARY = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)\]]))\s+(?=[\"'“‘(\[]?[^\W_a-z])"  # noqa: RUF001 (typographic quotes, CJK punctuation)
    r"|(?:(?<=[。！？])|(?<=[。！？][」』”]))(?![」』”])\s*(?=\S)"  # noqa: RUF001
)
# Words whose period does not end a sentence.
_ABBREVIATION_LIST = """
    e.g i.e etc vs mr mrs ms dr prof sr jr st no nos fig figs inc ltd co corp approx dept est
    jan feb mar apr jun jul aug sep sept oct nov dec al cf ca vol pp ed eds u.s u.k a.m p.m
"""
_ABBREVIATIONS = frozenset(_ABBREVIATION_LIST.split())
_BULLET = re.compile(r"^\s*(?:[-*•▪●◦‣+]|\(?\d{1,3}[.)]|\(?[a-z][.)])\s+")
_HEADING = re.compile(r"^\s*#{1,6}\s")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_URL_ONLY = re.compile(r"^\s*(?:<?https?://\S+>?\s*)+$")
_LETTER = re.compile(r"[^\W\d_]")
_CITE = re.compile(r"\[\d+\]")


@dataclass(frozen=True)
class Unit:
    """A quotable piece of a passage: one sentence, or a sentence and the list it introduces."""

    passage: int  # the passage's citation number
    order: int  # position across all passages: passage order, then place in the passage
    text: str


@dataclass(frozen=True)
class Extraction:
    """What the extractor answered, and why (for the turn's trace)."""

    text: str
    found: bool  # False: the documents do not seem to answer it (the text says so)
    best: float  # the best unit's score (0.0 when there was none)
    cited: tuple[int, ...]  # the passage numbers the text cites
    quoted: int  # units quoted
    candidates: int  # units ranked

    def pieces(self) -> list[str]:
        """The text in the pieces it is streamed in: the lead-in, then one quote at a time."""
        return [p for p in re.split(r"(?<=\n\n)|(?<=\n>\n)", self.text) if p]

    def report(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "best": round(self.best, 4),
            "quoted": self.quoted,
            "candidates": self.candidates,
            "cited": list(self.cited),
        }


# -- splitting ----------------------------------------------------------------------------
def _ends_with_abbreviation(piece: str) -> bool:
    word = piece.rstrip("\"'”’)]").rsplit(None, 1)[-1] if piece.strip() else ""  # noqa: RUF001 (typographic quotes, CJK punctuation)
    word = word.lower().rstrip(".").lstrip("(\"'“‘")  # noqa: RUF001
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def split_sentences(text: str) -> list[str]:
    """The sentences of one paragraph (no newlines expected), abbreviations and initials kept
    inside their sentence ("e.g. Foo", "J. Smith"), decimals and version numbers untouched."""
    pieces: list[str] = []
    for piece in _BOUNDARY.split(text):
        piece = piece.strip()
        if not piece:
            continue
        if pieces and _ends_with_abbreviation(pieces[-1]):
            pieces[-1] = f"{pieces[-1]} {piece}"
        else:
            pieces.append(piece)
    return pieces


def _clean(line: str) -> str:
    """A line as it is quoted: images dropped, links as their text, spaces collapsed."""
    line = _LINK.sub(r"\1", _IMAGE.sub("", line))
    return " ".join(line.replace("\u00a0", " ").split())


def _is_heading(line: str, followed_by_text: bool) -> bool:
    """A Markdown heading, or a short line with no closing punctuation above more text."""
    if _HEADING.match(line):
        return True
    words = line.split()
    return followed_by_text and len(words) <= 12 and not re.search(r"[.!?:;。！？]\W*$", line)  # noqa: RUF001


def _quotable(sentence: str) -> bool:
    """Not a question, not a fragment, and has words."""
    stripped = sentence.rstrip("\"'”’)] ")  # noqa: RUF001
    if stripped.endswith(("?", "？")):  # noqa: RUF001
        return False
    if not _LETTER.search(sentence):
        return False
    cjk = sum(1 for c in sentence if "\u3000" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af")
    if cjk >= 8:
        return True
    words = len(sentence.split())
    # Unpunctuated short lines are table-of-contents entries, labels, captions.
    ended = re.search(r"[.!。！)\]]\W*$", sentence.split("\n")[-1])  # noqa: RUF001
    return words >= MIN_WORDS if ended or "\n" in sentence else words >= 8


def _cut(sentence: str) -> list[str]:
    """A unit short enough to quote: a long one is cut at word boundaries, marked with …."""
    if len(sentence) <= MAX_UNIT_CHARS:
        return [sentence]
    out, current = [], ""
    for word in sentence.split(" "):
        while len(word) > MAX_UNIT_CHARS:  # one enormous token (a table row, minified code)
            if current:
                out.append(current)
                current = ""
            out.append(word[:MAX_UNIT_CHARS])
            word = word[MAX_UNIT_CHARS:]
        if current and len(current) + 1 + len(word) > MAX_UNIT_CHARS:
            out.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        out.append(current)
    return [f"{p} …" if i < len(out) - 1 else p for i, p in enumerate(out)]


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """The passage as (paragraph, the list items right under it), lines cleaned; headings,
    link-only lines and empty lines dropped."""
    lines = [_clean(line) for line in text.splitlines()]
    lines = [line for line in lines if line and not _URL_ONLY.match(line)]
    blocks: list[tuple[str, list[str]]] = []
    for i, line in enumerate(lines):
        if _BULLET.match(line):
            if blocks:
                blocks[-1][1].append(line)
            else:
                blocks.append(("", [line]))
            continue
        if _is_heading(line, followed_by_text=i + 1 < len(lines)):
            continue
        blocks.append((line, []))
    return blocks


def sentences(passage: Passage) -> list[str]:
    """The quotable units of one passage, in order: each sentence, with a sentence ending in
    ":" that introduces list items kept together with them (steps read whole, not one)."""
    out: list[str] = []
    for paragraph, items in _blocks(passage.text):
        said = [s for piece in split_sentences(paragraph) for s in _cut(piece)]
        if items and said and said[-1].rstrip().endswith(":"):
            said[-1] = _with_list(said[-1], items)
        elif items:  # a list under no introduction: each item stands alone
            said += [s for item in items for s in _cut(_BULLET.sub("", item, count=1))]
        out += [s for s in said if _quotable(s) and not s.rstrip().endswith(":")]
    return out


def _with_list(intro: str, items: list[str]) -> str:
    kept, size = [], len(intro)
    for item in items[:MAX_LIST_ITEMS]:
        size += len(item) + 1
        if size > MAX_LIST_CHARS:
            break
        kept.append(item)
    return "\n".join([intro, *kept])


def units(passages: Sequence[Passage]) -> list[Unit]:
    """The quotable units of all passages, in passage order."""
    found: list[Unit] = []
    for passage in passages:
        for text in sentences(passage):
            found.append(Unit(passage.index, len(found), text))
    return found


# -- ranking ------------------------------------------------------------------------------
def _overlap(query_terms: set[str], text: str) -> float:
    """The share of the query's stemmed keywords that the text contains."""
    if not query_terms:
        return 0.0
    return len(query_terms & set(analyze(text))) / len(query_terms)


def _shortlist(candidates: list[Unit], query_terms: set[str]) -> list[Unit]:
    """At most MAX_CANDIDATES units to embed: those sharing the most keywords with the query
    (in passage order), so a 30,000-character passage costs no more than a few short ones."""
    if len(candidates) <= MAX_CANDIDATES:
        return candidates
    ranked = sorted(candidates, key=lambda u: (-_overlap(query_terms, u.text), u.order))
    return sorted(ranked[:MAX_CANDIDATES], key=lambda u: u.order)


def _normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def _pick(
    ranked: list[int], vectors: np.ndarray, candidates: list[Unit], count: int, dedup: float
) -> list[int]:
    """The best ``count`` units, skipping any too close to one already kept."""
    kept: list[int] = []
    seen: list[set[str]] = []
    for i in ranked:
        terms = set(analyze(candidates[i].text))
        if any(float(vectors[i] @ vectors[j]) >= dedup for j in kept) or any(
            terms and len(terms & s) / len(terms | s) >= 0.8 for s in seen
        ):
            continue
        kept.append(i)
        seen.append(terms)
        if len(kept) == count:
            break
    return kept


def extract(
    query: str,
    query_vector: np.ndarray,
    passages: Sequence[Passage],
    embedder: Any,
    *,
    question: str | None = None,
    count: int = 4,
    min_score: float = -1.0,
    keyword_weight: float = 0.2,
    position_weight: float = POSITION_WEIGHT,
    dedup: float = 0.8,
) -> Extraction:
    """Quote the ``count`` units of ``passages`` that best answer ``query``.

    ``query_vector``: the standalone query's embedding (the turn's, not embedded again);
    ``question``: the user's own words, whose keywords shortlist and score the units (a
    follow-up made standalone carries the previous question's words too, which pull toward
    what was already answered); ``query``'s when it has none. ``embedder`` embeds the
    candidate units in one batch. Below ``min_score`` (the best unit's cosine similarity plus
    ``keyword_weight`` times keyword overlap) the answer says the documents do not answer it;
    ``position_weight`` then favours a passage's early sentences when picking what to quote.
    """
    every = units(passages)
    terms = set(analyze(question or "")) or set(analyze(query))
    candidates = _shortlist(every, terms)
    if not candidates:
        return _not_found(passages, 0.0, 0)
    vectors = _normalized(embedder.embed([u.text for u in candidates]))
    scores = vectors @ _normalized(np.asarray(query_vector).reshape(-1))
    if keyword_weight:
        scores = scores + keyword_weight * np.array([_overlap(terms, u.text) for u in candidates])
    best = float(scores.max())
    if best < min_score:
        return _not_found(passages, best, len(candidates))
    if position_weight:
        first: dict[int, int] = {}
        for unit in every:
            first.setdefault(unit.passage, unit.order)
        scores = scores + position_weight * np.array(
            [1.0 / (1 + u.order - first[u.passage]) for u in candidates]
        )
    ranked = [int(i) for i in np.argsort(-scores, kind="stable")]
    chosen = sorted(_pick(ranked, vectors, candidates, max(1, count), dedup))
    quoted = [candidates[i] for i in chosen]
    cited = tuple(dict.fromkeys(u.passage for u in quoted))
    return Extraction(render(quoted), True, best, cited, len(quoted), len(candidates))


# -- what the user said -------------------------------------------------------------------
# Asked "What is my name?" after "My name is Ada", the 270M model answered "I am a student";
# with the fact in its prompt, "I am Ada" or an invented one (15 of 22 short probes right).
# Quoting the user's own statement is right whenever ranking is.
_SELF = re.compile(r"\b(?:my|me|mine|myself|i|i'm|i've|am i|do i|did i)\b", re.IGNORECASE)
_ASKS = re.compile(
    r"\?\s*$|^\s*(?:what|who|whom|whose|where|when|which|why|how|do|does|did|is|are|am|was|"
    r"were|can|could|tell me|remind me)\b",
    re.IGNORECASE,
)
YOU_SAID = "You told me:"


def asks_about_user(question: str) -> bool:
    """A question about the user themselves ("What is my name?", "where do I live")."""
    return bool(_SELF.search(question) and _ASKS.search(question))


def from_user(
    question: str,
    query_vector: np.ndarray,
    statements: Sequence[str],
    embedder: Any,
    *,
    min_score: float = 0.5,
    keyword_weight: float = 0.2,
    margin: float = 0.1,
    count: int = 2,
) -> Extraction | None:
    """Answer a question about the user by quoting what they said (their stored memories,
    their earlier messages), or ``None`` when it is not such a question or nothing they said
    scores ``min_score`` (cosine similarity plus ``keyword_weight`` times keyword overlap).
    Up to ``count`` statements within ``margin`` of the best are quoted, best first: "my
    name" also matches "my sister's name", and the user reads which is meant."""
    if not asks_about_user(question):
        return None
    asked = " ".join(question.split()).lower()
    said = [
        " ".join(t.split())
        for t in dict.fromkeys(statements)
        if t.strip() and not t.rstrip().endswith("?") and len(t) <= MAX_UNIT_CHARS
    ]
    said = [t for t in said if t.lower() != asked][-32:]
    if not said:
        return None
    terms = set(analyze(question))
    vectors = _normalized(embedder.embed(said))
    scores = vectors @ _normalized(np.asarray(query_vector).reshape(-1))
    if keyword_weight:
        scores = scores + keyword_weight * np.array([_overlap(terms, t) for t in said])
    ranked = [int(i) for i in np.argsort(-scores, kind="stable")]
    best = float(scores[ranked[0]])
    if best < min_score:
        return None
    kept = [i for i in ranked[: max(1, count)] if float(scores[i]) >= best - margin]
    quotes = "\n>\n".join(f"> {said[i]}" for i in kept)
    return Extraction(f"{YOU_SAID}\n\n{quotes}", True, best, (), len(kept), len(said))


# -- the answer ---------------------------------------------------------------------------
def render(quoted: Sequence[Unit]) -> str:
    """The lead-in, then each unit as a Markdown quote ending with its citation."""
    blocks = []
    for unit in quoted:
        lines = _CITE.sub("", unit.text).strip().split("\n")
        lines[-1] = f"{lines[-1].rstrip()} [{unit.passage}]"
        blocks.append("\n".join(f"> {line}" for line in lines))
    return LEAD + "\n\n" + "\n>\n".join(blocks)


def _not_found(passages: Sequence[Passage], best: float, candidates: int) -> Extraction:
    """Say the documents do not answer it, and name the closest sources to read."""
    shown = list(passages)[:3]
    if not shown:
        return Extraction(NOT_FOUND, False, best, (), 0, candidates)
    sources = "\n".join(f"- [{p.index}] {p.label}" for p in shown)
    text = f"{NOT_FOUND} The closest sources:\n\n{sources}"
    return Extraction(text, False, best, tuple(p.index for p in shown), 0, candidates)


def resolve_answer_mode(requested: str, model_name: str, has_passages: bool) -> tuple[str, str]:
    """``(mode, why)``: how a turn answers. ``auto`` quotes for the embedded model when
    passages were retrieved (it garbles answers from documents) and generates otherwise;
    ``extract`` with nothing to quote generates, as a plain chat does."""
    if not has_passages:
        return "generate", "no passages to quote"
    if requested == "extract":
        return "extract", "asked for"
    if requested == "generate":
        return "generate", "asked for"
    if model_name.startswith("local:"):
        return "extract", "auto: the embedded model, passages retrieved"
    return "generate", "auto: a model that answers from documents well"
