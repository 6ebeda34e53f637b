"""Retrieval evaluation on any BEIR-format data set (e.g. SciFact), for the search engine.

A BEIR directory holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a
header line). The corpus is indexed as ``title + "\\n" + text`` in a throw-away in-memory
SQLite database; each query is run in the modes asked for; nDCG@10, Recall@100 and MRR@10 are
averaged over the queries that have judgments, as BEIR does (a document whose id equals the
query's is ignored, as BEIR's ``ignore_identical_ids``).

Embedding a corpus is the slow part (minutes for SciFact with MiniLM on 2 cores), so corpus
vectors are cached as ``.npy`` under the system temporary directory, keyed by a hash of
``corpus.jsonl`` and the embedder's name; pass ``cache_dir=None`` to disable the cache.

With ``database_url`` (a PostgreSQL server, ``chatwright[postgres]``), the corpus is indexed
instead in a throw-away database created on that server (so its user needs ``CREATEDB``) and
dropped afterwards, through a ``PostgresStore``'s chunks: the same figures for the PostgreSQL
backend's search (BM25 over ``tsvector``, pgvector).

``tune`` grid-searches BM25's ``k1``/``b`` and the fusion weights and RRF constant on a split
(use ``train``; report figures on ``test``). Run from a shell::

    python -m chatwright.evals.beir /path/to/scifact --split test
    python -m chatwright.evals.beir /path/to/scifact --tune --split train
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatwright.errors import UserError
from chatwright.evals.metrics import mean_metric, mrr_at, ndcg_at, recall_at
from chatwright.retrieval import (
    DEFAULT_FUSION,
    DEFAULT_RRF_K,
    FLOORS,
    Chunk,
    SearchIndex,
    convex_fusion,
    default_weights,
    reciprocal_rank_fusion,
)
from chatwright.store import SQLiteStore
from chatwright.store.sqlite_chunks import SQLiteChunks

if TYPE_CHECKING:
    from chatwright.models.embeddings import Embedder

__all__ = [
    "DEFAULT_CACHE_DIR",
    "MODES",
    "BeirData",
    "embed_corpus",
    "evaluate",
    "load",
    "scores",
    "tune",
]

MODES = ("keyword", "vector", "hybrid")
NAMESPACE = "beir"
DEFAULT_EMBEDDER = "local:all-minilm-l6-v2"
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "chatwright-eval-cache"
_DEPTH = 100
_BATCH = 256

K1_GRID = (0.6, 0.9, 1.2, 1.5, 2.0)
B_GRID = (0.4, 0.6, 0.75, 0.9, 1.0)
# RRF: the vector weight (keyword 1) x the constant k; convex: the keyword weight (vector 1 - it)
VECTOR_WEIGHT_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
RRF_K_GRID = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 60.0, 100.0)
KEYWORD_SHARE_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class BeirData:
    """A loaded BEIR split: ids in corpus order, their texts, the judged queries, the qrels."""

    path: Path
    doc_ids: list[str]
    doc_texts: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{path} not found", hint="a BEIR directory has corpus.jsonl, ...")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise UserError(f"{path} not found", hint="choose a split that has qrels/<split>.tsv")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        for row in rows:
            if len(row) < 3 or not row[2].strip().lstrip("-").isdigit():
                continue  # the header line, blank lines
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels


def load(path: str | Path, split: str = "test") -> BeirData:
    """Read a BEIR directory; keeps only the queries that have judgments in ``split``."""
    path = Path(path)
    corpus = _read_jsonl(path / "corpus.jsonl")
    qrels = _read_qrels(path / "qrels" / f"{split}.tsv")
    queries = {str(q["_id"]): q["text"] for q in _read_jsonl(path / "queries.jsonl")}
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise UserError(f"{len(missing)} judged queries are not in queries.jsonl: {missing[:3]}")
    return BeirData(
        path=path,
        doc_ids=[str(d["_id"]) for d in corpus],
        doc_texts=[_doc_text(d) for d in corpus],
        queries={q: queries[q] for q in qrels},
        qrels=qrels,
    )


def _doc_text(doc: Mapping[str, Any]) -> str:
    title = (doc.get("title") or "").strip()
    text = doc.get("text") or ""
    return f"{title}\n{text}" if title else text


def _resolve(embedder: str | Embedder | None) -> Embedder | None:
    if embedder is None or not isinstance(embedder, str):
        return embedder
    from chatwright.models.embeddings import get_embedder  # imported only when named

    return get_embedder(embedder)


def _cache_file(data: BeirData, embedder: Embedder, cache_dir: Path) -> Path:
    digest = hashlib.sha256()
    with (data.path / "corpus.jsonl").open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    # the int8 default keeps the plain name, yet its vectors are not float32's
    precision = getattr(embedder, "precision", None)
    name = embedder.name if precision in (None, "fp32") else f"{embedder.name}#{precision}"
    digest.update(b"\0title\\ntext\0" + name.encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return cache_dir / f"corpus-{digest.hexdigest()[:20]}-{slug}.npy"


def embed_corpus(
    data: BeirData, embedder: Embedder, cache_dir: Path | None = DEFAULT_CACHE_DIR
) -> np.ndarray:
    """The corpus vectors (n, dim), from the cache when there, else embedded (and cached)."""
    cache = _cache_file(data, embedder, cache_dir) if cache_dir is not None else None
    if cache is not None and cache.is_file():
        vectors = np.load(cache)
        if vectors.shape == (len(data.doc_texts), embedder.dim):
            return vectors
    parts = [
        np.asarray(embedder.embed(data.doc_texts[i : i + _BATCH]), dtype=np.float32)
        for i in range(0, len(data.doc_texts), _BATCH)
    ]
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(cache)
    return vectors


@contextlib.contextmanager
def _postgres_chunks(url: str, k1: float, b: float) -> Iterator[Any]:
    """A ``PostgresStore``'s chunks in a new database on the server of ``url``, dropped after."""
    from chatwright.store.postgres import PostgresStore, scratch_database

    with scratch_database(url) as scratch:
        store = PostgresStore(scratch)
        try:
            store.chunks.k1, store.chunks.b = k1, b
            yield store.chunks
        finally:
            store.close()


