"""Hybrid search over chunks of text: BM25 keywords + dense vectors, fused by reciprocal rank.

One engine serves documents (namespace ``collection:<id>``) and conversation memory
(``thread:<pk>``); every search names the namespaces it may read.

Storage is SQLite (tables in ``schema.py``): the rows in ``chunks`` are the truth, FTS5 keeps an
on-disk keyword index beside them. For speed each namespace is also held in memory once searched
(a *segment*): BM25 postings (``bm25.py``) and a float32 matrix of its vectors. A segment is
extended in place when this object adds chunks, and rebuilt from SQLite when the namespace's
version (bumped by triggers on every write, from any connection) no longer matches.

Vector search is exact (one matrix-vector product per namespace): p50 5.9 ms over 100,000
384-dimensional vectors (``benchmarks/search.py``), recall 1.0, nothing to build. An ANN
index (``usearch``: 0.75 ms but 166 s to build 100k vectors on 2 cores) would pay only past
about a million vectors per search, and would need building in the background; none is used.

Loading a namespace into memory costs about 5.6 s per 100,000 chunks (mostly tokenizing);
``preload`` does it ahead of the first search.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from chatwright.errors import StoreError, UserError
from chatwright.retrieval.bm25 import Grow, Postings, score_bm25
from chatwright.retrieval.filters import MetadataIndex, check_filters, filter_sql
from chatwright.retrieval.fusion import DEFAULT_RRF_K, convex_fusion, reciprocal_rank_fusion
from chatwright.retrieval.text import analyze, fts5_query

if TYPE_CHECKING:
    from chatwright.models.embeddings import Embedder

__all__ = ["DEFAULT_FUSION", "FLOORS", "Chunk", "Hit", "SearchIndex", "default_weights"]

Mode = Literal["hybrid", "keyword", "vector"]
Fusion = Literal["convex", "rrf"]
KeywordBackend = Literal["memory", "fts5"]

#: How hybrid search fuses its two retrievers (see ``fusion.py``).
DEFAULT_FUSION: Fusion = "convex"
# Weights per fusion method, tuned on SciFact's train split with all-MiniLM-L6-v2 vectors
# (``python -m chatwright.evals.beir DIR --tune``): cosines of one query spread over a narrow
# band of [-1, 1], so once scaled their differences are small and they get the larger weight.
_WEIGHTS: dict[str, dict[str, float]] = {
    "convex": {"keyword": 0.2, "vector": 0.8},
    "rrf": {"keyword": 1.0, "vector": 1.0},
}
# The lowest score each retriever can give: BM25 0, cosine similarity -1.
FLOORS = {"keyword": 0.0, "vector": -1.0}

_EMBED_BATCH = 64
_QUERY_CACHE = 64  # recent query embeddings kept
# Vectors are stored as float16 (half the bytes of float32; unit vectors lose ~1e-3 of cosine,
# which does not change SciFact's nDCG@10 at 3 decimals) and searched as float32.
_STORED_VECTOR = np.float16
_VECTOR_BYTES = 2
_SQL_BATCH = 500


@dataclass(frozen=True)
class Chunk:
    """A piece of text to index under a key unique within its namespace."""

    key: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: Sequence[float] | np.ndarray | None = None


@dataclass(frozen=True)
class Hit:
    """One search result. ``ranks``/``scores`` hold each retriever's 1-based rank and score."""

    key: str
    namespace: str
    text: str
    metadata: dict[str, Any]
    score: float
    ranks: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


