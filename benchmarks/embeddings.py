"""Embedding speed: passages per second and milliseconds per query, for one embedder.

What it measures
----------------
* **Load**: the first ``embed`` call of the process (reading the weights and tokenizer, then
  one short text), in seconds.
* **Passages/s**: ``--passages`` English-like passages of ``--words`` words (about 130 tokens
  each for the default 100 words) embedded in one ``embed`` call with ``--batch-size`` texts
  per batch, repeated for ``--rounds`` rounds; the headline is the median round, the best
  round is kept too.
* **Query ms**: one short question per ``embed`` call (what a search does per user message),
  ``--queries`` calls cycling through 10 questions; median and p90.

Passages and questions are built from a fixed word list with a seeded ``random.Random``, so
every run embeds the same texts. The machine is shared, so figures move by 10-20% between
runs; the median of several rounds is the figure to quote.

Run: ``.venv/bin/python benchmarks/embeddings.py`` (``--help`` for the options). It prints a
table and writes ``benchmarks/results/embeddings.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "chatwright").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402

from chatwright.models.embeddings import DEFAULT_EMBEDDER, get_embedder  # noqa: E402

_WORD_LIST = (
    "the a of and to in is was for on that with as by at from it this which be are were "
    "has had have not but they or their one all new more also been who its after before "
    "city river harbour lighthouse keeper storm winter village market engine memory garden "
    "history music library station bridge mountain forest ship captain letter morning "
    "evening road school doctor teacher farmer train window kitchen island valley season "
    "wrote built opened carried counted crossed followed remembered described returned "
    "quiet old small large early late famous ancient narrow bright heavy distant"
)
WORDS = _WORD_LIST.split(" ")

QUESTIONS = [
    "What is the capital of France?",
    "How do I reset my password?",
    "When does the library open?",
    "Who built the old bridge?",
    "Where can I park near the station?",
    "Why was the train late this morning?",
    "How far is the lighthouse from the harbour?",
    "Which school has the best music program?",
    "What did the doctor say about the storm?",
    "Is the market open in winter?",
]

# torch figures, for comparison (measured separately: this script never imports torch).
TORCH_FIGURES = {
    "given_in_the_task_2_core_machine": {"passages_per_s": 20.0, "query_ms": 15.0},
    "sentence_transformers_6.2.0_torch_2.13.0_cpu": {
        "passages_per_s": 91.0,
        "query_ms": 6.6,
        "note": "this benchmark's 128 passages and 10 questions, batch 32, 2 torch threads, "
        "same 2-core machine when quiet, run alternately with the numpy encoder",
    },
}


def passages(count: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        out.append(text[0].upper() + text[1:] + ".")
    return out


def time_passages(embedder: Any, texts: list[str], rounds: int) -> list[float]:
    """Seconds per round of embedding all ``texts`` in one call."""
    embedder.embed(texts[: min(len(texts), 32)])  # warm caches and allocator
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        vectors = embedder.embed(texts)
        seconds.append(time.perf_counter() - start)
        assert vectors.shape == (len(texts), embedder.dim)
    return seconds


def time_queries(embedder: Any, count: int) -> list[float]:
    """Milliseconds per single-question ``embed`` call."""
    for question in QUESTIONS:
        embedder.embed([question])
    millis = []
    for i in range(count):
        start = time.perf_counter()
        embedder.embed([QUESTIONS[i % len(QUESTIONS)]])
        millis.append((time.perf_counter() - start) * 1000)
    return millis


def token_counts(texts: list[str]) -> list[int] | None:
    """Tokens per text with the local model's tokenizer (None for other embedders)."""
    try:
        from chatwright.models._minilm import load_minilm
    except ImportError:
        return None
    return [len(e.ids) for e in load_minilm().tokenizer.encode_batch(texts)]


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": _blas(),
    }


def _blas() -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except Exception:  # informational only
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    parser.add_argument("--passages", type=int, default=128)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embeddings.json")
    args = parser.parse_args(argv)

    embedder = get_embedder(args.embedder, batch_size=args.batch_size)
    start = time.perf_counter()
    embedder.embed(["warm up"])
    load_s = time.perf_counter() - start

    texts = passages(args.passages, args.words, args.seed)
    rounds = time_passages(embedder, texts, args.rounds)
    rates = [len(texts) / s for s in rounds]
    queries = time_queries(embedder, args.queries)
    tokens = token_counts(texts) if args.embedder == DEFAULT_EMBEDDER else None

    result = {
        "date": _dt.date.today().isoformat(),
        "embedder": embedder.name,
        "dim": embedder.dim,
        "machine": machine(),
        "settings": {
            k: os.path.relpath(v, ROOT) if isinstance(v, Path) else v for k, v in vars(args).items()
        },
        "load_s": round(load_s, 3),
        "passages": {
            "count": len(texts),
            "words_each": args.words,
            "median_tokens": statistics.median(tokens) if tokens else None,
            "batch_size": args.batch_size,
            "per_s_median": round(statistics.median(rates), 1),
            "per_s_best": round(max(rates), 1),
            "per_s_rounds": [round(r, 1) for r in rates],
        },
        "query": {
            "calls": len(queries),
            "ms_median": round(statistics.median(queries), 2),
            "ms_p90": round(float(np.percentile(queries, 90)), 2),
            "ms_min": round(min(queries), 2),
        },
        "torch_for_comparison": TORCH_FIGURES,
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.out}")
    return 0


def print_table(result: dict[str, Any]) -> None:
    p, q = result["passages"], result["query"]
    tokens = f", median {p['median_tokens']} tokens" if p["median_tokens"] else ""
    print(f"{result['embedder']} ({result['dim']} dims), {result['machine']['nproc']} cores")
    print(f"  load (first embed)       {result['load_s']:.2f} s")
    print(f"  passages/s               {p['per_s_median']:.1f} median, {p['per_s_best']:.1f} best")
    print(f"                           ({p['count']} x {p['words_each']} words{tokens}, ", end="")
    print(f"batch {p['batch_size']}, rounds {p['per_s_rounds']})")
    print(f"  ms per short query       {q['ms_median']:.2f} median, {q['ms_p90']:.2f} p90")


if __name__ == "__main__":
    raise SystemExit(main())