def _build(
    data: BeirData,
    embedder: Embedder | None,
    cache_dir: Path | None,
    chunks: Any = None,
    **options: Any,
) -> SearchIndex:
    """The corpus indexed in ``chunks`` (default: an in-memory SQLite database's)."""
    if chunks is None:
        store = SQLiteStore(":memory:")
        chunks = SQLiteChunks(store.connection, lock=store.lock, **options)
    index = SearchIndex(chunks, embedder)
    vectors = embed_corpus(data, embedder, cache_dir) if embedder is not None else None
    index.add(
        NAMESPACE,
        [
            Chunk(doc_id, text, vector=None if vectors is None else vectors[i])
            for i, (doc_id, text) in enumerate(zip(data.doc_ids, data.doc_texts, strict=True))
        ],
    )
    index.search("warm up", [NAMESPACE], mode="keyword")  # load the in-memory segment
    return index


def _query_vectors(data: BeirData, embedder: Embedder | None) -> dict[str, np.ndarray]:
    if embedder is None:
        return {}
    ids = list(data.queries)
    vectors = np.asarray(embedder.embed([data.queries[q] for q in ids]), dtype=np.float32)
    return dict(zip(ids, vectors, strict=True))


def _run_scored(
    index: SearchIndex,
    data: BeirData,
    mode: str,
    qvecs: Mapping[str, np.ndarray],
    **search: Any,
) -> dict[str, list[tuple[str, float]]]:
    """Each query's (doc id, score) list, best first, at most 100, its own id left out."""
    out = {}
    for qid, text in data.queries.items():
        hits = index.search(
            text, [NAMESPACE], k=_DEPTH + 1, mode=mode, query_vector=qvecs.get(qid), **search
        )
        out[qid] = [(h.key, h.score) for h in hits if h.key != qid][:_DEPTH]
    return out


