"""The times a question names, as recall reads them (retrieval/dates.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from chatwright.retrieval.dates import periods

NOW = dt.datetime(2026, 6, 15, 12, tzinfo=dt.UTC).timestamp()  # a Monday


def spans(text: str) -> list[str]:
    def day(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")

    return [
        f"month {p.month}" if p.month else f"{day(p.start)}..{day(p.end)}"
        for p in periods(text, NOW)
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What did Nate cook on 9 November, 2022?", ["2022-11-09..2022-11-10"]),
        ("What did Gina get on May 23, 2023?", ["2023-05-23..2023-05-24"]),
        ("What book did Tim finish on 8th December, 2023?", ["2023-12-08..2023-12-09"]),
        ("the 2023-05-08 meeting", ["2023-05-08..2023-05-09"]),
        ("What class did Maria start in December 2023?", ["2023-12-01..2024-01-01"]),
        ("Where did we go in 2021?", ["2021-01-01..2022-01-01"]),
        ("Which spot did Joanna visit in May?", ["month 5"]),
        ("What did I say last week?", ["2026-06-08..2026-06-15"]),
        ("and last month?", ["2026-05-01..2026-06-01"]),
        ("What did we plan last May?", ["2026-05-01..2026-06-01"]),
        ("last June", ["2025-06-01..2025-07-01"]),
        ("two weeks ago", ["2026-05-29..2026-06-05"]),
        ("what did I eat yesterday", ["2026-06-14..2026-06-15"]),
    ],
)
def test_named_times_become_periods(text, expected):
    assert spans(text) == expected


@pytest.mark.parametrize(
    "text",
    ["May I ask you something?", "I may go", "It cost 2000 euros.", "What is my sister's name?"],
)
def test_words_that_only_look_like_times_are_not_periods(text):
    assert periods(text, NOW) == []


def test_a_period_contains_what_was_said_in_it_give_or_take():
    (may_8,) = periods("on 8 May 2023", NOW)
    said = dt.datetime(2023, 5, 8, 13, tzinfo=dt.UTC).timestamp()
    assert may_8.contains(said) and not may_8.contains(said + 2 * 86400)
    assert may_8.contains(said + 2 * 86400, slack=3 * 86400)
    (any_may,) = periods("in May", NOW)
    assert any_may.contains(said) and not any_may.contains(said + 40 * 86400)
