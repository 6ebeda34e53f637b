"""Ranking metrics as BEIR reports them (pytrec_eval conventions), pure functions.

``ranking`` is a list of document ids, best first; ``qrels`` maps a document id to its graded
relevance (0 or less: not relevant). Gains are linear in the grade and the discount is
``log2(rank + 1)``, as in pytrec_eval's ``ndcg_cut``, which BEIR uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

__all__ = ["mean_metric", "mrr_at", "ndcg_at", "recall_at"]


def ndcg_at(ranking: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Normalized discounted cumulative gain of the top ``k`` (0 when nothing is relevant)."""
    dcg = sum(
        max(qrels.get(doc, 0), 0) / math.log2(rank + 1)
        for rank, doc in enumerate(ranking[:k], start=1)
    )
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranking: Sequence[str], qrels: Mapping[str, int], k: int = 100) -> float:
    """The share of the relevant documents found in the top ``k``."""
    relevant = {doc for doc, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def mrr_at(ranking: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """1 / rank of the first relevant document in the top ``k`` (0 if none)."""
    for rank, doc in enumerate(ranking[:k], start=1):
        if qrels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def mean_metric(
    metric: Callable[[Sequence[str], Mapping[str, int], int], float],
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    k: int,
) -> float:
    """The mean of ``metric`` over the queries of ``qrels`` (a query never run scores 0)."""
    if not qrels:
        return 0.0
    return sum(metric(rankings.get(q, []), rel, k) for q, rel in qrels.items()) / len(qrels)
