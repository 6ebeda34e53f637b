"""Versioned schema migrations for the PostgreSQL store, applied in order, once each.

The schema version lives in ``chatwright_schema`` (one row per applied version). Each
migration is a function named ``mNNN_what`` that runs inside the transaction that also records
its version, so a crash leaves the database at the old version or the new one, never between.
Every migration transaction first takes ``pg_advisory_xact_lock(_MIGRATION_LOCK)``: two
replicas starting at once take turns, and the second finds the work done.

The tables mirror the SQLite store's (``migrations.py``), with PostgreSQL types: identity
keys, ``double precision`` times (seconds since the epoch, as SQLite's ``REAL``), ``bytea`` for
serialized values, and for chunks ``jsonb`` metadata (filtered in SQL), a ``vector`` of any
dimension (pgvector) and a generated ``tsvector`` (keyword search).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from chatwright.errors import StoreError

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATIONS", "migrate", "schema_version"]

# An arbitrary constant: the advisory lock every migration transaction takes.
_MIGRATION_LOCK = 0x6377_6D69_6772_6174  # "cwmigrat"

_PGVECTOR_HINT = (
    "install pgvector on the database server (https://github.com/pgvector/pgvector: e.g. "
    "`apt install postgresql-16-pgvector`, or the pgvector/pgvector Docker image), then run "
    "`CREATE EXTENSION vector;` in the database as a superuser"
)


def _run(conn: psycopg.Connection, script: str) -> None:
    # Without parameters a query may hold several statements (and function bodies hold ';').
    conn.execute(script.encode())


def _create_vector_extension(conn: psycopg.Connection) -> None:
    """``CREATE EXTENSION vector``, or a StoreError saying how to get pgvector."""
    import psycopg

    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
        return
    if not conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
        raise StoreError(
            "the PostgreSQL server has no pgvector extension, which chatwright needs",
            hint=_PGVECTOR_HINT,
        )
    try:
        with conn.transaction():  # a savepoint: the error below is reported, not re-raised
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.InsufficientPrivilege:
        raise StoreError(
            "chatwright needs the pgvector extension, and this database user may not create it",
            hint="run `CREATE EXTENSION vector;` in the database as a superuser",
        ) from None


def m001_initial(conn: psycopg.Connection) -> None:
    _create_vector_extension(conn)
    _run(
        conn,
        """
        CREATE TABLE threads (
            pk         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            owner      text NOT NULL,
            id         text NOT NULL,
            title      text,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            metadata   bytea,
            last_seq   integer NOT NULL DEFAULT 0,
            UNIQUE (owner, id)
        );
        CREATE INDEX threads_by_owner_updated ON threads (owner, updated_at DESC);

        -- Append-only log. A plain-text message keeps its text in `text`, any other message
        -- is the serialized value in `data`. `tokens` caches the message's token count.
        CREATE TABLE messages (
            thread_pk  bigint NOT NULL REFERENCES threads (pk) ON DELETE CASCADE,
            seq        integer NOT NULL,
            role       text NOT NULL,
            created_at double precision NOT NULL,
            text       text,
            data       bytea,
            tokens     integer,
            PRIMARY KEY (thread_pk, seq)
        );

        -- One trace per turn, keyed by the seq of the turn's final assistant message.
        CREATE TABLE traces (
            thread_pk  bigint NOT NULL REFERENCES threads (pk) ON DELETE CASCADE,
            seq        integer NOT NULL,
            data       bytea NOT NULL,
            PRIMARY KEY (thread_pk, seq)
        );

        CREATE TABLE summaries (
            thread_pk   bigint NOT NULL REFERENCES threads (pk) ON DELETE CASCADE,
            through_seq integer NOT NULL,
            text        text NOT NULL,
            tokens      integer NOT NULL,
            model       text,
            created_at  double precision NOT NULL,
            PRIMARY KEY (thread_pk, through_seq)
        );

        CREATE TABLE memories (
            pk         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            owner      text NOT NULL,
            text       text NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL
        );
        CREATE INDEX memories_by_owner ON memories (owner, pk);

        CREATE TABLE collections (
            pk          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            owner       text NOT NULL,
            name        text NOT NULL,
            description text NOT NULL DEFAULT '',
            created_at  double precision NOT NULL,
            updated_at  double precision NOT NULL,
            UNIQUE (owner, name)
        );

        CREATE TABLE documents (
            pk            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            collection_pk bigint NOT NULL REFERENCES collections (pk) ON DELETE CASCADE,
            source        text NOT NULL,
            title         text,
            content_hash  text NOT NULL,
            bytes         bigint NOT NULL DEFAULT 0,
            chunks        integer NOT NULL DEFAULT 0,
            metadata      text,
            ingested_at   double precision NOT NULL,
            UNIQUE (collection_pk, source)
        );

        CREATE TABLE users (
            name       text PRIMARY KEY,
            created_at double precision NOT NULL
        );

        CREATE TABLE api_keys (
            pk           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id           text NOT NULL UNIQUE,
            owner        text NOT NULL REFERENCES users (name) ON DELETE CASCADE,
            name         text NOT NULL DEFAULT '',
            secret_hash  text NOT NULL UNIQUE,
            prefix       text NOT NULL,
            created_at   double precision NOT NULL,
            last_used_at double precision,
            revoked_at   double precision
        );
        CREATE INDEX api_keys_by_owner ON api_keys (owner)
        """,
    )


def m002_chunks(conn: psycopg.Connection) -> None:
    # Chunks: one row per (namespace, key). `embedding` has no fixed dimension (one namespace
    # holds one, checked on write; `dim` records it), so its HNSW indexes are partial, one per
    # dimension, over `embedding::vector(dim)`, created when a dimension is first written
    # (postgres.py). `tsv` is the keyword index's input, kept by PostgreSQL itself.
    #
    # `chunk_namespaces` counts each namespace's chunks and the lexemes of their texts (BM25's
    # collection statistics) and bumps a version on every write, so a cached centroid is
    # checked with one small query. Statement-level triggers keep it: one update per
    # namespace per statement, not one per row.
    _run(
        conn,
        """
        CREATE TABLE chunks (
            id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace text NOT NULL,
            key       text COLLATE "C" NOT NULL,  -- ordered by code point, as in SQLite
            text      text NOT NULL,
            metadata  jsonb,
            dim       integer,
            embedding vector,
            tsv       tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text))
                      STORED,
            UNIQUE (namespace, key)
        );
        CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
        CREATE INDEX chunks_dim ON chunks (namespace, dim) WHERE dim IS NOT NULL;

        CREATE TABLE chunk_namespaces (
            namespace text PRIMARY KEY,
            version   bigint NOT NULL DEFAULT 0,
            chunks    bigint NOT NULL DEFAULT 0,
            lexemes   bigint NOT NULL DEFAULT 0
        );

        CREATE FUNCTION chunks_count() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('DELETE', 'UPDATE') THEN
                UPDATE chunk_namespaces n SET version = n.version + 1,
                    chunks = n.chunks - d.chunks, lexemes = n.lexemes - d.lexemes
                FROM (SELECT namespace, count(*) AS chunks, sum(length(tsv)) AS lexemes
                      FROM old_rows GROUP BY namespace) d
                WHERE n.namespace = d.namespace;
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                INSERT INTO chunk_namespaces AS n (namespace, version, chunks, lexemes)
                SELECT namespace, 1, count(*), sum(length(tsv)) FROM new_rows GROUP BY namespace
                ON CONFLICT (namespace) DO UPDATE SET version = n.version + 1,
                    chunks = n.chunks + excluded.chunks, lexemes = n.lexemes + excluded.lexemes;
            END IF;
            RETURN NULL;
        END $$;

        CREATE TRIGGER chunks_after_insert AFTER INSERT ON chunks
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION chunks_count();
        CREATE TRIGGER chunks_after_delete AFTER DELETE ON chunks
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION chunks_count();
        CREATE TRIGGER chunks_after_update AFTER UPDATE ON chunks
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION chunks_count();

        -- A thread's recall chunks and a collection's chunks go with it, in the same
        -- transaction; their namespace's counters too (uids are never reused).
        CREATE FUNCTION drop_namespace() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE ns text := TG_ARGV[0] || ':' || OLD.pk;
        BEGIN
            DELETE FROM chunks WHERE namespace = ns;
            DELETE FROM chunk_namespaces WHERE namespace = ns;
            RETURN NULL;
        END $$;

        CREATE TRIGGER threads_after_delete AFTER DELETE ON threads
            FOR EACH ROW EXECUTE FUNCTION drop_namespace('thread');
        CREATE TRIGGER collections_after_delete AFTER DELETE ON collections
            FOR EACH ROW EXECUTE FUNCTION drop_namespace('collection')
        """,
    )


def m003_jobs(conn: psycopg.Connection) -> None:
    # The durable job queue (uploads to ingest, with their files): store/postgres_jobs.py.
    from chatwright.store.postgres_jobs import JOB_TABLES

    _run(conn, JOB_TABLES)


def m004_streams(conn: psycopg.Connection) -> None:
    # Turns' event streams (resumable on any replica with Last-Event-ID) and the signals
    # (approvals, cancels) for the replica running them: store/postgres_streams.py.
    from chatwright.store.postgres_streams import STREAM_TABLES

    _run(conn, STREAM_TABLES)


def m005_keyword_postings(conn: psycopg.Connection) -> None:
    # BM25 reads postings, not documents: one row per (namespace, lexeme, chunk) with the
    # lexeme's frequency in the chunk and the chunk's length, so a query reads the postings
    # of its own words (an index range each) instead of unnesting the whole tsvector of every
    # matching chunk (885 ms p50 at 100k chunks before: benchmarks/README.md). Kept by
    # statement-level triggers from the chunks' tsv; filled for the chunks already there.
    # The GIN index over tsv served only the old query: dropped, it cost every insert.
    _run(
        conn,
        """
        DROP INDEX IF EXISTS chunks_tsv;
        CREATE TABLE chunk_terms (
            namespace text NOT NULL,
            lexeme    text NOT NULL,
            chunk_id  bigint NOT NULL,
            tf        integer NOT NULL,
            dl        integer NOT NULL,
            PRIMARY KEY (namespace, lexeme, chunk_id)
        );
        CREATE INDEX chunk_terms_by_chunk ON chunk_terms (chunk_id);

        CREATE FUNCTION chunk_terms_sync() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('DELETE', 'UPDATE') THEN
                DELETE FROM chunk_terms WHERE chunk_id IN (SELECT id FROM old_rows);
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                INSERT INTO chunk_terms (namespace, lexeme, chunk_id, tf, dl)
                SELECT n.namespace, u.lexeme, n.id,
                       coalesce(array_length(u.positions, 1), 1), length(n.tsv)
                FROM new_rows n, unnest(n.tsv) u;
            END IF;
            RETURN NULL;
        END $$;

        CREATE TRIGGER chunk_terms_after_insert AFTER INSERT ON chunks
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION chunk_terms_sync();
        CREATE TRIGGER chunk_terms_after_delete AFTER DELETE ON chunks
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION chunk_terms_sync();
        CREATE TRIGGER chunk_terms_after_update AFTER UPDATE ON chunks
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION chunk_terms_sync();

        INSERT INTO chunk_terms (namespace, lexeme, chunk_id, tf, dl)
        SELECT c.namespace, u.lexeme, c.id, coalesce(array_length(u.positions, 1), 1),
               length(c.tsv)
        FROM chunks c, unnest(c.tsv) u;
        """,
    )


def m006_memory_trust(conn: psycopg.Connection) -> None:
    # As SQLite's m010: why a memory may not be the user's own words (NULL: the user's).
    _run(conn, "ALTER TABLE memories ADD COLUMN untrusted text")


def m007_branches(conn: psycopg.Connection) -> None:
    # As SQLite's m011: branches, each message's branch, each thread's active branch.
    from chatwright.store.branches import BRANCH_TABLES_PG

    for statement in BRANCH_TABLES_PG:
        _run(conn, statement)
    # A thread's search text (retrieval/thread_search.py) goes with it as its recall chunks
    # do, namespace row included (uids are never reused).
    _run(
        conn,
        "CREATE TRIGGER threads_after_delete_text AFTER DELETE ON threads"
        " FOR EACH ROW EXECUTE FUNCTION drop_namespace('threadtext')",
    )


def m008_term_counts(conn: psycopg.Connection) -> None:
    # How many chunks of each namespace hold each lexeme, for routing (ChunkIndex.term_counts):
    # counting chunk_terms' postings per query cost 68 ms a turn at 20,000 chunks; this is one
    # index lookup per (namespace, lexeme). Kept by statement-level triggers whose names sort
    # after the chunks_after_* counters', so that every writer and deleter of a namespace
    # locks its chunk_namespaces row before these rows: the table adds no lock cycle. Deleters
    # now take that row before the chunks too, as writers do (drop_namespace here, delete and
    # clear in postgres_chunks.py): a writer and a deleter of the same keys could otherwise
    # deadlock (PostgreSQL aborts one). Rows that reach 0 are dropped. Upgrading holds a lock
    # on chunks while the counts are filled from chunk_terms: writes wait for it.
    _run(
        conn,
        """
        CREATE TABLE chunk_term_counts (
            namespace text NOT NULL,
            lexeme    text NOT NULL,
            chunks    bigint NOT NULL,
            PRIMARY KEY (namespace, lexeme)
        );

        CREATE FUNCTION chunk_term_counts_sync() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO chunk_term_counts AS c (namespace, lexeme, chunks)
                SELECT n.namespace, u.lexeme, count(*) FROM new_rows n, unnest(n.tsv) u
                GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (namespace, lexeme) DO UPDATE SET chunks = c.chunks + excluded.chunks;
                RETURN NULL;
            END IF;
            IF TG_OP = 'UPDATE' THEN
                INSERT INTO chunk_term_counts AS c (namespace, lexeme, chunks)
                SELECT namespace, lexeme, sum(d) FROM (
                    SELECT n.namespace, u.lexeme, 1 AS d FROM new_rows n, unnest(n.tsv) u
                    UNION ALL
                    SELECT o.namespace, u.lexeme, -1 FROM old_rows o, unnest(o.tsv) u
                ) x GROUP BY 1, 2 HAVING sum(d) <> 0 ORDER BY 1, 2
                ON CONFLICT (namespace, lexeme) DO UPDATE SET chunks = c.chunks + excluded.chunks;
            ELSE
                UPDATE chunk_term_counts c SET chunks = c.chunks - d.n
                FROM (
                    SELECT o.namespace, u.lexeme, count(*) AS n
                    FROM old_rows o, unnest(o.tsv) u GROUP BY 1, 2
                ) d
                WHERE c.namespace = d.namespace AND c.lexeme = d.lexeme;
            END IF;
            DELETE FROM chunk_term_counts c
            USING (SELECT DISTINCT o.namespace, u.lexeme FROM old_rows o, unnest(o.tsv) u) d
            WHERE c.namespace = d.namespace AND c.lexeme = d.lexeme AND c.chunks <= 0;
            RETURN NULL;
        END $$;

        CREATE TRIGGER chunks_tally_after_insert AFTER INSERT ON chunks
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION chunk_term_counts_sync();
        CREATE TRIGGER chunks_tally_after_delete AFTER DELETE ON chunks
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION chunk_term_counts_sync();
        CREATE TRIGGER chunks_tally_after_update AFTER UPDATE ON chunks
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION chunk_term_counts_sync();

        CREATE OR REPLACE FUNCTION drop_namespace() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE ns text := TG_ARGV[0] || ':' || OLD.pk;
        BEGIN
            PERFORM 1 FROM chunk_namespaces WHERE namespace = ns FOR UPDATE;
            DELETE FROM chunks WHERE namespace = ns;
            DELETE FROM chunk_namespaces WHERE namespace = ns;
            RETURN NULL;
        END $$;

        INSERT INTO chunk_term_counts (namespace, lexeme, chunks)
        SELECT namespace, lexeme, count(*) FROM chunk_terms GROUP BY 1, 2;
        """,
    )


MIGRATIONS: list[Callable[[psycopg.Connection], None]] = [
    m001_initial,
    m002_chunks,
    m003_jobs,
    m004_streams,
    m005_keyword_postings,
    m006_memory_trust,
    m007_branches,
    m008_term_counts,
]


def schema_version(conn: psycopg.Connection) -> int:
    """The version the database is at (0: never migrated)."""
    if conn.execute("SELECT to_regclass('chatwright_schema')").fetchone() == (None,):
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM chatwright_schema").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection) -> int:
    """Bring the database of ``conn`` (an autocommit connection) to the newest schema;
    returns the version it is at."""
    latest = len(MIGRATIONS)
    if schema_version(conn) == latest:  # the usual start: nothing to lock or do
        return latest
    while True:
        with conn.transaction():
            # READ COMMITTED whatever the server's default: each step's statements (a backfill
            # after its triggers exist) must see what other replicas committed meanwhile
            conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS chatwright_schema (version integer PRIMARY KEY)"
            )
            current = schema_version(conn)  # under the lock: another replica may have migrated
            if current > latest:
                raise StoreError(
                    f"the database is at schema version {current}, "
                    f"newer than this chatwright ({latest})",
                    hint="upgrade chatwright (pip install -U chatwright) or use another database",
                )
            if current == latest:
                return latest
            MIGRATIONS[current](conn)
            conn.execute("INSERT INTO chatwright_schema (version) VALUES (%s)", (current + 1,))
