"""The route and retrieve stages of a turn at 100,000 chunks (issue 13: the route costs at most
5 ms beyond the query embedding, and retrieval reuses the route's search).

What it measures
----------------
One user with ``--collections`` collections holding ``--chunks`` chunks in all (sizes uneven,
in proportion to 1, 1/2, 1/3...), SQLite on disk, the store's settings. Chunks are synthetic:
Zipf-distributed text (as ``search.py``) and 384-d vectors drawn around one centre per
collection, so that a query drawn near a centre routes to that collection (a third of the
queries lie between two centres). The embedder is a table of precomputed vectors (about 1 µs
per query), so the query embedding costs nothing and what is left is the engine.

Each of ``--queries`` questions (after 10 warm-ups) is, one after the other:

* a real turn (``Chatbot.achat``, ``test:echo``, a fresh thread, default routing and knowledge
  settings; the memory's recall is off, so that no background indexing competes for the CPU):
  the ``route`` and ``retrieve`` stages from its trace (wall time);
* the same two stages called directly, as the turn calls them (``Chatbot.route``, then
  ``retrieve`` with the route's search where the code has one): CPU time of the process,
  steadier than wall time on a shared machine;
* for reference, **one vector search** across all the user's collections
  (``SearchIndex.search``, ``mode="vector"``, k = ``vote_k``; wall and CPU): the route
  stage's budget is that search + 5 ms.

p50 / p95 / mean over the questions. ``--db PATH`` keeps the store (about 100 s to build) and
reuses it, so that two versions of the code can be measured back to back on the same data.

Run: ``.venv/bin/python benchmarks/route_cost.py`` (``--help``); writes
``benchmarks/results/route_cost.json`` (``--out``). Run it twice back to back (before/after a
change) and compare the two on the same machine and load (``uptime`` is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import statistics
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

from search import vocabulary, zipf_weights  # noqa: E402  (benchmarks/search.py)

from chatwright import Chatbot, Settings, SQLiteStore  # noqa: E402
from chatwright.retrieval import Chunk, SearchIndex  # noqa: E402
from chatwright.retrieval.rag import retrieve  # noqa: E402

DIM = 384
EMBEDDER = "bench:table"
BUDGET_MS = 5.0


class TableEmbedder:
    """Precomputed vectors by text (an unknown text gets a seeded random vector)."""

    name = EMBEDDER
    dim = DIM

    def __init__(self) -> None:
        self.table: dict[str, np.ndarray] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            vector = self.table.get(text)
            if vector is None:
                rng = np.random.default_rng(abs(hash(text)) % 2**32)
                vector = _unit(rng.standard_normal(DIM).astype(np.float32))
            out.append(vector)
        return np.stack(out) if out else np.zeros((0, DIM), np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def sizes(total: int, n: int) -> list[int]:
    """Uneven collection sizes summing to ``total`` (weights 1/(i+1), largest first)."""
    weights = 1.0 / np.arange(1, n + 1)
    out = [int(total * w / weights.sum()) for w in weights]
    out[0] += total - sum(out)
    return out


def words(rng: np.random.Generator, vocab: list[str], p: np.ndarray, n: int) -> str:
    return " ".join(vocab[j] for j in rng.choice(len(vocab), size=n, p=p))


def centres(args: argparse.Namespace) -> np.ndarray:
    """One unit vector per collection, around which its chunks are drawn."""
    rng = np.random.default_rng(args.seed)
    return _unit(rng.standard_normal((args.collections, DIM)).astype(np.float32))


def build(store: Any, index: SearchIndex, owner: str, args: argparse.Namespace) -> None:
    """The collections and their chunks."""
    rng = np.random.default_rng(args.seed + 2)
    vocab = vocabulary(args.seed)
    p = zipf_weights(len(vocab))
    where = zip(sizes(args.chunks, args.collections), centres(args), strict=True)
    for c, (size, centre) in enumerate(where):
        info = store.create_collection(owner, f"c{c}", words(rng, vocab, p, 8))
        for start in range(0, size, 1000):
            n = min(1000, size - start)
            noise = rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
            vectors = _unit(0.35 * centre + noise)
            chunks = [
                Chunk(f"c{c}-{start + i}", words(rng, vocab, p, int(rng.integers(40, 121))), {}, v)
                for i, v in enumerate(vectors)
            ]
            index.add(info.namespace, chunks)


def questions(embedder: TableEmbedder, around: np.ndarray, args: argparse.Namespace) -> list[str]:
    """``--queries`` + 10 questions, each near one collection's centre (a third of them also
    near a second one), their vectors put in the embedder's table."""
    rng = np.random.default_rng(args.seed + 1)
    vocab = vocabulary(args.seed)
    content = vocab[50:]
    p = zipf_weights(len(vocab))[50:]
    p = p / p.sum()
    out = []
    for i in range(args.queries + 10):
        main = rng.integers(len(around))
        centre = around[main] if i % 3 else 0.6 * around[main] + 0.4 * around[main - 1]
        noise = rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM)
        text = f"q{i} " + words(rng, content, p, int(rng.integers(3, 9)))
        embedder.table[text] = _unit(0.35 * centre + noise)
        out.append(text)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 3),
        "p95_ms": round(percentile(values, 0.95), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


def _ms(since: float, clock: Any = time.perf_counter) -> float:
    return (clock() - since) * 1000


async def measure(bot: Chatbot, texts: list[str], namespaces: list[str]) -> dict[str, list]:
    """Per question, one after the other: a turn (its trace's route and retrieve stages,
    wall time); the same two stages called directly as the turn calls them (CPU time of the
    process: steadier than wall time on a shared machine); the one vector search alone."""
    assert bot.index is not None
    out: dict[str, list] = {}
    run = f"bench-{time.time_ns()}"
    vote_k = bot.settings.routing.vote_k
    for i, text in enumerate(texts):
        answer = await bot.achat(f"{run}-{i}", text)  # a fresh thread each
        stages = {s.name: s for s in answer.trace.stages}
        cpu = time.process_time()
        route, collections, vector = await bot.route(text)
        route_cpu = _ms(cpu, time.process_time)
        reuse = {"nearest": route.search} if hasattr(route, "search") else {}  # before: none
        cpu = time.process_time()
        chosen = [c.namespace for c in collections]
        retrieve(bot.index, text, chosen, bot.passages_k(), bot.memory.counter, **reuse)
        retrieve_cpu = _ms(cpu, time.process_time)
        wall, cpu = time.perf_counter(), time.process_time()
        bot.index.search(text, namespaces, k=vote_k, mode="vector", query_vector=vector)
        search, search_cpu = _ms(wall), _ms(cpu, time.process_time)
        if i < 10:
            continue  # warm-up
        row = {
            "route": stages["route"].ms,
            "retrieve": stages["retrieve"].ms if not stages["retrieve"].skipped else 0.0,
            "route_cpu": route_cpu,
            "retrieve_cpu": retrieve_cpu,
            "search": search,
            "search_cpu": search_cpu,
            "collections": len(route.collections),
        }
        for key, value in row.items():
            out.setdefault(key, []).append(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--collections", type=int, default=6)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--label", default="", help="recorded with the figures (before/after)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "route_cost.json")
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument(
        "--db", type=Path, default=None, help="keep the store here and reuse it when it exists"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        path = args.db or Path(tmp) / "route.db"
        fresh = not path.exists()
        store = SQLiteStore(path)
        embedder = TableEmbedder()
        store.shared(("embedder", EMBEDDER), lambda: embedder)
        settings = Settings(embedder=EMBEDDER, data_dir=Path(tmp))
        settings.memory.recall = False
        bot = Chatbot("test:echo", store=store, settings=settings)
        assert bot.index is not None and bot.index.embedder is embedder
        started = time.perf_counter()
        if fresh:
            print(f"building {args.chunks:,} chunks in {args.collections} collections", flush=True)
            build(store, bot.index, bot.owner, args)
        texts = questions(embedder, centres(args), args)
        namespaces = [c.namespace for c in store.list_collections(bot.owner)]
        bot.index.preload(namespaces)
        print(f"ready in {time.perf_counter() - started:.1f} s; {len(texts)} turns", flush=True)
        got = asyncio.run(measure(bot, texts, namespaces))
        store.close()
    stats = {k: figures(v) for k, v in got.items() if k != "collections"}
    both = [a + b for a, b in zip(got["route"], got["retrieve"], strict=True)]
    beyond = round(stats["route"]["p50_ms"] - stats["search"]["p50_ms"], 3)
    beyond_cpu = round(stats["route_cpu"]["p50_ms"] - stats["search_cpu"]["p50_ms"], 3)
    result = {
        "benchmark": "route_cost",
        "label": args.label,
        "date": _dt.date.today().isoformat(),
        "uptime": os.getloadavg(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "settings": vars(args) | {k: str(getattr(args, k)) for k in ("out", "tmp_dir", "db")},
        "stages_wall": {k: stats[k] for k in ("route", "retrieve", "search")},
        "stages_cpu": {k: stats[k] for k in ("route_cpu", "retrieve_cpu", "search_cpu")},
        "route_plus_retrieve_p50_ms": round(statistics.median(both), 3),
        "route_p50_beyond_one_search_ms": beyond,
        "route_cpu_p50_beyond_one_search_ms": beyond_cpu,
        "mean_collections_routed": round(statistics.fmean(got["collections"]), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in list(result)[6:]}, indent=2))
    for label, value in (("wall", beyond), ("CPU", beyond_cpu)):
        verdict = "PASS" if value <= BUDGET_MS else "FAIL"
        print(f"route p50 beyond one search ({label}): {value:.2f} ms (<= {BUDGET_MS}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
