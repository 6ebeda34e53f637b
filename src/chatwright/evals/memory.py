"""Memory evaluation on LoCoMo-format conversations: does recall find the evidence turns?

A LoCoMo file is a JSON list of samples (or one sample): ``conversation`` holds ``speaker_a``,
``speaker_b`` and sessions ``session_<n>`` (``[{speaker, dia_id, text, blip_caption?}]``) with
their ``session_<n>_date_time`` ("1:56 pm on 8 May, 2023"); ``qa`` holds questions with a
``category`` and the ``evidence`` turns (dia ids) that answer them. Categories 1-4 are scored
(1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, as LoCoMo's data numbers them); 5
(adversarial: no answer) has no evidence to find.

Each conversation is replayed into a thread of a chatbot with the given settings, the way a
turn stores it: ``speaker_a`` speaks as the user, ``speaker_b`` as the assistant, a shared
photo as its caption. Then every turn is indexed through the bot's own recall
(``ThreadRecall.index_turns``, what the background job does once turns leave the context
window), dated at its session's date, as if each session had been held then. Each question is
asked of that recall as a new message would be (``recall_k`` and k = 5). Figures:

- evidence recall@k: the share of evidence turns inside the turns recall brings back, per
  category and over all (each evidence turn counts once; ids that name no turn are dropped,
  and questions left without evidence);
- the cost per question: the recall call at the default ``recall_k``, query embedding included
  (ms, p50 and p95), the first question of each conversation (its index loading) left out.

``python -m chatwright.evals.memory FILE [--json]``, or ``chatwright eval memory FILE``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatwright.config import Settings, load_settings
from chatwright.errors import UserError
from chatwright.memory.context import Entry, group_turns
from chatwright.retrieval.recall import recall_units
from chatwright.types import Message

__all__ = [
    "CATEGORIES",
    "Conversation",
    "DialogueTurn",
    "Question",
    "evaluate",
    "load",
    "main",
    "parse_when",
]

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
_OWNER = "eval"
_DIA_ID = re.compile(r"D:?(\d+):(\d+)")


@dataclass(frozen=True)
class DialogueTurn:
    dia_id: str
    speaker: str
    text: str
    when: float | None  # the session's date (seconds since the epoch), when it parses


@dataclass(frozen=True)
class Question:
    text: str
    category: int
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Conversation:
    sample_id: str
    speaker_a: str
    turns: list[DialogueTurn]
    questions: list[Question]


def parse_when(text: str | None) -> float | None:
    """LoCoMo's session date ("1:56 pm on 8 May, 2023") as a UTC timestamp; None if it is
    missing or in another format."""
    for fmt in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%d %B, %Y", "%Y-%m-%d"):
        try:
            parsed = dt.datetime.strptime(" ".join((text or "").split()), fmt)
        except ValueError:
            continue
        return parsed.replace(tzinfo=dt.UTC).timestamp()
    return None


def _turn_text(turn: dict[str, Any]) -> str:
    text = str(turn.get("text") or "")
    caption = turn.get("blip_caption")
    return f"{text} [shares {caption}]" if caption else text


def _evidence(items: Sequence[str], known: set[str]) -> tuple[str, ...]:
    """The evidence ids that name a turn ("D8:6; D9:17" is two, "D:11:26" is D11:26)."""
    found = [f"D{m[0]}:{m[1]}" for item in items for m in _DIA_ID.findall(str(item))]
    return tuple(dict.fromkeys(e for e in found if e in known))


def _conversation(sample: dict[str, Any]) -> Conversation:
    conv = sample["conversation"]
    sessions = sorted(
        (int(m[1]), key) for key in conv if (m := re.fullmatch(r"session_(\d+)", key))
    )
    turns = [
        DialogueTurn(
            str(t["dia_id"]),
            str(t["speaker"]),
            _turn_text(t),
            parse_when(conv.get(f"session_{n}_date_time")),
        )
        for n, key in sessions
        for t in conv[key] or []
    ]
    known = {t.dia_id for t in turns}
    questions = [
        Question(str(qa["question"]), int(qa["category"]), evidence)
        for qa in sample.get("qa", [])
        if int(qa.get("category", 0)) in CATEGORIES
        and (evidence := _evidence(qa.get("evidence") or [], known))
    ]
    speaker_a = str(conv.get("speaker_a") or (turns[0].speaker if turns else ""))
    return Conversation(str(sample.get("sample_id", "")), speaker_a, turns, questions)


def load(path: str | Path) -> list[Conversation]:
    """The conversations of a LoCoMo-format file (a list of samples, or one)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [_conversation(s) for s in (data if isinstance(data, list) else [data])]


def _replay(bot: Any, thread: str, conversation: Conversation) -> dict[int, set[str]]:
    """Store the conversation in ``thread`` and index all its turns for recall, each dated at
    its session; returns the dia ids each turn (by its first seq) holds."""
    messages = [
        Message.user(t.text) if t.speaker == conversation.speaker_a else Message.assistant(t.text)
        for t in conversation.turns
    ]
    stored = bot.store.append(_OWNER, thread, messages, create=True)
    entries = [
        Entry(s.seq, t.when if t.when is not None else s.created_at, s.message, 0)
        for s, t in zip(stored, conversation.turns, strict=True)
    ]
    recall = bot.memory.recall
    turns = group_turns(entries)
    for start in range(0, len(turns), 500):  # the background job's batches
        recall.index_turns(_OWNER, thread, turns[start : start + 500])
    dia = {s.seq: t.dia_id for s, t in zip(stored, conversation.turns, strict=True)}
    units = recall_units(turns, getattr(recall, "pause_s", float("inf")))
    return {unit.first_seq: {dia[e.seq] for e in unit.entries} for unit in units}


