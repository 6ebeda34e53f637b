"""Routing evaluation: exact-set accuracy and added latency of each routing strategy.

The dataset (``evals/routing``) has a few collections of Markdown documents on distinct topics
(``collections.json`` names and describes them) and labelled questions (``questions.jsonl``:
``{"question", "expected": [names], "split": "train"|"test"}``; ``[]`` = no collection).
``python -m chatwright.evals.routing [DIR] [--split test] [--json]`` ingests the documents into
a temporary store with the local embedder and prints a table per strategy. Latency is the
routing time given the query vector (which retrieval computes anyway); the query embedding's
own time is reported apart (``embed_ms``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chatwright.routing import (
    AllRouter,
    ChitChatRouter,
    LlmRouter,
    Router,
    RulesRouter,
    SemanticRouter,
    build_profiles,
    chain,
    embed_exemplars,
    with_best_chunks,
)

__all__ = ["DEFAULT_DIR", "evaluate", "load_questions", "main", "strategies_for"]

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "evals" / "routing"
#: Tuned on the train split (``--tune``).
SEMANTIC_OPTIONS: dict[str, Any] = {
    "threshold": 0.1,
    "margin": 0.0,
    "mix": 0.25,
    "also": 0.3,
    "chitchat_threshold": 0.4,
    "chunk_weight": 0.7,
}
_VECTORS: dict[Any, list[np.ndarray]] = {}


def load_questions(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if split in (None, "all") or r.get("split") == split]


def strategies_for(
    embedder: Any, rules: dict[str, list[str]] | None = None, model: Any = None, **semantic: Any
) -> dict[str, list[Router]]:
    """The router chains evaluated, by name."""
    options = {**SEMANTIC_OPTIONS, **semantic}
    sem = SemanticRouter(chitchat=embed_exemplars(embedder), **options)
    out: dict[str, list[Router]] = {
        "semantic": [ChitChatRouter(), sem],
        "all": [AllRouter()],
    }
    if rules is not None:
        out["rules"] = [ChitChatRouter(), RulesRouter(rules)]
        out["rules+semantic"] = [ChitChatRouter(), RulesRouter(rules), sem]
    if model is not None:
        out["llm"] = [LlmRouter(model)]
        out["semantic+llm"] = [ChitChatRouter(), sem, LlmRouter(model)]
    return out


def evaluate(
    questions_file: str | Path,
    index: Any,
    collections: Sequence[Any],
    embedder: Any,
    strategies: dict[str, list[Router]] | None = None,
    *,
    split: str | None = "test",
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per strategy: accuracy (exact set), fallbacks, median/p95 routing ms; plus embed_ms."""
    questions = load_questions(questions_file, split)
    profiles = build_profiles(index, collections, embedder)
    strategies = strategies if strategies is not None else strategies_for(embedder)
    texts = [q["question"] for q in questions]
    t0 = time.perf_counter()
    for t in texts[:10]:
        embedder.embed([t])
    embed_ms = (time.perf_counter() - t0) * 1000 / max(1, min(10, len(texts)))
    key = (getattr(embedder, "name", ""), tuple(texts))
    if key not in _VECTORS:
        _VECTORS[key] = list(np.asarray(embedder.embed(texts), dtype=np.float32))
    vectors = _VECTORS[key]
    results: dict[str, dict[str, Any]] = {}
    for name, routers in strategies.items():
        right = fallbacks = 0
        times: list[float] = []
        for q, vec in zip(questions, vectors, strict=True):
            start = time.perf_counter()
            seen = profiles
            if any(getattr(r, "chunk_weight", 0.0) for r in routers):  # timed: part of routing
                seen = with_best_chunks(index, profiles, q["question"], vec)
            route = chain(routers, seen, q["question"], vec)
            times.append((time.perf_counter() - start) * 1000)
            ok = set(route.collections) == set(q["expected"])
            right += ok
            fallbacks += route.fallback
            if not ok and errors is not None:
                errors.append(
                    {
                        "strategy": name,
                        "question": q["question"],
                        "expected": q["expected"],
                        "got": route.describe(),
                    }
                )
        times.sort()
        results[name] = {
            "n": len(questions),
            "accuracy": right / max(1, len(questions)),
            "fallbacks": fallbacks,
            "median_ms": statistics.median(times) if times else 0.0,
            "p95_ms": times[int(0.95 * (len(times) - 1))] if times else 0.0,
        }
    results["_embed"] = {"embed_ms": embed_ms}
    return results


