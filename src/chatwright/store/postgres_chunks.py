"""The PostgreSQL store's chunks and their search (:class:`~chatwright.store.base.ChunkIndex`).

Nothing is held in memory: both rankings run in SQL, so every process reading the database
sees the same index and a namespace costs no loading.

Keywords: BM25 over the generated ``tsv`` column (``to_tsvector('english', text)``), read from
its postings: ``chunk_terms`` holds one row per (namespace, lexeme, chunk) with the lexeme's
frequency and the chunk's length, kept by triggers (``m005_keyword_postings``). A query reads
the postings of its own lexemes (any of them: a chunk matching some of the words is still a
result) by index range, takes document frequencies from them, and the namespaces' chunk and
lexeme counts (``chunk_namespaces``) for N and the average length. Reading postings rather than
unnesting every matching chunk's ``tsvector`` took keyword p50 at 100k chunks from 885 to 90 ms
(``benchmarks/postgres_keyword.py``). Unlike ``ts_rank_cd`` it weighs a rare term above a
common one.

Vectors: cosine similarity, ``1 - (embedding <=> query)``. Each dimension written gets a
partial HNSW index over ``embedding::vector(dim)`` (the column has no fixed dimension: one
namespace holds one). Namespaces under :attr:`PostgresChunks.exact_limit` chunks are searched
exactly (cheap through the ``(namespace, key)`` index, recall 1.0); larger ones through HNSW,
with ``hnsw.ef_search`` scaled by how much of the index the namespaces are, falling back to
the exact scan when post-filtering left fewer than ``depth`` results.

Filters are typed equality on top-level ``jsonb`` keys (``jsonb`` keeps ``"1"``, ``1`` and
``true`` apart, as ``search/filters.py`` does).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from chatwright.errors import UserError
from chatwright.search.filters import Scalar
from chatwright.store.base import ChunkRecord, IndexedChunk

if TYPE_CHECKING:
    import psycopg

    from chatwright.store.postgres import Database

__all__ = ["PostgresChunks", "Vector", "approximate_sql", "exact_sql", "register_vector"]

_BATCH = 1000  # chunks per INSERT statement
_HNSW_MAX_DIM = 2000  # pgvector's limit for an HNSW index over `vector`
_EF_SEARCH_MAX = 1000  # pgvector's limit for hnsw.ef_search
_EF_SEARCH_MIN = 40  # pgvector's default
_INDEX_LOCK = 0x6377_6964_7800_0000  # + dim: one creator of each dimension's index at a time
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Vector:
    """A float32 vector to send as pgvector's ``vector`` (binary format)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def register_vector(conn: psycopg.Connection, oid: int, array_oid: int) -> None:
    """Teach ``conn`` pgvector's ``vector`` (oids from ``pg_type``): :class:`Vector` is sent
    in binary, and ``vector`` values come back as float32 numpy arrays."""
    from psycopg.adapt import Dumper, Loader
    from psycopg.pq import Format
    from psycopg.types import TypeInfo

    class VectorDumper(Dumper):
        format = Format.BINARY

        def dump(self, obj: Vector) -> bytes:
            a = np.asarray(obj.array, dtype=">f4")
            return struct.pack(">HH", a.shape[0], 0) + a.tobytes()

    class VectorLoader(Loader):
        def load(self, data: Any) -> np.ndarray:  # text: '[1,2,3]'
            return np.array(bytes(data)[1:-1].split(b","), dtype=np.float32)

    class VectorBinaryLoader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> np.ndarray:
            (dim,) = struct.unpack_from(">H", data)
            return np.frombuffer(data, dtype=">f4", count=dim, offset=4).astype(np.float32)

    VectorDumper.oid = oid
    TypeInfo("vector", oid, array_oid).register(conn)
    conn.adapters.register_dumper(Vector, VectorDumper)
    conn.adapters.register_loader(oid, VectorLoader)
    conn.adapters.register_loader(oid, VectorBinaryLoader)


