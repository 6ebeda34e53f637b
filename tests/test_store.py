"""SQLiteStore: threads scoped per owner, an append-only log, traces, migrations, durability."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from chatwright.errors import StoreError, ThreadNotFound, UserError
from chatwright.store import SQLiteStore
from chatwright.store import sqlite as sqlite_module
from chatwright.store.migrations import MIGRATIONS
from chatwright.types import Message, StageTrace, ToolCallPart, ToolResultPart, Trace

A, B = "alice", "bob"


def texts(store: SQLiteStore, owner: str, thread_id: str) -> list[str]:
    return [m.message.text for m in store.messages(owner, thread_id)]


# -- threads --------------------------------------------------------------------------------
def test_create_and_get_thread(store: SQLiteStore) -> None:
    info = store.create_thread(A, "t1", title="First", metadata={"k": [1, "v"]})
    assert (info.id, info.owner, info.title, info.message_count) == ("t1", A, "First", 0)
    assert info.metadata == {"k": [1, "v"]}
    assert store.get_thread(A, "t1") == info
    assert store.find_thread(A, "t1") == info


def test_create_thread_generates_an_id(store: SQLiteStore) -> None:
    one, two = store.create_thread(A), store.create_thread(A)
    assert one.id and two.id and one.id != two.id


def test_create_existing_thread_is_refused(store: SQLiteStore) -> None:
    store.create_thread(A, "t1")
    with pytest.raises(UserError, match="already exists"):
        store.create_thread(A, "t1")


@pytest.mark.parametrize("bad", ["x" * 201, "line\nbreak", "tab\there"])
def test_invalid_thread_ids_are_refused(store: SQLiteStore, bad: str) -> None:
    with pytest.raises(UserError, match="invalid thread id"):
        store.create_thread(A, bad)


def test_list_threads(store: SQLiteStore) -> None:
    for tid in ("a", "b", "c"):
        store.create_thread(A, tid)
    assert sorted(t.id for t in store.list_threads(A)) == ["a", "b", "c"]
    assert len(store.list_threads(A, limit=2)) == 2
    assert store.list_threads(B) == []


def test_get_missing_thread(store: SQLiteStore) -> None:
    assert store.find_thread(A, "nope") is None
    with pytest.raises(ThreadNotFound):
        store.get_thread(A, "nope")


def test_rename_thread(store: SQLiteStore) -> None:
    store.create_thread(A, "t1")
    assert store.rename_thread(A, "t1", "New name").title == "New name"
    assert store.get_thread(A, "t1").title == "New name"


def test_title_defaults_to_first_user_message(store: SQLiteStore) -> None:
    store.append(A, "t1", [Message.user("  what   is\nWAL? ")], create=True)
    store.append(A, "t1", [Message.user("second question")])
    assert store.get_thread(A, "t1").title == "what is WAL?"


def test_delete_thread(store: SQLiteStore) -> None:
    store.create_thread(A, "t1")
    store.delete_thread(A, "t1")
    assert store.find_thread(A, "t1") is None
    assert store.list_threads(A) == []
    with pytest.raises(ThreadNotFound):
        store.delete_thread(A, "t1")


# -- owner isolation ------------------------------------------------------------------------
@pytest.fixture
def alices(store: SQLiteStore) -> SQLiteStore:
    store.create_thread(A, "t1", title="private")
    store.append(A, "t1", [Message.user("secret"), Message.assistant("ok")])
    return store


def test_other_owner_cannot_see_thread(alices: SQLiteStore) -> None:
    assert alices.list_threads(B) == []
    assert alices.find_thread(B, "t1") is None
    with pytest.raises(ThreadNotFound):
        alices.get_thread(B, "t1")


def test_other_owner_cannot_read_messages(alices: SQLiteStore) -> None:
    with pytest.raises(ThreadNotFound):
        list(alices.messages(B, "t1"))
    with pytest.raises(ThreadNotFound):
        alices.recent(B, "t1", 10)
    with pytest.raises(ThreadNotFound):
        alices.traces(B, "t1")


def test_other_owner_cannot_append(alices: SQLiteStore) -> None:
    with pytest.raises(ThreadNotFound):
        alices.append(B, "t1", [Message.user("intruder")])
    assert texts(alices, A, "t1") == ["secret", "ok"]


def test_other_owner_cannot_rename_or_delete(alices: SQLiteStore) -> None:
    with pytest.raises(ThreadNotFound):
        alices.rename_thread(B, "t1", "pwned")
    with pytest.raises(ThreadNotFound):
        alices.delete_thread(B, "t1")
    assert alices.get_thread(A, "t1").title == "private"
    assert texts(alices, A, "t1") == ["secret", "ok"]


def test_same_thread_id_for_two_owners_is_two_threads(alices: SQLiteStore) -> None:
    alices.append(B, "t1", [Message.user("bob's own")], create=True)
    assert texts(alices, A, "t1") == ["secret", "ok"]
    assert texts(alices, B, "t1") == ["bob's own"]
    alices.delete_thread(B, "t1")
    assert texts(alices, A, "t1") == ["secret", "ok"]


# -- messages -------------------------------------------------------------------------------
def test_append_needs_an_existing_thread_unless_create(store: SQLiteStore) -> None:
    with pytest.raises(ThreadNotFound):
        store.append(A, "t1", [Message.user("hi")])
    assert store.find_thread(A, "t1") is None
    store.append(A, "t1", [Message.user("hi")], create=True)
    assert texts(store, A, "t1") == ["hi"]


def test_append_assigns_consecutive_seqs(store: SQLiteStore) -> None:
    first = store.append(A, "t1", [Message.user("1"), Message.assistant("2")], create=True)
    second = store.append(A, "t1", [Message.user("3")])
    assert [s.seq for s in first + second] == [1, 2, 3]
    assert [s.seq for s in store.messages(A, "t1")] == [1, 2, 3]
    assert store.get_thread(A, "t1").message_count == 3


def test_seqs_are_per_thread(store: SQLiteStore) -> None:
    store.append(A, "t1", [Message.user("a")], create=True)
    assert store.append(A, "t2", [Message.user("b")], create=True)[0].seq == 1


def test_recent_returns_the_last_n_in_order(store: SQLiteStore) -> None:
    store.append(A, "t1", [Message.user(str(i)) for i in range(1, 11)], create=True)
    recent = store.recent(A, "t1", 3)
    assert [r.seq for r in recent] == [8, 9, 10]
    assert [r.message.text for r in recent] == ["8", "9", "10"]
    assert len(store.recent(A, "t1", 100)) == 10
    assert store.recent(A, "t1", 0) == []


def test_messages_iterates_everything_in_batches(store: SQLiteStore) -> None:
    n = 1234  # more than two batches of 500
    store.append(A, "t1", [Message.user(f"m{i}") for i in range(n)], create=True)
    got = list(store.messages(A, "t1"))
    assert [m.seq for m in got] == list(range(1, n + 1))
    assert got[-1].message.text == f"m{n - 1}"
    assert [m.seq for m in store.messages(A, "t1", after_seq=1200)] == list(range(1201, n + 1))


ROUND_TRIP = [
    Message.user("plain ascii"),
    Message.user("plain unicode é😀 and NUL \x00 inside"),
    Message.user("lone surrogate \ud800 here"),
    Message.user("with metadata", source="cli"),
    Message.system("system prompt"),
    Message.assistant("calling", tool_calls=[ToolCallPart(id="c1", name="f", arguments='{"a":1}')]),
    Message.assistant(tool_calls=[ToolCallPart(id="c2", name="g")]),
    Message.tool(ToolResultPart(tool_call_id="c1", name="f", content="out \ud83d", is_error=True)),
    Message.assistant("", interrupted=True, reason="timed out"),
    Message.user("big " + "x😀" * 1_000_000),
]


def test_messages_round_trip_through_the_store(store: SQLiteStore) -> None:
    store.append(A, "t1", ROUND_TRIP, create=True)
    assert [m.message for m in store.messages(A, "t1")] == ROUND_TRIP
    assert [m.message for m in store.recent(A, "t1", len(ROUND_TRIP))] == ROUND_TRIP


def test_append_returns_the_stored_messages(store: SQLiteStore) -> None:
    stored = store.append(A, "t1", ROUND_TRIP[:3], create=True)
    assert [s.message for s in stored] == ROUND_TRIP[:3]


# -- traces ---------------------------------------------------------------------------------
def make_trace(label: str) -> Trace:
    return Trace(
        model="test:echo",
        stages=[StageTrace(name="generate", ms=1.5, data={"finish": "stop"})],
        input_tokens=7,
        output_tokens=3,
        notes=[label],
    )


def test_traces_are_stored_and_read_back(store: SQLiteStore) -> None:
    store.append(A, "t1", [Message.user("q1")], create=True)
    store.append(A, "t1", [Message.assistant("a1")], trace=make_trace("one"))
    store.append(A, "t1", [Message.user("q2")])
    store.append(A, "t1", [Message.assistant("a2")], trace=make_trace("two"))
    traces = store.traces(A, "t1")
    assert [(seq, t.notes) for seq, t in traces] == [(2, ["one"]), (4, ["two"])]
    assert traces[0][1] == make_trace("one")
    assert [seq for seq, _ in store.traces(A, "t1", limit=1)] == [4]


def test_delete_cascades_messages_and_traces(store: SQLiteStore) -> None:
    store.append(A, "t1", [Message.user("q"), Message.assistant("a")], create=True)
    store.append(A, "t1", [Message.assistant("b")], trace=make_trace("x"))
    store.delete_thread(A, "t1")
    db = store._db
    assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 0
    # A new thread with the same id starts empty.
    store.create_thread(A, "t1")
    assert list(store.messages(A, "t1")) == []
    assert store.traces(A, "t1") == []


# -- durability -----------------------------------------------------------------------------
def test_data_survives_close_and_reopen(data_dir: Path) -> None:
    path = data_dir / "chatwright.db"
    first = SQLiteStore(path)
    first.append(A, "t1", ROUND_TRIP, trace=make_trace("kept"), create=True)
    first.rename_thread(A, "t1", "renamed")
    first.close()
    second = SQLiteStore(path)
    try:
        assert [m.message for m in second.messages(A, "t1")] == ROUND_TRIP
        assert second.get_thread(A, "t1").title == "renamed"
        assert second.traces(A, "t1")[0][1].notes == ["kept"]
        assert second.append(A, "t1", [Message.user("next")])[0].seq == len(ROUND_TRIP) + 1
    finally:
        second.close()


def test_failure_mid_transaction_leaves_nothing(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.append(A, "t1", [Message.user("before")], create=True)

    def boom(messages: object) -> None:  # runs inside the transaction, after the inserts
        raise RuntimeError("crash mid-append")

    monkeypatch.setattr(sqlite_module, "_title_from", boom)
    with pytest.raises(RuntimeError, match="crash mid-append"):
        store.append(A, "t1", [Message.user("x"), Message.assistant("y")], trace=make_trace("t"))
    with pytest.raises(RuntimeError):
        store.append(A, "t2", [Message.user("new thread")], create=True)
    monkeypatch.undo()

    assert texts(store, A, "t1") == ["before"]
    assert store.get_thread(A, "t1").message_count == 1
    assert store.traces(A, "t1") == []
    assert store.find_thread(A, "t2") is None
    # The store is still usable: no transaction left open, the lock released.
    assert store.append(A, "t1", [Message.user("after")])[0].seq == 2
    assert texts(store, A, "t1") == ["before", "after"]


def test_serialization_failure_stores_nothing(store: SQLiteStore) -> None:
    store.create_thread(A, "t1")
    bad = Message.user("fine text", payload=object())  # metadata that is not JSON
    with pytest.raises(TypeError):
        store.append(A, "t1", [Message.user("ok"), bad])
    assert list(store.messages(A, "t1")) == []
    assert store.get_thread(A, "t1").message_count == 0


# -- schema and pragmas ---------------------------------------------------------------------
def test_fresh_database_is_at_the_latest_schema(store: SQLiteStore) -> None:
    assert len(MIGRATIONS) >= 1
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_reopening_does_not_migrate_again(data_dir: Path) -> None:
    path = data_dir / "db.sqlite"
    SQLiteStore(path).close()
    again = SQLiteStore(path)  # would fail with "table threads already exists"
    try:
        assert again._db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        again.close()


def test_newer_schema_is_refused(data_dir: Path) -> None:
    path = data_dir / "future.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer") as info:
        SQLiteStore(path)
    assert info.value.hint and "upgrade" in info.value.hint


def test_corrupt_file_is_a_store_error_with_hint(data_dir: Path) -> None:
    path = data_dir / "corrupt.db"
    path.write_bytes(b"definitely not sqlite" + random.Random(0).randbytes(8192))
    with pytest.raises(StoreError) as info:
        SQLiteStore(path)
    assert str(path) in str(info.value)
    assert info.value.hint and "corrupt" in info.value.hint


def test_wal_journal_and_full_synchronous(store: SQLiteStore) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_memory_store_works() -> None:
    mem = SQLiteStore(":memory:")
    try:
        mem.append(A, "t1", [Message.user("hi")], create=True)
        assert texts(mem, A, "t1") == ["hi"]
    finally:
        mem.close()


def test_only_the_newest_summary_versions_are_kept(tmp_path) -> None:
    from chatwright.store.base import Summary
    from chatwright.store.sqlite import SUMMARY_VERSIONS

    s = SQLiteStore(tmp_path / "s.db")
    s.create_thread("o", "t")
    for through in range(1, SUMMARY_VERSIONS + 6):
        s.save_summary("o", "t", Summary(through_seq=through, text=f"v{through}", tokens=1))
    versions = s.summaries("o", "t")
    assert [v.through_seq for v in versions] == list(range(6, SUMMARY_VERSIONS + 6))
    assert s.latest_summary("o", "t").text == f"v{SUMMARY_VERSIONS + 5}"


def test_collections_are_owned_named_and_cascade_to_documents_and_chunks(tmp_path) -> None:
    s = SQLiteStore(tmp_path / "c.db")
    info = s.create_collection("ada", "manuals", "Product manuals")
    assert info.namespace == f"collection:{info.uid}"
    assert s.find_collection("bob", "manuals") is None  # another owner sees nothing
    with pytest.raises(UserError, match="already exists"):
        s.create_collection("ada", "manuals")
    s.create_collection("bob", "manuals")  # the same name for another owner is another one
    with s.transaction():
        s.put_document("ada", "manuals", "a.md", title="A", content_hash="h1", size=3, chunks=2)
        s.connection.execute(
            "INSERT INTO chunks (namespace, key, text) VALUES (?, 'k', 'chunk text')",
            (info.namespace,),
        )
    assert [d.source for d in s.list_documents("ada", "manuals")] == ["a.md"]
    assert s.list_documents("bob", "manuals") == []
    s.delete_collection("ada", "manuals")
    assert s.connection.execute("SELECT count(*) FROM documents").fetchone()[0] == 0
    assert s.connection.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
    assert [c.name for c in s.list_collections("bob")] == ["manuals"]


def test_a_failed_document_write_leaves_the_previous_version(tmp_path) -> None:
    s = SQLiteStore(tmp_path / "c.db")
    s.create_collection("o", "docs")
    s.put_document("o", "docs", "a.md", title="v1", content_hash="h1", size=1, chunks=1)
    with pytest.raises(RuntimeError), s.transaction():
        s.put_document("o", "docs", "a.md", title="v2", content_hash="h2", size=1, chunks=1)
        raise RuntimeError("crash while indexing the new version")
    assert s.find_document("o", "docs", "a.md").title == "v1"


@pytest.mark.parametrize("name", ["", "../x", "a b", "-lead", "x" * 65])
def test_bad_collection_names_are_refused(tmp_path, name) -> None:
    with pytest.raises(UserError, match="invalid collection name"):
        SQLiteStore(tmp_path / "c.db").create_collection("o", name)