def ingest_dataset(root: Path, workdir: Path, embedder: Any) -> tuple[Any, Any, list[Any]]:
    """Ingest ``root/docs/<collection>`` into a store under ``workdir``."""
    from chatwright import SQLiteStore
    from chatwright.ingest.pipeline import Ingestor
    from chatwright.retrieval.index import SearchIndex

    store = SQLiteStore(workdir / "routing.db")
    index = SearchIndex.for_store(store, embedder)
    ingestor = Ingestor(store, index, "eval")
    for c in json.loads((root / "collections.json").read_text()):
        ingestor.ingest([root / "docs" / c["name"]], c["name"], description=c["description"])
    return store, index, store.list_collections("eval")


def _tune(questions: Path, index: Any, collections: Any, embedder: Any) -> dict[str, Any]:
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    grid = [
        {"mix": mix, "threshold": t, "margin": m, "also": also, "chitchat_threshold": cc}
        for mix in (0.0, 0.25, 0.5)
        for t in (0.1, 0.15, 0.2)
        for m in (0.0, 0.02)
        for also in (0.18, 0.2, 0.22, 0.25, 0.3, 1.0)
        for cc in (0.4, 0.5)
    ]
    for options in grid:
        s = strategies_for(embedder, **options)
        r = evaluate(
            questions, index, collections, embedder, {"semantic": s["semantic"]}, split="train"
        )
        if r["semantic"]["accuracy"] > best[0]:
            best = (r["semantic"]["accuracy"], options)
    return {"train_accuracy": best[0], **best[1]}


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatwright.evals.routing")
    parser.add_argument("dir", nargs="?", default=str(DEFAULT_DIR))
    parser.add_argument("--split", default="test", choices=["train", "test", "all"])
    parser.add_argument("--embedder", default="local:all-minilm-l6-v2")
    parser.add_argument("--model", default="test:echo", help="chat model for the llm strategy")
    parser.add_argument("--no-llm", action="store_true")
    parser.add_argument("--tune", action="store_true", help="grid-search semantic on train")
    parser.add_argument("--errors", action="store_true", help="print misrouted questions")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from chatwright.models.embeddings import get_embedder

    root = Path(args.dir)
    embedder = get_embedder(args.embedder)
    with tempfile.TemporaryDirectory() as tmp:
        store, index, collections = ingest_dataset(root, Path(tmp), embedder)
        questions = root / "questions.jsonl"
        if args.tune:
            out(json.dumps(_tune(questions, index, collections, embedder)))
            store.close()
            return 0
        model = None
        if not args.no_llm:
            from chatwright.models import get_model

            model = get_model(args.model)
        rules = json.loads((root / "rules.json").read_text())
        errors: list[dict[str, Any]] = []
        strategies = strategies_for(embedder, rules, model)
        results = evaluate(
            questions,
            index,
            collections,
            embedder,
            strategies,
            split=args.split,
            errors=errors if args.errors else None,
        )
        store.close()
    if args.json:
        out(json.dumps(results, indent=2))
    else:
        out(
            f"split={args.split} embedder={args.embedder} "
            f"query embedding {results['_embed']['embed_ms']:.1f} ms (shared with retrieval)"
        )
        out(f"{'strategy':<16}{'n':>5}{'accuracy':>10}{'fallback':>10}{'p50 ms':>9}{'p95 ms':>9}")
        for name, r in results.items():
            if name.startswith("_"):
                continue
            out(
                f"{name:<16}{r['n']:>5}{r['accuracy']:>10.1%}{r['fallbacks']:>10}"
                f"{r['median_ms']:>9.3f}{r['p95_ms']:>9.3f}"
            )
    for e in errors:
        out(json.dumps(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
