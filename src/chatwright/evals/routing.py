"""Routing evaluation: exact-set accuracy, its errors and the added latency of each strategy.

A dataset directory holds collections of Markdown documents and labelled questions
(``questions.jsonl``: ``{"question", "expected": [names], "split"?: "train"|"test"}``; ``[]`` =
no collection, small talk; a file without splits is halved by a hash of each question,
:func:`halves`). Two layouts are read: ``collections.json`` (``[{"name", "description"}]``) +
``docs/<name>/`` (the shipped ``evals/routing``), or ``descriptions.json`` (``{name:
description}``) + ``collections/<name>/`` (routing-dev).

``python -m chatwright.evals.routing [DIR] [--split test] [--workdir W] [--json]`` ingests the
documents with the local embedder (into ``W``, reused by later runs: unchanged documents are not
embedded again) and prints, per strategy, exact-set accuracy overall, per expected collection
and for small talk, over-inclusion (an extra collection), under-inclusion (a missing one),
fallbacks, unsure routes and the routing time. Routing time includes the router's one vector
search across collections, given the query vector (which retrieval computes anyway); the query
embedding's own time is reported apart (``embed_ms``). ``--tune DIR...`` grid-searches the
semantic router's decision options on several datasets at once (the mean of their accuracies),
from one search per question, on the ``train`` split only. ``--conversations TASKS
--collection-map A=a,...`` also routes the last message of multi-turn tasks (MTRAG's format)
alone and as a turn routes it (a follow-up with the previous user message in front).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chatwright.config import RoutingSettings
from chatwright.errors import UserError
from chatwright.retrieval.index import Nearest
from chatwright.routing import (
    SEMANTIC_OPTIONS,
    AllRouter,
    ChitChatRouter,
    CollectionProfile,
    LlmRouter,
    Route,
    Router,
    RulesRouter,
    SemanticRouter,
    build_profiles,
    chain,
    clauses,
    embed_exemplars,
    evidence_from_hits,
    merge_clauses,
    route_clauses,
    with_evidence,
)
from chatwright.routing.profiles import KEYWORD_CHARS

__all__ = ["DEFAULT_DIR", "evaluate", "load_questions", "main", "score", "strategies_for"]

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "evals" / "routing"
#: The shipped defaults (``[routing]`` in the settings), which ``--tune`` calibrated.
SEMANTIC_DEFAULTS: dict[str, Any] = RoutingSettings().model_dump(include=SEMANTIC_OPTIONS)
VOTE_K: int = RoutingSettings().vote_k
_SEARCH_K = 100  # one search per question in tuning, truncated to each vote_k tried


def load_questions(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The labelled questions of ``split`` (None or ``all``: every one). A file without
    ``split`` fields is halved by :func:`halves`, so that tuning (``train``) and reporting
    (``test``) never see the same question."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if split in (None, "all"):
        return rows
    if not any("split" in r for r in rows):
        rows = halves(rows)
    return [r for r in rows if r.get("split") == split]


def halves(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with a ``split``: within each expected set, ordered by a hash of the question,
    alternately ``train`` and ``test`` (stable, balanced, independent of the file's order)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(tuple(sorted(row["expected"])), []).append(i)
    split: dict[int, str] = {}
    for members in groups.values():
        ranked = sorted(members, key=lambda i: hashlib.sha1(rows[i]["question"].encode()).digest())
        split |= {i: ("train", "test")[n % 2] for n, i in enumerate(ranked)}
    return [{**row, "split": split[i]} for i, row in enumerate(rows)]


def strategies_for(
    embedder: Any, rules: dict[str, list[str]] | None = None, model: Any = None, **semantic: Any
) -> dict[str, list[Router]]:
    """The router chains evaluated, by name. ``centroid`` is the plain baseline: the
    collection whose chunk centroid is nearest the query, alone."""
    options = {**SEMANTIC_DEFAULTS, **semantic}
    sem = SemanticRouter(chitchat=embed_exemplars(embedder), **options)
    plain = {"mix": 0.0, "chunk_weight": 0.0, "vote_weight": 0.0, "size_penalty": 0.0}
    plain |= {"margin": 0.0, "floor": -1.0, "keyword_lead": 0.0, "phrase_lead": 0}
    plain |= {"vocabulary_weight": 0.0}
    baseline = SemanticRouter(clauses=False, keyword_share=2.0, **plain)
    out: dict[str, list[Router]] = {
        "semantic": [ChitChatRouter(), sem],
        "centroid": [ChitChatRouter(), baseline],
        "all": [AllRouter()],
    }
    if rules is not None:
        out["rules"] = [ChitChatRouter(), RulesRouter(rules)]
        out["rules+semantic"] = [ChitChatRouter(), RulesRouter(rules), sem]
    if model is not None:
        out["llm"] = [LlmRouter(model)]
        out["semantic+llm"] = [ChitChatRouter(), sem, LlmRouter(model)]
    return out


def score(
    questions: Sequence[dict[str, Any]], routes: Sequence[Route], times: Sequence[float] = ()
) -> dict[str, Any]:
    """Exact-set accuracy overall, per expected collection and for small talk; the share of
    questions with an extra collection (``over``) or a missing one (``under``); fallbacks,
    unsure routes; median and p95 of ``times`` (ms)."""
    by: dict[str, list[bool]] = {}
    right = over = under = 0
    for q, route in zip(questions, routes, strict=True):
        got, want = set(route.collections), set(q["expected"])
        ok = got == want
        right += ok
        over += bool(got - want)
        under += bool(want - got)
        for name in q["expected"] or ["(small talk)"]:
            by.setdefault(name, []).append(ok)
    n = max(1, len(questions))
    ordered = sorted(times)
    return {
        "n": len(questions),
        "accuracy": right / n,
        "per_collection": {k: round(sum(v) / len(v), 4) for k, v in sorted(by.items())},
        "counts": {k: len(v) for k, v in sorted(by.items())},
        "small_talk": (
            sum(by["(small talk)"]) / len(by["(small talk)"]) if "(small talk)" in by else None
        ),
        "over": over / n,
        "under": under / n,
        "fallbacks": sum(r.fallback for r in routes),
        "unsure": sum(r.unsure for r in routes),
        "median_ms": statistics.median(ordered) if ordered else 0.0,
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] if ordered else 0.0,
    }


def _query_vectors(embedder: Any, texts: list[str], cache_dir: Path | None) -> list[np.ndarray]:
    """The questions' embeddings, each embedded alone as a turn embeds its message (in a batch,
    the padding and the quantized model's per-batch scales move a vector enough to change a
    close route), kept in ``cache_dir`` between runs."""
    key = "\n".join([getattr(embedder, "name", ""), "one by one", *texts])
    digest = hashlib.sha1(key.encode()).hexdigest()
    path = None if cache_dir is None else cache_dir / f"queries-{digest[:16]}.npy"
    if path is not None and path.exists():
        return list(np.load(path))
    vectors = np.asarray([embedder.embed([t])[0] for t in texts], dtype=np.float32)
    if path is not None:
        np.save(path, vectors)
    return list(vectors)


def route_one(
    index: Any,
    profiles: Sequence[CollectionProfile],
    routers: Sequence[Router],
    text: str,
    vector: np.ndarray,
    vote_k: int = VOTE_K,
) -> Route:
    """``text`` routed as ``Chatbot.route`` does: the semantic router's one search across
    the collections, the chain, then each clause of a message that asks several things
    (clause embeddings included)."""
    sem = next((r for r in routers if isinstance(r, SemanticRouter)), None)
    seen = profiles
    if sem is not None:
        kw = sem.uses_keywords
        seen = with_evidence(
            index, profiles, text, vector, vote_k, keywords=kw, vocabulary=sem.uses_vocabulary
        )
    route = chain(routers, seen, text, vector)
    if sem is not None and sem.clauses:
        parts = route_clauses(index, sem, profiles, text, vote_k)
        route = merge_clauses(route, parts, min_score=sem.clause_score)
    return route


def evaluate(
    questions_file: str | Path,
    index: Any,
    collections: Sequence[Any],
    embedder: Any,
    strategies: dict[str, list[Router]] | None = None,
    *,
    split: str | None = "test",
    errors: list[dict[str, Any]] | None = None,
    cache_dir: Path | None = None,
    vote_k: int = VOTE_K,
) -> dict[str, dict[str, Any]]:
    """Per strategy: :func:`score` of its routes; plus ``_embed``: the query embedding's ms."""
    questions = load_questions(questions_file, split)
    profiles = build_profiles(index, collections, embedder)
    strategies = strategies if strategies is not None else strategies_for(embedder)
    texts = [q["question"] for q in questions]
    t0 = time.perf_counter()
    for t in texts[:10]:
        embedder.embed([t])
    embed_ms = (time.perf_counter() - t0) * 1000 / max(1, min(10, len(texts)))
    vectors = _query_vectors(embedder, texts, cache_dir)
    results: dict[str, dict[str, Any]] = {}
    for name, routers in strategies.items():
        routes: list[Route] = []
        times: list[float] = []
        for q, vec in zip(questions, vectors, strict=True):
            start = time.perf_counter()
            route = route_one(index, profiles, routers, q["question"], vec, vote_k)
            times.append((time.perf_counter() - start) * 1000)
            routes.append(route)
            if errors is not None and set(route.collections) != set(q["expected"]):
                errors.append(
                    {
                        "strategy": name,
                        "question": q["question"],
                        "expected": q["expected"],
                        "got": route.describe(),
                    }
                )
        results[name] = score(questions, routes, times)
    results["_embed"] = {"embed_ms": embed_ms}
    return results


