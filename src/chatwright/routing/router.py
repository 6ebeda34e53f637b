"""Collection routing: which of a user's collections (none, one or several) a turn should search.

Pure logic, no database: routers look at the query, its embedding and a
:class:`CollectionProfile` per collection (built by ``profiles.py``) and return a
:class:`Route`, or ``None`` when unsure so that the next router in a :func:`chain` decides.

- :class:`RulesRouter`: regular expressions mapped to collections.
- :class:`ChitChatRouter`: greetings, thanks and small talk route to no collection.
- :class:`SemanticRouter`: what the collections contain: the query's nearest chunks across all
  collections (best match and similarity-weighted votes), its best keyword matches, and each
  collection's profile (its description's embedding and its chunks' centroid); decisions
  relative to the best collection; no model call.
- :class:`LlmRouter`: the chat model picks collections as JSON (multi-select with a confidence
  each), validated against the known names; nonsense, errors and timeouts give ``None``.
- :class:`AllRouter`: every collection (the baseline).

If every router in a chain is unsure, the route is all collections with ``fallback=True``:
searching too much beats searching the wrong collection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from chatwright.search.text import analyze

if TYPE_CHECKING:
    from chatwright.models.base import Model
    from chatwright.models.embeddings import Embedder
    from chatwright.retrieval.index import Nearest

__all__ = [
    "CHITCHAT_EXEMPLARS",
    "SEMANTIC_OPTIONS",
    "AllRouter",
    "ChitChatRouter",
    "CollectionProfile",
    "Evidence",
    "KeywordEvidence",
    "LlmRouter",
    "Route",
    "Router",
    "RulesRouter",
    "SemanticRouter",
    "achain",
    "chain",
    "clauses",
    "embed_exemplars",
    "is_chitchat",
    "merge_clauses",
    "phrases",
    "vocabulary_fit",
]

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class CollectionProfile:
    """What routing knows of one collection.

    ``centroid``: the normalized mean of its chunks' vectors (None: no chunks with vectors).
    ``description_vector``: the embedding of ``description`` (None: no description/embedder).
    Set per query by :func:`chatwright.routing.with_evidence`, from ONE vector search across
    all the collections (None / empty: not known):
    ``best_chunk``: the cosine of the query with this collection's best-matching chunk (when
    none of its chunks is among the query's ``k`` nearest, the k-th cosine: an upper bound).
    ``top_chunks``: the cosines of its chunks among the query's ``k`` nearest, best first, and
    ``top_best`` the best cosine of those ``k`` over all collections (votes are relative to it).
    ``keyword_share``: its share of the BM25 score of the query's ``k`` best keyword matches
    across all collections, and ``keyword_best`` the BM25 score of its best match among them
    (0.0: none of them; both None: no keyword search was made, or ``keyword_search`` will make
    it: a :class:`KeywordEvidence` that the router asks only when its decision needs it).
    ``keyword_phrases``: the query's phrases (:func:`phrases`) that its best
    :data:`PHRASE_TEXTS` keyword matches among those ``k`` hold (None: not known).
    ``term_counts``: (its chunks, how many of them hold each of the query's keywords), from
    the keyword index (``SearchIndex.term_counts``; None: not known, or no keywords).
    """

    name: str
    namespace: str
    description: str
    centroid: np.ndarray | None
    chunks: int
    description_vector: np.ndarray | None = None
    notes: tuple[str, ...] = ()
    best_chunk: float | None = None
    top_chunks: tuple[float, ...] = ()
    top_best: float | None = None
    keyword_share: float | None = None
    keyword_best: float | None = None
    keyword_search: KeywordEvidence | None = None
    keyword_phrases: tuple[str, ...] | None = None
    term_counts: tuple[int, tuple[int, ...]] | None = None


def vocabulary_fit(
    counts: Mapping[str, tuple[int, tuple[int, ...]] | None], smoothing: float = 2.0
) -> dict[str, float]:
    """How well each collection's words fit the query, relative to the best (<= 0; {}: not
    known): the mean over the query's keywords of the log-probability that a chunk of the
    collection holds the keyword, each collection smoothed toward all of them together
    (Dirichlet, ``mu = smoothing * the mean collection's chunks``), less the best collection's.

    ``counts``: per collection, (its chunks, how many hold each keyword), or None where not
    known (an empty collection, an external source): those sit at the mean of the others, so
    that the term neither favours nor hurts them. A keyword that no chunk holds says nothing
    of any collection and is left out ({} when none is held anywhere). This is the
    language-model view of federated search's collection selection: a word common in one
    collection and rare in the others names it even when no single chunk matches the
    question well, and it needs no scoring, only the counts the keyword index keeps.
    """
    known = {n: c for n, c in counts.items() if c is not None and c[0] > 0}
    widths = {len(held) for _, held in known.values()}
    if not known or len(widths) != 1 or smoothing <= 0:
        return {}
    width = widths.pop()
    total = sum(size for size, _ in known.values())
    held_all = [sum(held[i] for _, held in known.values()) for i in range(width)]
    used = [i for i in range(width) if held_all[i] > 0]
    if not used:
        return {}
    mu = smoothing * total / len(known)
    background = {i: held_all[i] / total for i in used}

    def fit(size: int, held: tuple[int, ...]) -> float:
        logs = (math.log((held[i] + mu * background[i]) / (size + mu)) for i in used)
        return sum(logs) / len(used)

    raw = {n: fit(*c) for n, c in known.items()}
    top = max(raw.values())
    fits = {n: v - top for n, v in raw.items()}
    neutral = sum(fits.values()) / len(fits)
    return {n: fits.get(n, neutral) for n in counts}


def phrases(text: str) -> list[tuple[str, str]]:
    """The phrases of ``text``: each two neighbouring words as keyword search indexes them
    (case-folded, stemmed, stopwords dropped, so "parent or guardian" is ``("parent",
    "guardian")``), in order, without repeats."""
    terms = analyze(text)
    return list(dict.fromkeys(itertools.pairwise(terms)))


#: How many of each collection's best keyword matches are read for the query's phrases.
PHRASE_TEXTS = 3

#: (namespace, BM25) or (namespace, BM25, the matched chunk's text): a keyword match.
KeywordHit = tuple[str, float] | tuple[str, float, str]


class KeywordEvidence:
    """The query's ``k`` best keyword (BM25) matches across the collections, searched at most
    once and only when :meth:`get` is called: a router asks only when a keyword rule could
    change its decision, so a clear-cut query costs no keyword search. ``search`` returns
    (namespace, BM25) pairs, best first, or (namespace, BM25, text) triples: then, given the
    ``query``, :meth:`phrases_found` says which of its phrases each collection's best
    :data:`PHRASE_TEXTS` matches hold."""

    def __init__(
        self, search: Callable[[], Sequence[KeywordHit]], k: int, query: str | None = None
    ) -> None:
        self._search = search
        self.k = k
        self.query = query
        self._found: dict[str, tuple[float, float]] | None = None
        self._phrases: dict[str, tuple[str, ...]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, hits: Sequence[KeywordHit], k: int, query: str | None = None) -> KeywordEvidence:
        """Evidence from matches already found."""
        return cls(lambda: hits, k, query)

    @property
    def searched(self) -> bool:
        return self._found is not None

    def get(self) -> dict[str, tuple[float, float]]:
        """Per namespace with a match: (its share of the BM25 of the first ``k`` matches, the
        BM25 of its best one)."""
        with self._lock:
            if self._found is None:
                self._gather()
            assert self._found is not None
            return self._found

    def phrases_found(self) -> dict[str, tuple[str, ...]] | None:
        """Per namespace with a match: the query's phrases (:func:`phrases`, each as "word
        word") that its best :data:`PHRASE_TEXTS` matches among the first ``k`` hold; None
        when the matches came without their text or there is no query."""
        with self._lock:
            if self._found is None:
                self._gather()
            return self._phrases

    def _gather(self) -> None:
        hits = list(self._search())[: self.k]
        mass: dict[str, float] = {}
        best: dict[str, float] = {}
        for hit in hits:
            namespace, score = hit[0], hit[1]
            mass[namespace] = mass.get(namespace, 0.0) + max(0.0, score)
            best[namespace] = max(best.get(namespace, 0.0), max(0.0, score))
        total = sum(mass.values())
        self._found = {n: (m / total if total > 0 else 0.0, best[n]) for n, m in mass.items()}
        if self.query is None or any(len(hit) < 3 for hit in hits):
            return
        held: dict[str, set[tuple[str, str]]] = {n: set() for n in mass}
        wanted = set(phrases(self.query))
        read: dict[str, int] = {}
        for hit in hits if wanted else ():
            # each collection's best few matches: analyzing a chunk costs ~70 µs
            if read.get(hit[0], 0) < PHRASE_TEXTS:
                read[hit[0]] = read.get(hit[0], 0) + 1
                terms = analyze(str(hit[2]))  # type: ignore[misc]
                held[hit[0]] |= wanted.intersection(itertools.pairwise(terms))
        self._phrases = {n: tuple(" ".join(p) for p in sorted(found)) for n, found in held.items()}


@dataclass
class Route:
    """Where a turn goes: ``collections`` ([] = none), who decided and why.

    ``why``: per collection, why it was or was not taken (the semantic router fills it in).
    ``unsure``: the evidence did not single out one collection, so several are searched and
    fused ranking decides. ``search``: the route's one vector search across the collections
    (:class:`~chatwright.retrieval.index.Nearest`), which retrieval reuses; not in
    :meth:`to_dict`.
    """

    collections: list[str]
    strategy: str
    scores: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    fallback: bool = False
    notes: list[str] = field(default_factory=list)
    ms: float = 0.0  # time the chain took
    why: dict[str, str] = field(default_factory=dict)
    unsure: bool = False
    search: Nearest | None = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """One line for logs and traces: ``route hr, devices [semantic] why (scores)``."""
        where = ", ".join(self.collections) or "no collection"
        scores = " ".join(f"{k}={v:.2f}" for k, v in self.scores.items())
        flags = (", fallback" if self.fallback else "") + (", unsure" if self.unsure else "")
        text = f"route {where} [{self.strategy}{flags}]"
        if self.reason:
            text += f": {self.reason}"
        if scores:
            text += f" ({scores})"
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, search=None))
        del out["search"]
        return out


class Router(Protocol):
    """One routing strategy. ``route`` returns None when unsure."""

    name: str

    def route(
        self, query: str, query_vector: np.ndarray | None, profiles: Sequence[CollectionProfile]
    ) -> Route | None: ...


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


# -- chit-chat ------------------------------------------------------------------------------
_CHITCHAT = re.compile(
    r"^\W*(?:"
    r"h(?:i|ello|ey|owdy|iya)(?:\s+there)?|yo|greetings|good\s+(?:morning|afternoon|evening|night)"
    r"|thanks?(?:\s+you)?(?:\s+(?:so|very)\s+much)?|thx|ty|cheers|(?:much|greatly)\s+appreciated"
    r"|many\s+thanks|thanks\s+(?:anyway|again|a\s+lot)"
    r"|ok(?:ay)?|k|cool|great|nice|perfect|awesome|sounds\s+good|got\s+it|sure|yes(?:\s+please)?"
    r"|no(?:\s+thanks)?|yep|nope|lol|haha|hmm+|wow|alright|all\s+right|right|i\s+see"
    r"|noted|understood|makes\s+sense|fair\s+enough|no\s+worries|no\s+problem|of\s+course"
    r"|bye|goodbye|see\s+you(?:\s+later)?|good\s*bye|take\s+care|have\s+a\s+(?:nice|great|good)\s+"
    r"(?:day|evening|weekend)|(?:talk\s+to|catch)\s+you\s+later|later"
    r"|how(?:'s|\s+is)\s+it\s+going|how\s+are\s+you(?:\s+doing)?|what'?s\s+up|sup"
    r"|who\s+are\s+you|what(?:'s|\s+is)\s+your\s+name|are\s+you\s+(?:a\s+)?(?:robot|bot|human|ai)"
    r"|nice\s+to\s+meet\s+you|tell\s+me\s+a\s+joke|(?:can|could)\s+you\s+tell\s+me\s+a\s+joke"
    r"|sorry|my\s+(?:bad|mistake)|never\s*mind|you(?:'re|\s+are)\s+(?:awesome|great|funny)"
    r"|test(?:ing)?(?:\s+\d+)?|just\s+testing"
    r")(?:[\s,.!?;:]+(?:(?:and\s+)?(?:have\s+a\s+\w+\s+day|thanks|thank\s+you|that\s+was\s+helpful|"
    r"that'?s\s+all(?:\s+i\s+needed)?|how\s+are\s+you|there|a\s+lot|again|my\s+mistake|"
    r"interesting|bye)))*[\s\W]*$",
    re.IGNORECASE,
)
#: Longer messages are never small talk by pattern (and the pattern stays cheap on them).
_CHITCHAT_MAX_CHARS = 120

#: Sentences of small talk: greetings, thanks, acknowledgements, feedback, questions about the
#: bot itself and about the conversation. A message closer to one of these than to any chunk
#: of any collection needs no knowledge. Written for chatwright, none taken from a data set.
CHITCHAT_EXEMPLARS: tuple[str, ...] = (
    "hello, how are you?",
    "good morning!",
    "hey there, is anyone around?",
    "thanks, that was helpful",
    "thank you very much",
    "I really appreciate your help",
    "goodbye, see you later",
    "I have to go now, bye",
    "ok great",
    "alright, understood",
    "right, I see",
    "lol that's funny",
    "you are really helpful",
    "that's not what I asked",
    "that answer was wrong, try again",
    "what's your name? are you a bot?",
    "are you a real person?",
    "what can you help me with?",
    "what kinds of questions can you answer?",
    "what topics do you know about?",
    "how do you work?",
    "who created you?",
    "which languages can you speak?",
    "do you remember our earlier conversation?",
    "let's talk about something else",
    "can we start again from scratch?",
    "sorry, I typed in the wrong window",
    "just checking whether this works",
    "tell me a joke",
    "how was your weekend?",
    "I'm bored, tell me something fun",
    "sorry, my mistake",
    "yes please",
    "no thanks, that's all",
    "nice to meet you",
    "have a nice day",
    "I'm back again",
    "do you ever get tired or need rest?",
    "do you have feelings?",
    "what do you like to do for fun?",
    "are you having a good day?",
)


def is_chitchat(query: str) -> bool:
    """True when ``query`` is a greeting, thanks, acknowledgement or small talk (by pattern)."""
    text = query.strip()
    if not text or not any(c.isalnum() for c in text):
        return True  # nothing to search for: an emoji, punctuation
    return len(text) <= _CHITCHAT_MAX_CHARS and bool(_CHITCHAT.match(text))


# -- clauses ----------------------------------------------------------------------------------
# Where a message that asks two things splits: after a question mark, at ", and" / "; and", or
# at "and" followed by a question word ("how do I grow basil and how do I cook it?").
_CLAUSE = re.compile(
    r"\?\s+|[,;]\s*and\s+|\s+and\s+(?=(?:how|what|when|where|which|who|why|can|could|should"
    r"|do|does|did|is|are|will|would|may|must)\b)",
    re.IGNORECASE,
)
_CLAUSE_MAX_CHARS = 400


def clauses(query: str, max_parts: int = 3) -> list[str]:
    """The questions a message asks when it asks several (each of 3+ words), else ``[]``.

    One embedding of a two-topic question leans to the stronger topic, so the weaker one's
    collection loses on every score; routing each clause on its own finds it. Long messages
    are not split (a pasted text is one thing, and each clause costs an embedding).
    """
    if len(query) > _CLAUSE_MAX_CHARS:
        return []
    parts = [p.strip(" ,;?!.") for p in _CLAUSE.split(query)]
    parts = [p for p in parts if len(p.split()) >= 3]
    return parts[:max_parts] if len(parts) > 1 else []


_EXEMPLAR_CACHE: dict[str, np.ndarray] = {}
_EXEMPLAR_LOCK = threading.Lock()


def embed_exemplars(
    embedder: Embedder, exemplars: Sequence[str] = CHITCHAT_EXEMPLARS
) -> np.ndarray:
    """The exemplars' embeddings (unit length), computed once per embedder."""
    key = f"{getattr(embedder, 'name', type(embedder).__name__)}|{hash(tuple(exemplars))}"
    with _EXEMPLAR_LOCK:
        if key not in _EXEMPLAR_CACHE:
            vectors = np.asarray(embedder.embed(list(exemplars)), dtype=np.float32)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            _EXEMPLAR_CACHE[key] = vectors / np.where(norms > 0, norms, 1.0)
        return _EXEMPLAR_CACHE[key]


class ChitChatRouter:
    """Routes greetings, thanks and small talk (matched by pattern) to no collection."""

    name = "chitchat"

    def route(
        self, query: str, query_vector: np.ndarray | None, profiles: Sequence[CollectionProfile]
    ) -> Route | None:
        if is_chitchat(query):
            return Route([], self.name, reason="chit-chat")
        return None


# -- rules ------------------------------------------------------------------------------------
class RulesRouter:
    """``rules``: collection name -> regular expressions (case-insensitive, searched anywhere).

    Every collection with a matching pattern is chosen; no match is unsure (None). Rules for
    names that are not collections are ignored.
    """

    name = "rules"

    def __init__(self, rules: Mapping[str, Sequence[str]]) -> None:
        self.rules = {
            name: [re.compile(p, re.IGNORECASE) for p in patterns]
            for name, patterns in rules.items()
        }

    def route(
        self, query: str, query_vector: np.ndarray | None, profiles: Sequence[CollectionProfile]
    ) -> Route | None:
        known = {p.name for p in profiles}
        hits: dict[str, float] = {}
        why: list[str] = []
        for name, patterns in self.rules.items():
            if name not in known:
                continue
            matched = [p.pattern for p in patterns if p.search(query)]
            if matched:
                hits[name] = float(len(matched))
                why.append(f"{name}: /{matched[0]}/")
        if not hits:
            return None
        order = [p.name for p in profiles if p.name in hits]
        return Route(order, self.name, hits, reason="matched " + ", ".join(why))


# -- semantic ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """One collection's evidence for one query (see :meth:`SemanticRouter.evidence`)."""

    best: float | None  # cosine with its best-matching chunk
    votes: float | None  # its share of the query's nearest chunks, similarity-weighted
    profile: float | None  # cosine with its profile vector (description + centroid)
    keywords: float | None  # its share of the query's best keyword matches
    score: float  # the weighted sum the decision ranks by
    keyword_best: float | None = None  # BM25 of its best keyword match (0.0: none)
    phrases: tuple[str, ...] | None = None  # the query's phrases its keyword matches hold
    vocabulary: float | None = None  # its vocabulary fit less the best one's (vocabulary_fit)


class SemanticRouter:
    """Routes by what the collections contain, relative to the best one; no model call.

    Evidence per collection (:meth:`evidence`), from the query vector and ONE vector search
    across all collections (:func:`chatwright.routing.with_evidence`, which retrieval needs
    anyway): ``best``, the cosine of its best-matching chunk; ``votes``, its share of the
    query's nearest chunks, each weighted ``exp((cosine - top cosine) / temperature)``; and
    ``profile``, the cosine with ``normalize(mix * description + (1 - mix) * centroid)``. The
    score is ``chunk_weight * best + vote_weight * votes + (1 - chunk_weight - vote_weight) *
    profile`` (a missing part's weight goes to the others), less ``size_penalty * ln(chunks)``:
    the best of many chunks is high by chance alone (the maximum of N draws grows with N), so a
    big collection of generic text would otherwise win questions that belong elsewhere. Plus
    ``vocabulary_weight * vocabulary``: how common the query's keywords are in the collection
    against the others (:func:`vocabulary_fit`, <= 0, 0 for the best fit; smoothed by
    ``vocabulary_smoothing``), from the keyword index's counts. The embedding sees a topic;
    the counts see that "OTS" or "viewership" are words of one collection, though no single chunk
    of it is near the question.

    The decision, in order (each rule says why in ``Route.why``):

    1. **small talk** (``chitchat`` exemplar vectors, :func:`embed_exemplars`): a query whose
       nearest exemplar has cosine >= ``chitchat_threshold`` and >= the best chunk's cosine
       + ``chitchat_margin`` needs no knowledge: no collection.
    2. **no evidence** (no collection has chunks or a description vector): unsure (None), and
       the chain falls back to all collections.
    3. **the best** collection by score is taken, unless **the keywords single one out**: the
       collection holding the query's best keyword (BM25) match, when that match scores at
       least ``keyword_lead`` times the best match of any other collection (``(best + 1) /
       (other + 1)``; 0: off) and its own score is within ``keyword_lead_margin`` of the best,
       is taken instead. Rare words (a product's name, a gene, an acronym) name the collection
       that holds them where the embedding only sees the topic. Before that, **the phrases
       single one out**: when the query's phrases (two neighbouring words as keyword search
       indexes them, :func:`phrases`: "Sky Blue", "free period") occur in the best keyword
       matches of only one collection, at least ``phrase_lead`` of them (0: off), and its
       score is within ``phrase_margin`` of the best, it is taken. Common words make BM25
       scores even across collections; a name of two common words ("Everyone Pay") is still
       found as a phrase in one place only. Both read the same one keyword search, made only
       when a second collection scores within the larger of the two margins.
    4. **close runners-up**: another collection is added when its score is within ``margin``
       of the best *and* it holds at least ``min_share`` of the votes (a question spanning
       collections draws its nearest chunks from each), or within ``keyword_margin`` with at
       least ``keyword_share`` of the best keyword matches (a second topic that the blended
       query vector drowns but its words still name); at most ``max_collections``.
    5. **clauses** (``clauses``; done by :func:`chatwright.routing.route_clauses` and
       :func:`merge_clauses`, as each clause needs its own embedding): a message asking two
       things also gets the best collection of each clause that scores >= ``clause_score``.
    6. **unsure**: when even the best chunk is weak (``best < floor``), the ``unsure_k`` best
       collections are searched and fused ranking decides, said in the reason.

    Everything is relative to the best collection except ``floor`` and the small-talk test,
    which compare cosines of the same embedder (calibrate them per embedder: ``chatwright eval
    routing``).
    """

    name = "semantic"

    def __init__(
        self,
        *,
        margin: float = 0.0,
        min_share: float = 0.15,
        mix: float = 0.5,
        chunk_weight: float = 0.7,
        vote_weight: float = 0.0,
        temperature: float = 0.05,
        keyword_share: float = 2.0,
        keyword_margin: float = 0.03,
        keyword_lead: float = 1.8,
        keyword_lead_margin: float = 0.15,
        phrase_lead: int = 2,
        phrase_margin: float = 0.15,
        size_penalty: float = 0.06,
        vocabulary_weight: float = 0.06,
        vocabulary_smoothing: float = 2.0,
        floor: float = 0.0,
        unsure_k: int = 2,
        clauses: bool = True,
        clause_score: float = 0.1,
        max_collections: int = 3,
        chitchat: np.ndarray | None = None,
        chitchat_threshold: float = 0.4,
        chitchat_margin: float = 0.0,
    ) -> None:
        for label, value in (("mix", mix), ("chunk_weight", chunk_weight)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be within [0, 1], not {value}")
        if not 0.0 <= vote_weight <= 1.0 - chunk_weight + 1e-9:
            raise ValueError(f"vote_weight must be within [0, 1 - chunk_weight], not {vote_weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {temperature}")
        if vocabulary_weight < 0 or vocabulary_smoothing <= 0:
            raise ValueError(
                "vocabulary_weight must be >= 0 and vocabulary_smoothing > 0, not "
                f"{vocabulary_weight} and {vocabulary_smoothing}"
            )
        self.margin = margin
        self.min_share = min_share
        self.mix = mix
        self.chunk_weight = chunk_weight
        self.vote_weight = vote_weight
        self.temperature = temperature
        self.size_penalty = size_penalty
        self.vocabulary_weight = vocabulary_weight
        self.vocabulary_smoothing = vocabulary_smoothing
        self.keyword_share = keyword_share
        self.keyword_margin = keyword_margin
        self.keyword_lead = keyword_lead
        self.keyword_lead_margin = keyword_lead_margin
        self.phrase_lead = max(0, phrase_lead)
        self.phrase_margin = phrase_margin
        self.floor = floor
        self.clauses = clauses
        self.clause_score = clause_score
        self.unsure_k = max(1, unsure_k)
        self.max_collections = max(1, max_collections)
        self.chitchat = None if chitchat is None else np.asarray(chitchat, dtype=np.float32)
        self.chitchat_threshold = chitchat_threshold
        self.chitchat_margin = chitchat_margin
        self._vectors: dict[tuple[int, int], tuple[Any, Any, np.ndarray | None]] = {}

    @property
    def uses_keywords(self) -> bool:
        """Whether a keyword rule can fire (else the keyword search is not worth making)."""
        return self.keyword_share <= 1.0 or self.keyword_lead > 0 or self.phrase_lead > 0

    @property
    def uses_vocabulary(self) -> bool:
        """Whether the vocabulary term counts (else the keyword counts are not worth reading)."""
        return self.vocabulary_weight > 0

    def vector(self, profile: CollectionProfile) -> np.ndarray | None:
        """``normalize(mix * description + (1 - mix) * centroid)``, remembered while the
        profile's vectors are the same objects (profiles are rebuilt each turn from cached
        vectors, so fifty collections cost no renormalizing per query)."""
        key = (id(profile.description_vector), id(profile.centroid))
        known = self._vectors.get(key)
        same = known is not None and known[0] is profile.description_vector
        if known is not None and same and known[1] is profile.centroid:
            return known[2]
        if len(self._vectors) > 4096:
            self._vectors.clear()
        vector = self._vector(profile)
        self._vectors[key] = (profile.description_vector, profile.centroid, vector)
        return vector

    def _vector(self, profile: CollectionProfile) -> np.ndarray | None:
        parts: list[tuple[float, np.ndarray]] = []
        if profile.description_vector is not None:
            parts.append((self.mix, _unit(profile.description_vector)))
        if profile.centroid is not None:
            parts.append((1.0 - self.mix, _unit(profile.centroid)))
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0][1]
        return _unit(sum(w * v for w, v in parts))

    def _votes(self, profiles: Sequence[CollectionProfile]) -> dict[str, float] | None:
        top = max((p.top_best for p in profiles if p.top_best is not None), default=None)
        if top is None:
            return None
        mass = {
            p.name: float(sum(np.exp((s - top) / self.temperature) for s in p.top_chunks))
            for p in profiles
        }
        total = sum(mass.values())
        return {n: m / total for n, m in mass.items()} if total > 0 else None

    def evidence(
        self, query_vector: np.ndarray, profiles: Sequence[CollectionProfile]
    ) -> dict[str, Evidence]:
        """Each collection's evidence and score (collections with none are left out)."""
        q = _unit(query_vector)
        votes = self._votes(profiles)
        fits = (
            vocabulary_fit({p.name: p.term_counts for p in profiles}, self.vocabulary_smoothing)
            if self.vocabulary_weight > 0 and any(p.term_counts for p in profiles)
            else {}
        )
        out: dict[str, Evidence] = {}
        for p in profiles:
            v = self.vector(p)
            profile = float(v @ q) if v is not None and v.shape == q.shape else None
            share = votes.get(p.name) if votes is not None else None
            parts = [
                (self.chunk_weight, p.best_chunk),
                (self.vote_weight, share),
                (max(0.0, 1.0 - self.chunk_weight - self.vote_weight), profile),
            ]
            known = [(w, x) for w, x in parts if x is not None]
            if profile is None and p.best_chunk is None:
                continue  # nothing known of its content
            weight = sum(w for w, _ in known)
            score = (
                sum(w * x for w, x in known) / weight
                if weight > 0
                else sum(x for _, x in known) / len(known)
            )
            if self.size_penalty and p.chunks > 1:
                score -= self.size_penalty * math.log(p.chunks)
            fit = fits.get(p.name)
            if fit is not None:
                score += self.vocabulary_weight * fit
            out[p.name] = Evidence(
                p.best_chunk,
                share,
                profile,
                p.keyword_share,
                round(score, 4),
                p.keyword_best,
                p.keyword_phrases,
                None if fit is None else round(fit, 4),
            )
        pending = [
            p
            for p in profiles
            if p.keyword_search is not None and p.keyword_share is None and p.name in out
        ]
        if pending and self.needs_keywords(out):
            for p in pending:
                assert p.keyword_search is not None
                kw_share, kw_best = p.keyword_search.get().get(p.namespace, (0.0, 0.0))
                held = p.keyword_search.phrases_found()
                out[p.name] = replace(
                    out[p.name],
                    keywords=kw_share,
                    keyword_best=kw_best,
                    phrases=None if held is None else held.get(p.namespace, ()),
                )
        return out

    def needs_keywords(self, found: Mapping[str, Evidence]) -> bool:
        """Whether a keyword rule could change this decision: the runner-up rule is on, or
        a lead rule is and a second collection scores within its margin of the best
        (``keyword_lead_margin``, ``phrase_margin``; else the keyword search is skipped: it
        could only confirm the best)."""
        if self.keyword_share <= 1.0:
            return True
        margins = [self.keyword_lead_margin] if self.keyword_lead > 0 else []
        margins += [self.phrase_margin] if self.phrase_lead > 0 else []
        if not margins or len(found) < 2:
            return False
        first, second = sorted((e.score for e in found.values()), reverse=True)[:2]
        return second >= first - max(margins)

    def phrase_leader(
        self, found: Mapping[str, Evidence], top_score: float
    ) -> tuple[str, tuple[str, ...]] | None:
        """(name, its phrases) of the collection the query's phrases single out (rule 3):
        its keyword matches hold at least ``phrase_lead`` of the query's phrases and no
        other collection's hold any, and its score is within ``phrase_margin`` of the best;
        else None."""
        if self.phrase_lead <= 0:
            return None
        holding = {n: e.phrases for n, e in found.items() if e.phrases}
        if len(holding) != 1:
            return None
        ((name, held),) = holding.items()
        if len(held) < self.phrase_lead or found[name].score < top_score - self.phrase_margin:
            return None
        return name, held

    def keyword_leader(
        self, found: Mapping[str, Evidence], top_score: float
    ) -> tuple[str, float, float] | None:
        """(name, its best keyword match's BM25, the best of any other collection) of the
        collection the keywords single out (rule 3), or None."""
        if self.keyword_lead <= 0:
            return None
        known = {n: e.keyword_best for n, e in found.items() if e.keyword_best is not None}
        if len(known) < 2:
            return None
        leader = max(known, key=lambda n: known[n])
        lead = known[leader]
        other = max(v for n, v in known.items() if n != leader)
        if lead <= 0 or (lead + 1.0) < self.keyword_lead * (other + 1.0):
            return None
        if found[leader].score < top_score - self.keyword_lead_margin:
            return None
        return leader, lead, other

    def scores(
        self, query_vector: np.ndarray, profiles: Sequence[CollectionProfile]
    ) -> dict[str, float]:
        return {n: e.score for n, e in self.evidence(query_vector, profiles).items()}

    def small_talk(self, query_vector: np.ndarray, best_chunk: float) -> float | None:
        """The nearest small-talk exemplar's cosine when it beats the collections (rule 1)."""
        if self.chitchat is None or not len(self.chitchat):
            return None
        q = _unit(query_vector)
        if self.chitchat.shape[1] != q.shape[0]:
            return None
        similarity = float(np.max(self.chitchat @ q))
        if (
            similarity >= self.chitchat_threshold
            and similarity >= best_chunk + self.chitchat_margin
        ):
            return similarity
        return None

    def route(
        self, query: str, query_vector: np.ndarray | None, profiles: Sequence[CollectionProfile]
    ) -> Route | None:
        if query_vector is None:
            return None
        found = self.evidence(query_vector, profiles)
        scores = {n: e.score for n, e in found.items()}
        best_chunk = max((e.best for e in found.values() if e.best is not None), default=-1.0)
        if best_chunk < 0:  # no chunk evidence: the best profile stands in
            best_chunk = max((e.profile or -1.0 for e in found.values()), default=-1.0)
        small_talk = self.small_talk(query_vector, best_chunk)
        if small_talk is not None:
            reason = (
                f"small talk: nearest exemplar {small_talk:.2f} >= best chunk {best_chunk:.2f}"
                f" + {self.chitchat_margin:.2f}"
            )
            why = {n: "not searched: small talk needs no documents" for n in scores}
            return Route([], self.name, scores, reason=reason, why=why)
        if not found:
            return None
        ranked = sorted(found.items(), key=lambda kv: -kv[1].score)
        top, top_e = ranked[0]
        why = {top: f"best score {top_e.score:.2f}{_detail(top_e)}"}
        phrased = self.phrase_leader(found, top_e.score)
        lead = self.keyword_leader(found, top_e.score) if phrased is None else None
        demoted = None
        singled = "keywords"
        if phrased is not None and phrased[0] != top:
            name, held = phrased
            demoted, singled = top, "phrases"
            why[demoted] = (
                f"left out: best score {top_e.score:.2f}, but the query's phrases single out "
                f"{name}{_detail(top_e)}"
            )
            ranked = [(name, found[name])] + [kv for kv in ranked if kv[0] != name]
            top, top_e = ranked[0]
            shown = ", ".join(repr(p) for p in held[:4])
            why[top] = (
                f"taken: its keyword matches hold {len(held)} of the query's phrases ({shown}) "
                f"and no other collection's hold any, score {top_e.score:.2f} within "
                f"{self.phrase_margin:.2f} of the best{_detail(top_e)}"
            )
        elif lead is not None and lead[0] != top:
            name, best_kw, other_kw = lead
            demoted = top
            why[demoted] = (
                f"left out: best score {top_e.score:.2f}, but the keywords single out {name}"
                f"{_detail(top_e)}"
            )
            ranked = [(name, found[name])] + [kv for kv in ranked if kv[0] != name]
            top, top_e = ranked[0]
            why[top] = (
                f"taken: its best keyword match (BM25 {best_kw:.1f}) beats any other "
                f"collection's ({other_kw:.1f}) by {self.keyword_lead:g}x or more, score "
                f"{top_e.score:.2f} within {self.keyword_lead_margin:.2f} of the best"
                f"{_detail(top_e)}"
            )
        if best_chunk < self.floor:
            chosen = [n for n, _ in ranked[: self.unsure_k]]
            for n, e in ranked[1:]:
                why[n] = (
                    f"searched, unsure: {e.score:.2f}{_detail(e)}"
                    if n in chosen
                    else f"left out: ranked below the {self.unsure_k} searched"
                )
            reason = (
                f"unsure: best chunk {best_chunk:.2f} < {self.floor:.2f}, "
                f"searching {', '.join(chosen)}"
            )
            return Route(chosen, self.name, scores, reason=reason, why=why, unsure=True)
        chosen = [top]
        for n, e in ranked[1:]:
            if n == demoted:
                continue
            close = e.score >= top_e.score - self.margin
            share = e.votes if e.votes is not None else 1.0  # no search: closeness alone
            named = (
                e.keywords is not None
                and e.keywords >= self.keyword_share
                and e.score >= top_e.score - self.keyword_margin
            )
            full = len(chosen) >= self.max_collections
            if close and share >= self.min_share and not full:
                chosen.append(n)
                why[n] = f"taken: {e.score:.2f} within {self.margin:.2f} of the best{_detail(e)}"
            elif named and not full:
                chosen.append(n)
                why[n] = (
                    f"taken: {e.keywords:.0%} of the keyword matches, {e.score:.2f} within "
                    f"{self.keyword_margin:.2f} of the best{_detail(e)}"
                )
            elif not close:
                why[n] = (
                    f"left out: {e.score:.2f} < {top_e.score:.2f} - {self.margin:.2f}{_detail(e)}"
                )
            elif share < self.min_share:
                why[n] = (
                    f"left out: close ({e.score:.2f}) but {share:.0%} of the nearest chunks"
                    f"{_detail(e)}"
                )
            else:
                why[n] = f"left out: already {self.max_collections} collections{_detail(e)}"
        reason = f"best {top} {top_e.score:.2f}"
        if demoted is not None:
            reason = f"{top} singled out by the {singled} over {demoted} ({scores[demoted]:.2f})"
        if len(chosen) > 1:
            reason += f"; also {', '.join(chosen[1:])} (within {self.margin:.2f})"
        return Route(chosen, self.name, scores, reason=reason, why=why)


#: The :class:`SemanticRouter` options that ``[routing]`` settings set (same names).
SEMANTIC_OPTIONS = frozenset(
    {
        "margin",
        "min_share",
        "mix",
        "chunk_weight",
        "vote_weight",
        "temperature",
        "keyword_share",
        "keyword_margin",
        "keyword_lead",
        "keyword_lead_margin",
        "phrase_lead",
        "phrase_margin",
        "size_penalty",
        "vocabulary_weight",
        "vocabulary_smoothing",
        "floor",
        "unsure_k",
        "clauses",
        "clause_score",
        "chitchat_threshold",
        "chitchat_margin",
    }
)


def merge_clauses(
    route: Route,
    parts: Sequence[tuple[str, Route | None]],
    *,
    min_score: float = 0.0,
    max_collections: int = 3,
) -> Route:
    """``route`` (the whole message's, when the semantic router made it) plus the best
    collection of each clause that routed confidently on its own: not small talk, not unsure,
    scoring at least ``min_score``; up to ``max_collections``."""
    if route.strategy != "semantic" or not route.collections or route.unsure:
        return route
    for text, part in parts:
        if part is None or part.unsure or not part.collections:
            continue
        best = part.collections[0]
        if part.scores.get(best, 0.0) < min_score:
            route.why.setdefault(best, f"left out: the clause {text!r} is not sure of it")
            continue
        if best in route.collections or len(route.collections) >= max_collections:
            continue
        route.collections.append(best)
        route.why[best] = f"taken: the clause {text!r} routes here ({part.why.get(best, '')})"
        route.reason += f"; also {best} for the clause {text!r}"
    return route


def _detail(e: Evidence) -> str:
    parts = []
    if e.best is not None:
        parts.append(f"chunk {e.best:.2f}")
    if e.votes is not None:
        parts.append(f"votes {e.votes:.0%}")
    if e.profile is not None:
        parts.append(f"profile {e.profile:.2f}")
    if e.keywords is not None:
        parts.append(f"keywords {e.keywords:.0%}")
    if e.phrases:
        parts.append(f"phrases {len(e.phrases)}")
    if e.vocabulary is not None:
        parts.append(f"vocabulary {e.vocabulary:+.2f}")
    return f" ({', '.join(parts)})" if parts else ""


# -- llm --------------------------------------------------------------------------------------
_PROMPT = """You route a user's message to the document collections that can answer it.
Collections:
{collections}

Answer with JSON only, no prose: {{"collections": [{{"name": "<one of: {names}>", \
"confidence": <0..1>}}]}}.
Choose every collection the message needs (several if it spans them). Choose none \
({{"collections": []}}) for greetings, thanks and small talk.

Message: {query}"""


def _route_tool(names: Sequence[str]) -> Any:
    from chatwright.models.base import ToolSpec

    return ToolSpec(
        name="route",
        description="Choose the collections to search for the user's message.",
        parameters={
            "type": "object",
            "properties": {
                "collections": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "enum": list(names)},
                            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                        },
                        "required": ["name", "confidence"],
                    },
                }
            },
            "required": ["collections"],
        },
    )


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def _parse_choices(text: str) -> list[Any] | None:
    """The ``collections`` list of the first JSON object in ``text`` (None: not found)."""
    match = _JSON_OBJECT.search(text)
    if not match:
        return None
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    choices = data.get("collections") if isinstance(data, dict) else None
    return choices if isinstance(choices, list) else None


