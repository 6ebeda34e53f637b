"""Embedding speed: passages per second and milliseconds per query, engine against engine.

What it measures
----------------
* **Load**: the first ``embed`` call of the process (reading the weights and tokenizer, then
  one short text), in seconds; for ONNX Runtime, with its model file already in the cache.
* **Passages/s**: ``--passages`` English-like passages of ``--words`` words (about 103 tokens
  each for the default 100 words), or the first ``--passages`` documents of a BEIR corpus
  (``--corpus ../shared/data/scifact``: SciFact abstracts, 239 tokens on average after the cut
  at 256), embedded in one ``embed`` call with ``--batch-size`` texts per batch, for
  ``--rounds`` rounds; the headline is the median round (wall time), with the best round and
  the process's CPU time per round (steadier when other work shares the machine).
* **Query ms**: one short question per ``embed`` call (what a search does per user message),
  ``--queries`` calls cycling through 10 questions; median and p90.

``--engine both`` (the default for the local embedder) measures the numpy encoder (the
baseline and fallback) and ONNX Runtime in the same process, alternating round by round, so
both see the same machine. ``--threads`` is ONNX Runtime's threads per pass; the numpy
encoder's BLAS takes ``OPENBLAS_NUM_THREADS`` (set it to 1, as the product runs). The load
average (``uptime``) before and after is recorded: figures from a busy machine are not
comparable with a quiet one's.

Passages and questions are built from a fixed word list with a seeded ``random.Random``, so
every run embeds the same texts.

Run: ``OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/embeddings.py`` (``--help`` for the
options). It prints a table and writes ``benchmarks/results/embeddings.json``.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "chatwright").is_dir() and str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402

from chatwright.models.embeddings import (  # noqa: E402
    DEFAULT_EMBEDDER,
    LocalEmbedder,
    get_embedder,
)

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


def corpus_texts(folder: Path, count: int) -> list[str]:
    """The first ``count`` documents of a BEIR ``corpus.jsonl``, as the eval embeds them."""
    texts = []
    with (folder / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            doc = json.loads(line)
            texts.append(f"{doc.get('title', '')}\n{doc['text']}".strip())
            if len(texts) == count:
                break
    return texts


class Engine:
    """One embedder under test, and what was measured of it."""

    def __init__(self, label: str, make: Callable[[], Any]) -> None:
        start = time.perf_counter()
        self.label, self.embedder = label, make()
        self.embedder.embed(["warm up"])
        self.load_s = time.perf_counter() - start
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.query_ms: list[float] = []

    def passages_round(self, texts: list[str]) -> None:
        """One round of embedding all ``texts`` in one call."""
        wall, cpu = time.perf_counter(), time.process_time()
        vectors = self.embedder.embed(texts)
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)
        assert vectors.shape == (len(texts), self.embedder.dim)

    def queries(self, count: int) -> None:
        """``count`` single-question ``embed`` calls."""
        for i in range(count):
            start = time.perf_counter()
            self.embedder.embed([QUESTIONS[i % len(QUESTIONS)]])
            self.query_ms.append((time.perf_counter() - start) * 1000)


class _Encoder:
    """An engine of the local model behind the Embedder interface, for side-by-side runs."""

    def __init__(self, encoder: Any, batch_size: int, name: str) -> None:
        self.encoder, self.batch_size, self.name = encoder, batch_size, name
        self.dim = encoder.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts, self.batch_size)


def engines(args: argparse.Namespace) -> list[Engine]:
    if args.embedder != DEFAULT_EMBEDDER or args.engine == "auto":

        def make() -> Any:
            if args.embedder == DEFAULT_EMBEDDER:
                return LocalEmbedder(batch_size=args.batch_size, threads=args.threads)
            return get_embedder(args.embedder, batch_size=args.batch_size)

        engine = Engine("auto", make)
        engine.label = getattr(engine.embedder, "engine", engine.embedder.name)
        return [engine]
    from chatwright.models._minilm import load_minilm, model_dir
    from chatwright.models._minilm_onnx import OnnxMiniLM

    makers = {
        "numpy": lambda: _Encoder(load_minilm(), args.batch_size, "numpy"),
        "onnxruntime": lambda: _Encoder(
            OnnxMiniLM(model_dir(), args.threads), args.batch_size, "onnxruntime"
        ),
        "onnxruntime-int8": lambda: _Encoder(
            OnnxMiniLM(model_dir(), args.threads, precision="int8"), args.batch_size, "ort-int8"
        ),
    }
    chosen = {
        "both": ["numpy", "onnxruntime"],
        "precisions": ["onnxruntime", "onnxruntime-int8"],
    }.get(args.engine, [args.engine])
    return [Engine(label, makers[label]) for label in chosen]


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
    from chatwright.models._minilm import default_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    parser.add_argument(
        "--engine",
        choices=["both", "precisions", "onnxruntime", "onnxruntime-int8", "numpy", "auto"],
        default="both",
        help="the local model's engine(s): both = numpy and onnxruntime (float32); precisions "
        "= onnxruntime in float32 and in int8 (the default); auto: what LocalEmbedder picks",
    )
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--passages", type=int, default=128)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--corpus", type=Path, help="a BEIR folder: embed its documents instead")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embeddings.json")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    measured = engines(args)
    if args.corpus:
        texts = corpus_texts(args.corpus, args.passages)
    else:
        texts = passages(args.passages, args.words, args.seed)
    for engine in measured:  # warm caches and allocator
        engine.embedder.embed(texts[: min(len(texts), 32)])
        engine.queries(len(QUESTIONS))
        engine.query_ms.clear()
    for _ in range(args.rounds):  # alternating, so that every engine sees the same machine
        for engine in measured:
            engine.passages_round(texts)
    per_engine = max(1, args.queries // 10)
    for _ in range(10):
        for engine in measured:
            engine.queries(per_engine)
    tokens = token_counts(texts) if args.embedder == DEFAULT_EMBEDDER else None

    result = {
        "date": _dt.date.today().isoformat(),
        "embedder": measured[0].embedder.name if args.engine == "auto" else args.embedder,
        "dim": measured[0].embedder.dim,
        "machine": machine(),
        "settings": {
            k: os.path.relpath(v, ROOT) if isinstance(v, Path) else v for k, v in vars(args).items()
        },
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "texts": {
            "count": len(texts),
            "source": str(args.corpus) if args.corpus else f"{args.words} words each",
            "median_tokens": statistics.median(tokens) if tokens else None,
            "mean_tokens": round(statistics.fmean(tokens), 1) if tokens else None,
        },
        "engines": {e.label: _figures(e, len(texts)) for e in measured},
        "torch_for_comparison": TORCH_FIGURES,
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.out}")
    return 0


def _figures(engine: Engine, count: int) -> dict[str, Any]:
    rates = [count / s for s in engine.wall]
    cpu_rates = [count / s for s in engine.cpu]
    return {
        "load_s": round(engine.load_s, 3),
        "passages_per_s_median": round(statistics.median(rates), 1),
        "passages_per_s_best": round(max(rates), 1),
        "passages_per_s_rounds": [round(r, 1) for r in rates],
        "passages_per_cpu_s_median": round(statistics.median(cpu_rates), 1),
        "query_ms_median": round(statistics.median(engine.query_ms), 2),
        "query_ms_p90": round(float(np.percentile(engine.query_ms, 90)), 2),
        "query_ms_min": round(min(engine.query_ms), 2),
        "queries": len(engine.query_ms),
    }


def print_table(result: dict[str, Any]) -> None:
    t, s = result["texts"], result["settings"]
    tokens = f", median {t['median_tokens']} tokens" if t["median_tokens"] else ""
    print(
        f"{result['embedder']} ({result['dim']} dims), {result['machine']['nproc']} cores, ", end=""
    )
    print(f"load average {result['load_average_before'][0]} -> {result['load_average_after'][0]}")
    print(f"{t['count']} texts ({t['source']}{tokens}), batch {s['batch_size']}, ", end="")
    print(f"{s['threads']} threads, OPENBLAS_NUM_THREADS={result['openblas_num_threads']}")
    print(f"{'engine':16} {'load s':>7} {'passages/s':>11} {'best':>6} {'per CPU s':>10} ", end="")
    print(f"{'query ms':>9} {'p90':>6}")
    for label, f in result["engines"].items():
        print(f"{label:16} {f['load_s']:7.2f} {f['passages_per_s_median']:11.1f} ", end="")
        print(f"{f['passages_per_s_best']:6.1f} {f['passages_per_cpu_s_median']:10.1f} ", end="")
        print(f"{f['query_ms_median']:9.2f} {f['query_ms_p90']:6.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
