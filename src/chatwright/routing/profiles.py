"""Build :class:`CollectionProfile` objects from the search index, cheaply and kept current.

A profile holds the embedding of the collection's description (cached by text) and the
normalized mean of its chunks' stored vectors (``ChunkIndex.centroid``: the store caches it per
namespace and recomputes it only after a write), so unchanged collections cost one small query.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from chatwright.routing.router import CollectionProfile

if TYPE_CHECKING:
    from chatwright.models.embeddings import Embedder
    from chatwright.retrieval.index import SearchIndex
    from chatwright.store.base import CollectionInfo

__all__ = ["ProfileCache", "build_profiles"]


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


def with_best_chunks(
    index: SearchIndex,
    profiles: Sequence[CollectionProfile],
    query: str,
    query_vector: np.ndarray,
) -> list[CollectionProfile]:
    """``profiles`` carrying, for this query, each collection's best-matching chunk's cosine
    (one exact top-1 vector search per collection)."""
    out = []
    for p in profiles:
        hits = index.search(query, [p.namespace], k=1, mode="vector", query_vector=query_vector)
        best = hits[0].scores.get("vector") if hits else None
        out.append(dataclasses.replace(p, best_chunk=best))
    return out
