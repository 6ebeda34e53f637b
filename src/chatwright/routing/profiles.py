"""Build :class:`CollectionProfile` objects from the search index, cheaply and kept current.

A profile holds the embedding of the collection's description (cached by text) and the
normalized mean of its chunks' stored vectors (``ChunkIndex.centroid``: the store caches it per
namespace and recomputes it only after a write), so unchanged collections cost one small query.
Per query, :func:`with_evidence` adds what the collections' contents say: ONE vector search of
the query's nearest chunks across all collections (``SearchIndex.nearest``: each collection's
best match, the votes of the nearest chunks over all), which the turn's retrieval then reuses
instead of searching the vectors again; :func:`route_clauses` routes each clause of a message
that asks several things.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from chatwright.routing.router import (
    CollectionProfile,
    KeywordEvidence,
    KeywordHit,
    Route,
    SemanticRouter,
    clauses,
)

if TYPE_CHECKING:
    from chatwright.models.embeddings import Embedder
    from chatwright.retrieval.index import Nearest, SearchIndex
    from chatwright.store.base import CollectionInfo

__all__ = [
    "DEFAULT_VOTE_K",
    "KEYWORD_CHARS",
    "ProfileCache",
    "build_profiles",
    "evidence_from_hits",
    "route_clauses",
    "searched",
    "source_profiles",
    "with_evidence",
]


class ProfileCache:
    """Description embeddings by (embedder, text)."""

    def __init__(self) -> None:
        self.descriptions: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def description_vector(self, embedder: Embedder | None, text: str) -> np.ndarray | None:
        if embedder is None or not text.strip():
            return None
        key = (getattr(embedder, "name", type(embedder).__name__), text)
        with self._lock:
            if key not in self.descriptions:
                self.descriptions[key] = np.asarray(embedder.embed([text])[0], dtype=np.float32)
            return self.descriptions[key]


_CACHES: weakref.WeakKeyDictionary[Any, ProfileCache] = weakref.WeakKeyDictionary()


def build_profiles(
    index: SearchIndex,
    collections: Sequence[CollectionInfo],
    embedder: Embedder | None,
    *,
    cache: ProfileCache | None = None,
) -> list[CollectionProfile]:
    """A profile per collection, from its description and stored chunk vectors.

    ``cache`` defaults to one kept per ``index``. A collection without chunks or description
    still gets a profile from what it has, with a note; one with neither can only be chosen by
    rules, the model, or the all-collections fallback.
    """
    if cache is None:
        cache = _CACHES.setdefault(index, ProfileCache())
    profiles = []
    for info in collections:
        notes: list[str] = []
        centroid, count = index.chunks.centroid(info.namespace)
        description = info.description or ""
        dvec = cache.description_vector(embedder, description)
        if dvec is not None and centroid is not None and dvec.shape != centroid.shape:
            notes.append(f"collection {info.name!r}: stored vectors differ from the embedder's")
            centroid = None
        if not count:
            notes.append(f"collection {info.name!r} has no documents")
        if not description.strip():
            notes.append(f"collection {info.name!r} has no description")
        profiles.append(
            CollectionProfile(
                name=info.name,
                namespace=info.namespace,
                description=description,
                centroid=centroid,
                chunks=count,
                description_vector=dvec,
                notes=tuple(notes),
            )
        )
    return profiles


def source_profiles(
    index: SearchIndex | None,
    sources: Sequence[Any],
    embedder: Embedder | None,
    *,
    cache: ProfileCache | None = None,
) -> list[CollectionProfile]:
    """Profiles of external sources (:class:`chatwright.retrieval.external.ExternalSource`):
    nothing of theirs is stored here, so routing knows them by their description only (no
    chunks, no centroid; the vector search across collections leaves them out)."""
    if cache is None:
        cache = _CACHES.setdefault(index, ProfileCache()) if index is not None else ProfileCache()
    profiles = []
    for source in sources:
        description = source.description or ""
        notes = () if description.strip() else (f"source {source.name!r} has no description",)
        profiles.append(
            CollectionProfile(
                name=source.name,
                namespace=source.namespace,
                description=description,
                centroid=None,
                chunks=0,
                description_vector=cache.description_vector(embedder, description),
                notes=notes,
            )
        )
    return profiles


#: How many of the query's nearest chunks (across all collections) vote.
DEFAULT_VOTE_K = 40
#: How much of a message the keyword evidence reads (its first characters).
KEYWORD_CHARS = 1000


def searched(profiles: Sequence[CollectionProfile]) -> list[str]:
    """The namespaces a router's vector search covers: the collections with chunks."""
    return [p.namespace for p in profiles if p.chunks]


