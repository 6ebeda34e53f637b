"""The SQLite store's chunks and their search (:class:`~chatwright.store.base.ChunkIndex`).

The rows of ``chunks`` are the truth (tables in ``migrations.py``, ``m003_search_index``);
with ``keyword_backend="fts5"``, FTS5 keeps an on-disk keyword index beside them (made the
first time that backend searches: the default needs none, ``m012_fts_on_demand``). For
speed each namespace is also held in memory once searched (a *segment*): BM25 postings
(``search/bm25.py``) and a float32 matrix of its vectors. A segment is extended in place when
this object adds chunks, and rebuilt from SQLite when the namespace's version (bumped by
triggers on every write, from any connection) no longer matches. The store builds one of
these, so every bot of a process shares its segments.

Vector search is exact (one matrix-vector product per namespace): p50 5.9 ms over 100,000
384-dimensional vectors (``benchmarks/search.py``), recall 1.0, nothing to build. An ANN
index (``usearch``: 0.75 ms but 166 s to build 100k vectors on 2 cores) would pay only past
about a million vectors per search, and would need building in the background; none is used.

Loading a namespace from its rows costs about 5.6 s per 100,000 chunks (mostly tokenizing), so
a namespace of at least ``persist_min_chunks`` chunks is also *persisted*: after such a load
its segment's arrays are written to one file beside the database (``<db>.segments/``, see
``SegmentFiles``), and a process that starts later maps that file instead and reads only the
rows added since. The file is used only while it provably covers every row it claims: same
database (``m007_database_id``), and ``version`` has moved by exactly the number of rows added
after it, which any delete or update of the namespace breaks (each counts without adding a
row). Otherwise the namespace is loaded from its rows and the file rewritten. ``preload`` does
all this ahead of the first search.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from chatwright.errors import StoreError, UserError
from chatwright.search.bm25 import Grow, Postings, score_bm25
from chatwright.search.filters import MetadataIndex, Scalar
from chatwright.search.text import analyze, fts5_query
from chatwright.store.base import ChunkRecord, IndexedChunk
from chatwright.store.migrations import ensure_fts
from chatwright.store.segment_files import FORMAT, SegmentFiles

__all__ = ["KeywordBackend", "SQLiteChunks"]

log = logging.getLogger(__name__)

KeywordBackend = Literal["memory", "fts5"]

# Vectors are stored in 8 bits (a unit vector's components in int8 steps of its largest
# magnitude / 127, and the scale that makes the decoded vector unit length again: 1 byte a
# dimension and 5 of header, half float16's bytes; a cosine moves by ~1e-3 typically,
# by sqrt(dim) * max|v| / 254 at worst; SciFact nDCG@10 hybrid 0.7348 against 0.7346, LoCoMo
# recall@5 0.618 either way: benchmarks/README.md) and searched as float32.
# Rows written before are float16 (2 bytes a dimension) and read as they are: a blob of odd
# length is 8-bit, of even length float16 (so vectors of an odd dimension, which only tests
# make, stay float16).
_INT8_HEADER = struct.Struct("<Bf")  # a format byte (1), the scale (float32)
_INT8_FORMAT = 1
_SQL_BATCH = 500


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
        self.unsaved = 0  # rows not in the namespace's persisted file (see _persist_grown)

    def add(
        self,
        pks: Sequence[int],
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None],
        vectors: Sequence[bytes | None],
    ) -> None:
        self.pks.extend(np.asarray(pks, dtype=np.int64))
        self.postings.add([analyze(t) for t in texts])
        self.metadata.add(metadatas)
        present = np.array([v is not None for v in vectors], dtype=np.bool_)
        self.has_vector.extend(present)
        if self.vectors is None and present.any():
            first = next(v for v in vectors if v is not None)
            self.vectors = Grow(np.float32, _blob_dim(len(first)))
            self.vectors.reserve(max(self.expected, self.pks.size))
            self.vectors.extend(np.zeros((self.pks.size - len(pks), self.vectors_dim), np.float32))
        if self.vectors is not None:
            self.vectors.extend(_matrix(vectors, self.vectors_dim))

    @property
    def vectors_dim(self) -> int:
        return 0 if self.vectors is None else self.vectors._data.shape[1]

    def mask(self, filters: Mapping[str, Sequence[Scalar]] | None) -> np.ndarray | None:
        """Which rows pass ``filters`` (None: no filter, all rows)."""
        return None if not filters else self.metadata.mask(filters)

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-ready description, named arrays): what :meth:`from_arrays` needs."""
        lengths, blocks = self.postings.to_arrays()
        rows, groups, metadata_rows = self.metadata.to_arrays()
        arrays = {
            "pks": self.pks.array,
            "lengths": lengths,
            "has_vector": self.has_vector.array,
            "metadata_rows": metadata_rows,
        }
        if self.vectors is not None:
            arrays["vectors"] = self.vectors.array
        for i, (_, indptr, docs, tfs) in enumerate(blocks):
            arrays |= {f"indptr{i}": indptr, f"docs{i}": docs, f"tfs{i}": tfs}
        return {"rows": rows, "terms": [b[0] for b in blocks], "metadata": groups}, arrays

    @classmethod
    def from_arrays(
        cls, version: int, described: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> _Segment:
        """The segment that gave ``to_arrays`` (arrays used as they are, read-only is fine);
        ValueError or KeyError where the parts do not fit together."""
        segment = cls(version)
        pks = arrays["pks"]
        n = len(pks)
        blocks = [
            (terms, arrays[f"indptr{i}"], arrays[f"docs{i}"], arrays[f"tfs{i}"])
            for i, terms in enumerate(described["terms"])
        ]
        segment.postings = Postings.from_arrays(arrays["lengths"], blocks)
        segment.metadata = MetadataIndex.from_arrays(
            n, described["metadata"], arrays["metadata_rows"]
        )
        vectors = arrays.get("vectors")
        sizes = {segment.postings.size, described["rows"], len(arrays["has_vector"])}
        if vectors is not None:
            sizes.add(len(vectors) if vectors.ndim == 2 else -1)
        if sizes != {n} or pks.ndim != 1 or np.any(np.diff(pks) <= 0):
            raise ValueError("the arrays of a segment do not fit together")
        segment.pks = Grow.wrap(pks)
        segment.has_vector = Grow.wrap(arrays["has_vector"])
        segment.vectors = None if vectors is None else Grow.wrap(vectors)
        return segment


# One file per persisted segment: magic, the header's length (8 bytes, little-endian), the
# header (JSON), then each array's bytes at a 64-byte-aligned offset from the aligned end of
# the header. One file, so that replacing it (os.replace) is atomic for readers.
def _blob_dim(size: int) -> int:
    """The dimension of a stored vector of ``size`` bytes."""
    return size - _INT8_HEADER.size if size % 2 else size // 2


def _blob(vector: np.ndarray | None) -> bytes | None:
    if vector is None:
        return None
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(v)):
        raise UserError("a vector to store holds NaN or infinite values")
    if len(v) % 2:
        return v.astype(np.float16).tobytes()
    top = float(np.max(np.abs(v))) if len(v) else 0.0
    q = np.clip(np.rint(v / (top / 127.0 if top > 0 else 1.0)), -127, 127).astype(np.int8)
    # The scale gives the decoded vector the input's length, exactly 1 for a unit vector (all
    # the index stores): a function of q alone then, so a vector read back, normalized and
    # written again (ingest reuses unchanged chunks' vectors) is stored byte for byte the same.
    length = float(np.linalg.norm(v.astype(np.float64)))
    if abs(length - 1.0) < 1e-4:
        length = 1.0
    q_length = float(np.linalg.norm(q.astype(np.float64)))
    scale = length / q_length if q_length > 0 else 1.0
    return _INT8_HEADER.pack(_INT8_FORMAT, scale) + q.tobytes()