# -- conversations ----------------------------------------------------------------------------
def load_conversations(path: str | Path, mapping: Mapping[str, str]) -> list[dict[str, Any]]:
    """Multi-turn tasks in MTRAG's format (``input``: ``[{speaker, text}]`` ending with the
    user's message; ``Collection``): each as ``{"history": [Message], "question",
    "expected": [mapping[Collection]]}``; tasks whose collection is not mapped are left out."""
    from chatwright.types import Message

    rows = []
    for line in Path(path).read_text().splitlines():
        task = json.loads(line) if line.strip() else None
        if not task or task.get("Collection") not in mapping or not task.get("input"):
            continue
        *before, last = task["input"]
        history = [
            Message.user(t["text"]) if t["speaker"] == "user" else Message.assistant(t["text"])
            for t in before
        ]
        rows.append(
            {
                "history": history,
                "question": last["text"],
                "expected": [mapping[task["Collection"]]],
            }
        )
    return rows


def _as_a_turn(text: str, history: Sequence[Any]) -> str:
    """The query a turn routes for ``text`` with the embedded model (``concat`` rewrite)."""
    from chatwright.retrieval.rag import rewrite_query

    query, _ = asyncio.run(
        rewrite_query(text, history, mode="concat", model=None, timeout_s=1.0)  # type: ignore[arg-type]
    )
    return query


