"""Recall of old turns: a thread's turns are indexed like documents and searched like them.

Each turn that fell out of the context window (a user message and its answers) becomes one
*unit*: a chunk in the namespace ``thread:<uid>`` of the shared :class:`SearchIndex`, holding
the turn's transcript (what keyword search reads and a recalled turn quotes), one vector of it
(with an embedder) and ``{first_seq, last_seq, created_at}``. A turn whose messages are more
than ``pause_s`` apart (an answer that came days later, a conversation imported session by
session) is split there, so a unit belongs to one sitting and carries its time. Deleting the
thread deletes the namespace (a trigger, in the same transaction).

A question is searched with what was measured to help on real conversations (LoCoMo,
``chatwright eval memory``), all of it at query time, so nothing is stored twice:

- keywords: a matching unit's BM25 score plus half of each neighbour's (the units just before
  and after): the words of a question are often in the turn next to the one that answers it;
- meaning: the cosine with the question embedded without the names the thread keeps using
  (capitalized words in at least 8% of its units: its speakers, the user's name); they say
  little about which turn is meant, yet dominate a small embedder's vector of a question;
- the two fused as hybrid search fuses them (convex, 0.2 keywords + 0.8 vector);
- time: a question that names a date or a period ("on 9 May 2023", "last week", "in 2021",
  :mod:`chatwright.retrieval.dates`) lifts the units said then.

A recalled unit must match itself: share a keyword with the query, or be close enough in
meaning (cosine >= ``min_similarity``), so unrelated turns are never pushed into a prompt.
An embedder that is missing or fails leaves keywords only (with a note), in indexing as in
search.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatwright.memory.context import Recalled, Turn
from chatwright.retrieval.dates import periods
from chatwright.retrieval.index import FLOORS, Chunk, SearchIndex, default_weights
from chatwright.search.fusion import convex_scores
from chatwright.search.text import analyze
from chatwright.store.base import ChunkRecord, IndexedChunk, Store

__all__ = ["ThreadRecall", "recall_units", "turn_text"]

log = logging.getLogger("chatwright.memory")

_MAX_CHARS = 4000  # of a turn's text indexed (the stored transcript keeps everything)
_DEPTH = 100  # units each ranking hands to fusion
_NEIGHBOUR = 0.5  # share of a neighbouring unit's keyword score a unit gets
_TIME_BOOST = 0.2  # added to the fused score (in [0, 1]) of a unit said when the query says
_TIME_SLACK_S = 3 * 86400.0  # "on 9 May": said that day, give or take
_NAME_SHARE = 0.08  # a name in at least this share of the thread's units is its own
_NAME_MIN = 5  # ... and in at least this many
_MARK_PAGE = 64  # units read at a time looking for the newest one on the active path
_PROPER = re.compile(r"(?<=[\w,;:)\"'] )([A-Z][\w'\u2019-]*)")
_POSSESSIVE = re.compile(r"['\u2019]s?$")


def turn_text(turn: Turn) -> str:
    """A turn as the plain transcript that is indexed and, when recalled, quoted."""
    lines = []
    for entry in turn.entries:
        message = entry.message
        text = " ".join(message.text.split())
        for call in message.tool_calls:
            text += f" [called {call.name}]"
        for result in message.tool_results:
            text += f" [{result.name or 'tool'}: {' '.join(result.content.split())[:300]}]"
        if text:
            lines.append(f"{message.role.capitalize()}: {text}")
    joined = "\n".join(lines)
    return joined if len(joined) <= _MAX_CHARS else joined[: _MAX_CHARS - 1] + "…"


def recall_units(turns: Sequence[Turn], pause_s: float) -> list[Turn]:
    """``turns`` as recall indexes them: each split where its messages are more than
    ``pause_s`` seconds apart."""
    units: list[Turn] = []
    for turn in turns:
        start = 0
        for i in range(1, len(turn.entries)):
            if turn.entries[i].created_at - turn.entries[i - 1].created_at > pause_s:
                units.append(Turn(turn.entries[start:i]))
                start = i
        units.append(Turn(turn.entries[start:]))
    return units


@dataclass(frozen=True)
class _Unit:
    first: int
    last: int
    created_at: float
    key: str

    @classmethod
    def of(cls, row: ChunkRecord) -> _Unit:
        meta = row.metadata
        first = int(meta["first_seq"])
        last = int(meta.get("last_seq", first))
        return cls(first, last, float(meta.get("created_at", 0.0)), row.key)

    @classmethod
    def labelled(cls, key: str, created_at: Any) -> _Unit | None:
        """The unit a key ``<first seq>-<last seq>`` names (None: a key of another form,
        such as the first seq alone of units indexed before branches)."""
        first, dash, last = key.partition("-")
        if not (dash and first.isdigit() and last.isdigit()):
            return None
        when = float(created_at) if isinstance(created_at, (int, float)) else 0.0
        return cls(int(first), int(last), when, key)


class ThreadRecall:
    """The :class:`chatwright.memory.Recall` of a chatbot, over a shared search index."""

    def __init__(
        self,
        index: SearchIndex,
        store: Store,
        *,
        min_similarity: float = 0.35,
        pause_s: float = 3600.0,
    ) -> None:
        self.index = index
        self.store = store
        self.min_similarity = min_similarity
        self.pause_s = pause_s
        # thread uid -> (its created_at, {branch: the last seq of its path indexed})
        self._through: dict[int, tuple[float, dict[int, int]]] = {}

    def _namespace(self, owner: str, thread_id: str) -> tuple[str, int] | None:
        info = self.store.find_thread(owner, thread_id)
        return (f"thread:{info.uid}", info.uid) if info else None

    # -- indexing -------------------------------------------------------------------------
    def indexed_through(self, owner: str, thread_id: str) -> int:
        """The last message seq of the active branch's path whose turn is indexed (0: none).

        Each branch has its own: the units of every branch share the thread's namespace, and
        another branch's newer units say nothing of this path's (after an edit, say, the
        path left behind was never indexed past the fork). It is the greatest ``last_seq``
        of a unit whose last message is on the path (a unit is a run of one path's
        messages: if its last is on this path, all of it is). Cached per branch; worked out
        again after a switch (newest units first, a page at a time: past those of the
        branches indexed since this path was)."""
        info = self.store.find_thread(owner, thread_id)
        if info is None:
            return 0
        created, marks = self._through.get(info.uid, (info.created_at, {}))
        if created != info.created_at:  # deleted, and the uid taken again
            marks = {}
        self._through[info.uid] = (info.created_at, marks)
        if info.branch not in marks:
            marks[info.branch] = self._path_mark(owner, thread_id, f"thread:{info.uid}")
        return marks[info.branch]

    def _path_mark(self, owner: str, thread_id: str, namespace: str) -> int:
        below: str | None = None
        while True:
            units = self.index.chunks.newest(namespace, _MARK_PAGE, below=below)
            if not units:
                return 0
            lasts = [int(u.metadata.get("last_seq", u.metadata["first_seq"])) for u in units]
            on = self.store.on_path(owner, thread_id, lasts)
            if on:  # keys follow first_seq: an older page's units end before these start
                return max(on)
            if len(units) < _MARK_PAGE:
                return 0
            below = units[-1].key

    def index_turns(self, owner: str, thread_id: str, turns: Sequence[Turn]) -> int:
        """Index ``turns`` (embedding them when the index has an embedder that works);
        returns how many units that made."""
        found = self._namespace(owner, thread_id)
        if found is None or not turns:
            return 0
        namespace = found[0]
        chunks = [
            Chunk(
                # ordered keys: the newest is the last by key. The last seq tells apart the
                # units that start alike on two branches (a turn answered again).
                key=f"{u.first_seq:012d}-{u.entries[-1].seq:012d}",
                text=turn_text(u),
                metadata={
                    "first_seq": u.first_seq,
                    "last_seq": u.entries[-1].seq,
                    "created_at": u.entries[0].created_at,
                },
            )
            for u in recall_units(turns, self.pause_s)
        ]
        vectors = self._embed([c.text for c in chunks], thread_id)
        if vectors is None:
            self.index.chunks.write(
                namespace, [IndexedChunk(c.key, c.text, c.metadata) for c in chunks]
            )
            added = len(chunks)
        else:
            added = self.index.add(
                namespace,
                [Chunk(c.key, c.text, c.metadata, v) for c, v in zip(chunks, vectors, strict=True)],
            )
        self._indexed(owner, thread_id, turns[-1].entries[-1].seq)
        return added

    def _indexed(self, owner: str, thread_id: str, last: int) -> None:
        """Units through ``last`` were written: the active path's mark moves on (if they are
        on it: the active branch may have changed since the turns were read); the other
        branches' are worked out again when next asked (these units may be on their paths
        too, where they share the start of this one)."""
        info = self.store.find_thread(owner, thread_id)
        if info is None:
            return
        created, marks = self._through.get(info.uid, (info.created_at, {}))
        mark = marks.get(info.branch) if created == info.created_at else None
        kept: dict[int, int] = {}
        if mark is not None and last in self.store.on_path(owner, thread_id, [last]):
            kept[info.branch] = max(mark, last)
        self._through[info.uid] = (info.created_at, kept)

    def _embed(self, texts: list[str], thread_id: str) -> list[np.ndarray] | None:
        """The texts' vectors; None without an embedder or when it fails (keywords only).
        Embedded in the background's short passes, yielding the embedder to turns' queries
        (``SearchIndex.embed_background``)."""
        if self.index.embedder is None:
            return None
        try:
            return list(self.index.embed_background(texts))
        except Exception as e:
            log.warning(
                "recall indexes thread %s without vectors: embedder failed: %s", thread_id, e
            )
            return None

    # -- searching ------------------------------------------------------------------------
    def recall(
        self,
        owner: str,
        thread_id: str,
        query: str,
        *,
        k: int,
        before_seq: int,
        notes: list[str] | None = None,
    ) -> list[Recalled]:
        """The ``k`` best-matching indexed units that start before ``before_seq``, best
        first. Why recall did less than it could (an embedder that failed) goes to ``notes``."""
        found = self._namespace(owner, thread_id)
        if found is None or not query.strip() or k <= 0:
            return []
        namespace = found[0]
        keyword = dict(self.index.chunks.keyword(query, [namespace], None, _DEPTH))
        vector = self._vector_ranking(query, namespace, notes)
        units = self._units(list(keyword.keys() | dict(vector).keys()), namespace)
        nearby = self._with_neighbours(keyword, units)
        rankings = {
            "keyword": sorted(nearby.items(), key=lambda item: -item[1]),
            "vector": [(pk, s) for pk, s in vector if pk in units],
        }
        scores = convex_scores(rankings, weights=default_weights("convex"), floors=FLOORS)
        self._lift_dated(query, units, scores)
        similar = dict(vector)
        rank: dict[int, int] = {}  # the best rank in either list: ties as fusion breaks them
        for ranking in rankings.values():
            for position, (pk, _) in enumerate(ranking, 1):
                rank[pk] = min(rank.get(pk, position), position)
        eligible = (
            pk
            for pk in sorted(scores, key=lambda pk: (-scores[pk], units[pk].first, rank[pk]))
            if units[pk].first < before_seq
            and (pk in nearby or similar.get(pk, -1.0) >= self.min_similarity)
        )
        return self._read(eligible, units, scores, namespace, k)

    def _read(
        self,
        eligible: Iterator[int],
        units: dict[int, _Unit],
        scores: dict[int, float],
        namespace: str,
        k: int,
    ) -> list[Recalled]:
        """The first ``k`` of ``eligible`` whose rows are still the units ranked (same
        namespace and key: a unit deleted meanwhile, its pk reused, is passed over for the
        next), with their text."""
        out: list[Recalled] = []
        while len(out) < k:
            wanted = list(itertools.islice(eligible, k - len(out)))
            if not wanted:
                break
            rows = self.index.chunks.fetch(wanted)
            for pk in wanted:
                row, unit = rows.get(pk), units[pk]
                if row is not None and row.namespace == namespace and row.key == unit.key:
                    out.append(
                        Recalled(unit.first, unit.created_at, row.text, 0, scores[pk], unit.last)
                    )
        return out

    def _units(self, pks: list[int], namespace: str) -> dict[int, _Unit]:
        """The units of these chunk ids that are this namespace's (a pk that another
        namespace reuses is not this thread's), read from their keys and ``created_at``
        alone (``labels``; a key of an older form: the whole row): their text is read for the
        few recalled."""
        units: dict[int, _Unit] = {}
        unlabelled = []
        for pk, (ns, key, when) in self.index.chunks.labels(pks, "created_at").items():
            if ns != namespace:
                continue
            unit = _Unit.labelled(key, when)
            if unit is None:
                unlabelled.append(pk)
            else:
                units[pk] = unit
        if unlabelled:
            rows = self.index.chunks.fetch(unlabelled)
            units |= {pk: _Unit.of(row) for pk, row in rows.items() if row.namespace == namespace}
        return units

    def _vector_ranking(
        self, query: str, namespace: str, notes: list[str] | None
    ) -> list[tuple[int, float]]:
        """The nearest units to the query without the thread's own names; [] without an
        embedder, or when it fails (noted)."""
        if self.index.embedder is None:
            return []
        text = self._without_thread_names(query, namespace)
        try:
            qvec = np.asarray(self.index.embed_query(text), dtype=np.float32)
            norm = float(np.linalg.norm(qvec))
            return self.index.chunks.vector(qvec / (norm or 1.0), [namespace], None, _DEPTH)
        except Exception as e:
            log.warning("recall searched keywords only: %s", e)
            if notes is not None:
                notes.append(f"recall used keywords only: the embedder failed ({e})"[:300])
            return []

    def _without_thread_names(self, query: str, namespace: str) -> str:
        """``query`` without the capitalized words that many of the thread's units hold."""
        names = {_POSSESSIVE.sub("", w) for w in _PROPER.findall(query)}
        names = {n for n in names if analyze(n)}
        if not names:
            return query
        total = self.index.chunks.count(namespace)
        if total < _NAME_MIN:
            return query
        floor = max(_NAME_MIN, math.ceil(_NAME_SHARE * total))
        common = [n for n in names if self.index.matching(n, namespace, floor)]
        if not common:
            return query
        pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, common)) + r")(?:['\u2019]s?)?\b")
        stripped = " ".join(pattern.sub("", query).split())
        return stripped if analyze(stripped) else query

    @staticmethod
    def _with_neighbours(keyword: dict[int, float], units: dict[int, _Unit]) -> dict[int, float]:
        """The keyword score of each unit that matched, plus a share of its neighbours'.
        (Giving a score to units that matched nothing themselves measured worse on planted
        facts, which only the vector finds: more units outranked them.)"""
        by_first = {units[pk].first: s for pk, s in keyword.items() if pk in units}
        by_last = {units[pk].last: s for pk, s in keyword.items() if pk in units}
        out: dict[int, float] = {}
        for pk, score in keyword.items():
            unit = units.get(pk)
            if unit is not None:
                around = by_last.get(unit.first - 1, 0.0) + by_first.get(unit.last + 1, 0.0)
                out[pk] = score + _NEIGHBOUR * around
        return out

    @staticmethod
    def _lift_dated(query: str, units: dict[int, _Unit], scores: dict[int, float]) -> None:
        """Lift the scores of units said in a period the query names."""
        named = periods(query, time.time())
        if not named:
            return
        for pk in scores:
            when = units[pk].created_at
            if any(p.contains(when, _TIME_SLACK_S) for p in named):
                scores[pk] += _TIME_BOOST