class LlmRouter:
    """The chat model picks collections (JSON, or a ``route`` tool call where supported).

    The request offers a ``route`` tool whose schema enumerates the collection names, and the
    prompt asks for the same JSON as text; either answer is accepted. Names that are not
    collections are dropped (with a note), as are choices below ``min_confidence``. An answer
    that is not such JSON, an error, or no answer within ``timeout_s`` is unsure (None).
    ``last_notes`` keeps why the last call was unsure.
    """

    name = "llm"

    def __init__(
        self,
        model: Model,
        timeout_s: float = 10.0,
        *,
        min_confidence: float = 0.5,
        max_tokens: int = 200,
        use_tool: bool = True,
    ) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.min_confidence = min_confidence
        self.max_tokens = max_tokens
        self.use_tool = use_tool
        self.last_notes: list[str] = []

    def _request(self, query: str, profiles: Sequence[CollectionProfile]) -> Any:
        from chatwright.models.base import ModelRequest, ModelSettings
        from chatwright.types import Message

        names = [p.name for p in profiles]
        listing = "\n".join(f"- {p.name}: {p.description or '(no description)'}" for p in profiles)
        prompt = _PROMPT.format(collections=listing, names=", ".join(names), query=query)
        return ModelRequest(
            messages=(Message.user(prompt),),
            tools=(_route_tool(names),) if self.use_tool else (),
            settings=ModelSettings(
                max_tokens=self.max_tokens, temperature=0.0, timeout_s=self.timeout_s
            ),
        )

    async def _answer(self, request: Any) -> str:
        from chatwright.types import TextDelta, ToolCallEvent

        text: list[str] = []
        async for event in self.model.stream(request):
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, ToolCallEvent) and event.call.name == "route":
                return event.call.arguments
        return "".join(text)

    async def aroute(
        self, query: str, query_vector: np.ndarray | None, profiles: Sequence[CollectionProfile]
    ) -> Route | None:
        self.last_notes = []
        if not profiles:
            return None
        try:
            answer = await asyncio.wait_for(
                self._answer(self._request(query, profiles)), self.timeout_s
            )
        except TimeoutError:
            self.last_notes.append(f"llm: no answer within {self.timeout_s:g} s")
            return None
        except Exception as e:  # a model failure must not fail the turn
            self.last_notes.append(f"llm: the model failed ({type(e).__name__}: {e})")
            return None
        choices = _parse_choices(answer)
        if choices is None:
            self.last_notes.append(f"llm: not a valid routing answer: {answer[:80]!r}")
            return None
        known = [p.name for p in profiles]
        scores: dict[str, float] = {}
        unknown: list[str] = []
        for choice in choices:
            name = choice.get("name") if isinstance(choice, dict) else choice
            if not isinstance(name, str) or name not in known:
                unknown.append(str(name))
                continue
            raw = choice.get("confidence", 1.0) if isinstance(choice, dict) else 1.0
            try:
                confidence = min(1.0, max(0.0, float(raw)))
            except (TypeError, ValueError):
                confidence = 0.0
            scores[name] = max(scores.get(name, 0.0), confidence)
        if unknown:
            self.last_notes.append(f"llm: ignored unknown collections {unknown}")
        if not choices:
            return Route([], self.name, {}, reason="model chose no collection")
        chosen = [n for n in known if scores.get(n, 0.0) >= self.min_confidence]
        if not chosen:
            self.last_notes.append(
                f"llm: no valid choice with confidence >= {self.min_confidence:g}"
            )
            return None
        reason = "model chose " + ", ".join(f"{n} ({scores[n]:.2f})" for n in chosen)
        return Route(chosen, self.name, scores, reason=reason, notes=list(self.last_notes))

    def route(
        self, query: str, query_vector: np.ndarray | None, profiles: Sequence[CollectionProfile]
    ) -> Route | None:
        return _run_sync(lambda: self.aroute(query, query_vector, profiles))


