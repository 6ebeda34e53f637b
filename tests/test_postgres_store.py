"""What only the PostgreSQL store has to show: connecting, migrating from two replicas at
once, transactions spanning the store and its chunks, advisory turn locks across stores, its
HNSW index and SQL rankings. The behaviour every store shares is the conformance suite's."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _postgres import database_url, drop_database, fresh_database, require_server

if database_url() is None and os.environ.get("CI") != "true":
    pytest.skip("pgserver/psycopg not installed", allow_module_level=True)
BASE_URL = require_server()

import psycopg  # noqa: E402

from chatwright.errors import StoreError, ThreadNotFound, UserError  # noqa: E402
from chatwright.store.base import IndexedChunk  # noqa: E402
from chatwright.store.postgres import PostgresStore, redact_url  # noqa: E402
from chatwright.store.postgres_chunks import approximate_sql, filter_sql  # noqa: E402
from chatwright.store.postgres_migrations import MIGRATIONS, schema_version  # noqa: E402
from chatwright.types import Message  # noqa: E402


@pytest.fixture
def url() -> Iterator[str]:
    assert BASE_URL is not None
    fresh = fresh_database(BASE_URL)
    yield fresh
    drop_database(fresh)


@pytest.fixture
def store(url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(url)
    yield s
    s.close()


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


# -- connecting and migrating ---------------------------------------------------------------
def test_unreachable_server_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError) as info:
        PostgresStore("postgresql://someone:secret@127.0.0.1:1/nothing")
    assert "cannot connect to PostgreSQL" in str(info.value)
    assert "secret" not in str(info.value)
    assert "database_url" in (info.value.hint or "")


def test_malformed_url_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError, match="cannot connect"):
        PostgresStore("not a url at all")


def test_location_hides_the_password() -> None:
    assert redact_url("postgresql://bob:hunter2@db:5432/cw") == "postgresql://bob@db:5432/cw"
    assert "hunter2" not in redact_url("postgresql://db/cw?password=hunter2&sslmode=require")
    assert "hunter2" not in redact_url("host=db password=hunter2 dbname=cw")


def test_two_replicas_migrating_one_fresh_database_at_once(url: str) -> None:
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def open_store() -> None:
        start.wait()
        try:
            stores.append(PostgresStore(url, max_connections=2))
        except BaseException as e:  # pragma: no cover - the failure being tested for
            errors.append(e)

    threads = [threading.Thread(target=open_store) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(url, autocommit=True) as conn:
        assert schema_version(conn) == len(MIGRATIONS)
        rows = conn.execute("SELECT version FROM chatwright_schema ORDER BY version").fetchall()
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    stores[0].create_thread("alice", "t")
    assert stores[1].get_thread("alice", "t").id == "t"
    for s in stores:
        s.close()


def test_a_database_newer_than_the_code_is_refused(store: PostgresStore, url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO chatwright_schema (version) VALUES (999)")
    with pytest.raises(StoreError, match="schema version 999, newer"):
        PostgresStore(url)


# -- transactions ---------------------------------------------------------------------------
def test_a_rolled_back_transaction_leaves_nothing(store: PostgresStore) -> None:
    thread = store.create_thread("alice", "kept")
    ns = f"thread:{thread.uid}"
    rng = np.random.default_rng(1)
    with pytest.raises(RuntimeError), store.transaction():
        store.append("alice", "kept", [Message.user("lost")])
        store.create_thread("alice", "gone")
        info = store.create_collection("alice", "docs")
        store.put_document("alice", "docs", "a.txt", title=None, content_hash="h", size=1, chunks=1)
        store.chunks.write(info.namespace, [IndexedChunk("a", "text", {}, _unit(rng, 4))])
        store.chunks.write(ns, [IndexedChunk("m1", "recall", {})])
        assert store.chunks.count(ns) == 1  # visible inside the transaction
        raise RuntimeError("boom")
    assert store.get_thread("alice", "kept").message_count == 0
    assert store.find_thread("alice", "gone") is None
    assert store.find_collection("alice", "docs") is None
    assert store.chunks.count(ns) == 0
    assert store.chunks.keyword("recall", [ns], None, 5) == []


def test_a_committed_transaction_is_seen_by_another_replica(store: PostgresStore, url: str) -> None:
    other = PostgresStore(url)
    try:
        with store.transaction():
            thread = store.create_thread("alice", "t")
            store.chunks.write(f"thread:{thread.uid}", [IndexedChunk("k", "hello", {})])
            # not committed yet: another connection does not see it
            assert other.find_thread("alice", "t") is None
            with store.transaction():  # nesting joins
                store.append("alice", "t", [Message.user("hi")])
        assert other.get_thread("alice", "t").message_count == 1
        assert other.chunks.count(f"thread:{thread.uid}") == 1
    finally:
        other.close()


def test_a_failed_call_inside_a_transaction_leaves_it_usable(store: PostgresStore) -> None:
    with store.transaction():
        store.create_thread("alice", "t")
        with pytest.raises(UserError, match="already exists"):
            store.create_thread("alice", "t")
        with pytest.raises(ThreadNotFound):
            store.append("alice", "missing", [Message.user("x")])
        store.append("alice", "t", [Message.user("still fine")])
    assert store.get_thread("alice", "t").title == "still fine"


def test_deleting_a_thread_or_collection_deletes_its_chunks(store: PostgresStore) -> None:
    thread = store.create_thread("alice", "t")
    info = store.create_collection("alice", "docs")
    store.chunks.write(f"thread:{thread.uid}", [IndexedChunk("a", "one", {})])
    store.chunks.write(info.namespace, [IndexedChunk("a", "one", {}), IndexedChunk("b", "two", {})])
    assert store.get_collection("alice", "docs").chunks == 2
    store.delete_thread("alice", "t")
    store.delete_collection("alice", "docs")
    assert store.chunks.count(f"thread:{thread.uid}") == 0
    assert store.chunks.count(info.namespace) == 0


def test_text_postgres_cannot_hold_is_kept_or_replaced(store: PostgresStore) -> None:
    store.append("alice", "t", [Message.user("nul \x00 and \ud800 here")], create=True)
    (stored,) = store.recent("alice", "t", 5)
    assert stored.message.text == "nul \x00 and \ud800 here"  # messages round-trip exactly
    memory = store.add_memory("alice", "a\x00b")
    assert memory.text == "a\ufffdb"
    ns = "collection:1"
    store.chunks.write(ns, [IndexedChunk("k", "x\x00y", {"v": "p\x00q\ud800"})])
    record = store.chunks.last(ns)
    assert record is not None
    assert record.text == "x\ufffdy" and record.metadata == {"v": "p\ufffdq\ufffd"}


# -- turn locks -----------------------------------------------------------------------------
async def test_advisory_turn_locks_serialise_replicas_per_thread(url: str) -> None:
    a, b = PostgresStore(url), PostgresStore(url)
    try:
        order: list[str] = []
        a_holds = asyncio.Event()
        release_a = asyncio.Event()

        async def turn_a() -> None:
            async with a.locks.hold("alice", "t"):
                order.append("a start")
                a_holds.set()
                await release_a.wait()
                order.append("a end")

        async def turn_b_same_thread() -> None:
            await a_holds.wait()
            async with b.locks.hold("alice", "t"):
                order.append("b start")

        async def turn_b_other_thread() -> None:
            await a_holds.wait()
            async with b.locks.hold("alice", "u"):
                order.append("b other")

        task_a = asyncio.create_task(turn_a())
        task_b = asyncio.create_task(turn_b_same_thread())
        await asyncio.wait_for(turn_b_other_thread(), 5)  # another thread: not blocked
        await asyncio.sleep(0.2)
        assert "b start" not in order  # same thread, other replica: waits
        release_a.set()
        await asyncio.wait_for(asyncio.gather(task_a, task_b), 5)
        assert order == ["a start", "b other", "a end", "b start"]
    finally:
        a.close()
        b.close()


async def test_many_turns_share_one_lock_connection(store: PostgresStore, url: str) -> None:
    running = 0
    most = 0

    async def turn(i: int) -> None:
        nonlocal running, most
        async with store.locks.hold("alice", f"t{i % 50}"):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.wait_for(asyncio.gather(*(turn(i) for i in range(200))), 20)
    assert most == 50  # 50 threads at once, each one turn at a time
    with psycopg.connect(url, autocommit=True) as conn:
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert held.fetchone() == (0,)
        sessions = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        ).fetchone()
    assert sessions is not None and sessions[0] <= 1 + 10 + 1  # us, the pool, the lock session


# -- search ---------------------------------------------------------------------------------
def test_hnsw_index_serves_a_large_namespace(store: PostgresStore) -> None:
    rng = np.random.default_rng(7)
    dim, n = 16, 3000
    vectors = np.stack([_unit(rng, dim) for _ in range(n)])
    ns = "collection:1"
    started = time.perf_counter()
    store.chunks.write(
        ns, [IndexedChunk(f"k{i:05d}", f"chunk {i}", {}, vectors[i]) for i in range(n)]
    )
    assert time.perf_counter() - started < 30
    with store._db.read() as conn:
        conn.execute("ANALYZE chunks")
        plan = conn.execute(
            "EXPLAIN " + approximate_sql(dim, ""),
            [*_vector_params(vectors[0], [ns]), 10],
        ).fetchall()
    assert "chunks_hnsw_16" in "\n".join(r[0] for r in plan)

    store.chunks.exact_limit = 100  # this namespace now goes through HNSW
    approximate = store.chunks.vector(vectors[42], [ns], None, 10)
    store.chunks.exact_limit = 10**9
    exact = store.chunks.vector(vectors[42], [ns], None, 10)
    assert approximate[0][0] == exact[0][0]
    assert approximate[0][1] == pytest.approx(1.0, abs=1e-5)
    overlap = {i for i, _ in approximate} & {i for i, _ in exact}
    assert len(overlap) >= 8


def _vector_params(query: np.ndarray, namespaces: list[str]) -> list[object]:
    from chatwright.store.postgres_chunks import Vector

    return [Vector(query), namespaces, Vector(query)]


def test_keyword_ranking_prefers_rare_terms_and_matches_any_term(store: PostgresStore) -> None:
    ns = "collection:1"
    texts = {
        "a": "the pipeline ingests documents",
        "b": "pipeline pipeline pipeline maintenance",
        "c": "zebrafish embryos under the microscope",
        "d": "pipeline for zebrafish imaging",
        "e": "documents about pipeline design",
    }
    store.chunks.write(ns, [IndexedChunk(k, t, {}) for k, t in texts.items()])
    ids = {r.key: i for i, r in store.chunks.fetch(list(range(1, 10))).items()}
    key_of = {i: k for k, i in ids.items()}
    ranking = store.chunks.keyword("zebrafish pipelines", [ns], None, 10)
    keys = [key_of[i] for i, _ in ranking]
    assert keys[0] == "d"  # both terms
    assert set(keys) == {"a", "b", "c", "d", "e"}  # any term matches (OR, not AND)
    assert keys.index("c") < keys.index("a")  # the rare term weighs more
    assert all(score > 0 for _, score in ranking)
    assert store.chunks.keyword("the of and", [ns], None, 10) == []  # only stop words
    assert store.chunks.keyword("zebrafish", ["collection:2"], None, 10) == []


def test_filters_are_typed(store: PostgresStore) -> None:
    ns = "collection:1"
    metas = {
        "s": {"v": "1"},
        "n": {"v": 1},
        "f": {"v": 1.0},
        "t": {"v": True},
        "z": {"v": None},
        "m": {},
    }
    store.chunks.write(ns, [IndexedChunk(k, "common words", m) for k, m in metas.items()])
    key_of = {i: r.key for i, r in store.chunks.fetch(list(range(1, 10))).items()}

    def keys(filters: dict[str, list[object]]) -> set[str]:
        return {key_of[i] for i, _ in store.chunks.keyword("common", [ns], filters, 10)}

    assert keys({"v": ["1"]}) == {"s"}
    assert keys({"v": [1]}) == {"n", "f"}
    assert keys({"v": [True]}) == {"t"}
    assert keys({"v": [None]}) == {"z", "m"}
    assert keys({"v": ["1", True]}) == {"s", "t"}
    assert keys({"v": []}) == set()
    assert filter_sql(None) == ("", [])


def test_vector_ranking_and_centroid(store: PostgresStore) -> None:
    rng = np.random.default_rng(3)
    ns = "collection:1"
    vectors = [_unit(rng, 8) for _ in range(20)]
    store.chunks.write(
        ns,
        [
            IndexedChunk(f"k{i:02d}", f"t{i}", {"even": i % 2 == 0}, v)
            for i, v in enumerate(vectors)
        ],
    )
    key_of = {i: r.key for i, r in store.chunks.fetch(list(range(1, 30))).items()}
    ranking = store.chunks.vector(vectors[5], [ns], None, 3)
    assert key_of[ranking[0][0]] == "k05" and ranking[0][1] == pytest.approx(1.0, abs=1e-6)
    assert [s for _, s in ranking] == sorted((s for _, s in ranking), reverse=True)
    even = store.chunks.vector(vectors[5], [ns], {"even": [True]}, 20)
    assert len(even) == 10 and "k05" not in {key_of[i] for i, _ in even}
    with pytest.raises(UserError, match="the query vector has 4 dimensions"):
        store.chunks.vector(_unit(rng, 4), [ns], None, 3)
    with pytest.raises(UserError, match="vectors of different sizes"):
        store.chunks.write(ns, [IndexedChunk("x", "x", {}, _unit(rng, 4))])

    centroid, count = store.chunks.centroid(ns)
    mean = np.mean(vectors, axis=0)
    assert count == 20 and centroid is not None
    np.testing.assert_allclose(centroid, mean / np.linalg.norm(mean), atol=1e-5)
    reads = store.chunks.centroid_reads
    store.chunks.centroid(ns)
    assert store.chunks.centroid_reads == reads  # unchanged namespace: cached
    store.chunks.delete(ns, ["k00"])
    assert store.chunks.centroid(ns)[1] == 19
    assert store.chunks.vectors(ns, "k1").keys() == {f"k1{i}" for i in range(10)}


async def test_the_store_recovers_when_the_database_drops_its_connections(
    store: PostgresStore, url: str
) -> None:
    """What a client sees of a database restart: every session of the store is cut. The pool
    and the lock connection reconnect by themselves; nothing committed is lost."""
    import psycopg

    store.append("o", "t", [Message.user("before")], create=True)
    async with store.locks.hold("o", "t"):
        pass  # the lock connection is open now
    with psycopg.connect(url, autocommit=True) as admin:
        cut = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert cut is not None and cut[0] >= 2  # a pooled connection and the lock connection
    for _ in range(3):  # pooled connections found dead are replaced on checkout
        try:
            store.append("o", "t", [Message.user("after")])
            break
        except StoreError:
            continue
    else:
        raise AssertionError("the pool did not reconnect")
    async with store.locks.hold("o", "t"):  # the lock connection reconnects at once
        pass
    assert [m.message.text for m in store.messages("o", "t")] == ["before", "after"]


def test_term_counts_are_kept_by_triggers_and_match_the_postings(store: PostgresStore) -> None:
    """chunk_term_counts (routing's word counts) stays equal to a recount of chunk_terms'
    postings through inserts, rewrites under a key and deletes, and keeps no rows at 0 (a
    deleted thread's words leave nothing behind)."""
    chunks = store.chunks
    chunks.write(
        "collection:1",
        [IndexedChunk(f"k{i}", f"printer ink {i % 3}", None, None) for i in range(30)],
    )
    chunks.write("collection:2", [IndexedChunk("a", "ink drawing", None, None)])
    # one statement that rewrites a key and adds a new one (both the UPDATE and the INSERT
    # triggers fire, each with its own rows)
    chunks.write(
        "collection:1",
        [IndexedChunk("k1", "bread oven", None, None), IndexedChunk("new", "oven", None, None)],
    )
    chunks.delete("collection:1", ["k2", "k3"])
    with store._pool.connection() as conn:
        kept = conn.execute(
            "SELECT namespace, lexeme, chunks FROM chunk_term_counts ORDER BY 1, 2"
        ).fetchall()
        recount = conn.execute(
            "SELECT namespace, lexeme, count(*) FROM chunk_terms GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        assert kept == recount and ("collection:1", "bread", 1) in kept
        assert ("collection:1", "oven", 2) in kept
        chunks.clear("collection:1")
        left = conn.execute(
            "SELECT count(*) FROM chunk_term_counts WHERE namespace = 'collection:1'"
        ).fetchone()
        assert left == (0,)
        # a collection deleted: its chunks go with it (drop_namespace), their counts too
        info = store.create_collection("alice", "docs")
        chunks.write(info.namespace, [IndexedChunk("a", "printer manual", None, None)])
        assert chunks.term_counts("printer", [info.namespace]) == {info.namespace: (1, (1,))}
        store.delete_collection("alice", "docs")
        left = conn.execute(
            "SELECT count(*) FROM chunk_term_counts WHERE namespace = %s", (info.namespace,)
        ).fetchone()
        assert left == (0,)


def test_the_term_counts_migration_counts_the_chunks_already_there(url: str) -> None:
    """A database at schema 7 with chunks: opening it with this chatwright (schema 8) fills
    chunk_term_counts from the postings already stored, so routing counts them at once."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE chatwright_schema (version integer PRIMARY KEY)")
        for version, step in enumerate(MIGRATIONS[:7], start=1):
            with conn.transaction():
                step(conn)
                conn.execute("INSERT INTO chatwright_schema (version) VALUES (%s)", (version,))
        conn.execute(
            "INSERT INTO chunk_namespaces (namespace) VALUES ('collection:1');"
            " INSERT INTO chunks (namespace, key, text) VALUES"
            " ('collection:1', 'a', 'printer ink'), ('collection:1', 'b', 'printer cable')"
        )
        assert conn.execute("SELECT to_regclass('chunk_term_counts')").fetchone() == (None,)
    store = PostgresStore(url)
    try:
        got = store.chunks.term_counts("printer ink", ["collection:1"])
        assert got == {"collection:1": (2, (1, 2))}  # lexemes sorted: ink, printer
    finally:
        store.close()