def _run(
    index: SearchIndex,
    data: BeirData,
    mode: str,
    qvecs: Mapping[str, np.ndarray],
    **search: Any,
) -> dict[str, list[str]]:
    """Each query's ranking (doc ids, best first, at most 100), its own id left out."""
    scored = _run_scored(index, data, mode, qvecs, **search)
    return {qid: [doc for doc, _ in pairs] for qid, pairs in scored.items()}


def scores(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict:
    """nDCG@10, Recall@100 and MRR@10 averaged over the queries of ``qrels``."""
    return {
        "ndcg@10": mean_metric(ndcg_at, rankings, qrels, 10),
        "recall@100": mean_metric(recall_at, rankings, qrels, 100),
        "mrr@10": mean_metric(mrr_at, rankings, qrels, 10),
    }


def evaluate(
    path: str | Path,
    split: str = "test",
    modes: Sequence[str] = MODES,
    *,
    embedder: str | Embedder | None = DEFAULT_EMBEDDER,
    fusion: str = DEFAULT_FUSION,
    weights: Mapping[str, float] | None = None,
    rrf_k: float = DEFAULT_RRF_K,
    k1: float = 1.2,
    b: float = 0.75,
    keyword_backend: str = "memory",
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    database_url: str | None = None,
) -> dict[str, Any]:
    """Index the corpus, run the split's queries in each mode; returns the metrics per mode.

    ``database_url``: index it in a throw-away database on that PostgreSQL server instead of
    in-memory SQLite (``keyword_backend`` is then the database's own)."""
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}", hint=f"modes: {', '.join(MODES)}")
    if database_url and keyword_backend != "memory":
        raise UserError("keyword_backend is SQLite's: PostgreSQL has its own")
    data = load(path, split)
    model = _resolve(embedder) if any(m != "keyword" for m in modes) else None
    if model is None and "vector" in modes:
        raise UserError("vector mode needs an embedder")
    with contextlib.ExitStack() as stack:
        chunks = None
        if database_url:
            chunks = stack.enter_context(_postgres_chunks(database_url, k1, b))
        started = time.perf_counter()
        index = _build(data, model, cache_dir, chunks, k1=k1, b=b, keyword_backend=keyword_backend)
        qvecs = _query_vectors(data, model)
        result: dict[str, Any] = {
            "dataset": data.path.name,
            "split": split,
            "queries": len(data.queries),
            "documents": len(data.doc_ids),
            "embedder": getattr(model, "name", None),
            "params": {
                "k1": k1,
                "b": b,
                "fusion": fusion,
                "weights": dict(weights or default_weights(fusion)),  # type: ignore[arg-type]
                "rrf_k": rrf_k,
                "keyword_backend": "postgres" if database_url else keyword_backend,
            },
            "index_seconds": round(time.perf_counter() - started, 2),
            "modes": {},
        }
        for mode in modes:
            started = time.perf_counter()
            rankings = _run(index, data, mode, qvecs, fusion=fusion, weights=weights, rrf_k=rrf_k)
            metrics = scores(rankings, data.qrels)
            metrics["seconds"] = round(time.perf_counter() - started, 2)
            result["modes"][mode] = metrics
        return result


def _best(table: list[dict[str, Any]]) -> dict[str, Any]:
    return max(table, key=lambda row: row["ndcg@10"])