def _score(found: dict[int, list[set[str]]], questions: Sequence[Question], k: int) -> dict:
    hits: dict[int, list[int]] = {c: [0, 0] for c in CATEGORIES}
    for i, q in enumerate(questions):
        covered = set().union(*found[i][:k]) if found[i] else set()
        hits[q.category][0] += sum(e in covered for e in q.evidence)
        hits[q.category][1] += len(q.evidence)
    out = {CATEGORIES[c]: round(a / b, 3) if b else None for c, (a, b) in hits.items()}
    total = [sum(v[0] for v in hits.values()), sum(v[1] for v in hits.values())]
    out["all"] = round(total[0] / total[1], 3) if total[1] else None
    return out


def evaluate(
    conversations: Sequence[Conversation],
    settings: Settings | None = None,
    ks: Sequence[int] = (5,),
) -> dict[str, Any]:
    """Evidence recall@k (for ``ks`` and the settings' ``recall_k``) and the cost per question
    of the recall of a bot with ``settings`` (default: the default settings)."""
    from chatwright import Chatbot
    from chatwright.store import SQLiteStore

    settings = settings or Settings()
    default_k = settings.memory.recall_k
    wanted = sorted({*ks, default_k} - {0})
    questions = [q for c in conversations for q in c.questions]
    found: dict[int, dict[int, list[set[str]]]] = {k: {} for k in wanted}
    costs: list[float] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "memory-eval.db")
        with Chatbot("test:echo", store=store, settings=settings) as bot:
            notes = list(bot.notes)
            if bot.memory.recall is None:
                raise UserError(
                    "this configuration has no recall to evaluate",
                    hint="turn [memory] recall on, with a store that has a search index",
                )
            n = 0
            for number, conversation in enumerate(conversations):
                thread = f"locomo-{number}"
                units = _replay(bot, thread, conversation)
                for j, q in enumerate(conversation.questions):
                    for k in sorted(wanted, key=lambda k: k != default_k):  # timed one first
                        start = time.perf_counter()
                        recalled = bot.memory.recall.recall(
                            _OWNER, thread, q.text, k=k, before_seq=10**12, notes=notes
                        )
                        if k == default_k and j > 0:
                            costs.append((time.perf_counter() - start) * 1000)
                        found[k][n] = [units.get(r.first_seq, set()) for r in recalled]
                    n += 1
        store.close()
    counted = Counter(notes)
    return {
        "conversations": len(conversations),
        "questions": {CATEGORIES[c]: sum(q.category == c for q in questions) for c in CATEGORIES}
        | {"all": len(questions)},
        "evidence": sum(len(q.evidence) for q in questions),
        "recall_k": default_k,
        "embedder": settings.embedder,
        "recall": {f"@{k}": _score(found[k], questions, k) for k in wanted},
        "ms": {
            "p50": round(statistics.median(costs), 2) if costs else None,
            "p95": round(_percentile(costs, 95), 2) if costs else None,
        },
        "notes": [f"{n} (x{c})" if c > 1 else n for n, c in counted.items()],
    }


def _percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def render(result: dict[str, Any]) -> list[str]:
    """The figures as a table, one row per category."""
    ks = list(result["recall"])
    lines = [
        f"{result['conversations']} conversations · {result['questions']['all']} questions · "
        f"{result['evidence']} evidence turns · embedder {result['embedder']} · "
        f"recall_k {result['recall_k']}",
        f"{'category':<13}{'questions':>10}" + "".join(f"{'recall' + k:>11}" for k in ks),
    ]
    for name in [*CATEGORIES.values(), "all"]:
        cells = "".join(
            f"{'-' if (v := result['recall'][k][name]) is None else f'{v:.3f}':>11}" for k in ks
        )
        lines.append(f"{name:<13}{result['questions'][name]:>10}{cells}")
    ms = result["ms"]
    lines.append(
        f"recall per question at k={result['recall_k']}: p50 {ms['p50']} ms, p95 {ms['p95']} ms"
    )
    lines += [f"note: {n}" for n in result["notes"]]
    return lines


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatwright.evals.memory")
    parser.add_argument("files", nargs="+", help="LoCoMo-format JSON files")
    parser.add_argument("--embedder", default=None, help="default: the configured one; none: off")
    parser.add_argument("-k", type=int, action="append", help="recall@k to report (default 5)")
    parser.add_argument("--config", default=None, help="a chatwright.toml (default: none)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    settings = load_settings(args.config) if args.config else Settings()
    if args.embedder:
        settings = settings.model_copy(
            update={"embedder": None if args.embedder == "none" else args.embedder}
        )
    conversations = [c for path in args.files for c in load(path)]
    result = evaluate(conversations, settings, ks=args.k or (5,))
    for line in [json.dumps(result, indent=2)] if args.json else render(result):
        out(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
