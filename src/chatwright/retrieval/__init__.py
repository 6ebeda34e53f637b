"""Hybrid search for documents and conversation memory (BM25 + vectors, fused).

``SearchIndex`` is the engine; ``m003_retrieval`` creates its tables; ``reciprocal_rank_fusion``
and ``convex_fusion`` are the ways it fuses BM25 and vector results.
"""

from __future__ import annotations

from chatwright.retrieval.fusion import (
    DEFAULT_RRF_K,
    Fused,
    convex_fusion,
    reciprocal_rank_fusion,
)
from chatwright.retrieval.index import (
    DEFAULT_FUSION,
    FLOORS,
    Chunk,
    Hit,
    SearchIndex,
    default_weights,
)
from chatwright.retrieval.schema import m003_retrieval

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
    "m003_retrieval",
    "reciprocal_rank_fusion",
]
