"""An in-memory BM25 index in numpy: postings per namespace, scored on the fly.

Why not FTS5's ``bm25()``: a natural-language question is an OR of its words, and FTS5 scores
every row that contains any of them, one at a time (about 0.7 µs a row: an OR of three common
words matching 52,921 of 100,000 chunks took 36 ms). ``benchmarks/search.py`` over 100,000
chunks: FTS5 p50 23.4 ms, p99 53 ms; this index p50 0.72 ms, p99 1.1 ms, with the same
SciFact quality (nDCG@10 0.683 vs 0.687). FTS5 stays the on-disk index
(``keyword_backend="fts5"``: nothing to load); this is the fast path.

The postings of a namespace are kept in a few immutable *blocks* (term → doc indices and term
frequencies, in CSR layout). Adding chunks appends a block, then the two newest blocks are
merged while the older holds at most twice the postings of the newer (a binary counter: each
posting is merged about log2(n) times, and there are about log2(n) blocks, at most
``MAX_BLOCKS``). Merging every block into one every 9th add instead cost a thread's recall
index 77 ms every 8th turn at 10,000 turns, under the store's lock. Scores are computed at
query time from term frequencies, so the BM25 parameters ``k1`` and ``b`` can change per
query, and the statistics (number of chunks, average length, document frequencies) are those
of the namespaces searched together. ``to_arrays`` and
``from_arrays`` give the blocks as plain arrays, for a store to persist (no file I/O here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Grow", "Postings", "PostingsBlock", "score_bm25"]

MAX_BLOCKS = 24  # past this the two newest blocks are merged, whatever their sizes
_MERGE_RATIO = 2


class Grow:
    """A numpy array that grows along its first axis with amortized O(1) appends."""

    def __init__(self, dtype: type | np.dtype, width: int | None = None) -> None:
        shape = (0,) if width is None else (0, width)
        self._data = np.zeros(shape, dtype=dtype)
        self.size = 0

    @classmethod
    def wrap(cls, array: np.ndarray) -> Grow:
        """A full ``Grow`` over ``array``, not copied: it may be read-only (a memory map), as
        the first ``extend`` copies it into a new, larger array before writing."""
        grow = cls(array.dtype)
        grow._data = array
        grow.size = len(array)
        return grow

    @property
    def array(self) -> np.ndarray:
        """A view of the filled part (no copy)."""
        return self._data[: self.size]

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` rows in all, so that filling them copies nothing."""
        if capacity > len(self._data):
            grown = np.zeros((capacity, *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown

    def extend(self, rows: np.ndarray) -> None:
        need = self.size + len(rows)
        if need > len(self._data):
            self.reserve(max(need, 2 * len(self._data), 16))
        self._data[self.size : need] = rows
        self.size = need


@dataclass(frozen=True)
class _Block:
    """Postings of a run of documents: ``docs[indptr[t]:indptr[t+1]]`` contain term ``t``."""

    vocab: dict[str, int]
    indptr: np.ndarray
    docs: np.ndarray
    tfs: np.ndarray

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        tid = self.vocab.get(term)
        if tid is None:
            return None
        start, end = self.indptr[tid], self.indptr[tid + 1]
        return self.docs[start:end], self.tfs[start:end]


def _block(term_ids: np.ndarray, doc_ids: np.ndarray, vocab: dict[str, int]) -> _Block:
    """A block from one (term id, doc id) pair per token occurrence."""
    n_docs = int(doc_ids.max()) + 1 if len(doc_ids) else 1
    pairs, tfs = np.unique(term_ids * n_docs + doc_ids, return_counts=True)
    terms = pairs // n_docs
    indptr = np.searchsorted(terms, np.arange(len(vocab) + 1))
    return _Block(vocab, indptr, (pairs % n_docs).astype(np.int32), tfs.astype(np.float32))


def _merged(blocks: Sequence[_Block]) -> _Block:
    """One block with the postings of ``blocks`` (which hold disjoint documents)."""
    vocab: dict[str, int] = {}
    term_ids, doc_ids = [], []
    for block in blocks:
        remap = np.array([vocab.setdefault(t, len(vocab)) for t in block.vocab], np.int64)
        per_term = np.diff(block.indptr)
        tids = np.repeat(remap, per_term)
        # one (term, doc) pair per occurrence: repeat each posting tf times
        reps = block.tfs.astype(np.int64)
        term_ids.append(np.repeat(tids, reps))
        doc_ids.append(np.repeat(block.docs.astype(np.int64), reps))
    return _block(np.concatenate(term_ids), np.concatenate(doc_ids), vocab)


PostingsBlock = tuple[list[str], np.ndarray, np.ndarray, np.ndarray]
"""One block as plain values: (terms in id order, indptr, docs, tfs); see ``_Block``."""


def _check_block(
    n_terms: int, indptr: np.ndarray, docs: np.ndarray, tfs: np.ndarray, n_docs: int
) -> None:
    if indptr.shape != (n_terms + 1,) or docs.ndim != 1 or tfs.shape != docs.shape:
        raise ValueError("postings arrays of inconsistent shapes")
    if indptr[0] != 0 or indptr[-1] != len(docs) or np.any(np.diff(indptr) < 0):
        raise ValueError("postings offsets out of order")
    if len(docs) and (int(docs.min()) < 0 or int(docs.max()) >= n_docs):
        raise ValueError("a posting names a document that does not exist")


class Postings:
    """BM25 postings of one namespace; documents are numbered 0, 1, 2... in order of adding."""

    def __init__(self) -> None:
        self._blocks: list[_Block] = []
        self._lengths = Grow(np.float32)

    def to_arrays(self) -> tuple[np.ndarray, list[PostingsBlock]]:
        """(document lengths, blocks): everything :meth:`from_arrays` needs, not copied."""
        blocks = [(list(b.vocab), b.indptr, b.docs, b.tfs) for b in self._blocks]
        return self.lengths, blocks

    @classmethod
    def from_arrays(cls, lengths: np.ndarray, blocks: Sequence[PostingsBlock]) -> Postings:
        """Postings equal to those that gave ``to_arrays`` (the arrays are used, not copied).

        Checks the shapes and that every posting names a document, so that damaged arrays
        raise ValueError here rather than fail a search later.
        """
        postings = cls()
        postings._lengths = Grow.wrap(np.asarray(lengths, dtype=np.float32))
        for terms, indptr, docs, tfs in blocks:
            _check_block(len(terms), indptr, docs, tfs, postings.size)
            vocab = dict(zip(terms, range(len(terms)), strict=True))
            if len(vocab) != len(terms):
                raise ValueError("a postings block repeats a term")
            postings._blocks.append(_Block(vocab, indptr, docs, tfs))
        return postings

    @property
    def size(self) -> int:
        return self._lengths.size

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths.array

    def add(self, documents: Sequence[Sequence[str]]) -> None:
        """Append documents, each given as its list of terms (see ``text.analyze``)."""
        if not documents:
            return
        vocab: dict[str, int] = {}
        ids = [vocab.setdefault(t, len(vocab)) for terms in documents for t in terms]
        lengths = np.fromiter((len(t) for t in documents), dtype=np.int64, count=len(documents))
        docs = np.repeat(np.arange(self.size, self.size + len(documents)), lengths)
        self._blocks.append(_block(np.asarray(ids, dtype=np.int64), docs, vocab))
        self._lengths.extend(lengths.astype(np.float32))
        blocks = self._blocks
        while len(blocks) > 1 and (
            len(blocks) > MAX_BLOCKS or len(blocks[-2].docs) <= _MERGE_RATIO * len(blocks[-1].docs)
        ):
            blocks[-2:] = [_merged(blocks[-2:])]

    def postings(self, term: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """(doc indices, term frequencies) of ``term``, one pair per block that has it."""
        found = (block.postings(term) for block in self._blocks)
        return [p for p in found if p is not None]

    def df(self, term: str) -> int:
        """How many documents contain ``term`` (offsets only: no postings are sliced)."""
        n = 0
        for block in self._blocks:
            tid = block.vocab.get(term)
            if tid is not None:
                n += int(block.indptr[tid + 1]) - int(block.indptr[tid])
        return n


def score_bm25(
    segments: Sequence[tuple[Postings, np.ndarray | None]],
    terms: Sequence[str],
    *,
    k1: float = 1.2,
    b: float = 0.75,
) -> list[np.ndarray]:
    """BM25 scores of every document of each segment for the query ``terms``.

    ``segments`` pairs each namespace's postings with an optional boolean mask of the
    documents allowed (filters); masked-out documents score 0. Statistics are pooled over all
    the segments. The idf is Lucene's ``ln(1 + (N - df + 0.5) / (df + 0.5))``, never negative.
    """
    n_docs = sum(p.size for p, _ in segments)
    total = sum(float(p.lengths.sum()) for p, _ in segments)
    scores = [np.zeros(p.size, dtype=np.float32) for p, _ in segments]
    if n_docs == 0 or total == 0:
        return scores
    avgdl = total / n_docs
    norms = [k1 * (1.0 - b) + (k1 * b / avgdl) * p.lengths for p, _ in segments]
    for term in dict.fromkeys(terms):
        lists = [p.postings(term) for p, _ in segments]
        df = sum(len(docs) for per in lists for docs, _ in per)
        if df == 0:
            continue
        idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
        for per, norm, out in zip(lists, norms, scores, strict=True):
            if len(per) > 1:  # the blocks' documents are disjoint: one pass over them all
                per = [(np.concatenate([d for d, _ in per]), np.concatenate([t for _, t in per]))]
            for docs, tfs in per:
                out[docs] += idf * tfs * (k1 + 1.0) / (tfs + norm[docs])
    for (_, mask), out in zip(segments, scores, strict=True):
        if mask is not None:
            out[~mask] = 0.0
    return scores
