"""Search latency and insert throughput of the hybrid search engine (``chatwright.retrieval``).

What it measures
----------------
* **Insert throughput**: ``SearchIndex.add`` of N synthetic chunks in batches of 1,000 into a
  SQLite file with the store's settings (WAL, ``synchronous=FULL``), vectors given (no
  embedding), one transaction per batch. Chunks per second over the whole load.
* **First search**: the time of the first search after loading, which builds the namespace's
  in-memory segment (BM25 postings + vector matrix) from SQLite.
* **Cold start**: the first search of a fresh process over the database just written, three
  times in a row: without persisted segments (``persist_min_chunks=None``: built from the
  rows), then with persisting on while no file exists yet (built from the rows, then written
  beside the database), then with the file written (mapped, nothing tokenized).
* **Search latency** per mode, p50 / p99 over ``--queries`` queries (after 10 warm-ups):
  ``keyword`` (in-memory BM25), ``keyword-fts5`` (SQLite FTS5 ``bm25()``, the on-disk index),
  ``vector`` (exact), ``hybrid`` (both, fused by RRF), and ``hybrid+filter`` (a metadata filter
  that keeps one chunk in ten). The query's embedding is not included: query vectors are given.

Data: chunks of 40-120 words drawn from a 30,000-word vocabulary with Zipf-distributed
frequencies (like natural text); queries of 3-8 words drawn the same way from words past the
50 most frequent (content words; real stopwords are dropped by the analyzer anyway). Vectors
are random unit vectors of 384 dimensions (MiniLM's size). Everything is seeded.

Targets (printed PASS/FAIL; the exit code is 0 either way, this is a measurement):
  * search p50 <= 20 ms at 100,000 chunks, for keyword, vector and hybrid
  * insert >= 2,000 chunks/s
  * a fresh process's first search at 100,000 chunks <= 1 s (from persisted segments)

On PostgreSQL (``--backend postgres``: a throwaway ``pgserver`` started by the script, or
``--database-url URL``: a server where that user may create databases) the same chunks and
queries go into a fresh database through a ``PostgresStore``'s chunks: insert rate (then one
``ANALYZE``, as autovacuum would do), ``keyword`` (BM25 in SQL over the GIN index), ``vector``
(HNSW above 20,000 chunks, exact below), ``hybrid`` and ``hybrid+filter`` p50 / p95 / p99, the
HNSW results' recall@10 against an exact search (numpy), and the cold start: a fresh
process that opens the store (pool, schema check) and runs its first hybrid search, three times.
It writes ``benchmarks/results/search_postgres.json``.

Run: ``.venv/bin/python benchmarks/search.py`` (``--help`` for options); writes
``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "chatwright").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import _postgres  # noqa: E402  (benchmarks/_postgres.py)
from chatwright.retrieval import Chunk, SearchIndex  # noqa: E402
from chatwright.store.migrations import m003_search_index as m003_retrieval  # noqa: E402
from chatwright.store.migrations import m007_database_id, m012_fts_on_demand  # noqa: E402
from chatwright.store.sqlite_chunks import SQLiteChunks  # noqa: E402

VOCAB = 30_000
DIM = 384
BATCH = 1_000
NAMESPACE = "collection:bench"
P50_TARGET_MS = 20.0
INSERT_TARGET = 2_000.0
COLD_TARGET_S = 1.0


def vocabulary(seed: int) -> list[str]:
    """VOCAB distinct pronounceable pseudo-words."""
    rng = np.random.default_rng(seed)
    consonants, vowels = list("bcdfghklmnprstvz"), list("aeiou")
    words: dict[str, None] = {}
    while len(words) < VOCAB:
        syllables = rng.integers(1, 4)
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables + 1))
        words.setdefault(word)
    return list(words)


def zipf_weights(n: int) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1)
    return w / w.sum()


def corpus(n: int, vocab: list[str], rng: np.random.Generator) -> list[Chunk]:
    """``n`` chunks with random unit vectors and a metadata field ``shard`` in 0..9."""
    lengths = rng.integers(40, 121, size=n)
    ids = rng.choice(len(vocab), size=int(lengths.sum()), p=zipf_weights(len(vocab)))
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks, start = [], 0
    for i, length in enumerate(lengths):
        text = " ".join(vocab[j] for j in ids[start : start + length])
        start += length
        chunks.append(Chunk(f"c{i}", text, {"shard": i % 10}, vectors[i]))
    return chunks


def queries(count: int, vocab: list[str], rng: np.random.Generator) -> list[tuple[str, Any]]:
    content = vocab[50:]
    weights = zipf_weights(len(vocab))[50:]
    weights = weights / weights.sum()
    out = []
    for _ in range(count):
        words = rng.choice(len(content), size=rng.integers(3, 9), p=weights)
        vector = rng.standard_normal(DIM).astype(np.float32)
        out.append((" ".join(content[j] for j in words), vector / np.linalg.norm(vector)))
    return out


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    m003_retrieval(db)
    m007_database_id(db)  # what persisted segments are tied to
    m012_fts_on_demand(db)  # as the product: FTS5 made only where its backend searches
    return db


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(index: SearchIndex, qs: list[tuple[str, Any]], **search: Any) -> dict[str, float]:
    for text, vector in qs[:10]:
        index.search(text, [NAMESPACE], query_vector=vector, **search)
    times = []
    for text, vector in qs:
        started = time.perf_counter()
        index.search(text, [NAMESPACE], query_vector=vector, **search)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p95_ms": round(percentile(times, 0.95), 3),
        "p99_ms": round(percentile(times, 0.99), 3),
        "mean_ms": round(statistics.fmean(times), 3),
    }


def run_size(n: int, vocab: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + n)
    print(f"\n== {n:,} chunks: generating...", flush=True)
    chunks = corpus(n, vocab, rng)
    qs = queries(args.queries, vocab, rng)
    db = connect(tmp / f"search-{n}.db")
    # not persisted here: "first search" is the build from the rows (see cold_start)
    index = SearchIndex(SQLiteChunks(db, persist_min_chunks=None))
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        index.add(NAMESPACE, chunks[i : i + BATCH])
    insert_s = time.perf_counter() - started
    started = time.perf_counter()
    index.search(qs[0][0], [NAMESPACE], query_vector=qs[0][1])
    load_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "chunks": n,
        "insert_seconds": round(insert_s, 2),
        "insert_chunks_per_s": round(n / insert_s),
        "first_search_load_seconds": round(load_s, 2),
        "db_bytes": (tmp / f"search-{n}.db").stat().st_size,
        "search": {},
    }
    print(f"insert {n / insert_s:,.0f} chunks/s; first search (load) {load_s:.2f} s", flush=True)
    fts5_chunks = SQLiteChunks(db, keyword_backend="fts5", persist_min_chunks=None)
    started = time.perf_counter()
    fts5_chunks._ensure_fts()  # the FTS5 index, built from the rows on the backend's first use
    result["fts5_build_seconds"] = round(time.perf_counter() - started, 2)
    print(f"FTS5 index built from the rows in {result['fts5_build_seconds']:.2f} s", flush=True)
    fts5 = SearchIndex(fts5_chunks)
    runs = {
        "keyword": (index, {"mode": "keyword"}),
        "keyword-fts5": (fts5, {"mode": "keyword"}),
        "vector": (index, {"mode": "vector"}),
        "hybrid": (index, {"mode": "hybrid"}),
        "hybrid+filter": (index, {"mode": "hybrid", "filters": {"shard": 3}}),
    }
    for name, (engine, search) in runs.items():
        figures = latency(engine, qs, **search)
        result["search"][name] = figures
        print(f"  {name:14} p50 {figures['p50_ms']:8.2f} ms   p99 {figures['p99_ms']:8.2f} ms")
    db.close()
    if args.cold:
        result["cold_start"] = cold_start(tmp / f"search-{n}.db", args.seed)
    return result


def cold_start(path: Path, seed: int) -> dict[str, Any]:
    """A fresh process's first search: from the rows, from the rows then persisted, from the
    persisted file (each a new Python process, so nothing is cached but the OS's pages)."""
    out: dict[str, Any] = {}
    for name, persist in (("rows", "off"), ("rows_then_persist", "on"), ("persisted", "on")):
        command = [sys.executable, __file__, "--cold-probe", str(path), "--persist", persist]
        command += ["--seed", str(seed)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
        figures = out[name]
        print(
            f"  cold start, {name:18} first search {figures['first_search_s']:7.3f} s"
            f" ({figures['cpu_s']:.3f} s CPU)",
            flush=True,
        )
    files = list(Path(str(path) + ".segments").glob("*.seg"))
    out["persisted_bytes"] = sum(f.stat().st_size for f in files)
    return out


def cold_probe(path: Path, persist: bool, seed: int) -> int:
    """Run in a fresh process by ``cold_start``: time the first hybrid search, print JSON."""
    (text, vector), *_ = queries(1, vocabulary(seed), np.random.default_rng(seed))
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    wall, cpu = time.perf_counter(), time.process_time()
    chunks = SQLiteChunks(db, persist_min_chunks=2_000 if persist else None)
    SearchIndex(chunks).search(text, [NAMESPACE], query_vector=vector)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"first_search_s": round(wall, 3), "cpu_s": round(cpu, 3)}))
    db.close()
    return 0