def evaluate_conversations(
    rows: Sequence[dict[str, Any]],
    index: Any,
    collections: Sequence[Any],
    embedder: Any,
    routers: Sequence[Router],
    *,
    cache_dir: Path | None = None,
    vote_k: int = VOTE_K,
) -> dict[str, dict[str, Any]]:
    """The last message of each conversation routed alone, and as a turn routes it (a
    follow-up, by :func:`~chatwright.retrieval.rag.is_follow_up`, searched with the previous
    user message in front: the embedded model's rewrite); :func:`score` of each, over all the
    conversations and over the follow-ups only."""
    from chatwright.retrieval.rag import is_follow_up

    profiles = build_profiles(index, collections, embedder)
    follow = [is_follow_up(r["question"], r["history"]) for r in rows]
    texts = {"alone": [r["question"] for r in rows]}
    texts["as a turn"] = [_as_a_turn(r["question"], r["history"]) for r in rows]
    out: dict[str, dict[str, Any]] = {}
    for name, queries in texts.items():
        vectors = _query_vectors(embedder, queries, cache_dir)
        routes, times = [], []
        for t, v in zip(queries, vectors, strict=True):
            start = time.perf_counter()
            routes.append(route_one(index, profiles, routers, t, v, vote_k))
            times.append((time.perf_counter() - start) * 1000)
        out[name] = score(rows, routes, times)
        picked = [i for i, f in enumerate(follow) if f]
        out[f"{name}, follow-ups"] = score(
            [rows[i] for i in picked], [routes[i] for i in picked], [times[i] for i in picked]
        )
    return out