def _unblob(blob: bytes | None) -> np.ndarray | None:
    if blob is None:
        return None
    if len(blob) % 2 == 0:
        return np.frombuffer(blob, dtype=np.float16).astype(np.float32)
    form, scale = _INT8_HEADER.unpack_from(blob)
    if form != _INT8_FORMAT:
        raise StoreError(f"a stored vector has an unknown format ({form})")
    return np.frombuffer(blob, dtype=np.int8, offset=_INT8_HEADER.size).astype(np.float32) * scale


def _matrix(blobs: Sequence[bytes | None], dim: int) -> np.ndarray:
    """The vectors of ``blobs`` as rows of float32 (zeros where None)."""
    out = np.zeros((len(blobs), dim), dtype=np.float32)
    int8 = []
    for i, blob in enumerate(blobs):
        if blob is None:
            continue
        if _blob_dim(len(blob)) != dim:
            raise UserError(f"a stored vector has {_blob_dim(len(blob))} dimensions, not {dim}")
        if len(blob) % 2:
            int8.append(i)
        else:
            out[i] = np.frombuffer(blob, dtype=np.float16)
    if int8:  # all at once: one buffer of rows (header + dim bytes each)
        rows = np.frombuffer(b"".join(blobs[i] for i in int8), dtype=np.uint8)  # type: ignore[misc]
        header = _INT8_HEADER.size
        rows = rows.reshape(len(int8), header + dim)
        if np.any(rows[:, 0] != _INT8_FORMAT):
            raise StoreError("a stored vector has an unknown format")
        scales = rows[:, 1:header].copy().view("<f4").reshape(-1)
        out[int8] = rows[:, header:].view(np.int8).astype(np.float32) * scales[:, None]
    return out


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


