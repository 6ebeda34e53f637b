"""Recall ranking variants on LoCoMo-format conversations, side by side (issue 14).

``chatwright eval memory`` measures the engine as it ships. This script measures *ideas* before
they go into it: it rebuilds recall's units the way the eval replays them (a user message and
the answers after it, split where a session changes), embeds units, utterances and questions
once with the default local embedder (cached under ``--cache``), and ranks every question with
each variant below in numpy. Its ``baseline`` is the engine's ranking (BM25 plus half of each
neighbour's score, cosine with the question without the thread's names, convex fusion 0.2/0.8)
without the date lift, so it reads ~0.005 below the engine.

    .venv/bin/python evals/memory/variants.py ../shared/data/locomo-dev/locomo5.json

Prints evidence recall@3 and @5 per category for each variant, and the ceiling: the best any
ranking of these units could do with k units.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import pickle
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chatwright.evals.memory import CATEGORIES, Conversation, load
from chatwright.search.text import analyze

_FRAME = re.compile(
    r"^(what|which|who|whom|whose|when|where|why|how( many| much| long| often)?|would|could|"
    r"should|is|are|was|were|do|does|did|has|have|had|can|will)\b\s*",
    re.I,
)


class BM25:
    def __init__(self, docs: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        toks = [analyze(t) for t in docs]
        self.n = len(docs)
        self.avg = sum(map(len, toks)) / max(1, self.n)
        self.df = Counter(w for t in toks for w in set(t))
        self.tf = [Counter(t) for t in toks]
        self.lengths = np.array([len(t) for t in toks], dtype=float)
        self.k1, self.b = k1, b

    def score(self, query: str) -> np.ndarray:
        out = np.zeros(self.n)
        for word in set(analyze(query)):
            df = self.df.get(word, 0)
            if not df:
                continue
            idf = math.log(1 + (self.n - df + 0.5) / (df + 0.5))
            norm = self.k1 * (1 - self.b + self.b * self.lengths / self.avg)
            tf = np.array([t.get(word, 0) for t in self.tf], dtype=float)
            out += idf * tf * (self.k1 + 1) / (tf + norm)
        return out


def _strip(text: str, names: list[str]) -> str:
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")(?:['\u2019]s?)?\b")
    stripped = " ".join(pattern.sub("", text).split())
    return stripped if analyze(stripped) else text


def _scaled(x: np.ndarray, floor: float) -> np.ndarray:
    top = x.max()
    return np.ones_like(x) if top <= floor else (x - floor) / (top - floor)


class Data:
    """One conversation: its units, texts and vectors."""

    def __init__(self, conv: Conversation, embed: Callable[[list[str]], np.ndarray]) -> None:
        self.conv = conv
        turns = conv.turns
        self.names = sorted({t.speaker for t in turns})
        units: list[list[int]] = []
        for i, t in enumerate(turns):
            if t.speaker == conv.speaker_a or not units or t.when != turns[units[-1][-1]].when:
                units.append([i])
            else:
                units[-1].append(i)
        self.units = units
        role = {True: "User: ", False: "Assistant: "}
        self.texts = [
            "\n".join(role[turns[i].speaker == conv.speaker_a] + turns[i].text for i in u)
            for u in units
        ]
        self.unit_of = {turns[i].dia_id: n for n, u in enumerate(units) for i in u}
        self.session = [turns[u[0]].when for u in units]
        qs = [q.text for q in conv.questions]
        stripped = [_strip(q, self.names) for q in qs]
        self.v = {
            "units": embed(self.texts),
            "utterances": embed([t.text for t in turns]),
            "units_no_names": embed([_strip(t, self.names) for t in self.texts]),
            "q": embed(stripped),
            "q_names": embed(qs),
            "q_no_frame": embed([" ".join(_FRAME.sub("", s).split()) or s for s in stripped]),
        }
        self.bm = BM25(self.texts)
        text = [t.text for t in turns]
        self.bm_context = BM25([" ".join(text[max(0, u[0] - 1) : u[-1] + 2]) for u in units])


def rank(
    d: Data,
    qi: int,
    *,
    query: str = "q",
    units: str = "units",
    utterance: str | None = None,
    keywords: str = "neighbours",
    wk: float = 0.2,
    rocchio: float = 0.0,
    mmr: float = 0.0,
    session_prior: float = 0.0,
    cap: int | None = None,
) -> list[int]:
    q = d.conv.questions[qi].text
    if keywords == "context":
        kw = d.bm_context.score(q)
    else:
        s = d.bm.score(q)
        kw = s.copy()
        kw[1:] += 0.5 * s[:-1]
        kw[:-1] += 0.5 * s[1:]
        kw[s == 0] = 0
    qv = d.v[query][qi]
    cos = d.v[units] @ qv
    if utterance:
        per = d.v["utterances"] @ qv
        turns = d.conv.turns
        about = [n for n in d.names if re.search(rf"\b{re.escape(n)}\b", q)]
        if utterance == "max":
            cos = np.array([per[u].max() for u in d.units])
        elif utterance == "speaker" and len(about) == 1:
            best = np.array(
                [
                    max((per[i] for i in u if turns[i].speaker == about[0]), default=-1)
                    for u in d.units
                ]
            )
            cos = np.where(best > -1, 0.5 * best + 0.5 * cos, cos)
    n = len(cos)

    def fuse(cos: np.ndarray) -> tuple[np.ndarray, list[int]]:
        kidx = np.argsort(-kw)[:100]
        kidx = kidx[kw[kidx] > 0]
        ks = np.zeros(n)
        if len(kidx):
            scaled = _scaled(kw[kidx], 0.0)
            ks[:] = scaled.min()
            ks[kidx] = scaled
        vidx = np.argsort(-cos)[:100]
        scaled = _scaled(cos[vidx], -1.0)
        vs = np.full(n, scaled.min())
        vs[vidx] = scaled
        return wk * ks + (1 - wk) * vs, sorted(set(kidx) | set(vidx))

    f, cand = fuse(cos)
    if rocchio:
        top = sorted(cand, key=lambda i: -f[i])[:3]
        q2 = qv + rocchio * d.v[units][top].mean(0)
        f, cand = fuse(d.v[units] @ (q2 / np.linalg.norm(q2)))
    if session_prior:
        sess = np.array([w or 0 for w in d.session])
        prior = np.zeros(n)
        for w in set(sess):
            prior[sess == w] = cos[sess == w].mean()
        f = f + session_prior * _scaled(prior, prior.min())
    order = sorted(cand, key=lambda i: (-f[i], i))
    if mmr:
        chosen: list[int] = []
        pool = order[:50]
        while pool and len(chosen) < 10:
            best = max(
                pool,
                key=lambda i: (
                    f[i]
                    - mmr * max((float(d.v[units][i] @ d.v[units][j]) for j in chosen), default=0)
                ),
            )
            chosen.append(best)
            pool.remove(best)
        order = chosen + [i for i in order if i not in chosen]
    if cap:
        per_session: Counter = Counter()
        first, rest = [], []
        for i in order:
            (rest if per_session[d.session[i]] >= cap else first).append(i)
            per_session[d.session[i]] += 1
        order = first + rest
    return order


VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "question with the names": {"query": "q_names"},
    "question without its wh- frame": {"query": "q_no_frame"},
    "units embedded without the names": {"units": "units_no_names"},
    "max over the unit's utterances": {"utterance": "max"},
    "named speaker's utterance, 0.5": {"utterance": "speaker"},
    "keywords over unit + 1 utterance each side": {"keywords": "context"},
    "keyword weight 0.3": {"wk": 0.3},
    "Rocchio feedback 0.6 (top 3)": {"rocchio": 0.6},
    "MMR 0.1": {"mmr": 0.1},
    "session prior 0.1": {"session_prior": 0.1},
    "at most 2 units a session": {"cap": 2},
}


def evaluate(data: list[Data], options: dict[str, Any], ks: tuple[int, ...]) -> dict[int, dict]:
    hits = {k: Counter() for k in ks}
    total: Counter = Counter()
    for d in data:
        for qi, q in enumerate(d.conv.questions):
            order = rank(d, qi, **options)
            for k in ks:
                top = set(order[:k])
                hits[k][q.category] += sum(d.unit_of.get(e, -1) in top for e in q.evidence)
            total[q.category] += len(q.evidence)
    return {k: _row(hits[k], total) for k in ks}


def ceiling(data: list[Data], ks: tuple[int, ...]) -> dict[int, dict]:
    hits = {k: Counter() for k in ks}
    total: Counter = Counter()
    for d in data:
        for q in d.conv.questions:
            per_unit = Counter(d.unit_of[e] for e in q.evidence if e in d.unit_of)
            for k in ks:
                hits[k][q.category] += sum(c for _, c in per_unit.most_common(k))
            total[q.category] += len(q.evidence)
    return {k: _row(hits[k], total) for k in ks}


def _row(hits: Counter, total: Counter) -> dict[str, float]:
    row = {CATEGORIES[c]: hits[c] / total[c] for c in sorted(total)}
    row["all"] = sum(hits.values()) / sum(total.values())
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="LoCoMo-format JSON files")
    parser.add_argument("--cache", default="/tmp/chatwright-recall-variants", help="vectors")
    args = parser.parse_args(argv)
    conversations = [c for f in args.files for c in load(f)]
    key = hashlib.sha256(b"".join(Path(f).read_bytes() for f in args.files)).hexdigest()[:16]
    cache = Path(args.cache) / f"{key}.pkl"
    if cache.exists():
        data = pickle.loads(cache.read_bytes())
    else:
        from chatwright.models.embeddings import get_embedder

        embedder = get_embedder("local:all-minilm-l6-v2")
        data = [Data(c, lambda t: np.asarray(embedder.embed(t))) for c in conversations]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(data))
    ks = (3, 5)
    names = [*CATEGORIES.values(), "all"]
    print(f"{'variant':<44}" + "".join(f"{n[:8]:>9}" for n in names) + "   (recall@5; @3 all)")
    rows = {"ceiling (best possible)": ceiling(data, ks)}
    rows |= {name: evaluate(data, options, ks) for name, options in VARIANTS.items()}
    for name, row in rows.items():
        cells = "".join(f"{row[5][n]:>9.3f}" for n in names)
        print(f"{name:<44}{cells}   {row[3]['all']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
