"""Fusion of several retrievers' results into one ranking: two pure functions.

``reciprocal_rank_fusion`` (Cormack et al., 2009): a document's score is the sum, over the
rankings that contain it, of ``weight / (k + rank)`` with ranks counted from 1. It uses ranks
only, so it needs no calibration between BM25 scores and cosine similarities; ``k`` damps the
influence of the very top ranks (the textbook value is 60).

``convex_fusion``: a weighted sum of the retrievers' scores, each scaled to [0, 1] between the
lowest score its retriever can give (its *floor*: 0 for BM25, -1 for a cosine) and the best
score in its list ("theoretical min-max", Bruch et al., 2023, "An Analysis of Fusion Functions
for Hybrid Retrieval"). Unlike ranks, scores keep how far ahead the best documents are. On
SciFact's train split it beat the best RRF setting (nDCG@10 0.740 vs 0.733), and on test too
(0.731 vs 0.716), with its one weight tuned on train.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "DEFAULT_RRF_K",
    "Fused",
    "convex_fusion",
    "convex_scores",
    "reciprocal_rank_fusion",
    "rrf_score",
]

DEFAULT_RRF_K = 60.0

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True)
class Fused(Generic[T]):
    """One fused result: the item, its fused score, and its 1-based rank in each ranking."""

    item: T
    score: float
    ranks: dict[str, int] = field(default_factory=dict)


def rrf_score(ranks: Mapping[str, int], weights: Mapping[str, float], k: float) -> float:
    """``sum(weights[r] / (k + rank))`` over the rankings ``r`` in ``ranks`` (weight 1 if unset)."""
    return sum(weights.get(name, 1.0) / (k + rank) for name, rank in ranks.items())


def reciprocal_rank_fusion(
    rankings: Mapping[str, Sequence[T]],
    *,
    weights: Mapping[str, float] | None = None,
    k: float = DEFAULT_RRF_K,
    limit: int | None = None,
) -> list[Fused[T]]:
    """Fuse ``rankings`` (name → items, best first) into one list, best first.

    Ties are broken by the best single rank, then by first appearance, so the result is
    deterministic. A retriever with weight 0 still reports its ranks but adds nothing.
    """
    if k < 0:
        raise ValueError("the RRF constant k must be >= 0")
    weights = weights or {}
    ranks: dict[T, dict[str, int]] = {}
    for name, ranking in rankings.items():
        for position, item in enumerate(ranking, start=1):
            ranks.setdefault(item, {}).setdefault(name, position)
    fused = [Fused(item, rrf_score(r, weights, k), r) for item, r in ranks.items()]
    return _sorted(fused, limit)


def _sorted(fused: list[Fused[T]], limit: int | None) -> list[Fused[T]]:
    """Best score first; ties by the best single rank, then by first appearance (``fused``
    is in order of first appearance, and the sort is stable)."""
    fused.sort(key=lambda f: (-f.score, min(f.ranks.values())))
    return fused if limit is None else fused[:limit]


def _scaled(scores: Sequence[float], floor: float) -> list[float]:
    """Scores mapped to [0, 1] between ``floor`` and the best of them (all 1 if none above)."""
    top = max(scores)
    if top <= floor:
        return [1.0] * len(scores)
    return [(s - floor) / (top - floor) for s in scores]


def convex_fusion(
    scored: Mapping[str, Sequence[tuple[T, float]]],
    *,
    weights: Mapping[str, float] | None = None,
    floors: Mapping[str, float] | None = None,
    limit: int | None = None,
) -> list[Fused[T]]:
    """Fuse ``scored`` (name → (item, score) pairs, best first) by a weighted sum of scores.

    Each list's scores are scaled to [0, 1] between the retriever's floor (``floors``, default
    0) and the list's best score. An item missing from a list gets that list's lowest scaled
    score: it ranked below everything listed. Weights default to 1; ranks are reported as in
    ``reciprocal_rank_fusion``.
    """
    ranks: dict[T, dict[str, int]] = {}
    for name, pairs in scored.items():
        for position, (item, _) in enumerate(pairs, 1):
            ranks.setdefault(item, {}).setdefault(name, position)
    scores = convex_scores(scored, weights=weights, floors=floors)
    return _sorted([Fused(item, scores[item], r) for item, r in ranks.items()], limit)


def convex_scores(
    scored: Mapping[str, Sequence[tuple[T, float]]],
    *,
    weights: Mapping[str, float] | None = None,
    floors: Mapping[str, float] | None = None,
) -> dict[T, float]:
    """The fused score of every item of ``scored``, as :func:`convex_fusion` gives it, in
    order of first appearance: for a caller that ranks them its own way (recall, which
    adds to the scores first) and needs no ranks."""
    weights = weights or {}
    floors = floors or {}
    parts: list[tuple[float, dict[T, float], float]] = []
    for name, pairs in scored.items():
        if not pairs:
            continue
        values = _scaled([score for _, score in pairs], floors.get(name, 0.0))
        scaled: dict[T, float] = {}
        for (item, _), value in zip(pairs, values, strict=True):
            scaled.setdefault(item, value)
        parts.append((weights.get(name, 1.0), scaled, min(values)))
    items = dict.fromkeys(item for _, scaled, _ in parts for item in scaled)
    # sum(weight * scaled score) over the lists, in their order (as sum() would add them)
    out: dict[T, float] = {}
    for item in items:
        score = 0.0
        for weight, values, low in parts:
            score += weight * values.get(item, low)
        out[item] = score
    return out