class SQLiteChunks:
    """Chunks in a SQLite connection with the tables of ``m003_search_index``.

    ``keyword_backend``: ``"memory"`` (BM25 in numpy over the namespaces held in memory; the
    default) or ``"fts5"`` (SQLite FTS5 ``bm25()``: nothing to load, slower on common words).
    ``k1``/``b`` are BM25's parameters (memory backend). At most about ``max_cached_chunks``
    chunks are held in memory; the least recently searched namespaces are dropped first.
    ``lock`` serializes use of ``db``: pass the lock of any other code sharing the connection.
    Namespaces of at least ``persist_min_chunks`` chunks (None: none) are persisted in
    ``segments_dir`` (default ``<database file>.segments`` beside it); never for a database
    without a file (``":memory:"``) or without ``m007_database_id``.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        keyword_backend: KeywordBackend = "memory",
        k1: float = 1.2,
        b: float = 0.75,
        max_cached_chunks: int = 2_000_000,
        lock: threading.RLock | None = None,
        persist_min_chunks: int | None = 2_000,
        segments_dir: str | Path | None = None,
    ) -> None:
        if keyword_backend not in ("memory", "fts5"):
            raise UserError(f"unknown keyword backend {keyword_backend!r}")
        self.db = db
        self.keyword_backend = keyword_backend
        self.k1 = k1
        self.b = b
        self.max_cached_chunks = max_cached_chunks
        self._lock = lock or threading.RLock()
        self._segments: dict[str, _Segment] = {}
        self._centroids: dict[str, tuple[int, np.ndarray | None, int]] = {}
        self.centroid_reads = 0  # how many times vectors were read for a centroid (for tests)
        self.persist_min_chunks = None if persist_min_chunks is None else max(1, persist_min_chunks)
        self.segments_dir = None if segments_dir is None else Path(segments_dir)
        self._segment_files: SegmentFiles | None = None
        self._segment_files_known = False
        self._fts_ready = False

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

    def write(self, namespace: str, chunks: Sequence[IndexedChunk]) -> None:
        if not chunks:
            return
        blobs = [_blob(c.vector) for c in chunks]
        metadata = [
            json.dumps(dict(c.metadata), ensure_ascii=False) if c.metadata else None for c in chunks
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
        self._persist_grown(namespace)

    def _check_dim(self, namespace: str, blobs: Sequence[bytes | None]) -> None:
        sizes = {_blob_dim(len(b)) for b in blobs if b is not None}
        row = self.db.execute(
            "SELECT length(vector) FROM chunks WHERE namespace = ? AND vector IS NOT NULL LIMIT 1",
            (namespace,),
        ).fetchone()
        if row:
            sizes.add(_blob_dim(row[0]))
        if len(sizes) > 1:
            dims = sorted(sizes)
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
        chunks: Sequence[IndexedChunk],
        blobs: Sequence[bytes | None],
    ) -> None:
        """Extend the namespace's segment in place, or drop it to be rebuilt when searched."""
        segment = self._segments.get(namespace)
        if segment is None:
            return
        if appended and segment.version == before:
            segment.add(pks, [c.text for c in chunks], [c.metadata for c in chunks], blobs)
            segment.version = self._version(namespace)
            segment.unsaved += len(pks)
        else:
            del self._segments[namespace]

    def delete(self, namespace: str, keys: Sequence[str]) -> int:
        with self._transaction() as db:
            removed = _delete_keys(db, namespace, list(keys))
            self._segments.pop(namespace, None)
        return removed

    def clear(self, namespace: str) -> int:
        with self._transaction() as db:
            removed = db.execute("DELETE FROM chunks WHERE namespace = ?", (namespace,)).rowcount
            self._segments.pop(namespace, None)
        return removed

    # -- reading --------------------------------------------------------------------------
    def count(self, namespace: str) -> int:
        with self._lock:
            row = self.db.execute(
                "SELECT chunks FROM chunk_namespaces WHERE namespace = ?", (namespace,)
            ).fetchone()
        return row[0] if row else 0

    def dimension(self, namespace: str) -> int:
        with self._lock:
            row = self.db.execute(
                "SELECT length(vector) FROM chunks"
                " WHERE namespace = ? AND vector IS NOT NULL LIMIT 1",
                (namespace,),
            ).fetchone()
        return _blob_dim(row[0]) if row else 0

    def vectors(self, namespace: str, prefix: str) -> dict[str, np.ndarray | None]:
        # keys starting with the prefix: a range of the (namespace, key) index
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None
        where, args = ("AND key >= ? AND key < ?", (prefix, upper)) if upper else ("", ())
        with self._lock:
            rows = self.db.execute(
                f"SELECT key, vector FROM chunks WHERE namespace = ? {where}", (namespace, *args)
            ).fetchall()
        return {key: _unblob(blob) for key, blob in rows}

    def last(self, namespace: str) -> ChunkRecord | None:
        with self._lock:
            row = self.db.execute(
                "SELECT key, text, metadata FROM chunks WHERE namespace = ?"
                " ORDER BY key DESC LIMIT 1",
                (namespace,),
            ).fetchone()
        if row is None:
            return None
        key, text, meta = row
        return ChunkRecord(namespace, key, text, json.loads(meta) if meta else {})

    def newest(self, namespace: str, limit: int, *, below: str | None = None) -> list[ChunkRecord]:
        sql = "SELECT key, text, metadata FROM chunks WHERE namespace = ?"
        params: list[Any] = [namespace]
        if below is not None:
            sql += " AND key < ?"
            params.append(below)
        with self._lock:
            rows = self.db.execute(sql + " ORDER BY key DESC LIMIT ?", (*params, limit)).fetchall()
        return [ChunkRecord(namespace, k, t, json.loads(m) if m else {}) for k, t, m in rows]

    def centroid(self, namespace: str) -> tuple[np.ndarray | None, int]:
        with self._lock:
            version = self._version(namespace)
            cached = self._centroids.get(namespace)
            if cached is not None and cached[0] == version:
                return cached[1], cached[2]
            total: np.ndarray | None = None
            count = 0
            for (blob,) in self.db.execute(
                "SELECT vector FROM chunks WHERE namespace = ? AND vector IS NOT NULL",
                (namespace,),
            ):
                v = _unblob(blob)
                if total is None:
                    total = np.zeros_like(v)
                if v.shape == total.shape:
                    total += v
                    count += 1
            self.centroid_reads += 1
            centroid = None
            if total is not None and count:
                norm = float(np.linalg.norm(total))
                centroid = total / norm if norm > 0 else None
            self._centroids[namespace] = (version, centroid, count)
        return centroid, count

    def preload(self, namespaces: Sequence[str]) -> None:
        with self._lock:
            self._fresh_segments(list(dict.fromkeys(namespaces)))

    def fetch(self, ids: Sequence[int]) -> dict[int, ChunkRecord]:
        if not ids:
            return {}
        out: dict[int, ChunkRecord] = {}
        with self._lock:
            for start in range(0, len(ids), _SQL_BATCH):
                batch = list(ids[start : start + _SQL_BATCH])
                for pk, ns, key, text, meta in self.db.execute(
                    "SELECT pk, namespace, key, text, metadata FROM chunks"
                    f" WHERE pk IN ({_placeholders(len(batch))})",
                    batch,
                ):
                    out[pk] = ChunkRecord(ns, key, text, json.loads(meta) if meta else {})
        return out

    def labels(self, ids: Sequence[int], field: str) -> dict[int, tuple[str, str, Any]]:
        if '"' in field:
            raise UserError(f"invalid metadata field {field!r}")
        out: dict[int, tuple[str, str, Any]] = {}
        with self._lock:
            for start in range(0, len(ids), _SQL_BATCH):
                batch = list(ids[start : start + _SQL_BATCH])
                for pk, ns, key, value in self.db.execute(
                    "SELECT pk, namespace, key, json_extract(metadata, ?) FROM chunks"
                    f" WHERE pk IN ({_placeholders(len(batch))})",
                    [f'$."{field}"', *batch],
                ):
                    out[pk] = (ns, key, value)
        return out

    # -- rankings -------------------------------------------------------------------------
    def keyword(
        self,
        query: str,
        namespaces: Sequence[str],
        filters: Mapping[str, Sequence[Scalar]] | None,
        depth: int,
    ) -> list[tuple[int, float]]:
        with self._lock:
            if self.keyword_backend == "fts5":
                return self._keyword_fts5(query, namespaces, filters, depth)
            terms = analyze(query)
            if not terms:
                return []
            segments = self._fresh_segments(namespaces)
            if not segments:
                return []
            pairs = [(s.postings, s.mask(filters)) for s in segments]
            scores = score_bm25(pairs, terms, k1=self.k1, b=self.b)
            return _top(segments, scores, depth, positive=True)

    def matching(self, query: str, namespace: str) -> int:
        """How many chunks of ``namespace`` hold at least one of the query's keywords: those
        ``keyword`` would rank, however deep. Counted from the postings' document lists (the
        memory backend: no scoring, whatever the namespace's size) or by FTS5."""
        with self._lock:
            if self.keyword_backend == "fts5":
                match = fts5_query(query)
                if not match:
                    return 0
                self._ensure_fts()
                row = self.db.execute(
                    "SELECT count(*) FROM chunks_fts JOIN chunks AS c ON c.pk = chunks_fts.rowid"
                    " WHERE chunks_fts MATCH ? AND c.namespace = ?",
                    (match, namespace),
                ).fetchone()
                return int(row[0])
            terms = list(dict.fromkeys(analyze(query)))
            segments = self._fresh_segments([namespace]) if terms else []
            if not segments:
                return 0
            lists = [docs for t in terms for docs, _ in segments[0].postings.postings(t)]
            if len(terms) == 1:  # the blocks' documents are disjoint
                return sum(len(docs) for docs in lists)
            return len(np.unique(np.concatenate(lists))) if lists else 0

    def term_counts(
        self, query: str, namespaces: Sequence[str]
    ) -> dict[str, tuple[int, tuple[int, ...]]]:
        """The memory backend reads the counts off its postings. The fts5 backend gives none
        ({}: routing goes without the vocabulary term): FTS5 counts a word's rows per
        namespace only by a MATCH joined with the chunks, 20-100 ms a word at 30,000 chunks,
        on every turn."""
        if self.keyword_backend == "fts5":
            return {}
        with self._lock:
            terms = list(dict.fromkeys(analyze(query)))
            if not terms:
                return {}
            return {
                namespace: (int(s.pks.size), tuple(s.postings.df(t) for t in terms))
                for namespace, s in self._fresh_named(namespaces)
                if s.pks.size
            }

    def _ensure_fts(self) -> None:
        """The FTS5 index exists (made and filled from the rows the first time: the default
        backend needs none, so a database has it only once this backend was used)."""
        if self._fts_ready:
            return
        with self._transaction() as db:
            if ensure_fts(db):
                log.info("built the FTS5 keyword index of the chunks (keyword_backend fts5)")
        self._fts_ready = True

    def _keyword_fts5(
        self,
        query: str,
        namespaces: Sequence[str],
        filters: Mapping[str, Sequence[Scalar]] | None,
        depth: int,
    ) -> list[tuple[int, float]]:
        match = fts5_query(query)
        if not match:
            return []
        self._ensure_fts()
        where, params = filter_sql(filters or {}, "c.metadata")
        rows = self.db.execute(
            "SELECT c.pk, bm25(chunks_fts) AS s FROM chunks_fts JOIN chunks AS c"
            " ON c.pk = chunks_fts.rowid WHERE chunks_fts MATCH ?"
            f" AND c.namespace IN ({_placeholders(len(namespaces))}){where}"
            " ORDER BY s LIMIT ?",
            [match, *namespaces, *params, depth],
        ).fetchall()
        return [(pk, -score) for pk, score in rows]

    def vector(
        self,
        query: np.ndarray,
        namespaces: Sequence[str],
        filters: Mapping[str, Sequence[Scalar]] | None,
        depth: int,
    ) -> list[tuple[int, float]]:
        with self._lock:
            segments = self._fresh_segments(namespaces)
            scores, used = [], []
            for segment in segments:
                if segment.vectors is None:
                    continue
                if segment.vectors_dim != len(query):
                    raise UserError(
                        f"the query vector has {len(query)} dimensions, "
                        f"the index {segment.vectors_dim}"
                    )
                sims = segment.vectors.array @ query
                keep = segment.has_vector.array
                mask = segment.mask(filters)
                keep = keep if mask is None else keep & mask
                scores.append(np.where(keep, sims, -np.inf).astype(np.float32))
                used.append(segment)
            return _top(used, scores, depth, positive=False)

    def similarities(
        self, query: np.ndarray, namespaces: Sequence[str]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The cosine of ``query`` with every chunk of each namespace, in one pass: namespace
        → (chunk ids, cosines; -inf for a chunk without a vector). What
        ``SearchIndex.nearest`` keeps, so that the router and a later search of any of these
        namespaces rank from it instead of passing over the vectors again."""
        with self._lock:
            out = {}
            for namespace, segment in self._fresh_named(namespaces):
                if segment.vectors is None:
                    continue
                if segment.vectors_dim != len(query):
                    raise UserError(
                        f"the query vector has {len(query)} dimensions, "
                        f"the index {segment.vectors_dim}"
                    )
                sims = (segment.vectors.array @ query).astype(np.float32, copy=False)
                keep = segment.has_vector.array
                if not keep.all():
                    sims = np.where(keep, sims, np.float32(-np.inf))
                out[namespace] = (segment.pks.array, sims)
            return out

    # -- the in-memory segments -------------------------------------------------------------
    def _fresh_segments(self, namespaces: Sequence[str]) -> list[_Segment]:
        """The in-memory segments of ``namespaces``, (re)loaded where their version moved."""
        return [segment for _, segment in self._fresh_named(namespaces)]

    def _fresh_named(self, namespaces: Sequence[str]) -> list[tuple[str, _Segment]]:
        """(namespace, segment) for :meth:`_fresh_segments` (namespaces without chunks left
        out)."""
        rows = {
            namespace: (version, count)
            for namespace, version, count in self.db.execute(
                "SELECT namespace, version, chunks FROM chunk_namespaces"
                f" WHERE namespace IN ({_placeholders(len(namespaces))})",
                list(namespaces),
            )
        }
        out = []
        for namespace in namespaces:
            if namespace not in rows:
                continue
            version, _ = rows[namespace]
            segment = self._segments.pop(namespace, None)
            if segment is None or segment.version != version:
                segment = self._build(namespace)
            self._segments[namespace] = segment  # most recently used last
            out.append((namespace, segment))
        self._evict(keep=len(out))
        return out

    def _evict(self, keep: int) -> None:
        """Forget the least recently searched segments past ``max_cached_chunks``."""
        total = sum(s.pks.size for s in self._segments.values())
        while total > self.max_cached_chunks and len(self._segments) > keep:
            oldest = next(iter(self._segments))
            total -= self._segments.pop(oldest).pks.size

    def _build(self, namespace: str) -> _Segment:
        """The namespace's segment: its persisted file plus the rows added since where the
        file is still valid, else all its rows; persisted again when that meant tokenizing
        many rows (a rebuild, or many additions since the file was written)."""
        files = self._files()
        with self._snapshot() as own:
            version, count = self._state(namespace)
            large = files is not None and count >= (self.persist_min_chunks or 0)
            segment = self._restore(files, namespace, version, count) if large and files else None
            after = int(segment.pks.array[-1]) if segment is not None else 0
            segment = segment or _Segment(version, count)
            loaded = self._load(namespace, segment, after)
            segment.unsaved = loaded
            persist = large and own and loaded >= self._refresh_rows()
            last = self._fingerprint(namespace, segment) if persist else None
        if files is not None and last is not None:
            self._persist(files, namespace, segment, count, last)
            segment.unsaved = 0
        return segment

    def _persist_grown(self, namespace: str) -> None:
        """Rewrite the file of a namespace that grew in memory by appends (a thread's recall
        index grows a turn at a time, and is never loaded again while the process runs) once
        it lacks ``_refresh_rows`` of the rows: a restart then tokenizes at most about that
        many (a thread indexed from 0 to 10,000 turns by one process made the first turn
        after a restart load all 10,000: ~0.5 s). Only after a commit of this object's own."""
        segment = self._segments.get(namespace)
        if segment is None or segment.unsaved < self._refresh_rows():
            return
        with self._lock:
            files = self._files()
            if files is None or self.db.in_transaction:  # the caller's: may be rolled back
                return
            with self._snapshot():
                version, count = self._state(namespace)
                fits = version == segment.version and count == segment.pks.size
                large = count >= (self.persist_min_chunks or 0)
                last = self._fingerprint(namespace, segment) if fits and large else None
            if last is not None:
                self._persist(files, namespace, segment, count, last)
                segment.unsaved = 0

    def _refresh_rows(self) -> int:
        """Rows tokenized by a load past which the file is rewritten: a tenth of the size
        persisted, so that a restart tokenizes at most that many (a fresh process stems
        each new word once: 1,000 added rows cost 0.8 s, 200 about 0.1 s), while rewriting
        (0.6 s per 100,000 chunks) stays rare."""
        return max(1, (self.persist_min_chunks or 0) // 10)

    def _load(self, namespace: str, segment: _Segment, after: int = 0) -> int:
        """Add the namespace's rows with pk > ``after`` to ``segment``; how many there were."""
        segment.pks.reserve(segment.expected)
        cursor = self.db.execute(
            "SELECT pk, text, metadata, vector FROM chunks WHERE namespace = ? AND pk > ?"
            " ORDER BY pk",
            (namespace, after),
        )
        loaded = 0
        while rows := cursor.fetchmany(10_000):
            pks, texts, metadatas, vectors = zip(*rows, strict=True)
            segment.add(pks, texts, [json.loads(m) if m else None for m in metadatas], vectors)
            loaded += len(rows)
        return loaded

    def _state(self, namespace: str) -> tuple[int, int]:
        row = self.db.execute(
            "SELECT version, chunks FROM chunk_namespaces WHERE namespace = ?", (namespace,)
        ).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    @contextmanager
    def _snapshot(self) -> Iterator[bool]:
        """Reads at one moment (a read transaction), so that a namespace's version and rows
        agree. Yields False inside the caller's own transaction, whose rows may yet be rolled
        back and so must not be persisted."""
        if self.db.in_transaction:
            yield False
            return
        self.db.execute("BEGIN")
        try:
            yield True
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- persisted segments -----------------------------------------------------------------
    def _files(self) -> SegmentFiles | None:
        """Where this database's segments are persisted; None where they are not."""
        if not self._segment_files_known:
            self._segment_files_known = True
            self._segment_files = self._find_files()
        return self._segment_files

    def _find_files(self) -> SegmentFiles | None:
        if self.persist_min_chunks is None:
            return None
        files = {name: file for _, name, file in self.db.execute("PRAGMA database_list")}
        path = files.get("main", "")
        try:
            row = self.db.execute("SELECT value FROM database_info WHERE key = 'id'").fetchone()
        except sqlite3.OperationalError:  # before m007_database_id
            row = None
        if not path or row is None:
            return None
        return SegmentFiles(self.segments_dir or Path(path + ".segments"), row[0])

    def _restore(
        self, files: SegmentFiles, namespace: str, version: int, count: int
    ) -> _Segment | None:
        """The namespace's persisted segment if its file is valid now, else None.

        Valid: written for this database and namespace, and ``version`` has moved since by
        exactly the number of rows added after the file's last (pk > its greatest), with the
        rows counted to match. Every insert moves ``version`` by one; a delete, an update, or
        an insert below the file's last pk moves it without adding such a row, so any change
        to the rows the file holds makes it invalid. The file's last row, still the same
        (key and text), guards against a database restored from a backup.
        """
        try:
            found = files.read(namespace)
        except Exception as e:  # damaged: rebuilt and rewritten
            log.warning("ignoring the damaged search segment file of %r: %s", namespace, e)
            return None
        if found is None:
            return None
        header, arrays = found
        try:
            if not self._still_valid(header, files.database_id, namespace, version, count):
                return None
            return _Segment.from_arrays(version, header["segment"], arrays)
        except Exception as e:
            log.warning("ignoring the damaged search segment file of %r: %s", namespace, e)
            return None

    def _still_valid(
        self, header: Mapping[str, Any], database_id: str, namespace: str, version: int, count: int
    ) -> bool:
        written_for = (header["format"], header["database"], header["namespace"])
        if written_for != (FORMAT, database_id, namespace):
            return False  # another format (rebuilt and rewritten), database or namespace
        last_pk = int(header["last"][0])
        (added,) = self.db.execute(
            "SELECT count(*) FROM chunks WHERE namespace = ? AND pk > ?", (namespace, last_pk)
        ).fetchone()
        if version - header["version"] != added or count - header["chunks"] != added:
            return False
        return header["last"] == self._row_fingerprint(namespace, last_pk)

    def _row_fingerprint(self, namespace: str, pk: int) -> list[Any] | None:
        row = self.db.execute(
            "SELECT key, text FROM chunks WHERE pk = ? AND namespace = ?", (pk, namespace)
        ).fetchone()
        return None if row is None else [pk, row[0], zlib.crc32(row[1].encode())]

    def _fingerprint(self, namespace: str, segment: _Segment) -> list[Any] | None:
        if not segment.pks.size:
            return None
        return self._row_fingerprint(namespace, int(segment.pks.array[-1]))

    def _persist(
        self, files: SegmentFiles, namespace: str, segment: _Segment, count: int, last: list[Any]
    ) -> None:
        """Write the namespace's segment file; a failure is logged, never raised (the next
        process loads from the rows instead)."""
        try:
            described, arrays = segment.to_arrays()
            header = {
                "format": FORMAT,
                "database": files.database_id,
                "namespace": namespace,
                "version": segment.version,
                "chunks": count,
                "last": last,
                "segment": described,
            }
            files.write(namespace, header, arrays)
            large = self.db.execute(
                "SELECT namespace FROM chunk_namespaces WHERE chunks >= ?",
                (self.persist_min_chunks,),
            ).fetchall()
            files.sweep(n for (n,) in large)
        except Exception as e:
            log.warning("could not persist the search segment of %r: %s", namespace, e)


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
    best = best[~np.isnan(flat[best])]
    return list(zip(pks[best].tolist(), flat[best].tolist(), strict=True))


def _sql_condition(column: str, path: str, value: Scalar) -> tuple[str, list[Any]]:
    """One typed equality test of the JSON value at ``path`` (``None``: missing or null)."""
    kind = f"json_type({column}, ?)"
    if value is None:
        return f"{kind} IS NULL OR {kind} = 'null'", [path, path]
    if isinstance(value, bool):
        return f"{kind} = '{'true' if value else 'false'}'", [path]
    types = "'text'" if isinstance(value, str) else "'integer', 'real'"
    return f"{kind} IN ({types}) AND json_extract({column}, ?) = ?", [path, path, value]


def filter_sql(filters: Mapping[str, Sequence[Scalar]], column: str) -> tuple[str, list[Any]]:
    """``AND (...)`` SQL conditions and parameters equivalent to ``MetadataIndex.mask``."""
    clauses, params = [], []
    for key, values in filters.items():
        path = f'$."{key}"'
        terms = []
        for value in values:
            condition, extra = _sql_condition(column, path, value)
            terms.append(f"({condition})")
            params.extend(extra)
        clauses.append("(" + (" OR ".join(terms) or "0") + ")")
    return "".join(f" AND {c}" for c in clauses), params