def read_collections(root: Path) -> list[tuple[str, str, Path]]:
    """(name, description, folder) of each collection of a dataset, in either layout."""
    if (root / "collections.json").exists():
        listed = json.loads((root / "collections.json").read_text())
        return [(c["name"], c["description"], root / "docs" / c["name"]) for c in listed]
    described = json.loads((root / "descriptions.json").read_text())
    return [(n, d, root / "collections" / n) for n, d in sorted(described.items())]


def ingest_dataset(
    root: Path, workdir: Path, embedder: Any, *, ingest: bool = True
) -> tuple[Any, Any, list[Any]]:
    """Ingest the dataset's collections into a store under ``workdir`` (idempotent: a store
    kept from an earlier run embeds nothing again; ``ingest=False`` uses it as it is)."""
    from chatwright import SQLiteStore
    from chatwright.ingest.pipeline import Ingestor
    from chatwright.retrieval.index import SearchIndex

    workdir.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(workdir / "routing.db")
    index = SearchIndex.for_store(store, embedder)
    ingestor = Ingestor(store, index, "eval")
    for name, description, folder in read_collections(root) if ingest else ():
        report = ingestor.ingest([folder], name, description=description)
        if report.skipped and not report.files:
            raise UserError(
                f"collection {name!r} read nothing from {folder}: {report.skipped[0].reason}",
                hint="check the dataset folder's layout (collections/<name>/*.md)",
            )
    return store, index, store.list_collections("eval")


# -- tuning -----------------------------------------------------------------------------------
#: The decision options tried by ``--tune`` (the rest stay at their defaults).
TUNE_GRID: dict[str, Sequence[Any]] = {
    "vote_k": (10, 20, 40),
    "chunk_weight": (0.4, 0.6, 0.8),
    "vote_weight": (0.0, 0.2, 0.4),
    "temperature": (0.02, 0.05),
    "mix": (0.25, 0.5),
    "margin": (0.0, 0.02, 0.04, 0.06),
    "min_share": (0.1, 0.2, 0.3),
    "chitchat_threshold": (0.45, 0.5, 0.55),
    "chitchat_margin": (-0.05, 0.0, 0.05),
}


