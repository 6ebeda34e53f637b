"""Hybrid search over chunks of text: BM25 keywords + dense vectors, fused.

One engine serves documents (namespace ``collection:<uid>``) and conversation memory
(``thread:<uid>``); every search names the namespaces it may read.

:class:`SearchIndex` is the part that is the same for every database: it checks chunks,
normalizes and embeds them (in batches, outside any transaction), embeds and caches queries,
and fuses the two rankings that the store's :class:`~chatwright.store.base.ChunkIndex` returns
(keyword and vector) into :class:`Hit` objects. Where the chunks live and how each ranking is
computed is the backend's business: SQLite holds searched namespaces in memory
(``store/sqlite_chunks.py``), PostgreSQL ranks in SQL with pgvector (``store/postgres.py``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from chatwright.errors import UserError
from chatwright.search.filters import check_filters
from chatwright.search.fusion import DEFAULT_RRF_K, convex_fusion, reciprocal_rank_fusion
from chatwright.store.base import ChunkIndex, IndexedChunk, Store

if TYPE_CHECKING:
    from chatwright.models.embeddings import Embedder

__all__ = ["DEFAULT_FUSION", "FLOORS", "Chunk", "Hit", "Nearest", "SearchIndex", "default_weights"]

Mode = Literal["hybrid", "keyword", "vector"]
Fusion = Literal["convex", "rrf"]

#: How hybrid search fuses its two retrievers (see ``fusion.py``).
DEFAULT_FUSION: Fusion = "convex"
# Weights per fusion method, tuned on SciFact's train split with all-MiniLM-L6-v2 vectors
# (``python -m chatwright.evals.beir DIR --tune``): cosines of one query spread over a narrow
# band of [-1, 1], so once scaled their differences are small and they get the larger weight.
_WEIGHTS: dict[str, dict[str, float]] = {
    "convex": {"keyword": 0.2, "vector": 0.8},
    "rrf": {"keyword": 1.0, "vector": 1.0},
}
# The lowest score each retriever can give: BM25 0, cosine similarity -1.
FLOORS = {"keyword": 0.0, "vector": -1.0}

_EMBED_BATCH = 64
_QUERY_CACHE = 64  # recent query embeddings kept
_TEXT_CACHE = 2048  # recent embeddings of quoted sentences (see embed_texts)
# Background embedding (embed_background): passes of at most this many texts and characters
# (each text counted up to _PASS_TEXT_CHARS, about the 256 tokens MiniLM reads), so that a
# query arriving meanwhile waits for one short pass (~50 ms on 2 cores), never a whole batch;
# each pass starts once no query has been embedded for _QUIET_S (or _QUIET_FACTOR times what
# the last query took, if less: an embedder that costs nothing is never waited for), or after
# _QUIET_MAX_S.
_PASS_TEXTS = 8
_PASS_CHARS = 2000
_PASS_TEXT_CHARS = 1000
_QUIET_S = 0.1
_QUIET_FACTOR = 10.0
_QUIET_MAX_S = 1.0


@dataclass(frozen=True)
class Chunk:
    """A piece of text to index under a key unique within its namespace."""

    key: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: Sequence[float] | np.ndarray | None = None


@dataclass(frozen=True)
class Hit:
    """One search result. ``ranks``/``scores`` hold each retriever's 1-based rank and score."""

    key: str
    namespace: str
    text: str
    metadata: dict[str, Any]
    score: float
    ranks: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Nearest:
    """One exact vector search of several namespaces for one query vector
    (:meth:`SearchIndex.nearest`), kept per namespace: ``scores`` maps a namespace to
    (chunk ids, cosines), of all its chunks where the backend scores them in one pass
    (``depth`` None), else of its ``depth`` best. A turn's router makes it across all the
    user's collections; retrieval then ranks any of them from it
    (``SearchIndex.search(nearest=...)``) instead of passing over the vectors again."""

    vector: np.ndarray  # the unit query vector
    scores: Mapping[str, tuple[np.ndarray, np.ndarray]]
    depth: int | None = None

    def _top(self, namespaces: Sequence[str], k: int) -> list[tuple[str, int, float]]:
        """(namespace, id, cosine) of the ``k`` best over ``namespaces``, best first, ties
        by id (as ``ChunkIndex.vector``); -inf (no vector) left out."""
        parts = [self.scores[n] for n in namespaces]
        if not parts or k <= 0:
            return []
        flat = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        take = np.arange(len(flat)) if k >= len(flat) else np.argpartition(-flat, k - 1)[:k]
        take = take[np.isfinite(flat[take])]
        ends = np.cumsum([len(p[1]) for p in parts])
        where = np.searchsorted(ends, take, side="right")
        starts = np.concatenate(([0], ends[:-1]))
        ids = np.array([parts[w][0][i - starts[w]] for w, i in zip(where, take, strict=True)])
        order = np.lexsort((ids, -flat[take])) if len(take) else take
        return [(namespaces[where[j]], int(ids[j]), float(flat[take[j]])) for j in order]

    def ranking(self, namespaces: Sequence[str], depth: int) -> list[tuple[int, float]] | None:
        """The exact ``depth`` best over ``namespaces``, as ``ChunkIndex.vector`` would rank
        them; None when this search did not cover them (that deep)."""
        if any(n not in self.scores for n in namespaces):
            return None
        if self.depth is not None and depth > self.depth:
            return None
        return [(pk, s) for _, pk, s in self._top(list(dict.fromkeys(namespaces)), depth)]

    def top(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` nearest chunks over all the namespaces: (namespace, cosine), best first."""
        return [(n, s) for n, _, s in self._top(list(self.scores), k)]

    def best(self) -> dict[str, float]:
        """Each namespace's best cosine (namespaces without vectors left out)."""
        out = {}
        for namespace, (_, cosines) in self.scores.items():
            best = float(cosines.max()) if len(cosines) else -math.inf
            if best > -math.inf:
                out[namespace] = best
        return out


def _as_chunk(item: Chunk | Mapping[str, Any]) -> Chunk:
    if isinstance(item, Chunk):
        chunk = item
    elif isinstance(item, Mapping):
        chunk = Chunk(
            key=item["key"],
            text=item["text"],
            metadata=dict(item.get("metadata") or {}),
            vector=item.get("vector"),
        )
    else:
        raise UserError(f"cannot index a {type(item).__name__}: give a Chunk or a mapping")
    if not isinstance(chunk.key, str) or not chunk.key:
        raise UserError(f"a chunk key must be a non-empty string, not {chunk.key!r}")
    if not isinstance(chunk.text, str):
        raise UserError(f"chunk {chunk.key!r}: text must be a string")
    return chunk


def _unit(vector: Sequence[float] | np.ndarray, key: str) -> np.ndarray:
    """The L2-normalized float32 vector (a zero vector stays zero)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise UserError(f"chunk {key!r}: the vector has non-finite values")
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def default_weights(fusion: Fusion = DEFAULT_FUSION) -> dict[str, float]:
    """The per-retriever weights a hybrid search uses when given none."""
    if fusion not in _WEIGHTS:
        raise UserError(f"unknown fusion {fusion!r}", hint="use convex or rrf")
    return dict(_WEIGHTS[fusion])


def _check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not namespace:
        raise UserError(f"a namespace must be a non-empty string, not {namespace!r}")
    return namespace


class SearchIndex:
    """Hybrid search over a store's chunks (``store.chunks``, or any
    :class:`~chatwright.store.base.ChunkIndex`).

    ``embedder`` embeds chunks added without a vector and the queries of vector/hybrid
    searches; without one, only keyword search (and vector search with an explicit
    ``query_vector``) is possible. ``depth`` is how many results each retriever hands to
    fusion. Build it once per store and embedder (:meth:`for_store`): the backend's caches and
    the query cache are then shared by every bot.
    """

    def __init__(
        self,
        chunks: ChunkIndex | Store,
        embedder: Embedder | None = None,
        *,
        depth: int = 100,
    ) -> None:
        self.chunks: ChunkIndex = getattr(chunks, "chunks", chunks)
        self.embedder = embedder
        self.depth = depth
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()  # see embed_query
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()  # see embed_texts
        self._queries_lock = threading.Lock()
        self._foreground = threading.Condition()  # see embed_background
        self._embedding = 0  # query embeddings in progress
        self._embedded_at = -math.inf  # time.monotonic() when the last one ended
        self._query_s = 0.0  # how long the last one took

    @classmethod
    def for_store(cls, store: Store, embedder: Embedder | None) -> SearchIndex:
        """The store's search index for ``embedder``: one per (store, embedder name)."""
        name = None if embedder is None else getattr(embedder, "name", type(embedder).__name__)
        return store.shared(("search-index", name), lambda: cls(store.chunks, embedder))

    # -- writing --------------------------------------------------------------------------
    def _embed_missing(self, chunks: list[Chunk]) -> list[np.ndarray | None]:
        vectors: list[np.ndarray | None] = [
            None if c.vector is None else _unit(c.vector, c.key) for c in chunks
        ]
        missing = [i for i, v in enumerate(vectors) if v is None]
        if self.embedder is None or not missing:
            return vectors
        for start in range(0, len(missing), _EMBED_BATCH):
            batch = missing[start : start + _EMBED_BATCH]
            embedded = self.embedder.embed([chunks[i].text for i in batch])
            for i, vector in zip(batch, embedded, strict=True):
                vectors[i] = _unit(vector, chunks[i].key)
        return vectors

    def add(self, namespace: str, items: Iterable[Chunk | Mapping[str, Any]]) -> int:
        """Index ``items`` (replacing chunks with the same key); returns how many were added.

        Chunks without a vector are embedded in batches when the index has an embedder.
        """
        namespace = _check_namespace(namespace)
        by_key = {c.key: c for c in map(_as_chunk, items)}  # a repeated key: the last wins
        chunks = list(by_key.values())
        if not chunks:
            return 0
        vectors = self._embed_missing(chunks)
        self.chunks.write(
            namespace,
            [
                IndexedChunk(c.key, c.text, c.metadata, v)
                for c, v in zip(chunks, vectors, strict=True)
            ],
        )
        return len(chunks)

    def remove(self, namespace: str, keys: Iterable[str]) -> int:
        """Remove the chunks with these keys; returns how many existed."""
        return self.chunks.delete(_check_namespace(namespace), list(dict.fromkeys(keys)))

    def clear(self, namespace: str) -> int:
        """Remove every chunk of ``namespace``; returns how many there were."""
        return self.chunks.clear(_check_namespace(namespace))

    def preload(self, namespaces: Sequence[str]) -> None:
        """Make the first search of ``namespaces`` fast (where the backend caches anything)."""
        self.chunks.preload(list(dict.fromkeys(map(_check_namespace, namespaces))))

    def count(self, namespace: str) -> int:
        """How many chunks ``namespace`` holds."""
        return self.chunks.count(namespace)

    def matching(self, query: str, namespace: str, at_least: int) -> bool:
        """Whether at least ``at_least`` chunks of ``namespace`` hold one of the query's
        keywords. Where the backend counts them without ranking (``matching``: SQLite), the
        cost does not grow with the namespace; elsewhere it is a keyword search that deep."""
        counted = getattr(self.chunks, "matching", None)
        if counted is not None:
            return bool(counted(query, namespace) >= at_least)
        return len(self.chunks.keyword(query, [namespace], None, at_least)) >= at_least

    def term_counts(
        self, query: str, namespaces: Sequence[str]
    ) -> dict[str, tuple[int, tuple[int, ...]]]:
        """Per namespace with chunks: (its chunks, how many hold each of the query's keywords):
        counts from the keyword index (``ChunkIndex.term_counts``), no scoring; ``{}`` where
        the backend has no such counts (routing then goes without them)."""
        counted = getattr(self.chunks, "term_counts", None)
        if counted is None:
            return {}
        return dict(counted(query, list(dict.fromkeys(map(_check_namespace, namespaces)))))

    # -- searching ------------------------------------------------------------------------
    def search(
        self,
        query: str,
        namespaces: Sequence[str],
        k: int = 10,
        *,
        mode: Mode = "hybrid",
        filters: Mapping[str, Any] | None = None,
        query_vector: Sequence[float] | np.ndarray | None = None,
        fusion: Fusion = DEFAULT_FUSION,
        weights: Mapping[str, float] | None = None,
        rrf_k: float = DEFAULT_RRF_K,
        nearest: Nearest | None = None,
    ) -> list[Hit]:
        """The ``k`` best chunks of ``namespaces`` for ``query``, best first.

        ``mode`` picks BM25 (``keyword``), embeddings (``vector``) or both fused
        (``hybrid``). Hybrid fuses by ``fusion``: ``convex`` (weighted sum of scaled scores)
        or ``rrf`` (reciprocal rank fusion with constant ``rrf_k``), with per-retriever
        ``weights`` (default: ``default_weights(fusion)``). ``filters`` keeps chunks whose
        metadata equals each given value (a list value: any of them). Hybrid search without
        an embedder or ``query_vector`` is keyword search. ``nearest``: an earlier vector
        search with the same query vector (:meth:`nearest`); where it covers ``namespaces``
        deep enough and no filter is given, its ranking is reused, not searched again.
        """
        if mode not in ("hybrid", "keyword", "vector"):
            raise UserError(f"unknown search mode {mode!r}", hint="use hybrid, keyword or vector")
        weights = default_weights(fusion) if weights is None else weights
        if isinstance(namespaces, str):
            namespaces = [namespaces]
        namespaces = list(dict.fromkeys(map(_check_namespace, namespaces)))
        if k <= 0 or not namespaces:
            return []
        checked = check_filters(filters) if filters else None
        qvec = (
            None
            if mode == "keyword"
            else self._query_vector(query, query_vector, required=mode == "vector")
        )
        depth = max(k, self.depth)
        rankings: dict[str, list[tuple[int, float]]] = {}
        if mode != "vector":
            rankings["keyword"] = self.chunks.keyword(query, namespaces, checked, depth)
        if mode != "keyword" and qvec is not None:
            reused = None
            if nearest is not None and not checked and np.array_equal(nearest.vector, qvec):
                reused = nearest.ranking(namespaces, depth)
            rankings["vector"] = (
                reused
                if reused is not None
                else self.chunks.vector(qvec, namespaces, checked, depth)
            )
        return self._hits(rankings, fusion, weights, rrf_k, k)

    def nearest(
        self, query_vector: Sequence[float] | np.ndarray, namespaces: Sequence[str], k: int = 0
    ) -> Nearest:
        """One exact vector search of ``namespaces`` (:class:`Nearest`): what a router needs
        (each namespace's best chunk, the nearest chunks over all), and what a later
        :meth:`search` of any of them reuses. One pass over the vectors where the backend
        scores them all (``similarities``); elsewhere one search per namespace, kept to the
        search depth (at least ``k``)."""
        qvec = self._query_vector("", query_vector, required=True)
        assert qvec is not None
        wanted = list(dict.fromkeys(map(_check_namespace, namespaces)))
        similarities = getattr(self.chunks, "similarities", None)
        if similarities is not None:
            return Nearest(qvec, similarities(qvec, wanted))
        depth = max(k, self.depth)
        scores = {}
        for n in wanted:
            found = self.chunks.vector(qvec, [n], None, depth)
            ids = np.array([pk for pk, _ in found], dtype=np.int64)
            scores[n] = (ids, np.array([s for _, s in found], dtype=np.float32))
        return Nearest(qvec, scores, depth)

    def _query_vector(
        self, query: str, given: Sequence[float] | np.ndarray | None, *, required: bool
    ) -> np.ndarray | None:
        if given is not None:
            v = np.asarray(given, dtype=np.float32).reshape(-1)
            norm = float(np.linalg.norm(v))
            return v / norm if norm > 0 else v
        if self.embedder is None:
            if required:
                raise UserError(
                    "vector search needs an embedder or a query_vector",
                    hint="create the SearchIndex with an embedder, or search in keyword mode",
                )
            return None
        if not query.strip():
            return None
        return self.embed_query(query)

    def embed_query(self, query: str) -> np.ndarray:
        """The query's embedding, memoized: a turn's router, retrieval and recall often search
        the same text, and each embedding costs milliseconds."""
        if self.embedder is None:
            raise UserError("embedding a query needs an embedder")
        with self._queries_lock:
            cached = self._queries.get(query)
            if cached is not None:
                self._queries.move_to_end(query)
                return cached
        with self._turn():
            vector = np.asarray(self.embedder.embed([query]), dtype=np.float32)[0]
        with self._queries_lock:
            self._queries[query] = vector
            while len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        return vector

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of short texts (the sentences an answer may quote), memoized: the
        follow-ups of a thread keep quoting from the same passages. Misses go in one batch."""
        if self.embedder is None:
            raise UserError("embedding needs an embedder")
        with self._queries_lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if missing:
            with self._turn():
                vectors = np.asarray(self.embedder.embed(missing), dtype=np.float32)
            with self._queries_lock:
                self._texts.update(zip(missing, vectors, strict=True))
                while len(self._texts) > _TEXT_CACHE:
                    self._texts.popitem(last=False)
        with self._queries_lock:
            found = {t: self._texts.get(t) for t in texts}
        gone = [t for t, v in found.items() if v is None]  # evicted meanwhile: rare
        if gone:
            found.update(zip(gone, np.asarray(self.embedder.embed(gone), np.float32), strict=True))
        if not texts:
            return np.zeros((0, getattr(self.embedder, "dim", 0)), dtype=np.float32)
        return np.stack([found[t] for t in texts])

    def embed_background(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` for work that no turn waits on (indexing a thread's old
        turns), yielding the embedder to turns: in short passes (at most ``_PASS_TEXTS``
        texts, ``_PASS_CHARS`` characters), each started once no query embedding
        (:meth:`embed_query`, :meth:`embed_texts`) has run for ``_QUIET_S``, or after
        ``_QUIET_MAX_S`` of waiting, so that the work still gets done under a steady stream of
        turns. A turn's query then waits for one short pass at most, and turns sent back to
        back leave the embedding of old turns for the pauses between them."""
        if self.embedder is None:
            raise UserError("embedding needs an embedder")
        parts = []
        remote = _is_remote(self.embedder)  # a server's cores, not ours: its usual batches
        if remote:
            batches = [
                list(texts[i : i + _EMBED_BATCH]) for i in range(0, len(texts), _EMBED_BATCH)
            ]
        else:
            batches = list(_passes(texts))
        for batch in batches:
            if not remote:
                self._wait_quiet()
            parts.append(np.asarray(self.embedder.embed(batch), dtype=np.float32))
        if not parts:
            return np.zeros((0, getattr(self.embedder, "dim", 0)), dtype=np.float32)
        return np.concatenate(parts)

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """A query embedding in progress: background passes wait for it (and _QUIET_S)."""
        with self._foreground:
            self._embedding += 1
        start = time.monotonic()
        try:
            yield
        finally:
            with self._foreground:
                self._embedding -= 1
                self._embedded_at = time.monotonic()
                self._query_s = self._embedded_at - start
                self._foreground.notify_all()

    def _wait_quiet(self) -> None:
        deadline = time.monotonic() + _QUIET_MAX_S
        with self._foreground:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return
                wait = deadline - now
                if not self._embedding:
                    quiet = min(_QUIET_S, _QUIET_FACTOR * self._query_s)
                    wait = self._embedded_at + quiet - now
                    if wait <= 0:
                        return
                self._foreground.wait(min(wait, deadline - now))

    @property
    def memoized(self) -> Any:
        """An embedder (``.embed(texts)``) over :meth:`embed_texts`."""
        return _Memoized(self)

    def _hits(
        self,
        rankings: Mapping[str, list[tuple[int, float]]],
        fusion: Fusion,
        weights: Mapping[str, float],
        rrf_k: float,
        k: int,
    ) -> list[Hit]:
        raw = {name: dict(ranking) for name, ranking in rankings.items()}
        if len(rankings) == 1:
            name, ranking = next(iter(rankings.items()))
            chosen = [(pk, score, {name: i}) for i, (pk, score) in enumerate(ranking[:k], 1)]
        else:
            if fusion == "rrf":
                lists = {name: [pk for pk, _ in r] for name, r in rankings.items()}
                fused = reciprocal_rank_fusion(lists, weights=weights, k=rrf_k, limit=k)
            else:
                fused = convex_fusion(rankings, weights=weights, floors=FLOORS, limit=k)
            chosen = [(f.item, f.score, f.ranks) for f in fused]
        rows = self.chunks.fetch([pk for pk, _, _ in chosen])
        return [
            Hit(
                key=rows[pk].key,
                namespace=rows[pk].namespace,
                text=rows[pk].text,
                metadata=rows[pk].metadata,
                score=float(score),
                ranks=dict(ranks),
                scores={name: float(raw[name][pk]) for name in ranks},
            )
            for pk, score, ranks in chosen
            if pk in rows
        ]


def _is_remote(embedder: Embedder) -> bool:
    """Whether ``embedder`` runs on a server (an HTTP API), not on this machine's cores."""
    from chatwright.models._remote import RemoteModel

    return isinstance(embedder, RemoteModel)


def _passes(texts: Sequence[str]) -> Iterator[list[str]]:
    """``texts`` in order, cut into background passes (see ``_PASS_TEXTS``)."""
    batch: list[str] = []
    chars = 0
    for text in texts:
        size = min(len(text), _PASS_TEXT_CHARS)
        if batch and (len(batch) == _PASS_TEXTS or chars + size > _PASS_CHARS):
            yield batch
            batch, chars = [], 0
        batch.append(text)
        chars += size
    if batch:
        yield batch


@dataclass(frozen=True)
class _Memoized:
    index: SearchIndex

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.index.embed_texts(texts)