# -- PostgreSQL ---------------------------------------------------------------------------------
def run_size_postgres(n: int, vocab: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The same chunks and queries as :func:`run_size`, in a fresh PostgreSQL database."""
    import psycopg

    from chatwright.store.postgres import PostgresStore

    rng = np.random.default_rng(args.seed + n)
    print(f"\n== {n:,} chunks on PostgreSQL: generating...", flush=True)
    chunks = corpus(n, vocab, rng)
    qs = queries(args.queries, vocab, rng)
    url = _postgres.fresh_database(args.pg_server)
    store = PostgresStore(url)
    try:
        index = SearchIndex(store.chunks)
        server = _postgres.ServerCpu(url)
        server0, cpu0 = server.seconds(), time.process_time()
        started = time.perf_counter()
        for i in range(0, n, BATCH):
            index.add(NAMESPACE, chunks[i : i + BATCH])
            if (i // BATCH + 1) % 10 == 0:
                rate = (i + BATCH) / (time.perf_counter() - started)
                print(f"  {i + BATCH:,} chunks, {rate:,.0f} chunks/s so far", flush=True)
        insert_s = time.perf_counter() - started
        server1, cpu1 = server.seconds(), time.process_time()
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE chunks")
        analyze_s = time.perf_counter() - started
        started = time.perf_counter()
        index.search(qs[0][0], [NAMESPACE], query_vector=qs[0][1])
        first_s = time.perf_counter() - started
        size = _postgres.database_size(url, checkpoint=True)
        result: dict[str, Any] = {
            "chunks": n,
            "insert_seconds": round(insert_s, 2),
            "insert_chunks_per_s": round(n / insert_s),
            "insert_client_cpu_s": round(cpu1 - cpu0, 2),
            "insert_server_cpu_s": (
                round(server1 - server0, 2) if server0 is not None and server1 else None
            ),
            "analyze_seconds": round(analyze_s, 2),
            "first_search_seconds": round(first_s, 3),
            "db_bytes": size["total"],
            "table_bytes": size["per_table"],
            "search": {},
        }
        print(
            f"insert {n / insert_s:,.0f} chunks/s ({insert_s:.1f} s); ANALYZE {analyze_s:.1f} s;"
            f" first search {first_s:.3f} s; database {size['total'] / 1e6:,.0f} MB",
            flush=True,
        )
        runs = {
            "keyword": {"mode": "keyword"},
            "vector": {"mode": "vector"},
            "hybrid": {"mode": "hybrid"},
            "hybrid+filter": {"mode": "hybrid", "filters": {"shard": 3}},
        }
        for name, search in runs.items():
            s0 = server.seconds()
            figures = latency(index, qs, **search)
            s1 = server.seconds()
            if s0 is not None and s1 is not None:  # warm-ups included: 10 more searches
                figures["server_cpu_ms_per_search"] = round((s1 - s0) * 1000 / (len(qs) + 10), 2)
            result["search"][name] = figures
            print(
                f"  {name:14} p50 {figures['p50_ms']:8.2f} ms   p95 {figures['p95_ms']:8.2f} ms"
                f"   p99 {figures['p99_ms']:8.2f} ms",
                flush=True,
            )
        result["vector_recall_at_10"] = vector_recall(index, chunks, qs)
        print(f"  vector recall@10 vs exact: {result['vector_recall_at_10']:.3f}", flush=True)
    finally:
        store.close()
    if args.cold:
        result["cold_start"] = cold_start_postgres(url, args.seed)
    if not args.keep:
        _postgres.drop_database(url)
    return result


def vector_recall(index: SearchIndex, chunks: list[Chunk], qs: list[tuple[str, Any]]) -> float:
    """Mean share of the exact 10 nearest chunks (numpy, cosine) that vector search returns."""
    matrix = np.stack([np.asarray(c.vector, dtype=np.float32) for c in chunks])
    found = []
    for text, vector in qs:
        exact = {chunks[i].key for i in np.argsort(-(matrix @ vector), kind="stable")[:10]}
        hits = index.search(text, [NAMESPACE], k=10, mode="vector", query_vector=vector)
        found.append(len(exact & {h.key for h in hits}) / 10)
    return round(statistics.fmean(found), 4)


def cold_start_postgres(url: str, seed: int, runs: int = 3) -> dict[str, Any]:
    """A fresh process's first search, ``runs`` times in a row: opening the store (connection
    pool, schema check), then the first hybrid search (nothing to load: it runs in SQL)."""
    out: dict[str, Any] = {"runs": []}
    for i in range(runs):
        command = [sys.executable, __file__, "--cold-probe-url", url, "--seed", str(seed)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        out["runs"].append(figures)
        print(
            f"  cold start {i + 1}: open store {figures['open_s']:.3f} s, first search"
            f" {figures['first_search_s']:.3f} s (second {figures['second_search_s']:.3f} s)",
            flush=True,
        )
    out["first"] = out["runs"][0]
    return out


def cold_probe_postgres(url: str, seed: int) -> int:
    """Run in a fresh process by ``cold_start_postgres``: time the store's opening and the first
    hybrid search over it (and a second one, for comparison), print JSON."""
    from chatwright.store.postgres import PostgresStore

    (text, vector), (text2, vector2) = queries(2, vocabulary(seed), np.random.default_rng(seed))
    wall = time.perf_counter()
    store = PostgresStore(url)
    opened = time.perf_counter()
    index = SearchIndex(store.chunks)
    index.search(text, [NAMESPACE], query_vector=vector)
    first = time.perf_counter()
    index.search(text2, [NAMESPACE], query_vector=vector2)
    second = time.perf_counter()
    store.close()
    figures = {
        "open_s": round(opened - wall, 3),
        "first_search_s": round(first - opened, 3),
        "open_and_first_search_s": round(first - wall, 3),
        "second_search_s": round(second - first, 3),
    }
    print(json.dumps(figures))
    return 0


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    largest = max(results, key=lambda r: r["chunks"])
    for mode in ("keyword", "vector", "hybrid"):
        p50 = largest["search"][mode]["p50_ms"]
        out.append(
            {
                "target": f"{mode} p50 at {largest['chunks']:,} chunks <= 20 ms",
                "value": p50,
                "pass": p50 <= P50_TARGET_MS,
            }
        )
    slowest = min(r["insert_chunks_per_s"] for r in results)
    out.append(
        {"target": "insert >= 2,000 chunks/s", "value": slowest, "pass": slowest >= INSERT_TARGET}
    )
    if "cold_start" in largest:
        cold_start = largest["cold_start"]
        if "persisted" in cold_start:
            cold = cold_start["persisted"]["first_search_s"]
        else:  # PostgreSQL: opening the store and the first search
            cold = cold_start["first"]["open_and_first_search_s"]
        out.append(
            {
                "target": f"cold first search at {largest['chunks']:,} chunks <= 1 s",
                "value": cold,
                "pass": cold <= COLD_TARGET_S,
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: results/search.json, or results/search_postgres.json on PostgreSQL",
    )
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres"),
        default=None,
        help="sqlite (default), or postgres: a fresh database per size on --database-url's "
        "server, or on a throwaway pgserver",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="postgresql://... of a server where that user may create databases (implies "
        "--backend postgres)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL databases")
    parser.add_argument(
        "--no-cold", dest="cold", action="store_false", help="skip the cold-start runs"
    )
    parser.add_argument("--cold-probe", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--persist", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    parser.add_argument("--cold-probe-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_probe is not None:
        return cold_probe(args.cold_probe, args.persist == "on", args.seed)
    if args.cold_probe_url is not None:
        return cold_probe_postgres(args.cold_probe_url, args.seed)
    if args.database_url and args.backend == "sqlite":
        parser.error("--database-url is for --backend postgres")
    postgres = bool(args.database_url) or args.backend == "postgres"
    if args.out is None:
        args.out = HERE / "results" / ("search_postgres.json" if postgres else "search.json")
    vocab = vocabulary(args.seed)
    load_before = os.getloadavg()
    sizes = [int(s) for s in args.sizes.split(",")]
    if postgres:
        args.pg_server = _postgres.server_url(args.database_url, args.tmp_dir)
        results = [run_size_postgres(n, vocab, args) for n in sizes]
    else:
        with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
            results = [run_size(n, vocab, args, Path(tmp)) for n in sizes]
    checks = targets(results)
    print()
    for check in checks:
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {check['target']}: {check['value']}")
    report = {
        "benchmark": "search",
        "date": _dt.date.today().isoformat(),
        "backend": "postgres" if postgres else "sqlite",
        "machine": {
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "settings": {
            "vocabulary": VOCAB,
            "dim": DIM,
            "batch": BATCH,
            "queries": args.queries,
            "seed": args.seed,
        },
        "results": results,
        "targets": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
