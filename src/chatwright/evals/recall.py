"""Recall evaluation: facts planted in a long synthetic conversation, asked about much later.

A conversation of ``turns`` turns of varied small talk (seeded, so every run is the same) gets
facts planted at known turns ("My sister's name is Priya."). Long after, questions ask about
them, half in the fact's own words and half paraphrased ("What is my sibling called?"), which
keyword search alone tends to miss. Recall@k is the share of questions whose planted turn is
among the k turns recall brings back.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["FACTS", "Conversation", "Question", "make_conversation", "recall_at_k"]


@dataclass(frozen=True)
class Fact:
    statement: str
    literal: str  # a question in the statement's words
    paraphrase: str  # the same question in other words


FACTS: tuple[Fact, ...] = (
    Fact("My sister's name is Priya.", "What is my sister's name?", "What is my sibling called?"),
    Fact(
        "I parked the car on level 3 of the airport garage.",
        "Where did I park the car?",
        "On which floor did I leave my vehicle?",
    ),
    Fact(
        "The wifi password at the cabin is bluefjord42.",
        "What is the wifi password at the cabin?",
        "How do I get online at the lodge?",
    ),
    Fact(
        "My dentist appointment is on March 14 at 9am.",
        "When is my dentist appointment?",
        "When do I need to see the doctor for my teeth?",
    ),
    Fact("I'm allergic to peanuts.", "What am I allergic to?", "Which nuts should I avoid eating?"),
    Fact(
        "My manager is called Hiroshi Tanaka.",
        "What is my manager called?",
        "Who is my boss at work?",
    ),
    Fact(
        "Our anniversary dinner is booked at Chez Marguerite.",
        "Where is our anniversary dinner booked?",
        "Which restaurant did we reserve?",
    ),
    Fact(
        "The project deadline moved to the 30th of June.",
        "When is the project deadline?",
        "By what date must the work be delivered?",
    ),
    Fact(
        "My passport number ends in 7781.",
        "What does my passport number end in?",
        "What are the last digits of my travel document?",
    ),
    Fact(
        "I keep the spare key under the blue flower pot.",
        "Where do I keep the spare key?",
        "Where is the extra house key hidden?",
    ),
    Fact(
        "My daughter's school play is on Friday evening.",
        "When is my daughter's school play?",
        "When is the kid's theatre show?",
    ),
    Fact(
        "The plumber quoted 450 euros for the bathroom.",
        "How much did the plumber quote?",
        "What did the pipe repair estimate come to?",
    ),
)

_TOPICS = (
    ("weather", "It rained all morning and the streets were wet."),
    ("cooking", "I tried a new pasta recipe with mushrooms and cream."),
    ("music", "I listened to an old jazz album while working."),
    ("sports", "The football match went to extra time last night."),
    ("books", "I started a novel about a lighthouse keeper."),
    ("travel", "We are thinking about a weekend trip to the coast."),
    ("gardening", "The tomatoes in the garden finally turned red."),
    ("movies", "We watched a documentary about deep sea creatures."),
    ("work", "The meeting about the quarterly report ran long."),
    ("fitness", "I went for a five kilometre run before breakfast."),
    ("pets", "The cat knocked a glass off the kitchen table again."),
    ("shopping", "I bought new running shoes on sale."),
)
_REPLIES = (
    "That sounds nice.",
    "Tell me more about it.",
    "Good to hear!",
    "Interesting.",
    "How did that go?",
    "I hope it works out.",
    "That must have been fun.",
)


@dataclass(frozen=True)
class Question:
    text: str
    planted_turn: int  # 0-based index of the turn that holds the answer
    paraphrased: bool


@dataclass(frozen=True)
class Conversation:
    turns: list[tuple[str, str]]  # (user, assistant) per turn
    questions: list[Question]


def make_conversation(turns: int = 3000, seed: int = 7) -> Conversation:
    """``turns`` turns with every fact planted in the first half, at seeded places."""
    if turns < 4 * len(FACTS):
        raise ValueError(f"need at least {4 * len(FACTS)} turns")
    rng = random.Random(seed)
    places = sorted(rng.sample(range(turns // 2), len(FACTS)))
    planted = dict(zip(places, FACTS, strict=True))
    out: list[tuple[str, str]] = []
    for i in range(turns):
        if i in planted:
            out.append((planted[i].statement, "Noted, I'll remember that."))
            continue
        topic, line = rng.choice(_TOPICS)
        other = rng.choice(_TOPICS)[1]
        out.append((f"{line} {other}", f"{rng.choice(_REPLIES)} ({topic})"))
    questions = [
        Question(fact.literal if not paraphrase else fact.paraphrase, place, paraphrase)
        for place, fact in planted.items()
        for paraphrase in (False, True)
    ]
    return Conversation(out, questions)


def recall_at_k(
    questions: Sequence[Question],
    recall: Callable[[str], list[int]],
    k: int = 5,
) -> dict[str, float]:
    """Share of questions whose planted turn is in ``recall(question)[:k]`` (turn indexes)."""

    def share(items: Sequence[Question]) -> float:
        hits = sum(q.planted_turn in recall(q.text)[:k] for q in items)
        return round(hits / len(items), 3) if items else 0.0

    return {
        "all": share(questions),
        "literal": share([q for q in questions if not q.paraphrased]),
        "paraphrased": share([q for q in questions if q.paraphrased]),
    }


def evaluate(
    turns: int = 3000, *, embedder: str | None = "local:all-minilm-l6-v2", k: int = 5, seed: int = 7
) -> dict[str, dict[str, float]]:
    """Recall@k of the planted turns, keyword-only and (with ``embedder``) hybrid.

    The conversation is stored in a temporary SQLite store and its turns indexed through the
    same :class:`~chatwright.retrieval.recall.ThreadRecall` the chatbot uses.
    """
    import tempfile
    from pathlib import Path

    from chatwright.memory.context import Entry, group_turns
    from chatwright.models.embeddings import get_embedder
    from chatwright.retrieval import SearchIndex
    from chatwright.retrieval.recall import ThreadRecall
    from chatwright.store import SQLiteStore
    from chatwright.types import Message

    conversation = make_conversation(turns, seed)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "recall.db")
        messages = [
            m
            for user, bot in conversation.turns
            for m in (Message.user(user), Message.assistant(bot))
        ]
        stored = store.append("local", "long", messages, create=True)
        entries = [Entry(s.seq, s.created_at, s.message, 0) for s in stored]
        all_turns = group_turns(entries)
        for mode, name in (("keyword", None), ("hybrid", embedder)):
            if mode == "hybrid" and not name:
                continue
            index = SearchIndex(store, get_embedder(name) if name else None)
            index.clear(f"thread:{store.get_thread('local', 'long').uid}")
            recall = ThreadRecall(index, store)
            recall.index_turns("local", "long", all_turns)

            def ask(question: str, recall: ThreadRecall = recall) -> list[int]:
                found = recall.recall("local", "long", question, k=k, before_seq=10**9)
                return [(r.first_seq - 1) // 2 for r in found]

            results[mode] = recall_at_k(conversation.questions, ask, k)
        store.close()
    return results


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        description="Recall@k of facts planted in a long conversation."
    )
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--embedder", default="local:all-minilm-l6-v2")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    results = evaluate(args.turns, embedder=args.embedder or None, k=args.k)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"recall@{args.k} of {2 * len(FACTS)} questions about {len(FACTS)} facts planted in "
        f"the first half of a {args.turns:,}-turn conversation"
    )
    print(f"{'mode':<10}{'all':>8}{'literal':>10}{'paraphrased':>13}")
    for mode, figures in results.items():
        print(
            f"{mode:<10}{figures['all']:>8.3f}{figures['literal']:>10.3f}{figures['paraphrased']:>13.3f}"
        )


if __name__ == "__main__":
    main()