def jsonb(value: Mapping[str, Any] | None) -> Any:
    """``value`` as a ``jsonb`` parameter (None when empty). ``jsonb`` refuses NUL characters
    and lone surrogates, which JSON allows: they become U+FFFD."""
    from psycopg.types.json import Jsonb

    if not value:
        return None
    text = json.dumps(dict(value), ensure_ascii=False, separators=(",", ":"))
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    text = _SURROGATE.sub("\ufffd", text)
    return Jsonb(text, dumps=lambda s: s)


def filter_sql(filters: Mapping[str, Sequence[Scalar]] | None) -> tuple[str, list[Any]]:
    """``AND (...)`` conditions on ``c.metadata`` and their parameters, with the semantics of
    ``search.filters.MetadataIndex.mask``: typed equality, a list = any of, None = missing
    or null."""
    from psycopg.types.json import Jsonb

    clauses: list[str] = []
    params: list[Any] = []
    for key, values in (filters or {}).items():
        terms = []
        scalars = [v for v in values if v is not None]
        if scalars:
            terms.append("c.metadata -> %s = ANY(%s::jsonb[])")
            params += [key, [Jsonb(v) for v in scalars]]
        if len(scalars) < len(values):
            terms.append("coalesce(c.metadata -> %s, 'null'::jsonb) = 'null'::jsonb")
            params.append(key)
        clauses.append("(" + (" OR ".join(terms) or "false") + ")")
    return "".join(f" AND {c}" for c in clauses), params


def _record(row: tuple[Any, ...]) -> ChunkRecord:
    namespace, key, text, metadata = row
    return ChunkRecord(namespace, key, text, metadata or {})


