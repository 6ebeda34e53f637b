"""Text analysis for keyword search: one tokenizer for documents and queries.

A token is a run of letters and digits (Unicode-aware, like SQLite's ``unicode61``), case-folded,
with diacritics removed (``é`` → ``e``). English stopwords are dropped and the rest are reduced
to their Snowball English stem (``studies`` → ``studi``), so "study" matches "studies".

The stemmer comes from ``snowballstemmer`` (pure Python; it uses the C ``PyStemmer`` when that is
installed). Without it, tokens are left unstemmed. Stems are cached per distinct word, so the
stemmer runs once per word of the vocabulary, not once per occurrence.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

__all__ = ["STOPWORDS", "analyze", "fts5_query", "words"]

_TOKEN = re.compile(r"[^\W_]+")
_CACHE_LIMIT = 1_000_000

# The English stopword list of NLTK, plus a few words that only add noise to questions.
_STOPWORD_LIST = """
    a about above after again against all am an and any are aren as at be because been before
    being below between both but by can couldn d did didn do does doesn doing don down during
    each few for from further had hadn has hasn have haven having he her here hers herself him
    himself his how i if in into is isn it its itself just ll m ma me mightn more most mustn my
    myself needn no nor not now o of off on once only or other our ours ourselves out over own
    re s same shan she should shouldn so some such t than that the their theirs them themselves
    then there these they this those through to too under until up ve very was wasn we were
    weren what when where which while who whom why will with won wouldn y you your yours
    yourself yourselves also would could may might must shall us
"""
STOPWORDS = frozenset(_STOPWORD_LIST.split())


def _load_stemmer() -> Callable[[str], str]:
    try:
        import snowballstemmer
    except ImportError:  # pragma: no cover - exercised only without the dependency
        return lambda word: word
    return snowballstemmer.stemmer("english").stemWord


_stem_word = _load_stemmer()
_stems: dict[str, str | None] = {}


def _fold(text: str) -> str:
    """Case-fold and strip diacritics (NFKD, combining marks removed)."""
    text = text.casefold()
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The folded words of ``text`` that are not stopwords, unstemmed, in order."""
    return [w for w in _TOKEN.findall(_fold(text)) if w not in STOPWORDS]


def _stem(word: str) -> str | None:
    if len(_stems) >= _CACHE_LIMIT:
        _stems.clear()
    stem = None if word in STOPWORDS else _stem_word(word)
    _stems[word] = stem
    return stem


def analyze(text: str) -> list[str]:
    """The index terms of ``text``: folded, stopwords dropped, stemmed, in order."""
    stems = _stems
    out: list[str] = []
    append = out.append
    for word in _TOKEN.findall(_fold(text)):
        stem = stems[word] if word in stems else _stem(word)
        if stem is not None:
            append(stem)
    return out


def fts5_query(text: str) -> str:
    """An FTS5 MATCH expression: the OR of the question's words, each as a quoted string.

    Every word is made of letters and digits only and is double-quoted, so nothing the user
    types (quotes, ``AND``, ``NEAR``, ``*``, ``:``, parentheses) can act as FTS5 syntax.
    Returns ``""`` when the text has no searchable word.
    """
    unique = dict.fromkeys(words(text))
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in unique)