class _Segment:
    """One namespace held in memory: chunk pks, BM25 postings and vectors, row-aligned."""

    def __init__(self, version: int, expected: int = 0) -> None:
        self.version = version
        self.expected = expected  # rows about to be loaded: room is reserved for them
        self.pks = Grow(np.int64)
        self.postings = Postings()
        self.vectors: Grow | None = None  # created with the first vector's width
        self.has_vector = Grow(np.bool_)
        self.metadata = MetadataIndex()

    def add(
        self,
        pks: Sequence[int],
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None],
        vectors: Sequence[bytes | None],
    ) -> None:
        self.pks.extend(np.asarray(pks, dtype=np.int64))
        self.postings.add([analyze(t) for t in texts])
        self.metadata.add(metadatas)
        present = np.array([v is not None for v in vectors], dtype=np.bool_)
        self.has_vector.extend(present)
        if self.vectors is None and present.any():
            first = next(v for v in vectors if v is not None)
            self.vectors = Grow(np.float32, len(first) // _VECTOR_BYTES)
            self.vectors.reserve(max(self.expected, self.pks.size))
            self.vectors.extend(np.zeros((self.pks.size - len(pks), self.vectors_dim), np.float32))
        if self.vectors is not None:
            self.vectors.extend(_matrix(vectors, self.vectors_dim))

    @property
    def vectors_dim(self) -> int:
        return 0 if self.vectors is None else self.vectors._data.shape[1]

    def mask(self, filters: dict[str, list[Any]] | None) -> np.ndarray | None:
        """Which rows pass ``filters`` (None: no filter, all rows)."""
        return None if not filters else self.metadata.mask(filters)


def _matrix(blobs: Sequence[bytes | None], dim: int) -> np.ndarray:
    out = np.zeros((len(blobs), dim), dtype=np.float32)
    for i, blob in enumerate(blobs):
        if blob is not None:
            if len(blob) != _VECTOR_BYTES * dim:
                got = len(blob) // _VECTOR_BYTES
                raise UserError(f"a stored vector has {got} dimensions, not {dim}")
            out[i] = np.frombuffer(blob, dtype=_STORED_VECTOR)
    return out


def _as_chunk(item: Chunk | Mapping[str, Any]) -> Chunk:
    if isinstance(item, Chunk):
        chunk = item
    elif isinstance(item, Mapping):
        chunk = Chunk(
            key=item["key"],
            text=item["text"],
            metadata=dict(item.get("metadata") or {}),
            vector=item.get("vector"),
        )
    else:
        raise UserError(f"cannot index a {type(item).__name__}: give a Chunk or a mapping")
    if not isinstance(chunk.key, str) or not chunk.key:
        raise UserError(f"a chunk key must be a non-empty string, not {chunk.key!r}")
    if not isinstance(chunk.text, str):
        raise UserError(f"chunk {chunk.key!r}: text must be a string")
    return chunk


def _vector_blob(vector: Sequence[float] | np.ndarray, key: str) -> bytes:
    """float16 bytes of the L2-normalized vector (a zero vector stays zero)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise UserError(f"chunk {key!r}: the vector has non-finite values")
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else v).astype(_STORED_VECTOR).tobytes()


def default_weights(fusion: Fusion = DEFAULT_FUSION) -> dict[str, float]:
    """The per-retriever weights a hybrid search uses when given none."""
    if fusion not in _WEIGHTS:
        raise UserError(f"unknown fusion {fusion!r}", hint="use convex or rrf")
    return dict(_WEIGHTS[fusion])


def _check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not namespace:
        raise UserError(f"a namespace must be a non-empty string, not {namespace!r}")
    return namespace


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def _delete_keys(db: sqlite3.Connection, namespace: str, keys: Sequence[str]) -> int:
    """Delete the chunks of ``namespace`` with these keys; returns how many existed."""
    deleted = 0
    for start in range(0, len(keys), _SQL_BATCH):
        batch = keys[start : start + _SQL_BATCH]
        deleted += db.execute(
            f"DELETE FROM chunks WHERE namespace = ? AND key IN ({_placeholders(len(batch))})",
            (namespace, *batch),
        ).rowcount
    return deleted


class SearchIndex:
    """Hybrid search over the ``chunks`` table of a SQLite connection.

    ``db`` must have the tables of ``m003_retrieval``. ``embedder`` embeds chunks added without
    a vector and the queries of vector/hybrid searches; without one, only keyword search (and
    vector search with an explicit ``query_vector``) is possible.

    ``keyword_backend``: ``"memory"`` (BM25 in numpy over the namespaces held in memory; the
    default) or ``"fts5"`` (SQLite FTS5 ``bm25()``: nothing to load, slower on common words).
    ``k1``/``b`` are BM25's parameters (memory backend). ``depth`` is how many results each
    retriever hands to fusion. At most about ``max_cached_chunks`` chunks are held in memory;
    the least recently searched namespaces are dropped first. ``lock`` serializes use of
    ``db``: pass the lock of any other code sharing the connection.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        embedder: Embedder | None = None,
        *,
        keyword_backend: KeywordBackend = "memory",
        k1: float = 1.2,
        b: float = 0.75,
        depth: int = 100,
        max_cached_chunks: int = 2_000_000,
        lock: threading.RLock | None = None,
    ) -> None:
        if keyword_backend not in ("memory", "fts5"):
            raise UserError(f"unknown keyword backend {keyword_backend!r}")
        self.db = db
        self.embedder = embedder
        self.keyword_backend = keyword_backend
        self.k1 = k1
        self.b = b
        self.depth = depth
        self.max_cached_chunks = max_cached_chunks
        self._lock = lock or threading.RLock()
        self._segments: dict[str, _Segment] = {}
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()  # see embed_query
        self._queries_lock = threading.Lock()

    # -- writing --------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            nested = self.db.in_transaction
            try:
                self.db.execute("SAVEPOINT chatwright_index" if nested else "BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"cannot write to the search index: {e}") from None
            try:
                yield self.db
            except BaseException as exc:
                if nested:
                    self.db.execute("ROLLBACK TO chatwright_index")
                    self.db.execute("RELEASE chatwright_index")
                else:
                    self.db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot write to the search index: {exc}") from exc
                raise
            else:
                self.db.execute("RELEASE chatwright_index" if nested else "COMMIT")

    def _version(self, namespace: str) -> int:
        row = self.db.execute(
            "SELECT version FROM chunk_namespaces WHERE namespace = ?", (namespace,)
        ).fetchone()
        return row[0] if row else 0

    def _embed_missing(self, chunks: list[Chunk]) -> list[bytes | None]:
        blobs: list[bytes | None] = [
            None if c.vector is None else _vector_blob(c.vector, c.key) for c in chunks
        ]
        missing = [i for i, blob in enumerate(blobs) if blob is None]
        if self.embedder is None or not missing:
            return blobs
        for start in range(0, len(missing), _EMBED_BATCH):
            batch = missing[start : start + _EMBED_BATCH]
            vectors = self.embedder.embed([chunks[i].text for i in batch])
            for i, vector in zip(batch, vectors, strict=True):
                blobs[i] = _vector_blob(vector, chunks[i].key)
        return blobs

    def add(self, namespace: str, items: Iterable[Chunk | Mapping[str, Any]]) -> int:
        """Index ``items`` (replacing chunks with the same key); returns how many were added.

        Chunks without a vector are embedded in batches when the index has an embedder.
        """
        namespace = _check_namespace(namespace)
        by_key = {c.key: c for c in map(_as_chunk, items)}  # a repeated key: the last wins
        chunks = list(by_key.values())
        if not chunks:
            return 0
        blobs = self._embed_missing(chunks)
        metadata = [
            json.dumps(c.metadata, ensure_ascii=False) if c.metadata else None for c in chunks
        ]
        with self._transaction() as db:
            before = self._version(namespace)
            self._check_dim(namespace, blobs)
            replaced = _delete_keys(db, namespace, [c.key for c in chunks])
            first = (db.execute("SELECT max(pk) FROM chunks").fetchone()[0] or 0) + 1
            pks = list(range(first, first + len(chunks)))
            db.executemany(
                "INSERT INTO chunks (pk, namespace, key, text, metadata, vector)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (pk, namespace, c.key, c.text, meta, blob)
                    for pk, c, meta, blob in zip(pks, chunks, metadata, blobs, strict=True)
                ],
            )
            self._after_write(namespace, before, replaced == 0, pks, chunks, blobs)
        return len(chunks)

    def _check_dim(self, namespace: str, blobs: Sequence[bytes | None]) -> None:
        sizes = {len(b) for b in blobs if b is not None}
        row = self.db.execute(
            "SELECT length(vector) FROM chunks WHERE namespace = ? AND vector IS NOT NULL LIMIT 1",
            (namespace,),
        ).fetchone()
        if row:
            sizes.add(row[0])
        if len(sizes) > 1:
            dims = sorted(s // _VECTOR_BYTES for s in sizes)
            raise UserError(
                f"vectors of different sizes {dims} in namespace {namespace!r}",
                hint="use one embedding model per namespace (clear it to change model)",
            )

    def _after_write(
        self,
        namespace: str,
        before: int,
        appended: bool,
        pks: Sequence[int],
        chunks: Sequence[Chunk],
        blobs: Sequence[bytes | None],
    ) -> None:
        """Extend the namespace's segment in place, or drop it to be rebuilt when searched."""
        segment = self._segments.get(namespace)
        if segment is None:
            return
        if appended and segment.version == before:
            segment.add(pks, [c.text for c in chunks], [c.metadata for c in chunks], blobs)
            segment.version = self._version(namespace)
        else:
            del self._segments[namespace]

    def remove(self, namespace: str, keys: Iterable[str]) -> int:
        """Remove the chunks with these keys; returns how many existed."""
        namespace = _check_namespace(namespace)
        keys = list(dict.fromkeys(keys))
        with self._transaction() as db:
            removed = _delete_keys(db, namespace, keys)
            self._segments.pop(namespace, None)
        return removed

    def clear(self, namespace: str) -> int:
        """Remove every chunk of ``namespace``; returns how many there were."""
        namespace = _check_namespace(namespace)
        with self._transaction() as db:
            removed = db.execute("DELETE FROM chunks WHERE namespace = ?", (namespace,)).rowcount
            self._segments.pop(namespace, None)
        return removed

    def preload(self, namespaces: Sequence[str]) -> None:
        """Load ``namespaces`` into memory now, so that their first search is not slowed."""
        with self._lock:
            self._fresh_segments(list(dict.fromkeys(map(_check_namespace, namespaces))))

    def count(self, namespace: str) -> int:
        """How many chunks ``namespace`` holds."""
        with self._lock:
            row = self.db.execute(
                "SELECT chunks FROM chunk_namespaces WHERE namespace = ?", (namespace,)
            ).fetchone()
        return row[0] if row else 0

    # -- searching ------------------------------------------------------------------------
    def search(
        self,
        query: str,
        namespaces: Sequence[str],
        k: int = 10,
        *,
        mode: Mode = "hybrid",
        filters: Mapping[str, Any] | None = None,
        query_vector: Sequence[float] | np.ndarray | None = None,
        fusion: Fusion = DEFAULT_FUSION,
        weights: Mapping[str, float] | None = None,
        rrf_k: float = DEFAULT_RRF_K,
    ) -> list[Hit]:
        """The ``k`` best chunks of ``namespaces`` for ``query``, best first.

        ``mode`` picks BM25 (``keyword``), embeddings (``vector``) or both fused by reciprocal
        rank (``hybrid``). Hybrid fuses by ``fusion``: ``convex`` (weighted sum of scaled scores)
        or ``rrf`` (reciprocal rank fusion with constant ``rrf_k``), with per-retriever
        ``weights`` (default: ``default_weights(fusion)``). ``filters``
        keeps chunks whose metadata equals each given value (a list value: any of them).
        Hybrid search without an embedder or ``query_vector`` is keyword search.
        """
        if mode not in ("hybrid", "keyword", "vector"):
            raise UserError(f"unknown search mode {mode!r}", hint="use hybrid, keyword or vector")
        weights = default_weights(fusion) if weights is None else weights
        if isinstance(namespaces, str):
            namespaces = [namespaces]
        namespaces = list(dict.fromkeys(map(_check_namespace, namespaces)))
        if k <= 0 or not namespaces:
            return []
        checked = check_filters(filters) if filters else None
        qvec = (
            None
            if mode == "keyword"
            else self._query_vector(query, query_vector, required=mode == "vector")
        )
        depth = max(k, self.depth)
        with self._lock:
            in_memory = self.keyword_backend == "memory" or (mode != "keyword" and qvec is not None)
            segments = self._fresh_segments(namespaces) if in_memory else []
            rankings: dict[str, list[tuple[int, float]]] = {}
            if mode != "vector":
                rankings["keyword"] = self._keyword(query, namespaces, segments, checked, depth)
            if mode != "keyword" and qvec is not None:
                rankings["vector"] = self._vector(qvec, segments, checked, depth)
            return self._hits(rankings, fusion, weights, rrf_k, k)

    def _query_vector(
        self, query: str, given: Sequence[float] | np.ndarray | None, *, required: bool
    ) -> np.ndarray | None:
        if given is not None:
            v = np.asarray(given, dtype=np.float32).reshape(-1)
            norm = float(np.linalg.norm(v))
            return v / norm if norm > 0 else v
        if self.embedder is None:
            if required:
                raise UserError(
                    "vector search needs an embedder or a query_vector",
                    hint="create the SearchIndex with an embedder, or search in keyword mode",
                )
            return None
        if not query.strip():
            return None
        return self.embed_query(query)

    def embed_query(self, query: str) -> np.ndarray:
        """The query's embedding, memoized: a turn's router, retrieval and recall often search
        the same text, and each embedding costs milliseconds."""
        if self.embedder is None:
            raise UserError("embedding a query needs an embedder")
        with self._queries_lock:
            cached = self._queries.get(query)
            if cached is not None:
                self._queries.move_to_end(query)
                return cached
        vector = np.asarray(self.embedder.embed([query]), dtype=np.float32)[0]
        with self._queries_lock:
            self._queries[query] = vector
            while len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        return vector

    def _fresh_segments(self, namespaces: Sequence[str]) -> list[_Segment]:
        """The in-memory segments of ``namespaces``, (re)loaded where their version moved."""
        rows = {
            namespace: (version, count)
            for namespace, version, count in self.db.execute(
                "SELECT namespace, version, chunks FROM chunk_namespaces"
                f" WHERE namespace IN ({_placeholders(len(namespaces))})",
                namespaces,
            )
        }
        out = []
        for namespace in namespaces:
            if namespace not in rows:
                continue
            version, count = rows[namespace]
            segment = self._segments.pop(namespace, None)
            if segment is None or segment.version != version:
                segment = _Segment(version, count)
                self._load(namespace, segment)
            self._segments[namespace] = segment  # most recently used last
            out.append(segment)
        self._evict(keep=len(out))
        return out

    def _evict(self, keep: int) -> None:
        """Forget the least recently searched segments past ``max_cached_chunks``."""
        total = sum(s.pks.size for s in self._segments.values())
        while total > self.max_cached_chunks and len(self._segments) > keep:
            oldest = next(iter(self._segments))
            total -= self._segments.pop(oldest).pks.size

    def _load(self, namespace: str, segment: _Segment) -> None:
        segment.pks.reserve(segment.expected)
        cursor = self.db.execute(
            "SELECT pk, text, metadata, vector FROM chunks WHERE namespace = ? ORDER BY pk",
            (namespace,),
        )
        while rows := cursor.fetchmany(10_000):
            pks, texts, metadatas, vectors = zip(*rows, strict=True)
            segment.add(pks, texts, [json.loads(m) if m else None for m in metadatas], vectors)

    def _keyword(
        self,
        query: str,
        namespaces: Sequence[str],
        segments: Sequence[_Segment],
        filters: dict[str, list[Any]] | None,
        depth: int,
    ) -> list[tuple[int, float]]:
        if self.keyword_backend == "fts5":
            return self._keyword_fts5(query, namespaces, filters, depth)
        terms = analyze(query)
        if not terms or not segments:
            return []
        pairs = [(s.postings, s.mask(filters)) for s in segments]
        scores = score_bm25(pairs, terms, k1=self.k1, b=self.b)
        return _top(segments, scores, depth, positive=True)

    def _keyword_fts5(
        self,
        query: str,
        namespaces: Sequence[str],
        filters: dict[str, list[Any]] | None,
        depth: int,
    ) -> list[tuple[int, float]]:
        match = fts5_query(query)
        if not match:
            return []
        where, params = filter_sql(filters or {}, "c.metadata")
        rows = self.db.execute(
            "SELECT c.pk, bm25(chunks_fts) AS s FROM chunks_fts JOIN chunks AS c"
            " ON c.pk = chunks_fts.rowid WHERE chunks_fts MATCH ?"
            f" AND c.namespace IN ({_placeholders(len(namespaces))}){where}"
            " ORDER BY s LIMIT ?",
            [match, *namespaces, *params, depth],
        ).fetchall()
        return [(pk, -score) for pk, score in rows]

    def _vector(
        self,
        qvec: np.ndarray,
        segments: Sequence[_Segment],
        filters: dict[str, list[Any]] | None,
        depth: int,
    ) -> list[tuple[int, float]]:
        scores, used = [], []
        for segment in segments:
            if segment.vectors is None:
                continue
            if segment.vectors_dim != len(qvec):
                raise UserError(
                    f"the query vector has {len(qvec)} dimensions, the index {segment.vectors_dim}"
                )
            sims = segment.vectors.array @ qvec
            keep = segment.has_vector.array
            mask = segment.mask(filters)
            keep = keep if mask is None else keep & mask
            scores.append(np.where(keep, sims, -np.inf).astype(np.float32))
            used.append(segment)
        return _top(used, scores, depth, positive=False)

    def _hits(
        self,
        rankings: Mapping[str, list[tuple[int, float]]],
        fusion: Fusion,
        weights: Mapping[str, float],
        rrf_k: float,
        k: int,
    ) -> list[Hit]:
        raw = {name: dict(ranking) for name, ranking in rankings.items()}
        if len(rankings) == 1:
            name, ranking = next(iter(rankings.items()))
            chosen = [(pk, score, {name: i}) for i, (pk, score) in enumerate(ranking[:k], 1)]
        else:
            if fusion == "rrf":
                lists = {name: [pk for pk, _ in r] for name, r in rankings.items()}
                fused = reciprocal_rank_fusion(lists, weights=weights, k=rrf_k, limit=k)
            else:
                fused = convex_fusion(rankings, weights=weights, floors=FLOORS, limit=k)
            chosen = [(f.item, f.score, f.ranks) for f in fused]
        rows = self._rows([pk for pk, _, _ in chosen])
        return [
            Hit(
                key=rows[pk][1],
                namespace=rows[pk][0],
                text=rows[pk][2],
                metadata=json.loads(rows[pk][3]) if rows[pk][3] else {},
                score=float(score),
                ranks=dict(ranks),
                scores={name: float(raw[name][pk]) for name in ranks},
            )
            for pk, score, ranks in chosen
            if pk in rows
        ]

    def _rows(self, pks: Sequence[int]) -> dict[int, tuple[str, str, str, str | None]]:
        if not pks:
            return {}
        rows = self.db.execute(
            "SELECT pk, namespace, key, text, metadata FROM chunks"
            f" WHERE pk IN ({_placeholders(len(pks))})",
            list(pks),
        ).fetchall()
        return {pk: (ns, key, text, meta) for pk, ns, key, text, meta in rows}


def _top(
    segments: Sequence[_Segment], scores: Sequence[np.ndarray], depth: int, *, positive: bool
) -> list[tuple[int, float]]:
    """The ``depth`` best (pk, score) over all segments, best first.

    ``positive``: only scores > 0 (BM25: at least one term matched); else only finite ones.
    """
    if not scores:
        return []
    flat = np.concatenate(scores) if len(scores) > 1 else scores[0]
    pks = (
        np.concatenate([s.pks.array for s in segments])
        if len(segments) > 1
        else (segments[0].pks.array)
    )
    valid = flat > 0 if positive else np.isfinite(flat)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return []
    take = min(depth, n_valid)
    candidates = np.flatnonzero(valid)
    if take < len(candidates):
        part = np.argpartition(-flat[candidates], take - 1)[:take]
        candidates = candidates[part]
    # best first; ties by pk (insertion order) so results are deterministic
    order = np.lexsort((pks[candidates], -flat[candidates]))
    best = candidates[order]
    return [(int(pks[i]), float(flat[i])) for i in best if not math.isnan(flat[i])]
