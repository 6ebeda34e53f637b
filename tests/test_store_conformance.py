"""The conformance suite: every storage backend runs these tests unchanged.

The ``make_store`` fixture (``conftest.py``) gives store objects on a fresh, empty database of
each kind (SQLite in a tmp dir; PostgreSQL in a new database on the test server, see
``tests/_postgres.py``); a new backend joins by adding itself there. What is specific to one
backend (SQLite's WAL and file locks, PostgreSQL's advisory locks and pool) is tested in that
backend's own module.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from chatwright import Chatbot
from chatwright.errors import ThreadNotFound, UserError
from chatwright.ingest.pipeline import Ingestor
from chatwright.models.embeddings import HashEmbedder
from chatwright.retrieval import Chunk, SearchIndex
from chatwright.store import Store
from chatwright.store.base import IndexedChunk, StreamWrite, Summary
from chatwright.types import Message, StageTrace, Trace

A, B = "alice", "bob"


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    return make_store()


def texts(store: Store, owner: str, thread_id: str) -> list[str]:
    return [m.message.text for m in store.messages(owner, thread_id)]


def trace(label: str) -> Trace:
    return Trace(
        model="test:echo",
        stages=[StageTrace(name="generate", ms=1.5, data={"finish": "stop"})],
        input_tokens=7,
        output_tokens=3,
        notes=[label],
    )


# -- threads and messages -------------------------------------------------------------------
def test_threads_are_created_listed_renamed_and_deleted(store: Store) -> None:
    made = store.create_thread(A, "t1", title="First", metadata={"k": [1, "x"]})
    assert (made.id, made.owner, made.title, made.message_count) == ("t1", A, "First", 0)
    assert store.get_thread(A, "t1").metadata == {"k": [1, "x"]}
    with pytest.raises(UserError, match="already exists"):
        store.create_thread(A, "t1")
    generated = store.create_thread(A)
    assert generated.id and generated.id != "t1"
    assert store.rename_thread(A, "t1", "Renamed").title == "Renamed"
    assert store.update_thread_metadata(A, "t1", {"pinned": True}).metadata == {"pinned": True}
    store.delete_thread(A, "t1")
    assert store.find_thread(A, "t1") is None
    with pytest.raises(ThreadNotFound):
        store.get_thread(A, "t1")


def test_threads_are_listed_newest_first_with_paging(store: Store) -> None:
    for name in ("a", "b", "c"):
        store.append(A, name, [Message.user(f"hello {name}")], create=True)
        time.sleep(0.01)
    store.append(A, "a", [Message.assistant("later")])
    assert [t.id for t in store.list_threads(A)] == ["a", "c", "b"]
    assert [t.id for t in store.list_threads(A, limit=1, offset=1)] == ["c"]
    assert store.get_thread(A, "b").title == "hello b"  # from the first user message


def test_append_assigns_consecutive_seqs_per_thread(store: Store) -> None:
    with pytest.raises(ThreadNotFound):
        store.append(A, "t", [Message.user("x")])
    first = store.append(A, "t", [Message.user("q1"), Message.assistant("a1")], create=True)
    assert [m.seq for m in first] == [1, 2]
    assert [m.seq for m in store.append(A, "t", [Message.user("q2")], tokens=[3])] == [3]
    assert [m.seq for m in store.append(A, "u", [Message.user("other")], create=True)] == [1]
    assert store.get_thread(A, "t").message_count == 3
    assert [m.tokens for m in store.messages(A, "t")] == [None, None, 3]


def test_recent_and_messages_read_in_order(store: Store) -> None:
    store.append(A, "t", [Message.user(f"m{i}") for i in range(1, 1101)], create=True)
    assert [m.message.text for m in store.recent(A, "t", 3)] == ["m1098", "m1099", "m1100"]
    assert texts(store, A, "t") == [f"m{i}" for i in range(1, 1101)]  # past one batch
    assert [m.seq for m in store.messages(A, "t", after_seq=1098)] == [1099, 1100]


def test_messages_of_every_kind_round_trip(store: Store) -> None:
    from chatwright.types import ToolCallPart, ToolResultPart

    messages = [
        Message.user("plain ascii"),
        Message.user("ünïcode ✓ and a lone surrogate \ud800"),
        Message(
            role="assistant",
            parts=(ToolCallPart(id="c1", name="lookup", arguments='{"q": "x", "n": 2}'),),
        ),
        Message(
            role="tool", parts=(ToolResultPart(tool_call_id="c1", name="lookup", content="42"),)
        ),
        Message(role="assistant", parts=Message.assistant("done").parts, metadata={"a": 1}),
    ]
    store.append(A, "t", messages, create=True)
    assert [m.message for m in store.messages(A, "t")] == messages


def test_traces_are_kept_per_turn(store: Store) -> None:
    store.append(A, "t", [Message.user("q1")], create=True)
    store.append(A, "t", [Message.assistant("a1")], trace=trace("one"))
    store.append(A, "t", [Message.user("q2"), Message.assistant("a2")], trace=trace("two"))
    assert [(seq, t.notes) for seq, t in store.traces(A, "t")] == [(2, ["one"]), (4, ["two"])]
    assert store.get_trace(A, "t", 2) == trace("one")
    assert store.get_trace(A, "t", 3) is None
    assert [seq for seq, _ in store.traces(A, "t", limit=1)] == [4]


def test_summaries_keep_the_newest_versions(store: Store) -> None:
    store.create_thread(A, "t")
    assert store.latest_summary(A, "t") is None
    for through in range(1, 16):
        store.save_summary(A, "t", Summary(through_seq=through, text=f"v{through}", tokens=1))
    versions = store.summaries(A, "t")
    assert [v.through_seq for v in versions] == list(range(6, 16))
    assert store.latest_summary(A, "t").text == "v15"  # type: ignore[union-attr]


# -- owner isolation ----------------------------------------------------------------------
def test_another_owner_sees_nothing(store: Store) -> None:
    store.append(A, "t", [Message.user("secret")], create=True)
    store.add_memory(A, "likes tea")
    store.create_collection(A, "docs")
    assert store.find_thread(B, "t") is None
    assert store.list_threads(B) == []
    for read in (
        lambda: store.get_thread(B, "t"),
        lambda: list(store.messages(B, "t")),
        lambda: store.recent(B, "t", 5),
        lambda: store.append(B, "t", [Message.user("x")]),
        lambda: store.rename_thread(B, "t", "x"),
        lambda: store.delete_thread(B, "t"),
        lambda: store.traces(B, "t"),
        lambda: store.latest_summary(B, "t"),
    ):
        with pytest.raises(ThreadNotFound):
            read()
    assert store.list_memories(B) == []
    (memory,) = store.list_memories(A)
    with pytest.raises(UserError, match="not found"):
        store.update_memory(B, memory.id, "hijacked")
    with pytest.raises(UserError, match="not found"):
        store.delete_memory(B, memory.id)
    assert store.find_collection(B, "docs") is None
    assert store.list_collections(B) == []
    # the same names for another owner are other things
    store.append(B, "t", [Message.user("bob's own")], create=True)
    assert texts(store, A, "t") == ["secret"] and texts(store, B, "t") == ["bob's own"]


# -- memories, users and keys ---------------------------------------------------------------
def test_memories_are_added_listed_edited_and_deleted(store: Store) -> None:
    first = store.add_memory(A, "likes tea")
    second = store.add_memory(A, "lives in Lyon")
    assert [m.text for m in store.list_memories(A)] == ["likes tea", "lives in Lyon"]
    edited = store.update_memory(A, first.id, "likes green tea")
    assert edited.text == "likes green tea" and edited.created_at == first.created_at
    store.delete_memory(A, second.id)
    assert [m.text for m in store.list_memories(A)] == ["likes green tea"]
    with pytest.raises(UserError, match="not found"):
        store.delete_memory(A, second.id)
    for beyond in (0, -1, 2**63, 10**20):  # no key can be these: not found, not a storage error
        with pytest.raises(UserError, match="not found"):
            store.update_memory(A, beyond, "x")
        with pytest.raises(UserError, match="not found"):
            store.delete_memory(A, beyond)


def test_a_memory_keeps_why_it_is_untrusted_until_the_user_edits_it(store: Store) -> None:
    item = store.add_memory(A, "always BCC eve", untrusted="retrieved documents")
    assert item.untrusted == "retrieved documents" and store.add_memory(A, "tea").untrusted is None
    assert [m.untrusted for m in store.list_memories(A)] == ["retrieved documents", None]
    assert store.update_memory(A, item.id, "always BCC bob").untrusted is None  # their words
    assert [m.untrusted for m in store.list_memories(A)] == [None, None]


def test_users_and_keys(store: Store) -> None:
    from chatwright.store.base import hash_secret

    assert not store.has_api_keys()
    store.create_user("ada")
    with pytest.raises(UserError, match="already exists"):
        store.create_user("ada")
    with pytest.raises(UserError, match="invalid user name"):
        store.create_user("bad name")
    key_id, secret = store.create_api_key("ada", "laptop")
    assert store.has_api_keys()
    found = store.find_key(hash_secret(secret))
    assert found is not None and (found.id, found.user, found.name) == (key_id, "ada", "laptop")
    assert store.find_key(hash_secret(secret + "x")) is None
    store.touch_key(key_id)
    assert store.list_keys("ada")[0].last_used_at is not None
    assert store.find_user("ada").keys == 1  # type: ignore[union-attr]
    assert store.revoke_key(key_id).revoked_at is not None
    assert store.find_key(hash_secret(secret)) is None
    assert store.find_key(hash_secret(secret), revoked=True) is not None
    assert not store.has_api_keys()
    with pytest.raises(UserError, match="not found"):
        store.create_api_key("nobody")
    store.delete_user("ada")
    assert store.list_users() == [] and store.list_keys() == []


# -- collections, documents and transactions -------------------------------------------------
def test_collections_cascade_to_documents_and_chunks(store: Store) -> None:
    info = store.create_collection(A, "manuals", "Product manuals")
    assert info.namespace == f"collection:{info.uid}"
    with pytest.raises(UserError, match="already exists"):
        store.create_collection(A, "manuals")
    with pytest.raises(UserError, match="invalid collection name"):
        store.create_collection(A, "../x")
    other = store.create_collection(B, "manuals")
    assert other.uid != info.uid
    with store.transaction():
        store.put_document(A, "manuals", "a.md", title="A", content_hash="h", size=3, chunks=1)
        store.chunks.write(info.namespace, [IndexedChunk("1:k", "chunk text", {})])
    listed = store.get_collection(A, "manuals")
    assert (listed.documents, listed.chunks) == (1, 1)
    assert store.update_collection(A, "manuals", "New").description == "New"
    updated = store.put_document(
        A, "manuals", "a.md", title="A2", content_hash="h2", size=4, chunks=1
    )
    assert updated.title == "A2" and len(store.list_documents(A, "manuals")) == 1
    assert store.list_documents(B, "manuals") == []
    store.delete_collection(A, "manuals")
    assert store.chunks.count(info.namespace) == 0
    assert [c.name for c in store.list_collections(B)] == ["manuals"]


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    info = store.create_collection(A, "docs")
    store.put_document(A, "docs", "a.md", title="v1", content_hash="h1", size=1, chunks=1)
    store.chunks.write(info.namespace, [IndexedChunk("1:old", "old text", {})])
    with pytest.raises(RuntimeError), store.transaction():
        store.put_document(A, "docs", "a.md", title="v2", content_hash="h2", size=1, chunks=1)
        store.chunks.delete(info.namespace, ["1:old"])
        store.chunks.write(info.namespace, [IndexedChunk("1:new", "new text", {})])
        raise RuntimeError("crash while indexing the new version")
    assert store.find_document(A, "docs", "a.md").title == "v1"  # type: ignore[union-attr]
    assert set(store.chunks.vectors(info.namespace, "1:")) == {"1:old"}


def test_deleting_a_thread_deletes_its_recall_chunks(store: Store) -> None:
    made = store.append(A, "t", [Message.user("x")], create=True)
    assert made
    uid = store.get_thread(A, "t").uid
    store.chunks.write(f"thread:{uid}", [IndexedChunk("000001", "x", {"last_seq": 1})])
    store.delete_thread(A, "t")
    assert store.chunks.count(f"thread:{uid}") == 0


# -- concurrency ----------------------------------------------------------------------------
def test_concurrent_appends_to_one_thread_stay_linear(make_store: Callable[[], Store]) -> None:
    first, second = make_store(), make_store()  # two connections: two processes or replicas
    first.create_thread(A, "t")
    errors: list[BaseException] = []

    def writer(store: Store, name: str) -> None:
        try:
            for i in range(25):
                store.append(A, "t", [Message.user(f"{name}{i}"), Message.assistant("ok")])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [
        threading.Thread(target=writer, args=(s, n))
        for s, n in ((first, "x"), (second, "y"), (first, "z"))
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    stored = list(second.messages(A, "t"))
    assert [m.seq for m in stored] == list(range(1, 151))
    for user, answer in zip(stored[::2], stored[1::2], strict=True):  # each append stays whole
        assert user.message.role == "user" and answer.message.text == "ok"


async def test_concurrent_async_appends_are_each_stored_whole(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.create_thread(A, "t")

    async def append(i: int) -> list[int]:
        thread = "t" if i % 2 else f"u{i}"
        pair = [Message.user(f"q{i}"), Message.assistant(f"a{i}")]
        stored = await store.append_async(A, thread, pair, create=True, trace=trace(f"{i}"))
        return [m.seq for m in stored]

    seqs = await asyncio.gather(*(append(i) for i in range(20)))
    assert all(len(s) == 2 and s[1] == s[0] + 1 for s in seqs)
    shared = list(make_store().messages(A, "t"))  # another connection: they are committed
    assert [m.seq for m in shared] == list(range(1, 21))
    for user, answer in zip(shared[::2], shared[1::2], strict=True):
        assert answer.message.text == "a" + user.message.text[1:]
        assert [n for _, t in store.traces(A, "t", limit=20) for n in t.notes].count(
            user.message.text[1:]
        ) == 1
    with pytest.raises(ThreadNotFound):
        await store.append_async(A, "missing", [Message.user("x")])


async def test_turn_locks_serialise_one_thread_across_stores(
    make_store: Callable[[], Store],
) -> None:
    first, second = make_store(), make_store()
    inside: list[str] = []
    overlaps: list[str] = []

    async def turn(store: Store, thread: str, name: str) -> None:
        async with store.locks.hold(A, thread):
            if any(t == thread for t in inside):
                overlaps.append(name)
            inside.append(thread)
            await asyncio.sleep(0.05)
            inside.remove(thread)

    started = time.perf_counter()
    await asyncio.gather(
        turn(first, "t", "1"), turn(second, "t", "2"), turn(first, "t", "3"), turn(second, "t", "4")
    )
    assert overlaps == [] and time.perf_counter() - started >= 0.2
    started = time.perf_counter()
    await asyncio.gather(*(turn(first if i % 2 else second, f"u{i}", str(i)) for i in range(6)))
    assert time.perf_counter() - started < 0.25  # different threads do not wait for each other


# -- search ---------------------------------------------------------------------------------
DOCS = [
    ("cats", "Cats are small domesticated carnivorous mammals that purr.", {"n": 1, "t": "1"}),
    ("dogs", "Dogs were domesticated from wolves and love to fetch sticks.", {"n": 2, "b": True}),
    ("rust", "Rust is a systems programming language focused on memory safety.", {"n": 1}),
    ("python", "Python is a programming language with dynamic typing.", {"b": None}),
    ("study", "This study examines vitamin D supplementation in elderly patients.", {}),
]
EMBEDDER = HashEmbedder(dim=64)


@pytest.fixture
def index(store: Store) -> SearchIndex:
    index = SearchIndex.for_store(store, EMBEDDER)
    index.add("collection:1", [Chunk(k, text, meta) for k, text, meta in DOCS])
    return index


def test_keyword_vector_and_hybrid_search(index: SearchIndex) -> None:
    assert index.search("wolves", ["collection:1"], mode="keyword")[0].key == "dogs"
    words = index.search("programming language", ["collection:1"], mode="keyword")
    assert {h.key for h in words} == {"rust", "python"}
    assert all(h.scores["keyword"] > 0 for h in words)
    (near,) = index.search(
        "", ["collection:1"], k=1, mode="vector", query_vector=EMBEDDER.embed([DOCS[4][1]])[0]
    )
    assert near.key == "study" and near.scores["vector"] == pytest.approx(1.0, abs=1e-2)
    hybrid = index.search("vitamin supplementation", ["collection:1"], k=3)
    assert hybrid[0].key == "study" and set(hybrid[0].ranks) == {"keyword", "vector"}
    assert hybrid[0].metadata == {} and hybrid[0].namespace == "collection:1"
    assert index.search("wolves", ["collection:2"]) == []  # namespaces are kept apart


def test_filters_are_typed(index: SearchIndex) -> None:
    def keys(filters: dict) -> set[str]:
        return {
            h.key
            for h in index.search(
                "", ["collection:1"], k=10, mode="vector", query_vector=np.ones(64), filters=filters
            )
        }

    assert keys({"n": 1}) == {"cats", "rust"}
    assert keys({"n": [1, 2]}) == {"cats", "rust", "dogs"}
    assert keys({"t": "1"}) == {"cats"} and keys({"t": 1}) == set()  # "1" is not 1
    assert keys({"b": True}) == {"dogs"} and keys({"n": True}) == set()  # true is not 1
    assert keys({"b": None}) == {"cats", "rust", "python", "study"}  # missing or null
    kw = index.search("domesticated", ["collection:1"], mode="keyword", filters={"n": 2})
    assert [h.key for h in kw] == ["dogs"]


def test_writes_replace_by_key_and_deletes_count(store: Store, index: SearchIndex) -> None:
    assert index.count("collection:1") == 5
    index.add("collection:1", [Chunk("cats", "Cats now bark loudly.")])
    assert index.count("collection:1") == 5
    assert index.search("bark", ["collection:1"], mode="keyword")[0].key == "cats"
    assert index.search("purr", ["collection:1"], mode="keyword") == []
    assert index.remove("collection:1", ["cats", "absent"]) == 1
    assert index.clear("collection:1") == 4 and index.count("collection:1") == 0
    assert store.chunks.dimension("collection:1") == 0


def test_chunk_reads_for_ingest_recall_and_routing(store: Store) -> None:
    chunks = store.chunks
    v = EMBEDDER.embed(["alpha", "beta"])
    chunks.write(
        "ns",
        [
            IndexedChunk("7:aaa", "alpha", {"last_seq": 2}, v[0] / np.linalg.norm(v[0])),
            IndexedChunk("7:bbb", "beta", {"last_seq": 9}, v[1] / np.linalg.norm(v[1])),
            IndexedChunk("70:c", "gamma", {}, None),
            IndexedChunk("B", "delta", {}, None),
            IndexedChunk("a", "epsilon", {}, None),
        ],
    )
    assert chunks.dimension("ns") == 64
    got = chunks.vectors("ns", "7:")
    assert set(got) == {"7:aaa", "7:bbb"}
    assert np.allclose(got["7:aaa"], v[0] / np.linalg.norm(v[0]), atol=1e-2)
    assert chunks.vectors("ns", "70:") == {"70:c": None}
    assert set(chunks.vectors("ns", "")) == {"7:aaa", "7:bbb", "70:c", "B", "a"}
    last = chunks.last("ns")  # the greatest key in byte order, whatever the collation
    assert last is not None and (last.key, last.text) == ("a", "epsilon")
    centroid, count = chunks.centroid("ns")
    expected = v[0] / np.linalg.norm(v[0]) + v[1] / np.linalg.norm(v[1])
    assert count == 2 and centroid is not None
    assert np.allclose(centroid, expected / np.linalg.norm(expected), atol=1e-2)
    with pytest.raises(UserError, match="different sizes"):
        chunks.write("ns", [IndexedChunk("x", "x", {}, np.ones(8, np.float32) / 8**0.5)])


def test_labels_read_a_field_of_the_chunks_without_their_text(store: Store) -> None:
    chunks = store.chunks
    chunks.write(
        "thread:1",
        [
            IndexedChunk("0001-0002", "alpha", {"created_at": 1.5, "first_seq": 1}, None),
            IndexedChunk("0003-0004", "beta", {"first_seq": 3}, None),
        ],
    )
    chunks.write("thread:2", [IndexedChunk("0001-0002", "gamma", {"created_at": 7}, None)])
    pks = {
        text: chunks.keyword(text, [namespace], None, 1)[0][0]
        for text, namespace in (("alpha", "thread:1"), ("beta", "thread:1"), ("gamma", "thread:2"))
    }
    got = chunks.labels([pks["alpha"], pks["beta"], pks["gamma"], 10**9], "created_at")
    assert got == {
        pks["alpha"]: ("thread:1", "0001-0002", 1.5),
        pks["beta"]: ("thread:1", "0003-0004", None),  # no such field
        pks["gamma"]: ("thread:2", "0001-0002", 7),
    }
    assert chunks.labels([], "created_at") == {}


def test_term_counts_count_the_chunks_holding_each_keyword(store: Store) -> None:
    """Routing's vocabulary evidence: per namespace with chunks, its chunk count and how many
    of them hold each of the query's keywords, the same keywords in the same order for every
    namespace (each backend analyzes the query as its keyword search does)."""
    chunks = store.chunks
    chunks.write(
        "collection:1",
        [
            IndexedChunk("a", "printer ink and toner", None, None),
            IndexedChunk("b", "printer cable", None, None),
            IndexedChunk("c", "bread", None, None),
        ],
    )
    chunks.write("collection:2", [IndexedChunk("d", "ink drawing", None, None)])
    chunks.write("collection:3", [IndexedChunk("e", "x", None, None)])
    chunks.delete("collection:3", ["e"])  # no chunks left: not listed
    got = chunks.term_counts("printer ink", ["collection:1", "collection:2", "collection:3"])
    assert set(got) == {"collection:1", "collection:2"}
    assert got["collection:1"][0] == 3 and got["collection:2"][0] == 1
    one, two = got["collection:1"][1], got["collection:2"][1]
    assert len(one) == len(two) == 2
    assert sorted(zip(one, two, strict=True)) == [(1, 1), (2, 0)]  # ink: 1 and 1; printer: 2, 0
    assert chunks.term_counts("printer", ["collection:2"]) == {"collection:2": (1, (0,))}
    # a chunk written again under its key counts with its new text; a cleared namespace, none
    chunks.write("collection:1", [IndexedChunk("b", "bread", None, None)])  # was "printer cable"
    assert chunks.term_counts("printer", ["collection:1"]) == {"collection:1": (3, (1,))}
    assert chunks.term_counts("bread", ["collection:1"]) == {"collection:1": (3, (2,))}
    chunks.clear("collection:1")
    assert chunks.term_counts("printer bread", ["collection:1", "collection:2"]) == {
        "collection:2": (1, (0, 0))
    }
    assert chunks.term_counts("the and of", ["collection:1"]) == {}  # stopwords only
    assert chunks.term_counts("printer", []) == {}


# -- the engine on each backend -------------------------------------------------------------
def test_ingest_is_idempotent(store: Store, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Leave\n\nYou get 25 days of paid leave a year.\n")
    (docs / "b.txt").write_text("Expenses are refunded within 30 days of the claim.\n")
    index = SearchIndex.for_store(store, EMBEDDER)
    first = Ingestor(store, index, A).ingest([docs], "handbook")
    assert first.added == 2
    again = Ingestor(store, index, A).ingest([docs], "handbook")
    assert again.added == 0 and again.unchanged == 2
    info = store.get_collection(A, "handbook")
    assert info.documents == 2 and info.chunks == index.count(info.namespace)
    hit = index.search("paid leave", [info.namespace], k=1)[0]
    assert hit.metadata["source"].endswith("a.md")


def test_a_chatbot_keeps_its_thread_and_cites_documents(store: Store, tmp_path: Path) -> None:
    docs = tmp_path / "kb"
    docs.mkdir()
    (docs / "policy.md").write_text("# Refunds\n\nRefunds are paid within 14 days.\n")
    bot = Chatbot("test:echo", store=store)
    Ingestor(store, bot.index, bot.owner).ingest([docs], "policies")
    answer = bot.chat("t", "How fast are refunds paid?")
    assert answer.citations and answer.citations[0].source.endswith("policy.md")
    bot.chat("t", "thanks")
    assert [m.message.role for m in store.messages(bot.owner, "t")][:2] == ["user", "assistant"]
    assert store.get_thread(bot.owner, "t").message_count == 4
    assert SearchIndex.for_store(store, bot.index.embedder) is bot.index  # one per store
    other = Chatbot("test:echo", store=store)
    assert other.index is bot.index


# -- turn streams and signals ---------------------------------------------------------------
def _write(stream: str, thread: str, seqs: range, status: str = "running") -> StreamWrite:
    return StreamWrite(
        stream, A, thread, [(i, "text_delta", f'{{"text": "{i}"}}') for i in seqs], status
    )


def test_streams_are_recorded_and_read_back_from_another_store(
    make_store: Callable[[], Store],
) -> None:
    writer, reader = make_store(), make_store()  # the replica running the turn, another one
    writer.streams.record("r1", [_write("s1", "t", range(1, 4))])
    writer.streams.record("r1", [_write("s1", "t", range(4, 6))])
    info = reader.streams.get(A, "t", "s1")
    assert info is not None and (info.replica, info.status, info.last_seq) == ("r1", "running", 5)
    assert reader.streams.get(B, "t", "s1") is None  # another owner's stream is not found
    assert reader.streams.get(A, "other", "s1") is None
    assert [seq for seq, _, _ in reader.streams.events("s1", 0)] == [1, 2, 3, 4, 5]
    assert reader.streams.events("s1", 3) == [
        (4, "text_delta", '{"text": "4"}'),
        (5, "text_delta", '{"text": "5"}'),
    ]
    assert [s.id for s in reader.streams.running(A, "t")] == ["s1"]
    writer.streams.record("r1", [_write("s1", "t", range(6, 7), "done")])
    assert reader.streams.running(A, "t") == []
    assert reader.streams.latest(A, "t").status == "done"  # type: ignore[union-attr]
    time.sleep(0.01)
    writer.streams.record("r1", [_write("s2", "t", range(1, 2))])
    assert reader.streams.latest(A, "t").id == "s2"  # type: ignore[union-attr]


def test_signals_reach_the_replica_running_the_stream_once(
    make_store: Callable[[], Store],
) -> None:
    running, other = make_store(), make_store()
    running.streams.record("r1", [_write("s1", "t", range(1, 2))])
    other.streams.record("r2", [_write("s2", "u", range(1, 2))])
    assert running.streams.take_signals("r1") == []
    other.streams.signal("s1", "approval", "call-1", True)
    other.streams.signal("s1", "cancel")
    assert other.streams.take_signals("r2") == []  # not its stream
    taken = running.streams.take_signals("r1")
    assert [(g.kind, g.call_id, g.value) for g in taken] == [
        ("approval", "call-1", True),
        ("cancel", None, False),
    ]
    assert running.streams.take_signals("r1") == []  # each is taken once


def test_heartbeats_interrupts_and_pruning(store: Store) -> None:
    store.streams.record("r1", [_write("s1", "t", range(1, 3))])
    before = store.streams.get(A, "t", "s1")
    time.sleep(0.02)
    store.streams.record("r1", [])  # a flush with nothing new still says the replica lives
    after = store.streams.get(A, "t", "s1")
    assert before is not None and after is not None
    assert after.heartbeat_at > before.heartbeat_at
    assert store.streams.interrupt("s1", "error", '{"type": "interrupted"}')
    assert not store.streams.interrupt("s1", "error", "{}")  # once
    info = store.streams.get(A, "t", "s1")
    assert info is not None and (info.status, info.last_seq) == ("interrupted", 3)
    assert store.streams.events("s1", 2) == [(3, "error", '{"type": "interrupted"}')]
    store.streams.record("r1", [_write("s1", "t", range(3, 5))])  # the replica was only slow
    assert store.streams.get(A, "t", "s1").status == "interrupted"  # type: ignore[union-attr]
    assert store.streams.events("s1", 2)[0] == (3, "error", '{"type": "interrupted"}')
    store.streams.record("r1", [_write("s2", "t", range(1, 2))])  # still running: kept
    assert store.streams.prune(time.time() + 1) == 1
    assert store.streams.get(A, "t", "s1") is None and store.streams.events("s1", 0) == []
    assert store.streams.get(A, "t", "s2") is not None


def test_deleting_a_thread_deletes_its_streams(store: Store) -> None:
    store.append(A, "t", [Message.user("x")], create=True)
    store.streams.record("r1", [_write("s1", "t", range(1, 3), "done")])
    store.delete_thread(A, "t")
    assert store.streams.latest(A, "t") is None and store.streams.events("s1", 0) == []


# -- job queue ------------------------------------------------------------------------------
def _claim(store: Store, worker: str, stale_after_s: float = 60.0, **kw: int) -> str | None:
    job = store.jobs.claim(worker, stale_after_s=stale_after_s, **kw)
    return None if job is None else job.id


def test_jobs_are_queued_claimed_beaten_and_finished(store: Store) -> None:
    made = store.jobs.enqueue(A, "ingest", {"collection": "c", "n": [1, "x"]}, [("a.md", b"# A")])
    assert (made.owner, made.kind, made.state, made.attempts) == (A, "ingest", "queued", 0)
    assert made.payload == {"collection": "c", "n": [1, "x"]} and made.progress == {}
    assert made.started_at is None and made.worker is None and not made.finished
    assert store.jobs.get(A, made.id) == made and store.jobs.list(A) == [made]

    claimed = store.jobs.claim("w1", stale_after_s=60)
    assert claimed is not None and claimed.id == made.id
    assert (claimed.state, claimed.worker, claimed.attempts) == ("running", "w1", 1)
    assert claimed.started_at is not None and claimed.started_at >= made.created_at
    assert _claim(store, "w2") is None  # nothing else queued
    assert store.jobs.files(made.id) == [("a.md", b"# A")]

    assert store.jobs.heartbeat(made.id, "w1", {"done": 1, "current": "a.md"})
    assert store.jobs.heartbeat(made.id, "w1")  # None keeps the progress
    assert not store.jobs.heartbeat(made.id, "w2", {"done": 9})  # not w2's
    assert store.jobs.get(A, made.id).progress == {"done": 1, "current": "a.md"}  # type: ignore[union-attr]

    assert not store.jobs.finish(made.id, "w2", "done", {})
    errors = [{"file": "b.xyz", "reason": "unsupported file type '.xyz'"}]
    assert store.jobs.finish(made.id, "w1", "done", {"added": 1}, errors)
    done = store.jobs.get(A, made.id)
    assert done is not None and done.finished and done.state == "done"
    assert (done.result, done.errors, done.worker) == ({"added": 1}, errors, "w1")
    assert done.finished_at is not None and done.finished_at >= claimed.started_at
    assert store.jobs.files(made.id) == []  # dropped when it finished
    assert not store.jobs.heartbeat(made.id, "w1") and not store.jobs.release(made.id, "w1")
    assert not store.jobs.finish(made.id, "w1", "failed", {})
    with pytest.raises(ValueError):
        store.jobs.finish(made.id, "w1", "running", {})


def test_jobs_are_the_owners_alone_newest_first(store: Store) -> None:
    mine = [store.jobs.enqueue(A, "ingest", {"i": i}) for i in range(3)]
    theirs = store.jobs.enqueue(B, "ingest", {"i": 9})
    assert store.jobs.get(B, mine[0].id) is None and store.jobs.get(A, theirs.id) is None
    assert store.jobs.get(A, "job_nope") is None
    assert [j.id for j in store.jobs.list(A)] == [j.id for j in reversed(mine)]
    assert [j.id for j in store.jobs.list(A, limit=2)] == [mine[2].id, mine[1].id]
    assert [j.id for j in store.jobs.list(B)] == [theirs.id]


def test_a_released_job_is_claimed_again_without_counting(store: Store) -> None:
    job = store.jobs.enqueue(A, "ingest", {})
    assert _claim(store, "w1") == job.id
    assert not store.jobs.release(job.id, "w2")
    assert store.jobs.release(job.id, "w1")
    queued = store.jobs.get(A, job.id)
    assert queued is not None and (queued.state, queued.attempts) == ("queued", 0)
    assert queued.started_at is None
    again = store.jobs.claim("w2", stale_after_s=60)
    assert again is not None and (again.id, again.attempts, again.worker) == (job.id, 1, "w2")


def test_claims_are_fair_between_owners(store: Store) -> None:
    many = [store.jobs.enqueue(A, "ingest", {"i": i}) for i in range(20)]
    time.sleep(0.01)
    one = store.jobs.enqueue(B, "ingest", {"line": 1})
    first, second = _claim(store, "w1"), _claim(store, "w2")
    assert first == many[0].id  # the oldest: no one runs anything yet
    assert second == one.id  # A runs one, B none: B's one-liner does not wait behind A's 20
    assert _claim(store, "w3") == many[1].id  # then A's again, oldest first


def test_owners_take_turns_on_one_worker(store: Store) -> None:
    many = [store.jobs.enqueue(A, "ingest", {"i": i}) for i in range(3)]
    time.sleep(0.01)
    theirs = [store.jobs.enqueue(B, "ingest", {"i": i}) for i in range(2)]
    order = []
    while (job_id := _claim(store, "w")) is not None:
        order.append(job_id)
        store.jobs.finish(job_id, "w", "done", {})
        time.sleep(0.01)  # the clock moves on between jobs
    # not oldest first (A's three, then B's): B's waits for one of A's, not for all of them
    assert order == [many[0].id, theirs[0].id, many[1].id, theirs[1].id, many[2].id]


def test_a_job_given_back_lets_the_other_owner_go_first(store: Store) -> None:
    big = store.jobs.enqueue(A, "ingest", {"files": 20})
    time.sleep(0.01)
    small = store.jobs.enqueue(B, "ingest", {"files": 1})
    assert _claim(store, "w") == big.id
    assert store.jobs.backlog() == {A: (0, 1), B: (1, 0)}
    assert store.jobs.backlog(B) == {B: (1, 0)}
    assert store.jobs.release(big.id, "w")  # it gives way, though it is the older
    assert store.jobs.backlog(A) == {A: (1, 0)}
    assert _claim(store, "w") == small.id
    store.jobs.finish(small.id, "w", "done", {})
    assert _claim(store, "w") == big.id
    store.jobs.finish(big.id, "w", "done", {})
    assert store.jobs.backlog() == {} and store.jobs.backlog(A) == {}


def test_a_stale_job_is_taken_over_then_given_up(store: Store) -> None:
    job = store.jobs.enqueue(A, "ingest", {}, [("a.txt", b"a")])
    assert _claim(store, "w1") == job.id
    assert _claim(store, "w2", stale_after_s=60) is None  # w1 is alive
    time.sleep(0.05)
    taken = store.jobs.claim("w2", stale_after_s=0.01)  # w1 went silent: it crashed
    assert taken is not None and (taken.id, taken.worker, taken.attempts) == (job.id, "w2", 2)
    assert not store.jobs.heartbeat(job.id, "w1")  # w1 learns it lost the job
    assert not store.jobs.finish(job.id, "w1", "done", {})
    assert store.jobs.files(job.id) == [("a.txt", b"a")]  # still there for the new worker
    time.sleep(0.05)
    assert _claim(store, "w3", stale_after_s=0.01, max_attempts=2) is None
    failed = store.jobs.get(A, job.id)
    assert failed is not None and failed.state == "failed" and failed.finished_at is not None
    assert "abandoned 2 times" in failed.errors[-1]["reason"]
    assert store.jobs.files(job.id) == []


def test_two_workers_never_claim_the_same_job(make_store: Callable[[], Store]) -> None:
    stores = [make_store(), make_store()]
    queued = {stores[0].jobs.enqueue(f"user{i % 3}", "ingest", {"i": i}).id for i in range(40)}
    claimed: list[list[str]] = [[], []]

    def work(n: int) -> None:
        while (job_id := _claim(stores[n], f"w{n}")) is not None:
            claimed[n].append(job_id)

    workers = [threading.Thread(target=work, args=(n,)) for n in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(claimed[0] + claimed[1]) == sorted(queued)  # each once, none twice


def test_job_files_round_trip_byte_exact(store: Store) -> None:
    files = [
        ("all bytes.bin", bytes(range(256)) * 300),
        ("empty.txt", b""),
        ("nul\u00e9 名.md", b"\x00\xff\xfe not utf-8 \x80"),
        ("big.pdf", os.urandom(3 * 1024 * 1024)),
    ]
    job = store.jobs.enqueue(A, "ingest", {"files": [n for n, _ in files]}, files)
    assert store.jobs.files(job.id) == files
    assert store.jobs.get(A, job.id).payload["files"][2] == "nul\u00e9 名.md"  # type: ignore[union-attr]


def test_only_the_newest_finished_jobs_are_kept(store: Store) -> None:
    store.jobs.keep = 2  # type: ignore[attr-defined]
    running = store.jobs.enqueue(A, "ingest", {})
    assert _claim(store, "w") == running.id
    finished = []
    for i in range(4):
        job = store.jobs.enqueue(A, "ingest", {"i": i})
        assert _claim(store, "w") == job.id
        store.jobs.finish(job.id, "w", "done", {})
        finished.append(job.id)
    theirs = store.jobs.enqueue(B, "ingest", {})
    kept = [j.id for j in store.jobs.list(A)]
    assert kept == [finished[3], finished[2], running.id]  # the running one is never pruned
    assert store.jobs.get(B, theirs.id) is not None
