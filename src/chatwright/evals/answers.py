"""Answer evaluation on MTRAG-format tasks: how good are the answers a turn gives from documents?

A task file is JSON Lines in the format of MTRAG(-UN)'s generation tasks: ``input`` (the
conversation, ``[{speaker: "user"|"agent", text}]``, the last item the question), ``contexts``
(reference passages, ``[{document_id, text}]``), ``targets`` (gold answers) and
``answerability`` (ANSWERABLE, PARTIAL, UNANSWERABLE, UNDERSPECIFIED).

Each task is answered as a turn of the embedded model would answer it: the follow-up made
standalone the way the bot does for it (the previous question prefixed), the task's passages
ranked by the embedder against that query and the best ``k`` kept (a task with no passages,
as UNANSWERABLE tasks often are, gets the best ``k`` of all the file's passages of the same
collection: what a search of the user's documents would return), then answered in the chosen
mode: ``extract`` (quotes, :mod:`chatwright.retrieval.extract`), ``generate`` (the model, with
the bot's grounding prompt built by :func:`chatwright.memory.context.build_context`) or
``auto`` (what a turn would pick for the model).

Figures, per answerability class, with 95% bootstrap intervals for the means:

- ``rouge_l``: ROUGE-L F1 against the best gold answer (Porter2-stemmed tokens of letters and
  digits, as the ``rouge-score`` package tokenizes);
- ``recall``: the share of the gold answer's content words (stemmed, no stopwords) in the answer;
- ``cited``: answers with a ``[n]`` naming one of the passages;
- ``declined``: answers that say the documents do not answer it (the right answer for
  UNANSWERABLE; a loss elsewhere);
- ``leaked``: answers that run on into the prompt's grounding instructions;
- the time per answer (median and 95th percentile, milliseconds).

``python -m chatwright.evals.answers TASKS.jsonl --mode extract [--limit N] [--json]``, or
``chatwright eval answers``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatwright.config import Settings
from chatwright.memory.context import GROUNDING, Budget, Entry, Passage, build_context
from chatwright.memory.tokens import counter_for
from chatwright.retrieval.extract import NOT_FOUND, extract, resolve_answer_mode
from chatwright.retrieval.rag import is_follow_up
from chatwright.search.text import analyze
from chatwright.types import Message, TextDelta

__all__ = [
    "AnswerResult",
    "Task",
    "content_recall",
    "evaluate",
    "load_tasks",
    "main",
    "rouge_l",
    "summarize",
]

_SHORTLIST = 8  # passages embedded per task, from a task's own or its collection's pool
CLASSES = ("ANSWERABLE", "PARTIAL", "UNANSWERABLE", "UNDERSPECIFIED")
_DECLINE = re.compile(
    r"don't seem to answer|do(?:es)? not (?:know|contain|mention|say|provide|have)|"
    r"don'?t (?:know|have)|no information|not (?:mentioned|provided|available)|cannot answer|"
    r"can't answer|unable to",
    re.IGNORECASE,
)
# Phrases of GROUNDING: an answer holding one ran on into the prompt.
_LEAK = tuple(s.lower() for s in ("numbered sources", "cite them like", "quoted documents"))


@dataclass(frozen=True)
class Task:
    id: str
    history: tuple[Message, ...]
    question: str
    contexts: tuple[tuple[str, str], ...]  # (document_id, text)
    targets: tuple[str, ...]
    answerability: str
    collection: str


@dataclass(frozen=True)
class AnswerResult:
    id: str
    answerability: str
    mode: str
    answer: str
    rouge_l: float
    recall: float
    cited: bool
    declined: bool
    leaked: bool
    ms: float
    best: float | None = None  # extract: the best sentence's score (to calibrate min_score)


def load_tasks(path: str | Path) -> list[Task]:
    tasks = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        turns = [
            Message.user(t["text"]) if t["speaker"] == "user" else Message.assistant(t["text"])
            for t in row["input"]
        ]
        label = row.get("answerability") or ["ANSWERABLE"]
        tasks.append(
            Task(
                id=str(row.get("task_id") or len(tasks)),
                history=tuple(turns[:-1]),
                question=turns[-1].text,
                contexts=tuple((str(c.get("document_id", "")), c["text"]) for c in row["contexts"]),
                targets=tuple(t["text"] for t in row.get("targets") or ()),
                answerability=label[0] if isinstance(label, list) else str(label),
                collection=str(row.get("Collection") or ""),
            )
        )
    return tasks


# -- metrics ------------------------------------------------------------------------------
def _rouge_tokens(text: str) -> list[str]:
    from chatwright.search.text import _stem_word  # Porter2: the stemmer search uses

    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    return [_stem_word(w) if len(w) > 3 else w for w in words]


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, gold: str) -> float:
    """ROUGE-L F1 over stemmed tokens (the ``rouge-score`` package's definition)."""
    a, g = _rouge_tokens(answer), _rouge_tokens(gold)
    if not a or not g:
        return 0.0
    lcs = _lcs(a, g)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(g)
    return 2 * precision * recall / (precision + recall)


def content_recall(answer: str, gold: str) -> float:
    """The share of the gold answer's distinct content words (stemmed) found in the answer."""
    wanted = set(analyze(gold))
    return len(wanted & set(analyze(answer))) / len(wanted) if wanted else 0.0


def _bootstrap(values: Sequence[float], rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(rounds, len(data)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# -- answering ----------------------------------------------------------------------------
def _query(task: Task) -> str:
    """The standalone query as a turn of the embedded model makes it (rewrite "concat")."""
    if not is_follow_up(task.question, task.history):
        return task.question
    previous = next((m.text for m in reversed(task.history) if m.role == "user"), "")
    return f"{previous} {task.question}".strip()


def _pools(tasks: Sequence[Task]) -> dict[str, list[tuple[str, str]]]:
    pools: dict[str, dict[str, str]] = defaultdict(dict)
    for task in tasks:
        for doc_id, text in task.contexts:
            pools[task.collection].setdefault(doc_id, text)
    return {name: list(docs.items()) for name, docs in pools.items()}


class _Vectors:
    """Passage embeddings, computed once per distinct passage text."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for t, v in zip(missing, self.embedder.embed(missing), strict=True):
                self.cache[t] = np.asarray(v, dtype=np.float32)
        return np.stack([self.cache[t] for t in texts])


def _passages(
    task: Task,
    vector: np.ndarray,
    pools: dict[str, list[tuple[str, str]]],
    vectors: _Vectors,
    k: int,
) -> list[Passage]:
    found = list(task.contexts) or pools.get(task.collection, [])
    if not found:
        return []
    if len(found) > _SHORTLIST:  # keywords first, as hybrid search would, then the embedder
        terms = set(analyze(_query(task)))
        found = sorted(found, key=lambda d: -len(terms & set(analyze(d[1]))))[:_SHORTLIST]
    scores = vectors([text for _, text in found]) @ vector
    best = np.argsort(-scores, kind="stable")[:k]
    return [
        Passage(index=i, text=found[j][1], label=found[j][0] or f"passage {i}", tokens=0)
        for i, j in enumerate(best, start=1)
    ]


async def _generate(model: Any, task: Task, passages: list[Passage], settings: Settings) -> str:
    from chatwright.models.base import ModelRequest, ModelSettings

    counter = counter_for(model)
    entries = [
        Entry(seq=i, created_at=0.0, message=m, tokens=counter.count(m.text) + 4)
        for i, m in enumerate(task.history, start=1)
    ]
    passages = [Passage(p.index, p.text, p.label, counter.count(p.text)) for p in passages]
    total = getattr(model, "context_window", None) or 2048
    context = build_context(
        strategy=settings.memory.strategy,
        system_prompt=settings.system_prompt,
        history=entries,
        new_message=Message.user(task.question),
        budget=Budget(total=total, answer=min(settings.max_answer_tokens, total // 2)),
        counter=counter,
        passages=passages,
    )
    request = ModelRequest(
        messages=tuple(context.messages),
        settings=ModelSettings(
            max_tokens=settings.max_answer_tokens, temperature=settings.temperature
        ),
    )
    pieces = [e.text async for e in model.stream(request) if isinstance(e, TextDelta)]
    return "".join(pieces).strip()


def _score(
    task: Task, mode: str, answer: str, k: int, ms: float, best: float | None = None
) -> AnswerResult:
    targets = task.targets or ("",)
    cites = {int(n) for n in re.findall(r"\[(\d+)\]", answer)}
    return AnswerResult(
        id=task.id,
        answerability=task.answerability,
        mode=mode,
        answer=answer,
        rouge_l=max(rouge_l(answer, t) for t in targets),
        recall=max(content_recall(answer, t) for t in targets),
        cited=any(1 <= n <= k for n in cites),
        # A quote may say "no information" about something else: only the extractor's own
        # not-found answer is a decline in extract mode.
        declined=answer.startswith(NOT_FOUND)
        or (mode != "extract" and bool(_DECLINE.search(answer))),
        leaked=any(s in answer.lower() for s in _LEAK) or GROUNDING[:40] in answer,
        ms=ms,
        best=best,
    )


def evaluate(
    tasks: Sequence[Task],
    *,
    mode: str,
    embedder: Any,
    settings: Settings | None = None,
    model: Any = None,
    k: int = 2,
    pool: Sequence[Task] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[AnswerResult]:
    """Answer each task in ``mode`` and score it (``model`` is needed for generate/auto)."""
    settings = settings or Settings()
    knowledge = settings.knowledge
    pools = _pools(pool if pool is not None else tasks)
    vectors = _Vectors(embedder)
    results = []
    for n, task in enumerate(tasks, start=1):
        query = _query(task)
        vector = np.asarray(embedder.embed([query]), dtype=np.float32)[0]
        passages = _passages(task, vector, pools, vectors, k)
        model_name = model.name if model is not None else "local:gemma-3-270m"
        chosen, _ = resolve_answer_mode(mode, model_name, bool(passages))
        start, best = time.perf_counter(), None
        if chosen == "extract":
            found = extract(
                query,
                vector,
                passages,
                embedder,
                question=task.question,
                count=knowledge.extract_sentences,
                min_score=knowledge.extract_min_score,
                keyword_weight=knowledge.extract_keyword_weight,
            )
            answer, best = found.text, found.best
        else:
            if model is None:
                raise ValueError("generate needs a model")
            answer = asyncio.run(_generate(model, task, passages, settings))
        ms = (time.perf_counter() - start) * 1000
        results.append(_score(task, chosen, answer, len(passages), ms, best))
        if progress is not None:
            progress(n)
    return results


def summarize(results: Sequence[AnswerResult]) -> dict[str, Any]:
    """Figures per answerability class and over all tasks."""
    groups: dict[str, list[AnswerResult]] = defaultdict(list)
    for r in results:
        groups[r.answerability].append(r)
    groups["all"] = list(results)
    out: dict[str, Any] = {}
    for name in [*CLASSES, "all"]:
        rows = groups.get(name)
        if not rows:
            continue
        rouge = [r.rouge_l for r in rows]
        recall = [r.recall for r in rows]
        ms = sorted(r.ms for r in rows)
        out[name] = {
            "tasks": len(rows),
            "rouge_l": statistics.fmean(rouge),
            "rouge_l_ci": _bootstrap(rouge),
            "recall": statistics.fmean(recall),
            "recall_ci": _bootstrap(recall),
            "cited": sum(r.cited for r in rows) / len(rows),
            "declined": sum(r.declined for r in rows) / len(rows),
            "leaked": sum(r.leaked for r in rows),
            "median_ms": statistics.median(ms),
            "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
        }
    return out


def render_table(summary: dict[str, Any], mode: str) -> list[str]:
    lines = [
        f"mode {mode}",
        f"{'class':<15}{'tasks':>6}  {'ROUGE-L F1 [95% CI]':<24}{'recall [95% CI]':<24}"
        f"{'cited':>7}{'declined':>10}{'leaked':>8}{'ms p50':>9}{'ms p95':>9}",
    ]
    for name, f in summary.items():
        rl, rc = f["rouge_l_ci"], f["recall_ci"]
        rouge = f"{f['rouge_l']:.3f} [{rl[0]:.3f}, {rl[1]:.3f}]"
        recall = f"{f['recall']:.3f} [{rc[0]:.3f}, {rc[1]:.3f}]"
        lines.append(
            f"{name:<15}{f['tasks']:>6}  {rouge:<24}{recall:<24}{f['cited']:>7.0%}"
            f"{f['declined']:>10.0%}{f['leaked']:>8}{f['median_ms']:>9.1f}{f['p95_ms']:>9.1f}"
        )
    return lines


def _sample(tasks: list[Task], limit: int | None, seed: int) -> list[Task]:
    if limit is None or limit >= len(tasks):
        return tasks
    chosen = set(random.Random(seed).sample(range(len(tasks)), limit))
    return [t for i, t in enumerate(tasks) if i in chosen]


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatwright.evals.answers")
    parser.add_argument("tasks", help="MTRAG-format task file (JSON Lines)")
    parser.add_argument("--mode", default="auto", choices=["auto", "generate", "extract"])
    parser.add_argument("--model", default="local:gemma-3-270m")
    parser.add_argument("--embedder", default=None, help="default: the configured one")
    parser.add_argument("-k", type=int, default=2, help="passages per answer (a turn's k)")
    parser.add_argument("--limit", type=int, default=None, help="a random sample of N tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answers", action="store_true", help="print every answer too")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from chatwright.models import get_model
    from chatwright.models.embeddings import get_embedder

    settings = Settings()
    embedder = get_embedder(
        args.embedder or settings.embedder or "local:all-minilm-l6-v2", settings
    )
    everything = load_tasks(args.tasks)
    tasks = _sample(everything, args.limit, args.seed)
    model = get_model(args.model, settings) if args.mode != "extract" else None
    results = evaluate(
        tasks,
        mode=args.mode,
        embedder=embedder,
        settings=settings,
        model=model,
        k=args.k,
        pool=everything,
    )
    summary = summarize(results)
    if args.json:
        out(
            json.dumps(
                {"mode": args.mode, "summary": summary, "tasks": [asdict(r) for r in results]},
                indent=2,
            )
        )
        return 0
    for line in render_table(summary, args.mode):
        out(line)
    if args.answers:
        for r in results:
            out(json.dumps(asdict(r), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
