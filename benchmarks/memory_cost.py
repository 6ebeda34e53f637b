"""Cost of the memory stages alone, per turn, at turns 10, 1,000 and 10,000 of one thread.

Measures ``Memory.load`` + ``Memory.build`` + ``Memory.after_turn`` (the load and context
stages of a turn and the decision after it), with no model call and no embedding: token counts
come from the stored per-message cache, as in real turns. Each strategy is measured on a thread
on disk (SQLite, WAL) with a stored running summary, user memory, and recall on: the thread's
out-of-window turns are indexed (not timed) and every build searches them, hybrid, with the
``test:hash`` embedder standing in for the query embedding (so embedding time is excluded).

Targets: median <= 5 ms, and turn 10,000 <= 1.5x turn 10.

    .venv/bin/python benchmarks/memory_cost.py [--turns 10,1000,10000] [--samples 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chatwright import Message, SQLiteStore
from chatwright.config import MemorySettings
from chatwright.memory import Memory, counter_for
from chatwright.models import get_model
from chatwright.models.embeddings import get_embedder
from chatwright.retrieval import SearchIndex
from chatwright.retrieval.recall import ThreadRecall
from chatwright.store.base import Summary

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "project",
    "atlas",
    "budget",
    "meeting",
    "lyon",
    "paris",
    "report",
    "deadline",
    "friday",
    "invoice",
    "customer",
    "server",
    "database",
    "query",
    "memory",
    "summary",
    "travel",
    "train",
    "hotel",
    "recipe",
    "vegetarian",
    "garden",
    "python",
    "test",
    "release",
    "plan",
    "review",
    "team",
    "music",
    "book",
    "film",
    "weather",
    "monday",
]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def grow(store: SQLiteStore, memory: Memory, thread: str, upto: int, rng: random.Random) -> None:
    """Append turns until the thread has ``upto`` turns (token counts stored, as in turns)."""
    have = (
        store.get_thread("local", thread).message_count // 2
        if store.find_thread("local", thread)
        else 0
    )
    for _ in range(have, upto):
        user = Message.user(sentence(rng, rng.randint(20, 50)))
        answer = Message.assistant(sentence(rng, rng.randint(20, 60)))
        store.append(
            "local",
            thread,
            [user, answer],
            create=True,
            tokens=[memory.count(user), memory.count(answer)],
        )


def measure(memory: Memory, thread: str, samples: int, rng: random.Random) -> list[float]:
    times = []
    for _ in range(samples):
        new = Message.user(sentence(rng, 30))
        start = time.perf_counter()
        loaded = memory.load("local", thread)
        context = memory.build("local", thread, loaded, new, "You are a helpful assistant.")
        memory._start = lambda *a, **k: False  # decide, but start no background job here
        memory.after_turn("local", thread, loaded, context)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", default="10,1000,10000", help="checkpoints (turns)")
    parser.add_argument("--samples", type=int, default=300, help="timed builds per checkpoint")
    parser.add_argument("--model", default="test:echo", help="whose token counter to use")
    parser.add_argument(
        "--no-recall", action="store_true", help="measure without recall (no index, no search)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "memory_cost.json"
    )
    args = parser.parse_args()
    checkpoints = [int(t) for t in args.turns.split(",")]
    model = get_model(args.model)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        for fact in ("I'm vegetarian", "My project is called Atlas", "I live in Lyon"):
            store.add_memory("local", fact)
        index = SearchIndex(store, get_embedder("test:hash"))
        for strategy in ("window", "tokens", "summary"):
            settings = MemorySettings(strategy=strategy, context_tokens=4096)
            memory = Memory(
                store,
                settings,
                model,
                counter_for(model),
                history_messages=40,
                answer_tokens=512,
                recall=None if args.no_recall else ThreadRecall(index, store),
            )
            rng = random.Random(7)
            thread = f"bench-{strategy}"
            results[strategy] = {}
            for turns in checkpoints:
                grow(store, memory, thread, turns, rng)
                last = store.get_thread("local", thread).message_count
                while memory.recall and memory.index_old_turns(
                    "local", thread, before_seq=last - 39
                ):
                    pass  # index what fell out of the window (not timed)
                if strategy == "summary":
                    store.save_summary(
                        "local",
                        thread,
                        Summary(
                            through_seq=max(turns * 2 - 30, 0), text=sentence(rng, 250), tokens=300
                        ),
                    )
                times = measure(memory, thread, args.samples, rng)
                results[strategy][str(turns)] = {
                    "median_ms": round(statistics.median(times), 4),
                    "p90_ms": round(sorted(times)[int(len(times) * 0.9)], 4),
                }
        store.close()
    print(f"memory stages per turn (load + context + summary decision), counter {args.model}")
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {args.samples} samples per cell\n"
    )
    print(f"{'strategy':<9}" + "".join(f"{'turn ' + format(t, ','):>22}" for t in checkpoints))
    for strategy, cells in results.items():
        row = "".join(
            f"{cells[str(t)]['median_ms']:>12.3f} ({cells[str(t)]['p90_ms']:.3f})"
            for t in checkpoints
        )
        print(f"{strategy:<9}{row}")
    print("\nmedian ms (p90 ms)")
    failed = []
    for strategy, cells in results.items():
        first, last = cells[str(checkpoints[0])], cells[str(checkpoints[-1])]
        if last["median_ms"] > 5:
            failed.append(f"{strategy}: median {last['median_ms']} ms > 5 ms")
        if last["median_ms"] > 1.5 * first["median_ms"]:
            failed.append(
                f"{strategy}: turn {checkpoints[-1]} is "
                f"{last['median_ms'] / first['median_ms']:.2f}x turn {checkpoints[0]}"
            )
    print(
        "\n"
        + (
            "\n".join(f"FAIL {f}" for f in failed)
            if failed
            else "PASS all strategies: <= 5 ms and flat (<= 1.5x)"
        )
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"model": args.model, "samples": args.samples, "results": results}, indent=2)
    )
    print(f"results written to {args.out}")
    sys.exit(0)


if __name__ == "__main__":
    main()
