"""Build :class:`CollectionProfile` objects from the search index, cheaply and kept current.

A profile holds the embedding of the collection's description (cached by text) and the
normalized mean of its chunks' stored vectors (cached per namespace, keyed by the namespace's
``chunk_namespaces.version``, which triggers bump on every write): unchanged collections cost
one small query, a changed one is re-read.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from chatwright.routing.router import CollectionProfile

if TYPE_CHECKING:
    from chatwright.models.embeddings import Embedder
    from chatwright.retrieval.index import SearchIndex
    from chatwright.store.base import CollectionInfo

__all__ = ["ProfileCache", "build_profiles"]


class ProfileCache:
    """Description embeddings by (embedder, text); centroids by (namespace, version)."""

    def __init__(self) -> None:
        self.descriptions: dict[tuple[str, str], np.ndarray] = {}
        self.centroids: dict[str, tuple[int, np.ndarray | None, int]] = {}
        self.centroid_reads = 0  # how many times vectors were read (for tests)
        self._lock = threading.Lock()

    def description_vector(self, embedder: Embedder | None, text: str) -> np.ndarray | None:
        if embedder is None or not text.strip():
            return None
        key = (getattr(embedder, "name", type(embedder).__name__), text)
        with self._lock:
            if key not in self.descriptions:
                self.descriptions[key] = np.asarray(embedder.embed([text])[0], dtype=np.float32)
            return self.descriptions[key]

    def centroid(self, index: SearchIndex, namespace: str) -> tuple[np.ndarray | None, int]:
        """(normalized mean vector or None, how many vectors) of ``namespace``'s chunks."""
        lock: Any = getattr(index, "_lock", None) or nullcontext()
        with lock:
            row = index.db.execute(
                "SELECT version FROM chunk_namespaces WHERE namespace = ?", (namespace,)
            ).fetchone()
            version = row[0] if row else 0
            cached = self.centroids.get(namespace)
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            total: np.ndarray | None = None
            count = 0
            for (blob,) in index.db.execute(
                "SELECT vector FROM chunks WHERE namespace = ? AND vector IS NOT NULL",
                (namespace,),
            ):
                v = np.frombuffer(blob, dtype=np.float16).astype(np.float32)
                if total is None:
                    total = np.zeros_like(v)
                if v.shape == total.shape:
                    total += v
                    count += 1
            self.centroid_reads += 1
        centroid = None
        if total is not None and count:
            norm = float(np.linalg.norm(total))
            centroid = total / norm if norm > 0 else None
        self.centroids[namespace] = (version, centroid, count)
        return centroid, count


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
        centroid, count = cache.centroid(index, info.namespace)
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