def _run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, inside a running event loop or not."""

    async def run() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            result.append(asyncio.run(run()))
        except BaseException as e:
            error.append(e)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


# -- all --------------------------------------------------------------------------------------
class AllRouter:
    """Every collection: the baseline."""

    name = "all"

    def route(
        self, query: str, query_vector: np.ndarray | None, profiles: Sequence[CollectionProfile]
    ) -> Route | None:
        return Route([p.name for p in profiles], self.name, reason="all collections")


# -- chain ------------------------------------------------------------------------------------
def _start(profiles: Sequence[CollectionProfile]) -> tuple[list[str], Route | None]:
    notes = [note for p in profiles for note in p.notes]
    if not profiles:
        return notes, Route([], "none", reason="no collections")
    return notes, None


def _finish(
    route: Route | None, profiles: Sequence[CollectionProfile], notes: list[str], t0: float
) -> Route:
    if route is None:
        route = Route(
            [p.name for p in profiles],
            "fallback",
            reason="no router was confident: all collections",
            fallback=True,
        )
    route.notes = notes + [n for n in route.notes if n not in notes]
    route.ms = (time.perf_counter() - t0) * 1000
    return route


def _unsure_note(router: Any, notes: list[str]) -> None:
    notes.extend(getattr(router, "last_notes", None) or [])


def chain(
    routers: Sequence[Router],
    profiles: Sequence[CollectionProfile],
    query: str,
    query_vector: np.ndarray | None,
) -> Route:
    """The first route a router is sure of, in order; if none is, all collections (fallback)."""
    t0 = time.perf_counter()
    notes, route = _start(profiles)
    for router in routers if route is None else ():
        try:
            route = router.route(query, query_vector, profiles)
        except Exception as e:
            notes.append(f"{getattr(router, 'name', router)}: failed ({type(e).__name__}: {e})")
            route = None
        if route is not None:
            break
        _unsure_note(router, notes)
    return _finish(route, profiles, notes, t0)


async def achain(
    routers: Sequence[Router],
    profiles: Sequence[CollectionProfile],
    query: str,
    query_vector: np.ndarray | None,
) -> Route:
    """:func:`chain` for async code: model-backed routers are awaited, not run in a thread."""
    t0 = time.perf_counter()
    notes, route = _start(profiles)
    for router in routers if route is None else ():
        try:
            aroute = getattr(router, "aroute", None)
            if aroute is not None:
                route = await aroute(query, query_vector, profiles)
            else:
                route = router.route(query, query_vector, profiles)
        except Exception as e:
            notes.append(f"{getattr(router, 'name', router)}: failed ({type(e).__name__}: {e})")
            route = None
        if route is not None:
            break
        _unsure_note(router, notes)
    return _finish(route, profiles, notes, t0)