class PostgresChunks:
    """Chunks in the ``chunks`` table of ``postgres_migrations.m002_chunks``.

    ``exact_limit``: namespaces searched together with fewer chunks than this are searched
    exactly; ``k1``/``b``: BM25's parameters. Writes and reads join the store's open
    transaction, if any (``db`` hands out the connection).
    """

    def __init__(
        self, db: Database, *, exact_limit: int = 20_000, k1: float = 1.2, b: float = 0.75
    ) -> None:
        self.db = db
        self.exact_limit = exact_limit
        self.k1 = k1
        self.b = b
        self._indexed: set[int] = set()  # dimensions whose HNSW index exists
        self._centroids: dict[str, tuple[int, np.ndarray | None, int]] = {}
        self._lock = threading.Lock()
        self.centroid_reads = 0  # how many times vectors were averaged (for tests)

    # -- writing --------------------------------------------------------------------------
    def write(self, namespace: str, chunks: Sequence[IndexedChunk]) -> None:
        if not chunks:
            return
        by_key = {c.key: c for c in chunks}  # a key given twice: the last one wins
        vectors = {
            k: None if c.vector is None else np.asarray(c.vector, dtype=np.float32).ravel()
            for k, c in by_key.items()
        }
        sizes = {len(v) for v in vectors.values() if v is not None}
        with self.db.write() as conn:
            # Writers of one namespace take turns on its counter row: the check of the
            # dimension below cannot race with another writer's.
            conn.execute(
                "INSERT INTO chunk_namespaces AS n (namespace) VALUES (%s)"
                " ON CONFLICT (namespace) DO UPDATE SET version = n.version",
                (namespace,),
            )
            self._check_dim(conn, namespace, sizes)
            for dim in sizes:
                self._ensure_index(conn, dim)
            items = list(by_key.values())
            for start in range(0, len(items), _BATCH):
                self._insert(conn, namespace, items[start : start + _BATCH], vectors)

    def _insert(
        self,
        conn: psycopg.Connection,
        namespace: str,
        chunks: Sequence[IndexedChunk],
        vectors: Mapping[str, np.ndarray | None],
    ) -> None:
        # One statement per batch: the counting triggers run once per statement.
        vecs = [vectors[c.key] for c in chunks]
        conn.execute(
            "INSERT INTO chunks AS c (namespace, key, text, metadata, dim, embedding)"
            " SELECT %s, k, t, m, d, e"
            " FROM unnest(%s::text[], %s::text[], %s::jsonb[], %s::int[], %b::vector[])"
            "  AS r(k, t, m, d, e)"
            " ON CONFLICT (namespace, key) DO UPDATE SET text = excluded.text,"
            " metadata = excluded.metadata, dim = excluded.dim, embedding = excluded.embedding",
            (
                namespace,
                [c.key for c in chunks],
                [c.text for c in chunks],
                [jsonb(c.metadata) for c in chunks],
                [None if v is None else len(v) for v in vecs],
                [None if v is None else Vector(v) for v in vecs],
            ),
        )

    def _check_dim(self, conn: psycopg.Connection, namespace: str, sizes: set[int]) -> None:
        row = conn.execute(
            "SELECT dim FROM chunks WHERE namespace = %s AND dim IS NOT NULL LIMIT 1",
            (namespace,),
        ).fetchone()
        dims = sizes | {row[0]} if row else sizes
        if len(dims) > 1:
            raise UserError(
                f"vectors of different sizes {sorted(dims)} in namespace {namespace!r}",
                hint="use one embedding model per namespace (clear it to change model)",
            )

    @contextlib.contextmanager
    def indexes_deferred(self, dims: Iterable[int]) -> Iterator[list[int]]:
        """For a bulk load: inside, writes of ``dims``-dimensional vectors do not create their
        HNSW index (each row would then be inserted into the graph one by one: 10,000 chunks
        of 384 dimensions took 42 s that way, against about 10 s to load them and build the
        index afterwards). Yields the dimensions whose index is still to be made: call
        :meth:`build_index` for each, in the loading transaction, once the rows are in."""
        pending = sorted(set(dims) - self._indexed)
        self._indexed.update(pending)
        try:
            yield pending
        finally:
            self._indexed.difference_update(pending)

    def build_index(self, conn: psycopg.Connection, dim: int) -> None:
        """Create the HNSW index of ``dim``-dimensional vectors now (see
        :meth:`indexes_deferred`), in the transaction of ``conn``."""
        self._ensure_index(conn, dim)

    def _ensure_index(self, conn: psycopg.Connection, dim: int) -> None:
        """Create the HNSW index of ``dim``-dimensional vectors, the first time one is written
        (in the writing transaction: it holds a SHARE lock on ``chunks`` until that commits,
        once per dimension and database)."""
        if dim in self._indexed or dim > _HNSW_MAX_DIM:
            return
        name = f"chunks_hnsw_{int(dim)}"
        if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() != (None,):
            self._indexed.add(dim)  # seen committed (or in this transaction): no more checks
            return
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INDEX_LOCK + dim,))
        # A dimension is a type modifier, not a value: it cannot be a bound parameter.
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON chunks"  # type: ignore[call-overload]
            f" USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops)"
            f" WHERE dim = {int(dim)}"
        )

    def delete(self, namespace: str, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        with self.db.write() as conn:
            self._lock_namespace(conn, namespace)
            cur = conn.execute(
                "DELETE FROM chunks WHERE namespace = %s AND key = ANY(%s::text[])",
                (namespace, list(keys)),
            )
            return cur.rowcount

    def clear(self, namespace: str) -> int:
        with self.db.write() as conn:
            self._lock_namespace(conn, namespace)
            return conn.execute("DELETE FROM chunks WHERE namespace = %s", (namespace,)).rowcount

    @staticmethod
    def _lock_namespace(conn: psycopg.Connection, namespace: str) -> None:
        """Take the namespace's counter row before its chunks, as writers do: a deleter that
        locked the chunks first and a writer of the same keys would deadlock on the triggers
        that count them."""
        conn.execute("SELECT 1 FROM chunk_namespaces WHERE namespace = %s FOR UPDATE", (namespace,))

    # -- reading --------------------------------------------------------------------------
    def count(self, namespace: str) -> int:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT chunks FROM chunk_namespaces WHERE namespace = %s", (namespace,)
            ).fetchone()
        return int(row[0]) if row else 0

    def dimension(self, namespace: str) -> int:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT dim FROM chunks WHERE namespace = %s AND dim IS NOT NULL LIMIT 1",
                (namespace,),
            ).fetchone()
        return int(row[0]) if row else 0

    def vectors(self, namespace: str, prefix: str) -> dict[str, np.ndarray | None]:
        # keys starting with the prefix: a range of the (namespace, key) index (keys sort
        # by code point: the column's collation is "C")
        where, args = "", []
        if prefix:
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            where = " AND key >= %s AND key < %s AND starts_with(key, %s)"
            args = [prefix, upper, prefix]
        with self.db.read() as conn, conn.cursor(binary=True) as cur:
            rows = cur.execute(
                f"SELECT key, embedding FROM chunks WHERE namespace = %s{where}",
                [namespace, *args],
            ).fetchall()
        return dict(rows)

    def last(self, namespace: str) -> ChunkRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT namespace, key, text, metadata FROM chunks WHERE namespace = %s"
                " ORDER BY key DESC LIMIT 1",
                (namespace,),
            ).fetchone()
        return _record(row) if row else None

    def newest(self, namespace: str, limit: int, *, below: str | None = None) -> list[ChunkRecord]:
        sql = "SELECT namespace, key, text, metadata FROM chunks WHERE namespace = %s"
        params: list[Any] = [namespace]
        if below is not None:
            sql += " AND key < %s"
            params.append(below)
        with self.db.read() as conn:
            rows = conn.execute(sql + " ORDER BY key DESC LIMIT %s", (*params, limit)).fetchall()
        return [_record(row) for row in rows]

    def centroid(self, namespace: str) -> tuple[np.ndarray | None, int]:
        """The mean is computed by PostgreSQL (``avg(embedding)``) and cached by the
        namespace's version; inside a transaction nothing is cached (its writes may roll
        back, and the version with them)."""
        in_transaction = self.db.bound() is not None
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT version FROM chunk_namespaces WHERE namespace = %s", (namespace,)
            ).fetchone()
            version = int(row[0]) if row else 0
            with self._lock:
                cached = self._centroids.get(namespace)
            if cached is not None and cached[0] == version and not in_transaction:
                return cached[1], cached[2]
            with conn.cursor(binary=True) as cur:
                total, count = cur.execute(
                    "SELECT avg(embedding), count(embedding) FROM chunks"
                    " WHERE namespace = %s AND embedding IS NOT NULL",
                    (namespace,),
                ).fetchone() or (None, 0)
        self.centroid_reads += 1
        centroid = None
        if total is not None and count:
            norm = float(np.linalg.norm(total))
            centroid = total / norm if norm > 0 else None
        if not in_transaction:
            with self._lock:
                self._centroids[namespace] = (version, centroid, int(count))
        return centroid, int(count)

    def preload(self, namespaces: Sequence[str]) -> None:
        """Nothing to load: the index lives in PostgreSQL."""

    def fetch(self, ids: Sequence[int]) -> dict[int, ChunkRecord]:
        if not ids:
            return {}
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT id, namespace, key, text, metadata FROM chunks"
                " WHERE id = ANY(%s::bigint[])",
                ([int(i) for i in ids],),
            ).fetchall()
        return {row[0]: _record(row[1:]) for row in rows}

    def labels(self, ids: Sequence[int], field: str) -> dict[int, tuple[str, str, Any]]:
        if not ids:
            return {}
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT id, namespace, key, metadata -> %s FROM chunks"
                " WHERE id = ANY(%s::bigint[])",
                (field, [int(i) for i in ids]),
            ).fetchall()
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    # -- rankings -------------------------------------------------------------------------
    def keyword(
        self,
        query: str,
        namespaces: Sequence[str],
        filters: Mapping[str, Sequence[Scalar]] | None,
        depth: int,
    ) -> list[tuple[int, float]]:
        if not namespaces or depth <= 0:
            return []
        where, params = filter_sql(filters)
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT array(SELECT lexeme FROM unnest(to_tsvector('english', %s::text))),"
                " coalesce(sum(chunks), 0), coalesce(sum(lexemes), 0)"
                " FROM chunk_namespaces WHERE namespace = ANY(%s::text[])",
                (query, list(namespaces)),
            ).fetchone()
            assert row is not None
            terms, n, lexemes = row[0], int(row[1]), int(row[2])
            if not terms or n <= 0:
                return []
            join = f" JOIN chunks c ON c.id = s.id WHERE true{where}" if where else ""
            rows = conn.execute(
                _BM25_SQL.format(join=join),
                [
                    list(namespaces),
                    terms,
                    n,
                    self.k1,
                    self.k1,
                    self.b,
                    self.b,
                    max(lexemes / n, 1.0),
                    *params,
                    depth,
                ],
            ).fetchall()
        return [(int(i), float(s)) for i, s in rows if s > 0]

    def term_counts(
        self, query: str, namespaces: Sequence[str]
    ) -> dict[str, tuple[int, tuple[int, ...]]]:
        if not namespaces:
            return {}
        with self.db.read() as conn:  # one statement: one snapshot of counts and sizes
            rows = conn.execute(_TERM_COUNTS_SQL, (query, list(namespaces))).fetchall()
        sizes: dict[str, int] = {}
        held: dict[str, list[int]] = {}
        for namespace, size, _, count in rows:  # ordered by namespace, then lexeme
            sizes[namespace] = int(size)
            held.setdefault(namespace, []).append(int(count))
        return {n: (sizes[n], tuple(held[n])) for n in sizes}

    def vector(
        self,
        query: np.ndarray,
        namespaces: Sequence[str],
        filters: Mapping[str, Sequence[Scalar]] | None,
        depth: int,
    ) -> list[tuple[int, float]]:
        if not namespaces or depth <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).ravel()
        dim = len(q)
        with self.db.read() as conn:
            dims, size, total = self._vector_stats(conn, namespaces)
            if not dims:
                return []
            other = next((d for d in sorted(dims) if d != dim), None)
            if other is not None:
                raise UserError(f"the query vector has {dim} dimensions, the index {other}")
            where, params = filter_sql(filters)
            ef = math.ceil(max(depth, _EF_SEARCH_MIN) * max(total, size) / max(size, 1))
            if size > self.exact_limit and ef <= _EF_SEARCH_MAX and dim <= _HNSW_MAX_DIM:
                rows = self._approximate(conn, q, namespaces, where, params, depth, ef)
                if len(rows) >= depth:
                    return rows
            return self._exact(conn, q, namespaces, where, params, depth)

    def _vector_stats(
        self, conn: psycopg.Connection, namespaces: Sequence[str]
    ) -> tuple[set[int], int, int]:
        """(the dimensions of the namespaces' vectors, their chunks, the chunks of the whole
        table as last estimated by ANALYZE)."""
        row = conn.execute(
            "SELECT array(SELECT (SELECT c.dim FROM chunks c WHERE c.namespace = n"
            "   AND c.dim IS NOT NULL LIMIT 1) FROM unnest(%s::text[]) n),"
            " (SELECT coalesce(sum(chunks), 0) FROM chunk_namespaces"
            "  WHERE namespace = ANY(%s::text[])),"
            " (SELECT reltuples::bigint FROM pg_class WHERE oid = 'chunks'::regclass)",
            (list(namespaces), list(namespaces)),
        ).fetchone()
        assert row is not None
        return {d for d in row[0] if d is not None}, int(row[1]), int(row[2] or 0)

    def _exact(
        self,
        conn: psycopg.Connection,
        q: np.ndarray,
        namespaces: Sequence[str],
        where: str,
        params: list[Any],
        depth: int,
    ) -> list[tuple[int, float]]:
        rows = conn.execute(
            exact_sql(len(q), where), [Vector(q), list(namespaces), *params, Vector(q), depth]
        ).fetchall()
        return [(int(i), float(s)) for i, s in rows]

    def _approximate(
        self,
        conn: psycopg.Connection,
        q: np.ndarray,
        namespaces: Sequence[str],
        where: str,
        params: list[Any],
        depth: int,
        ef: int,
    ) -> list[tuple[int, float]]:
        dim = len(q)
        with conn.transaction():  # SET LOCAL lasts until the end of a transaction
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
            rows = conn.execute(
                approximate_sql(dim, where),
                [Vector(q), list(namespaces), *params, Vector(q), depth],
            ).fetchall()
        return [(int(i), float(s)) for i, s in rows]


