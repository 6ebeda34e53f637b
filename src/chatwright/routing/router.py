"""Collection routing: which of a user's collections (none, one or several) a turn should search.

Pure logic, no database: routers look at the query, its embedding and a
:class:`CollectionProfile` per collection (built by ``profiles.py``) and return a
:class:`Route`, or ``None`` when unsure so that the next router in a :func:`chain` decides.

- :class:`RulesRouter`: regular expressions mapped to collections.
- :class:`ChitChatRouter`: greetings, thanks and small talk route to no collection.
- :class:`SemanticRouter`: cosine of the query vector with each collection's profile vector (a
  normalized mix of its description's embedding and its chunks' centroid); no model call.
- :class:`LlmRouter`: the chat model picks collections as JSON (multi-select with a confidence
  each), validated against the known names; nonsense, errors and timeouts give ``None``.
- :class:`AllRouter`: every collection (the baseline).

If every router in a chain is unsure, the route is all collections with ``fallback=True``:
searching too much beats searching the wrong collection.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from chatwright.models.base import Model
    from chatwright.models.embeddings import Embedder

__all__ = [
    "CHITCHAT_EXEMPLARS",
    "AllRouter",
    "ChitChatRouter",
    "CollectionProfile",
    "LlmRouter",
    "Route",
    "Router",
    "RulesRouter",
    "SemanticRouter",
    "achain",
    "chain",
    "embed_exemplars",
    "is_chitchat",
]

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class CollectionProfile:
    """What routing knows of one collection.

    ``centroid``: the normalized mean of its chunks' vectors (None: no chunks with vectors).
    ``description_vector``: the embedding of ``description`` (None: no description/embedder).
    ``best_chunk``: the cosine of the current query with this collection's best-matching chunk,
    set per query by :func:`chatwright.routing.with_best_chunks` (None: not known).
    """

    name: str
    namespace: str
    description: str
    centroid: np.ndarray | None
    chunks: int
    description_vector: np.ndarray | None = None
    notes: tuple[str, ...] = ()
    best_chunk: float | None = None


@dataclass
class Route:
    """Where a turn goes: ``collections`` ([] = none), who decided and why."""

    collections: list[str]
    strategy: str
    scores: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    fallback: bool = False
    notes: list[str] = field(default_factory=list)
    ms: float = 0.0  # time the chain took

    def describe(self) -> str:
        """One line for logs and traces: ``route hr, devices [semantic] why (scores)``."""
        where = ", ".join(self.collections) or "no collection"
        scores = " ".join(f"{k}={v:.2f}" for k, v in self.scores.items())
        text = f"route {where} [{self.strategy}{', fallback' if self.fallback else ''}]"
        if self.reason:
            text += f": {self.reason}"
        if scores:
            text += f" ({scores})"
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    r"|thanks?(?:\s+you)?(?:\s+(?:so|very)\s+much)?|thx|ty|cheers|much\s+appreciated"
    r"|ok(?:ay)?|k|cool|great|nice|perfect|awesome|sounds\s+good|got\s+it|sure|yes(?:\s+please)?"
    r"|no(?:\s+thanks)?|yep|nope|lol|haha|hmm+|wow"
    r"|bye|goodbye|see\s+you(?:\s+later)?|good\s*bye|take\s+care|have\s+a\s+(?:nice|great|good)\s+"
    r"(?:day|evening|weekend)"
    r"|how(?:'s|\s+is)\s+it\s+going|how\s+are\s+you(?:\s+doing)?|what'?s\s+up|sup"
    r"|who\s+are\s+you|what(?:'s|\s+is)\s+your\s+name|are\s+you\s+(?:a\s+)?(?:robot|bot|human|ai)"
    r"|nice\s+to\s+meet\s+you|tell\s+me\s+a\s+joke|(?:can|could)\s+you\s+tell\s+me\s+a\s+joke"
    r"|sorry|my\s+(?:bad|mistake)|never\s*mind|you(?:'re|\s+are)\s+(?:awesome|great|funny)"
    r")(?:[\s,.!?;:]+(?:(?:and\s+)?(?:have\s+a\s+\w+\s+day|thanks|that\s+was\s+helpful|"
    r"that'?s\s+all(?:\s+i\s+needed)?|how\s+are\s+you|there|a\s+lot|again|my\s+mistake|"
    r"interesting|bye)))*[\s\W]*$",
    re.IGNORECASE,
)

#: Sentences of small talk; a query closer to one of these than to any collection is chit-chat.
CHITCHAT_EXEMPLARS: tuple[str, ...] = (
    "hello, how are you?",
    "good morning!",
    "thanks, that was helpful",
    "thank you very much",
    "goodbye, see you later",
    "ok great",
    "lol that's funny",
    "what's your name? are you a bot?",
    "tell me a joke",
    "how was your weekend?",
    "I'm bored, tell me something fun",
    "sorry, my mistake",
    "yes please",
    "no thanks, that's all",
    "nice to meet you",
    "have a nice day",
)


def is_chitchat(query: str) -> bool:
    """True when ``query`` is a greeting, thanks, acknowledgement or small talk (by pattern)."""
    return not query.strip() or bool(_CHITCHAT.match(query.strip()))


_EXEMPLAR_CACHE: dict[str, np.ndarray] = {}
_EXEMPLAR_LOCK = threading.Lock()


def embed_exemplars(
    embedder: Embedder, exemplars: Sequence[str] = CHITCHAT_EXEMPLARS
) -> np.ndarray:
    """The exemplars' embeddings, computed once per embedder."""
    key = f"{getattr(embedder, 'name', type(embedder).__name__)}|{hash(tuple(exemplars))}"
    with _EXEMPLAR_LOCK:
        if key not in _EXEMPLAR_CACHE:
            vectors = np.asarray(embedder.embed(list(exemplars)), dtype=np.float32)
            _EXEMPLAR_CACHE[key] = vectors
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
class SemanticRouter:
    """Cosine of the query vector with each collection's profile vector; no model call.

    A profile's vector is ``normalize(mix * description + (1 - mix) * centroid)`` (each part
    unit length; a missing part leaves the other). The best collection is chosen when its score
    is at least ``threshold``, with every other collection within ``margin`` of it (a question
    spanning collections) or scoring at least ``also`` on its own. Below ``threshold`` the
    router is unsure (None). With
    ``chitchat`` (exemplar vectors, see :func:`embed_exemplars`), a query more similar to a
    small-talk exemplar than ``chitchat_threshold`` and than to the best collection plus
    ``chitchat_margin`` routes to no collection.
    """

    name = "semantic"

    def __init__(
        self,
        threshold: float = 0.2,
        margin: float = 0.03,
        *,
        mix: float = 0.5,
        also: float = 1.0,
        max_collections: int = 3,
        chitchat: np.ndarray | None = None,
        chitchat_threshold: float = 0.5,
        chitchat_margin: float = 0.0,
        chunk_weight: float = 0.0,
    ) -> None:
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must be within [0, 1], not {mix}")
        if not 0.0 <= chunk_weight <= 1.0:
            raise ValueError(f"chunk_weight must be within [0, 1], not {chunk_weight}")
        # A collection's score mixes its profile's similarity with its best-matching chunk's:
        # a mean vector alone cannot tell collections apart on narrow questions (measured on
        # evals/routing, train half: 0.84 profile-only, 0.90 with chunk_weight 0.7).
        self.chunk_weight = chunk_weight
        self.threshold = threshold
        self.margin = margin
        self.mix = mix
        self.also = also
        self.max_collections = max(1, max_collections)
        self.chitchat = None if chitchat is None else np.asarray(chitchat, dtype=np.float32)
        self.chitchat_threshold = chitchat_threshold
        self.chitchat_margin = chitchat_margin

    def vector(self, profile: CollectionProfile) -> np.ndarray | None:
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

    def scores(
        self, query_vector: np.ndarray, profiles: Sequence[CollectionProfile]
    ) -> dict[str, float]:
        q = _unit(query_vector)
        out: dict[str, float] = {}
        for p in profiles:
            v = self.vector(p)
            if v is not None and v.shape == q.shape:
                score = float(v @ q)
                if self.chunk_weight and p.best_chunk is not None:
                    score = (1 - self.chunk_weight) * score + self.chunk_weight * p.best_chunk
                out[p.name] = round(score, 4)
        return out

    def route(
        self, query: str, query_vector: np.ndarray | None, profiles: Sequence[CollectionProfile]
    ) -> Route | None:
        if query_vector is None:
            return None
        scores = self.scores(query_vector, profiles)
        best = max(scores.values(), default=-1.0)
        if self.chitchat is not None and len(self.chitchat):
            q = _unit(query_vector)
            if self.chitchat.shape[1] == q.shape[0]:
                small_talk = float(np.max(self.chitchat @ q))
                if (
                    small_talk >= self.chitchat_threshold
                    and small_talk >= best + self.chitchat_margin
                ):
                    reason = f"chit-chat (similarity {small_talk:.2f} > best collection)"
                    return Route([], self.name, scores, reason=reason)
        if not scores or best < self.threshold:
            return None
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        chosen = [n for n, s in ranked if s >= min(best - self.margin, self.also)]
        chosen = chosen[: self.max_collections]
        reason = f"best {ranked[0][0]} {best:.2f} >= {self.threshold:.2f}"
        if len(chosen) > 1:
            reason += (
                f"; also {', '.join(chosen[1:])} (within {self.margin:.2f} or >= {self.also:.2f})"
            )
        return Route(chosen, self.name, scores, reason=reason)


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