def with_evidence(
    index: SearchIndex,
    profiles: Sequence[CollectionProfile],
    query: str,
    query_vector: np.ndarray,
    k: int = DEFAULT_VOTE_K,
    *,
    keywords: bool = True,
    nearest: Nearest | None = None,
    vocabulary: bool = True,
) -> list[CollectionProfile]:
    """``profiles`` carrying this query's evidence, from ONE exact vector search across all
    the collections (``nearest``, made here when not given: ``SearchIndex.nearest`` over
    :func:`searched`; retrieval reuses it): each collection's best chunk and the ``k``
    nearest chunks over all; (``keywords``) one keyword search of the ``k`` best matches,
    made only if the router asks (:class:`KeywordEvidence`, see :class:`CollectionProfile`);
    and (``vocabulary``) how many chunks of each collection hold each of the query's keywords
    (``SearchIndex.term_counts``: counts, no scoring)."""
    namespaces = searched(profiles)
    if not namespaces:
        return list(profiles)
    if nearest is None:
        nearest = index.nearest(query_vector, namespaces, k)
    # a message's first words say what it is about; a 30,000-character paste must not cost a
    # BM25 pass (or counts) over thousands of terms
    text = query[:KEYWORD_CHARS]
    # the counts only rank collections against each other: with one, they cannot move it
    counts = index.term_counts(text, namespaces) if vocabulary and len(namespaces) > 1 else None
    matched = None
    if keywords:

        def search() -> list[tuple[str, float, str]]:
            hits = index.search(text, namespaces, k=k, mode="keyword")
            return [(h.namespace, float(h.scores.get("keyword", h.score)), h.text) for h in hits]

        matched = KeywordEvidence(search, k, query=text)
    return evidence_from_hits(
        profiles, nearest.top(k), k, matched, best=nearest.best(), term_counts=counts
    )


def evidence_from_hits(
    profiles: Sequence[CollectionProfile],
    hits: Sequence[tuple[str, float]],
    k: int,
    keyword_hits: Sequence[KeywordHit] | KeywordEvidence | None = None,
    *,
    best: Mapping[str, float] | None = None,
    query: str | None = None,
    term_counts: Mapping[str, tuple[int, tuple[int, ...]]] | None = None,
) -> list[CollectionProfile]:
    """``profiles`` with the evidence of ``hits`` ((namespace, cosine), best first) and
    ``keyword_hits`` ((namespace, BM25), or with the chunk's text as a third item: then the
    ``query``'s phrases each collection's matches hold), of which the first ``k`` count, or a
    :class:`KeywordEvidence` the router asks when it needs it; ``best``: each namespace's
    best cosine where known (else bounded by the k-th hit); ``term_counts``: per namespace,
    (its chunks, how many hold each of the query's keywords) (``SearchIndex.term_counts``).
    Pure: the evaluation reuses one search for several ``k``."""
    hits = list(hits)[:k]
    lazy: KeywordEvidence | None = None
    found: dict[str, tuple[float, float]] | None = None
    held: dict[str, tuple[str, ...]] | None = None
    if isinstance(keyword_hits, KeywordEvidence):
        lazy = keyword_hits
    elif keyword_hits is not None:
        matched = KeywordEvidence.of(keyword_hits, k, query)
        found, held = matched.get(), matched.phrases_found()

    def keyword(p: CollectionProfile) -> dict[str, Any]:
        counted = {} if term_counts is None else {"term_counts": term_counts.get(p.namespace)}
        if found is None:
            return {"keyword_search": lazy} | counted
        share, kw_best = found.get(p.namespace, (0.0, 0.0))
        phrases = None if held is None else held.get(p.namespace, ())
        return {
            "keyword_share": share,
            "keyword_best": kw_best,
            "keyword_phrases": phrases,
        } | counted

    if not hits:
        if found is None and lazy is None and term_counts is None:
            return list(profiles)
        return [dataclasses.replace(p, **keyword(p)) for p in profiles]
    top = hits[0][1]
    # A collection with none of the k nearest chunks scores at most the k-th cosine (when the
    # search returned all k; otherwise it has no vectors at all).
    bound = hits[-1][1] if len(hits) >= k else None
    by_namespace: dict[str, list[float]] = {}
    for namespace, score in hits:
        by_namespace.setdefault(namespace, []).append(score)
    out = []
    for p in profiles:
        mine = tuple(by_namespace.get(p.namespace, ()))
        if best is not None and p.namespace in best:
            nearest = best[p.namespace]
        else:
            nearest = mine[0] if mine else (bound if p.chunks else None)
        out.append(
            dataclasses.replace(p, best_chunk=nearest, top_chunks=mine, top_best=top, **keyword(p))
        )
    return out


def route_clauses(
    index: SearchIndex,
    router: SemanticRouter,
    profiles: Sequence[CollectionProfile],
    query: str,
    k: int = DEFAULT_VOTE_K,
) -> list[tuple[str, Route | None]]:
    """Each clause of a message that asks several things (:func:`clauses`), routed on its own
    (one embedding and one search each; nothing for a one-clause message)."""
    out: list[tuple[str, Route | None]] = []
    for part in clauses(query):
        vector = index.embed_query(part)
        seen = with_evidence(
            index,
            profiles,
            part,
            vector,
            k,
            keywords=router.uses_keywords,
            vocabulary=router.uses_vocabulary,
        )
        out.append((part, router.route(part, vector, seen)))
    return out
