"""Hybrid search for documents and conversation memory (BM25 + vectors, fused).

``SearchIndex`` is the engine over a store's chunks; ``reciprocal_rank_fusion`` and
``convex_fusion`` are the ways it fuses BM25 and vector results.
"""

from __future__ import annotations

from chatwright.retrieval.index import (
    DEFAULT_FUSION,
    FLOORS,
    Chunk,
    Hit,
    SearchIndex,
    default_weights,
)
from chatwright.search.fusion import (
    DEFAULT_RRF_K,
    Fused,
    convex_fusion,
    reciprocal_rank_fusion,
)

__all__ = [
    "DEFAULT_FUSION",
    "DEFAULT_RRF_K",
    "FLOORS",
    "Chunk",
    "Fused",
    "Hit",
    "SearchIndex",
    "convex_fusion",
    "default_weights",
    "reciprocal_rank_fusion",
]