def tune(
    path: str | Path,
    split: str = "train",
    *,
    embedder: str | Embedder | None = DEFAULT_EMBEDDER,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    k1_grid: Sequence[float] = K1_GRID,
    b_grid: Sequence[float] = B_GRID,
    vector_weight_grid: Sequence[float] = VECTOR_WEIGHT_GRID,
    rrf_k_grid: Sequence[float] = RRF_K_GRID,
    keyword_share_grid: Sequence[float] = KEYWORD_SHARE_GRID,
) -> dict[str, Any]:
    """Grid-search BM25 ``k1``/``b`` (keyword nDCG@10), then the fusion (hybrid nDCG@10).

    The fusion grid covers RRF (vector weight x constant k) and convex fusion (the keyword
    weight, the vector's being 1 minus it). Run it on a training split only. It fuses the two
    retrievers' cached results with the functions the index uses, so a point costs no search.
    """
    data = load(path, split)
    model = _resolve(embedder)
    index = _build(data, model, cache_dir)
    chunks: Any = index.chunks  # the SQLite backend's BM25 (tuning is for it)
    bm25_table = []
    for k1 in k1_grid:
        for b in b_grid:
            chunks.k1, chunks.b = k1, b
            row = scores(_run(index, data, "keyword", {}), data.qrels)
            bm25_table.append({"k1": k1, "b": b, **row})
    best_bm25 = _best(bm25_table)
    chunks.k1, chunks.b = best_bm25["k1"], best_bm25["b"]
    result: dict[str, Any] = {
        "split": split,
        "queries": len(data.queries),
        "bm25": best_bm25,
        "bm25_grid": bm25_table,
    }
    if model is None:
        return result
    keyword = _run_scored(index, data, "keyword", {})
    vector = _run_scored(index, data, "vector", _query_vectors(data, model))
    table = [
        {"fusion": "rrf", "weights": {"keyword": 1.0, "vector": w}, "rrf_k": rrf_k}
        for w in vector_weight_grid
        for rrf_k in rrf_k_grid
    ] + [
        {"fusion": "convex", "weights": {"keyword": share, "vector": round(1 - share, 6)}}
        for share in keyword_share_grid
    ]
    for row in table:
        fused = {q: _fuse(keyword[q], vector[q], row) for q in data.queries}
        row.update(scores(fused, data.qrels))
    result["fusion"] = _best(table)
    result["fusion_best"] = {
        method: _best([r for r in table if r["fusion"] == method]) for method in ("rrf", "convex")
    }
    result["fusion_grid"] = table
    result["embedder"] = model.name
    return result


def _fuse(
    keyword: list[tuple[str, float]], vector: list[tuple[str, float]], params: Mapping[str, Any]
) -> list[str]:
    """One query's hybrid ranking from the two retrievers' lists, as ``SearchIndex`` fuses."""
    if params["fusion"] == "rrf":
        lists = {"keyword": [d for d, _ in keyword], "vector": [d for d, _ in vector]}
        fused = reciprocal_rank_fusion(
            lists, weights=params["weights"], k=params["rrf_k"], limit=_DEPTH
        )
    else:
        scored = {"keyword": keyword, "vector": vector}
        fused = convex_fusion(scored, weights=params["weights"], floors=FLOORS, limit=_DEPTH)
    return [f.item for f in fused]


def _weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    keyword, vector = (float(x) for x in text.split(","))
    return {"keyword": keyword, "vector": vector}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chatwright.evals.beir DIR``: print the evaluation (or tuning) as JSON."""
    parser = argparse.ArgumentParser(prog="python -m chatwright.evals.beir")
    parser.add_argument("path", type=Path, help="a BEIR-format directory")
    parser.add_argument("--split", default=None, help="qrels split (test; train with --tune)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="name, or 'none'")
    parser.add_argument("--k1", type=float, default=1.2)
    parser.add_argument("--b", type=float, default=0.75)
    parser.add_argument("--fusion", choices=("convex", "rrf"), default=DEFAULT_FUSION)
    parser.add_argument("--weights", help="KEYWORD,VECTOR weights (default: per fusion)")
    parser.add_argument("--rrf-k", type=float, default=DEFAULT_RRF_K)
    parser.add_argument("--keyword-backend", choices=("memory", "fts5"), default="memory")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server (postgresql://...) to index in, in a throw-away database",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not cache corpus vectors")
    parser.add_argument("--tune", action="store_true", help="grid-search on the split")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    embedder = None if args.embedder == "none" else args.embedder
    cache = None if args.no_cache else DEFAULT_CACHE_DIR
    if args.tune:
        result = tune(args.path, args.split or "train", embedder=embedder, cache_dir=cache)
    else:
        result = evaluate(
            args.path,
            args.split or "test",
            [m for m in args.modes.split(",") if m],
            embedder=embedder,
            fusion=args.fusion,
            weights=_weights(args.weights),
            rrf_k=args.rrf_k,
            k1=args.k1,
            b=args.b,
            keyword_backend=args.keyword_backend,
            cache_dir=cache,
            database_url=args.database_url,
        )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
