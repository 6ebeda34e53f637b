"""Keyword (BM25) search on the PostgreSQL backend at N chunks, without vectors.

``search.py --backend postgres`` measures everything, but its inserts are bound by the HNSW
index (70 chunks/s under load: 24 minutes for 100k chunks). Keyword search does not use the
vectors, so this loads the same synthetic chunks (``search.py``'s corpus and queries, seed 7)
without them and times ``PostgresStore.chunks.keyword`` alone, with and without a filter, and
``term_counts`` (routing's word counts per collection, from ``chunk_term_counts``), the chunks
spread over ``--namespaces`` collections.

Run: ``.venv/bin/python benchmarks/postgres_keyword.py 100000`` (starts a throwaway pgserver,
or ``--database-url URL`` for a server whose user may create databases).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import search as bench  # noqa: E402

import _postgres  # noqa: E402
from chatwright.store.base import IndexedChunk  # noqa: E402
from chatwright.store.postgres import PostgresStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("chunks", type=int, nargs="?", default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--namespaces", type=int, default=1, help="collections to spread over")
    parser.add_argument("--database-url", help="a server to create a throwaway database on")
    args = parser.parse_args()
    n = args.chunks
    rng = np.random.default_rng(7 + n)
    vocab = bench.vocabulary(7)
    chunks = bench.corpus(n, vocab, rng)
    queries = bench.queries(args.queries, vocab, rng)
    url = _postgres.fresh_database(_postgres.server_url(args.database_url))
    store = PostgresStore(url)
    try:
        started = time.perf_counter()
        namespaces = [f"collection:{i + 1}" for i in range(max(1, args.namespaces))]
        for i in range(0, n, 1000):
            batch = chunks[i : i + 1000]
            store.chunks.write(
                namespaces[(i // 1000) % len(namespaces)],
                [IndexedChunk(c.key, c.text, c.metadata, None) for c in batch],
            )
        print(f"{n:,} chunks inserted at {n / (time.perf_counter() - started):,.0f}/s")
        runs = [
            ("keyword", lambda text: store.chunks.keyword(text, namespaces, None, 100)),
            (
                "keyword + filter",
                lambda text: store.chunks.keyword(text, namespaces, {"shard": [3]}, 100),
            ),
            (
                f"term_counts ({len(namespaces)} collections)",
                lambda text: store.chunks.term_counts(text, namespaces),
            ),
        ]
        for label, run in runs:
            times = []
            for text, _ in queries:
                t = time.perf_counter()
                run(text)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(f"{label}: p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms")
    finally:
        store.close()
        _postgres.drop_database(url)


if __name__ == "__main__":
    main()
