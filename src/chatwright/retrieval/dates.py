"""The times a question names: "on 9 November, 2022", "in May 2023", "last week", "in 2021".

:func:`periods` reads them (English, no model) as spans of UTC time, so that recall can prefer
turns said then. Relative ones ("yesterday", "last May", "two weeks ago") are counted back from
``now``. What is not recognized is simply not a period: a question without one is searched as
before.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass

__all__ = ["Period", "periods"]

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
_MONTHS["sept"] = 9
_MONTH = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"
_YEAR = r"(?P<year>(?:19|20)\d\d)"
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}

_PATTERNS = [  # most specific first; each match is removed before the next pattern runs
    ("day", re.compile(r"\b(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})\b")),
    ("day", re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR}\b", re.I)),
    ("day", re.compile(rf"\b{_MONTH}\s+{_DAY},?\s+{_YEAR}\b", re.I)),
    ("month", re.compile(rf"\b{_MONTH},?\s+(?:of\s+)?{_YEAR}\b", re.I)),
    ("last_month_name", re.compile(rf"\blast\s+{_MONTH}(?!\w)", re.I)),
    ("relative", re.compile(r"\b(?P<word>yesterday|today|tonight|last night)\b", re.I)),
    ("relative", re.compile(r"\b(?P<which>last|this|past)\s+(?P<unit>week|month|year)\b", re.I)),
    (
        "ago",
        re.compile(
            r"\b(?P<n>\d+|an?|one|two|three|four|five|six)\s+(?P<unit>day|week|month|year)s?"
            r"\s+ago\b",
            re.I,
        ),
    ),
    ("year", re.compile(rf"(?<![\d.,$€£-]){_YEAR}(?![\d.,%]\d|\s*(?:%|percent|euros?|dollars?))")),
    # A month alone: after a word that makes it a date, or capitalized (May: not opening a
    # sentence, where it may be the verb).
    (
        "bare_month",
        re.compile(
            r"(?:(?<=\bin )|(?<=\bof )|(?<=\bsince )|(?<=\bduring )|(?<=\buntil ))"
            r"(?i:(?P<month>[a-z]+))\b|\b(?P<capital>"
            + "|".join(m for m in calendar.month_name if m and m != "May")
            + r")\b|(?<![.!?]\s)(?<!^)\b(?P<may>May)\b"
        ),
    ),
]


@dataclass(frozen=True)
class Period:
    """A span of time [start, end) in seconds since the epoch, or (``month`` set) that
    month of any year."""

    start: float = 0.0
    end: float = 0.0
    month: int | None = None

    def contains(self, when: float, slack: float = 0.0) -> bool:
        if self.month is not None:
            day = dt.datetime.fromtimestamp(when, dt.UTC)
            return day.month == self.month
        return self.start - slack <= when < self.end + slack


def _ts(day: dt.date) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def _span(first: dt.date, last: dt.date) -> Period:
    return Period(_ts(first), _ts(last + dt.timedelta(days=1)))


def _month_span(year: int, month: int) -> Period:
    return _span(dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1]))


def _month(text: str) -> int | None:
    return _MONTHS.get(text.lower().rstrip("."))


def _period(kind: str, m: re.Match[str], today: dt.date) -> Period | None:
    g = m.groupdict()
    if kind == "day":
        month = int(g["month"]) if g["month"].isdigit() else _month(g["month"])
        try:
            day = dt.date(int(g["year"]), month or 0, int(g["day"]))
        except ValueError:
            return None
        return _span(day, day)
    if kind == "month":
        return _month_span(int(g["year"]), _month(g["month"]) or 1)
    if kind == "year":
        return _span(dt.date(int(g["year"]), 1, 1), dt.date(int(g["year"]), 12, 31))
    if kind == "last_month_name":
        month = _month(g["month"]) or 1
        return _month_span(today.year - (month >= today.month), month)
    if kind == "bare_month":
        month = _month(g["month"] or g["capital"] or g["may"] or "")
        return Period(month=month) if month else None
    return _relative(kind, g, today)


def _relative(kind: str, g: dict[str, str], today: dt.date) -> Period | None:
    if kind == "ago":
        n = int(g["n"]) if g["n"].isdigit() else _NUMBERS.get(g["n"].lower(), 1)
        days = _UNIT_DAYS[g["unit"].lower()]
        center = today - dt.timedelta(days=n * days)
        half = dt.timedelta(days=max(1, days // 2))
        return _span(center - half, center + half)
    word = (g.get("word") or "").lower()
    if word:
        back = 1 if word in ("yesterday", "last night") else 0
        day = today - dt.timedelta(days=back)
        return _span(day, day)
    unit, which = g["unit"].lower(), g["which"].lower()
    if unit == "week":
        start = today - dt.timedelta(days=today.weekday() + (7 if which == "last" else 0))
        return _span(start, start + dt.timedelta(days=6 if which == "last" else 7))
    if unit == "month":
        if which == "this":
            return _month_span(today.year, today.month)
        first = today.replace(day=1) - dt.timedelta(days=1)
        return _month_span(first.year, first.month)
    year = today.year - (which != "this")
    return _span(dt.date(year, 1, 1), dt.date(year, 12, 31))


# What every pattern above needs somewhere in the text: a digit, a month's name (each starts
# with its three-letter abbreviation), or the words of a relative period. Most messages have
# none, and this one search spares them the ten patterns.
_ANY = re.compile(
    r"\d|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|yesterday|today|tonight|ago\b)"
    r"|\b(?:last|this|past)\s+(?:week|month|year|night)",
    re.I,
)


def periods(text: str, now: float) -> list[Period]:
    """The periods ``text`` names, relative ones counted back from ``now``."""
    if not _ANY.search(text):
        return []
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    found: list[Period] = []
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(text):
            period = _period(kind, m, today)
            if period is not None:
                found.append(period)
        text = pattern.sub(" ", text)
    return found