def exact_sql(dim: int, where: str) -> str:
    """The exact nearest-neighbour query. Parameters: the query vector, the namespaces, the
    filters', the query vector again, depth. It orders by ``embedding <=> q``, not by the
    indexed ``embedding::vector(N)``: no HNSW index can serve it, so it scans the rows of the
    namespaces (found through the ``(namespace, key)`` index)."""
    return (
        "SELECT c.id, 1 - (c.embedding <=> %b) AS s FROM chunks c"
        f" WHERE c.namespace = ANY(%s::text[]) AND c.dim = {int(dim)}{where}"
        " ORDER BY c.embedding <=> %b, c.id LIMIT %s"
    )


def approximate_sql(dim: int, where: str) -> str:
    """The query the HNSW index of ``dim`` serves (same parameters as :func:`exact_sql`).
    A dimension is a type modifier, not a value: it cannot be a bound parameter."""
    cast = f"::vector({int(dim)})"
    return (
        f"SELECT c.id, 1 - (c.embedding{cast} <=> %b{cast}) AS s FROM chunks c"
        f" WHERE c.dim = {int(dim)} AND c.namespace = ANY(%s::text[]){where}"
        f" ORDER BY c.embedding{cast} <=> %b{cast} LIMIT %s"
    )


#: Per namespace with chunks, for each of the query's lexemes (sorted): its chunks that hold it
#: (chunk_term_counts, kept by triggers: one index lookup each).
_TERM_COUNTS_SQL = """
WITH t AS (
    SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', %s::text))
), n AS (
    SELECT namespace, chunks FROM chunk_namespaces
    WHERE namespace = ANY(%s::text[]) AND chunks > 0
)
SELECT n.namespace, n.chunks, t.lexeme, coalesce(c.chunks, 0)
FROM n CROSS JOIN t
LEFT JOIN chunk_term_counts c ON c.namespace = n.namespace AND c.lexeme = t.lexeme
ORDER BY n.namespace, t.lexeme
"""

# BM25 over the chunks matching any query lexeme. Parameters: namespaces, tsquery, lexemes,
# N, k1, k1, b, b, average length, the filters', depth. `length(tsv)` (distinct lexemes) is
# the document length, as in chunk_namespaces.lexemes.
_BM25_SQL = """
WITH p AS MATERIALIZED (
    SELECT chunk_id, lexeme, tf, dl FROM chunk_terms
    WHERE namespace = ANY(%s::text[]) AND lexeme = ANY(%s::text[])
), df AS (
    SELECT lexeme, count(*) AS df FROM p GROUP BY lexeme
), s AS (
    SELECT p.chunk_id AS id, sum(
        ln(1 + (%s - df.df + 0.5) / (df.df + 0.5))
        * p.tf * (%s + 1) / (p.tf + %s * (1 - %s + %s * p.dl / %s))
    ) AS score
    FROM p JOIN df USING (lexeme) GROUP BY p.chunk_id
)
SELECT s.id, s.score FROM s{join}
ORDER BY s.score DESC, s.id LIMIT %s
"""
