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