class _Prepared:
    """One dataset's questions with their vectors and one search each, for fast tuning."""

    def __init__(
        self, root: Path, workdir: Path, embedder: Any, split: str | None, ingest: bool = True
    ) -> None:
        self.store, index, collections = ingest_dataset(root, workdir, embedder, ingest=ingest)
        self.questions = load_questions(root / "questions.jsonl", split)
        self.profiles = build_profiles(index, collections, embedder)
        texts = [q["question"] for q in self.questions]
        self.vectors = _query_vectors(embedder, texts, workdir)
        namespaces = [p.namespace for p in self.profiles]
        self._seen: dict[int, list[list[CollectionProfile]]] = {}
        self.nearest = [index.nearest(v, namespaces, _SEARCH_K) for v in self.vectors]
        self.parts = [
            [(c, self._search(index, namespaces, c, embedder)) for c in clauses(t)] for t in texts
        ]
        self.keyword_hits = [
            [
                (h.namespace, float(h.scores["keyword"]), h.text)
                for h in index.search(t, namespaces, _SEARCH_K, mode="keyword")
            ]
            for t in texts
        ]
        self.term_counts = [index.term_counts(t[:KEYWORD_CHARS], namespaces) for t in texts]

    @staticmethod
    def _search(index: Any, namespaces: list[str], text: str, embedder: Any) -> Any:
        v = np.asarray(embedder.embed([text]), dtype=np.float32)[0]
        kw = index.search(text, namespaces, _SEARCH_K, mode="keyword")
        return (
            v,
            index.nearest(v, namespaces, _SEARCH_K),
            [(h.namespace, float(h.scores["keyword"]), h.text) for h in kw],
            index.term_counts(text[:KEYWORD_CHARS], namespaces),
        )

    def _evidence(
        self, nearest: Nearest, k: int, keywords: Any, query: str, counts: Any
    ) -> list[CollectionProfile]:
        return evidence_from_hits(
            self.profiles,
            nearest.top(k),
            k,
            keywords,
            best=nearest.best(),
            query=query,
            term_counts=counts,
        )

    def accuracy(self, routers: Sequence[Router], vote_k: int) -> tuple[float, list[Route]]:
        if vote_k not in self._seen:
            self._seen[vote_k] = [
                self._evidence(n, vote_k, kw, q["question"], tc)
                for n, kw, q, tc in zip(
                    self.nearest, self.keyword_hits, self.questions, self.term_counts, strict=True
                )
            ]
        sem = next(r for r in routers if isinstance(r, SemanticRouter))
        routes = []
        for q, v, seen, parts in zip(
            self.questions, self.vectors, self._seen[vote_k], self.parts, strict=True
        ):
            route = chain(routers, seen, q["question"], v)
            if parts and sem.clauses:
                routed = [
                    (c, sem.route(c, pv, self._evidence(n, vote_k, kw, c, tc)))
                    for c, (pv, n, kw, tc) in parts
                ]
                route = merge_clauses(route, routed, min_score=sem.clause_score)
            routes.append(route)
        return score(self.questions, routes)["accuracy"], routes


def tune(
    datasets: Sequence[_Prepared], embedder: Any, grid: dict[str, Sequence[Any]] = TUNE_GRID
) -> list[dict[str, Any]]:
    """Every combination of ``grid`` scored on every dataset, best (mean accuracy) first."""
    exemplars = embed_exemplars(embedder)
    names = list(grid)
    out = []
    for values in itertools.product(*(grid[n] for n in names)):
        options = dict(zip(names, values, strict=True))
        vote_k = options.pop("vote_k", VOTE_K)
        if options.get("vote_weight", 0) > 1 - options.get("chunk_weight", 0) + 1e-9:
            continue
        routers = [ChitChatRouter(), SemanticRouter(chitchat=exemplars, **options)]
        accuracies = [d.accuracy(routers, vote_k)[0] for d in datasets]
        out.append(
            {"mean": statistics.mean(accuracies), "accuracies": accuracies, "vote_k": vote_k}
            | options
        )
    out.sort(key=lambda r: (-r["mean"], -min(r["accuracies"])))
    return out


#: The columns of :func:`summary_rows`.
SUMMARY_COLUMNS = (
    "strategy",
    "n",
    "exact set",
    "small talk → none",
    "over",
    "under",
    "fallbacks",
    "unsure",
    "p50 ms",
    "p95 ms",
)


