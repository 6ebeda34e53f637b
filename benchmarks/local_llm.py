"""The embedded model through chatwright against raw llama-cpp-python: tokens per second.

What it measures
----------------
The same llama.cpp model object (the packaged Gemma 3 270M, loaded as chatwright loads it:
``models/local.py`` ``_load``, so the same ``n_ctx``, threads and ``OMP_WAIT_POLICY``), the
same prompt (chatwright's transcript of a short conversation, ``render_prompt`` + ``_fit``) and
the same sampling (greedy, ``repeat_penalty`` 1.1, ``max_tokens``), run two ways:

* **raw**: ``Llama.create_completion(prompt, stream=True, stop=STOP)`` in this thread;
* **chatwright**: ``LocalModel.stream(ModelRequest)``: the turn's path, with its echo stops, its
  worker thread and the asyncio queue that hands each token to the event loop.

Each run starts cold (``Llama.reset()``: nothing of the prompt in the KV cache), and reports
**prompt processing** (prompt tokens / time to the first token) and **generation** (tokens after
the first / the time from the first token to the last) separately. The two ways alternate
round by round (which goes first alternates too), so both see the same machine; the headline
is the median round and the ratio chatwright / raw.

**Follow-up (KV-cache reuse)**: a second turn of the same thread whose transcript starts with
the first turn's (the few-shot preamble, the history); llama.cpp re-evaluates only the new
tokens when the model object's cache holds the old prefix. Reported as the follow-up's time to
first token, warm (after the first turn) against cold (after ``reset``).

Run: ``.venv/bin/python benchmarks/local_llm.py [--rounds 5] [--max-tokens 96]``. It prints a
table and writes ``benchmarks/results/local_llm.json``. The target (issue 17): chatwright
>= 0.95x raw tokens/s. Record ``uptime`` with the figures: a busy machine halves both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from chatwright.config import LocalSettings
from chatwright.models.base import ModelRequest, ModelSettings
from chatwright.models.local import (
    _FEW_SHOT,
    STOP,
    LocalModel,
    render_prompt,
)
from chatwright.types import Message, TextDelta

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "local_llm.json"

SYSTEM = "You are a helpful assistant. Answer in plain sentences."
HISTORY = [
    ("user", "I am planning a garden on a small balcony in a windy city."),
    ("assistant", "A balcony garden can work well: choose sturdy pots and low plants."),
    ("user", "Which herbs grow well in pots?"),
    ("assistant", "Basil, thyme, rosemary, mint and parsley all grow well in pots."),
]
QUESTION = "Describe, step by step, how to plant and water a pot of basil so that it thrives."
FOLLOW_UP = "And how often should I harvest the leaves?"


def conversation(*extra: tuple[str, str]) -> list[Message]:
    messages = [Message.system(SYSTEM)]
    for role, text in [*HISTORY, *extra]:
        messages.append(Message.user(text) if role == "user" else Message.assistant(text))
    return messages


def raw_run(llm: Any, prompt: str, max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    first = last = None
    tokens = 0
    for chunk in llm.create_completion(
        prompt,
        max_tokens=max_tokens,
        temperature=0.0,
        repeat_penalty=1.1,
        stop=list(STOP),
        stream=True,
    ):
        if chunk["choices"][0].get("text"):
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
            tokens += 1
    return figures(llm, prompt, started, first, last, tokens)


def chatwright_run(
    model: LocalModel, llm: Any, messages: list[Message], prompt: str, max_tokens: int
) -> dict[str, float]:
    request = ModelRequest(
        messages=tuple(messages), settings=ModelSettings(max_tokens=max_tokens, temperature=0.0)
    )

    async def run() -> tuple[float, float | None, float | None, int]:
        started = time.perf_counter()
        first = last = None
        tokens = 0
        async for event in model.stream(request):
            if isinstance(event, TextDelta):
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
                tokens += 1
        return started, first, last, tokens

    started, first, last, tokens = asyncio.run(run())
    return figures(llm, prompt, started, first, last, tokens)


def figures(
    llm: Any, prompt: str, started: float, first: float | None, last: float | None, tokens: int
) -> dict[str, float]:
    prompt_tokens = len(llm.tokenize(prompt.encode("utf-8")))
    if first is None or last is None:
        return {"prompt_tokens": prompt_tokens, "tokens": 0}
    return {
        "prompt_tokens": prompt_tokens,
        "tokens": tokens,
        "first_token_s": round(first - started, 4),
        "prompt_tok_s": round(prompt_tokens / (first - started), 1),
        "gen_tok_s": round((tokens - 1) / (last - first), 2) if tokens > 1 else 0.0,
    }


def median(rows: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return round(statistics.median(values), 2) if values else float("nan")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    settings = LocalSettings()
    model = LocalModel("gemma-3-270m", settings)
    llm = model._llm()
    messages = conversation(("user", QUESTION))
    header, lines = render_prompt(messages, _FEW_SHOT)
    prompt = model._fit(llm, header, lines, args.max_tokens)
    load_before = load_average()

    raw_run(llm, prompt, 8)  # warm-up: pages the weights in
    runs: dict[str, list[dict[str, float]]] = {"raw": [], "chatwright": []}
    for i in range(args.rounds):
        order = ("raw", "chatwright") if i % 2 == 0 else ("chatwright", "raw")
        for way in order:
            llm.reset()
            if way == "raw":
                runs[way].append(raw_run(llm, prompt, args.max_tokens))
            else:
                runs[way].append(chatwright_run(model, llm, messages, prompt, args.max_tokens))

    # Follow-up: the first turn's answer in the history, then a new question.
    answer = "Fill a pot with moist soil, sow the seeds, keep it in the sun and water it."
    follow = conversation(("user", QUESTION), ("assistant", answer), ("user", FOLLOW_UP))
    f_header, f_lines = render_prompt(follow, _FEW_SHOT)
    f_prompt = model._fit(llm, f_header, f_lines, args.max_tokens)
    warm, cold = [], []
    for _ in range(args.rounds):
        llm.reset()
        chatwright_run(model, llm, messages, prompt, 4)  # the first turn leaves its prefix
        warm.append(chatwright_run(model, llm, follow, f_prompt, 4))
        llm.reset()
        cold.append(chatwright_run(model, llm, follow, f_prompt, 4))

    summary = {
        way: {k: median(rows, k) for k in ("first_token_s", "prompt_tok_s", "gen_tok_s", "tokens")}
        for way, rows in runs.items()
    }
    ratio = {
        k: round(summary["chatwright"][k] / summary["raw"][k], 3)
        for k in ("prompt_tok_s", "gen_tok_s")
        if summary["raw"][k]
    }
    follow_up = {
        "prompt_tokens": warm[0]["prompt_tokens"] if warm else 0,
        "first_token_s_cold": median(cold, "first_token_s"),
        "first_token_s_warm": median(warm, "first_token_s"),
    }
    print(f"prompt: {runs['raw'][0]['prompt_tokens']} tokens; max_tokens {args.max_tokens}")
    print(f"{'':12} {'first token s':>14} {'prompt tok/s':>13} {'gen tok/s':>10} {'tokens':>7}")
    for way, row in summary.items():
        print(
            f"{way:12} {row['first_token_s']:>14} {row['prompt_tok_s']:>13} "
            f"{row['gen_tok_s']:>10} {row['tokens']:>7}"
        )
    print(
        f"chatwright / raw: prompt {ratio.get('prompt_tok_s')}x, generation "
        f"{ratio.get('gen_tok_s')}x (target >= 0.95)"
    )
    print(
        f"follow-up turn ({follow_up['prompt_tokens']} prompt tokens): first token "
        f"{follow_up['first_token_s_cold']} s cold, {follow_up['first_token_s_warm']} s with the "
        "first turn's prefix in the KV cache"
    )
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": load_average(),
        },
        "settings": {"n_ctx": settings.n_ctx, "max_tokens": args.max_tokens},
        "rounds": runs,
        "median": summary,
        "ratio": ratio,
        "follow_up": follow_up,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