def summary_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per strategy (:data:`SUMMARY_COLUMNS`): exact-set accuracy, small talk routed
    to no collection, the share of questions given an extra collection (over-inclusion) or
    missing one (under-inclusion), fallbacks, unsure routes, routing time p50/p95."""
    rows = []
    for name, r in results.items():
        if name.startswith("_"):
            continue
        talk = "-" if r["small_talk"] is None else f"{r['small_talk']:.1%}"
        rows.append(
            [
                name,
                str(r["n"]),
                f"{r['accuracy']:.1%}",
                talk,
                f"{r['over']:.1%}",
                f"{r['under']:.1%}",
                str(r["fallbacks"]),
                str(r["unsure"]),
                f"{r['median_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
            ]
        )
    return rows


def collection_rows(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): exact-set accuracy per expected collection (and small talk), a column
    per strategy."""
    names = [n for n in results if not n.startswith("_")]
    counts: dict[str, int] = {}
    for n in names:
        counts |= results[n].get("counts", {})
    rows = [
        [label, str(count)]
        + [
            f"{results[n]['per_collection'][label]:.1%}"
            if label in results[n]["per_collection"]
            else "-"
            for n in names
        ]
        for label, count in sorted(counts.items())
    ]
    return ["expected", "n", *names], rows


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Iterable[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for i, row in enumerate([header, *rows]):
        cells = [
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        yield "  ".join(cells).rstrip()
        if i == 0:
            yield "  ".join("-" * w for w in widths)


def _rows(results: dict[str, dict[str, Any]]) -> Iterable[str]:
    yield from _aligned(SUMMARY_COLUMNS, summary_rows(results))
    yield ""
    yield from _aligned(*collection_rows(results))


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatwright.evals.routing")
    parser.add_argument("dirs", nargs="*", default=[str(DEFAULT_DIR)], metavar="DIR")
    parser.add_argument("--split", default="test", choices=["train", "test", "all"])
    parser.add_argument("--embedder", default="local:all-minilm-l6-v2")
    parser.add_argument("--model", default="test:echo", help="chat model for the llm strategy")
    parser.add_argument("--no-llm", action="store_true")
    parser.add_argument(
        "--workdir", help="keep each dataset's store here (DIR/<dataset>) and reuse it"
    )
    parser.add_argument("--tune", action="store_true", help="grid-search semantic on all DIRs")
    parser.add_argument("--top", type=int, default=10, help="with --tune: how many to print")
    parser.add_argument("--grid", help='with --tune: JSON {"option": [values]} to try instead')
    parser.add_argument(
        "--no-ingest", action="store_true", help="use the stores under --workdir as they are"
    )
    parser.add_argument(
        "--conversations",
        help="also route the last message of these multi-turn tasks (MTRAG format) alone and "
        "as a turn does (a follow-up with the previous message), against each DIR's store",
    )
    parser.add_argument(
        "--collection-map",
        default="",
        help="with --conversations: TASK_COLLECTION=NAME,... (which collection each is)",
    )
    parser.add_argument("--errors", action="store_true", help="print misrouted questions")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from chatwright.models.embeddings import get_embedder

    embedder = get_embedder(args.embedder)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.workdir) if args.workdir else Path(tmp)
        roots = [Path(d) for d in args.dirs]
        if args.tune:
            split = "train" if args.split == "test" else args.split  # never tune on test
            ingest = not args.no_ingest
            prepared = [
                _Prepared(r, base / r.resolve().name, embedder, split, ingest) for r in roots
            ]
            grid = json.loads(args.grid) if args.grid else TUNE_GRID
            for row in tune(prepared, embedder, grid)[: args.top]:
                out(json.dumps(row))
            for d in prepared:
                d.store.close()
            return 0
        model = None
        if not args.no_llm:
            from chatwright.models import get_model

            model = get_model(args.model)
        for root in roots:
            workdir = base / root.resolve().name
            store, index, collections = ingest_dataset(
                root, workdir, embedder, ingest=not args.no_ingest
            )
            rules_file = root / "rules.json"
            rules = json.loads(rules_file.read_text()) if rules_file.exists() else None
            errors: list[dict[str, Any]] = []
            results = evaluate(
                root / "questions.jsonl",
                index,
                collections,
                embedder,
                strategies_for(embedder, rules, model),
                split=args.split,
                errors=errors if args.errors else None,
                cache_dir=workdir,
            )
            if args.conversations:
                mapping = dict(p.split("=", 1) for p in args.collection_map.split(",") if p)
                rows = load_conversations(args.conversations, mapping)
                sem = strategies_for(embedder)["semantic"]
                results["_conversations"] = evaluate_conversations(
                    rows, index, collections, embedder, sem, cache_dir=workdir
                )
            store.close()
            if args.json:
                out(json.dumps({"dataset": str(root), **results}, indent=2))
            else:
                out(
                    f"{root} split={args.split} embedder={args.embedder} query embedding "
                    f"{results['_embed']['embed_ms']:.1f} ms (shared with retrieval)"
                )
                for line in _rows(results):
                    out(line)
                if "_conversations" in results:
                    out(f"\nthe last message of {args.conversations} (semantic):")
                    for line in _aligned(SUMMARY_COLUMNS, summary_rows(results["_conversations"])):
                        out(line)
            for e in errors:
                out(json.dumps(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
