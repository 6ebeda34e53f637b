"""Search over threads (``retrieval/thread_search.py``, ``GET /api/search``): titles and
message text through the chunk index's BM25, indexed after each turn in the background and
caught up (bounded) at search time, owner-scoped."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from chatwright.config import Settings
from chatwright.retrieval.thread_search import ThreadSearch, namespace, thread_search
from chatwright.server import create_app
from chatwright.store import Store
from chatwright.store.base import IndexedChunk
from chatwright.types import Message

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def chat(store: Store, owner: str, thread_id: str, *texts: str) -> None:
    messages = [
        Message.user(t) if i % 2 == 0 else Message.assistant(t) for i, t in enumerate(texts)
    ]
    store.append(owner, thread_id, messages, create=True)


def ids(search: ThreadSearch, owner: str, query: str) -> list[str]:
    return [h.thread.id for h in search.search(owner, query)]


def test_titles_and_message_text_are_searched(make_store: Callable[[], Store]) -> None:
    store = make_store()
    chat(store, "ann", "cors", "How do I enable CORS?", "Set cors_origins in [server].")
    chat(store, "ann", "bread", "Why does sourdough not rise?", "Your starter may be weak.")
    store.rename_thread("ann", "bread", "Baking questions")
    search = thread_search(store)
    assert ids(search, "ann", "starter") == ["bread"]  # an answer's words
    (hit,) = search.search("ann", "baking")  # the title
    assert (hit.thread.id, hit.seq, hit.snippet) == ("bread", None, "Baking questions")
    (hit,) = search.search("ann", "cors_origins")
    assert (hit.seq, hit.role) == (2, "assistant") and "cors_origins" in hit.snippet
    assert search.search("ann", "the of and") == []  # nothing searchable


def test_another_users_threads_are_never_searched(make_store: Callable[[], Store]) -> None:
    store = make_store()
    chat(store, "ann", "t", "my secret recipe for tiramisu", "noted")
    chat(store, "bob", "t", "what about pancakes", "sure")
    search = thread_search(store)
    assert ids(search, "bob", "tiramisu") == []
    assert ids(search, "ann", "pancakes") == []
    assert ids(search, "ann", "tiramisu") == ["t"]


def test_new_messages_renames_and_deletes_are_caught_up(make_store: Callable[[], Store]) -> None:
    store = make_store()
    chat(store, "ann", "t", "about kayaks", "ok")
    search = thread_search(store)
    assert ids(search, "ann", "canoe") == []
    chat(store, "ann", "t", "and canoes?", "also fine")
    assert ids(search, "ann", "canoe") == ["t"]
    store.rename_thread("ann", "t", "Paddling")
    assert ids(search, "ann", "paddling") == ["t"]
    info = store.get_thread("ann", "t")
    assert store.chunks.count(namespace(info)) == 6  # title + 4 messages + the mark
    store.delete_thread("ann", "t")
    assert store.chunks.count(namespace(info)) == 0  # gone with the thread, same transaction
    chat(store, "ann", "t2", "something else entirely", "ok")  # may reuse the uid (SQLite)
    assert ids(search, "ann", "kayaks") == []


def test_a_restarted_process_resumes_without_indexing_twice(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    chat(store, "ann", "t", "first words", "answer one")
    chat(store, "ann", "u", "untouched thread", "answer")
    ThreadSearch(store).search("ann", "words")
    info = store.get_thread("ann", "t")
    assert store.chunks.count(namespace(info)) == 4  # title, 2 messages, the mark
    chat(store, "ann", "t", "second question", "answer two")
    other = ThreadSearch(make_store())  # another process or replica on the same data
    written: list[str] = []
    write = other.store.chunks.write

    def spy(ns: str, chunks: Sequence[IndexedChunk]) -> None:
        written.extend(f"{ns}/{c.key}" for c in chunks)
        write(ns, chunks)

    other.store.chunks.write = spy  # type: ignore[method-assign]
    assert [h.thread.id for h in other.search("ann", "second")] == ["t"]
    ns = namespace(info)  # only what is new: "u" and t's first messages are not written again
    assert written == [f"{ns}/000000000003", f"{ns}/000000000004", f"{ns}/~"]
    assert store.chunks.count(ns) == 6
    written.clear()
    assert [h.thread.id for h in other.search("ann", "untouched")] == ["u"]
    assert written == []  # current threads cost one read of their mark, no write


def test_best_match_first_and_one_result_per_thread(make_store: Callable[[], Store]) -> None:
    store = make_store()
    chat(store, "ann", "once", "a word about pgvector", "ok")
    chat(store, "ann", "often", "pgvector pgvector indexes", "pgvector HNSW in pgvector")
    found = thread_search(store).search("ann", "pgvector")
    assert [h.thread.id for h in found] == ["often", "once"]


def test_search_of_many_threads_is_fast_once_indexed(tmp_path: Path) -> None:
    from chatwright.store import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db")
    for i in range(300):
        chat(store, "ann", f"t{i}", f"question {i} about topic{i % 17}", f"answer {i}")
    search = ThreadSearch(store)
    search.search("ann", "topic3")  # indexes everything once
    start = time.perf_counter()
    found = search.search("ann", "topic3")
    took = time.perf_counter() - start
    assert len(found) == 18 and all("topic3" in h.snippet for h in found)
    assert took < 0.5, took  # a listing and one BM25 ranking, no re-indexing
    store.close()


def test_search_endpoint(tmp_path: Path) -> None:
    settings = Settings(
        model="test:echo", embedder="test:hash", data_dir=tmp_path / "d", server={"preload": False}
    )
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        store = client.app.state.chatwright.store  # type: ignore[attr-defined]
        chat(store, "local", "mine", "notes on octopus cognition", "ok")
        chat(store, "eve", "hers", "octopus secrets of eve", "ok")
        body = client.get("/api/search", params={"q": "octopus"}).json()
        assert [r["thread"]["id"] for r in body["results"]] == ["mine"]
        assert body["results"][0]["snippet"].startswith("notes on octopus")
        assert client.get("/api/search", params={"q": ""}).status_code == 422
        assert client.get("/api/search", params={"q": "zebra"}).json()["results"] == []
        assert body["partial"] is False
        for i in range(25):  # an import: not indexed until searched
            chat(store, "local", f"i{i}", f"imported squid notes {i}", "ok")
        body = client.get("/api/search", params={"q": "squid", "limit": 100}).json()
        assert body["partial"] is True and body["pending"] >= 5  # 20 at most, 200 ms at most
        assert len(body["results"]) == 25 - body["pending"]
        for _ in range(25):  # each search catches up more (on a slow machine, fewer)
            body = client.get("/api/search", params={"q": "squid", "limit": 100}).json()
            if not body["partial"]:
                break
        assert (body["partial"], len(body["results"])) == (False, 25)


def test_messages_of_every_branch_are_found(make_store: Callable[[], Store]) -> None:
    store = make_store()
    chat(store, "ann", "t", "name a colour", "crimson")
    search = thread_search(store)
    assert ids(search, "ann", "crimson") == ["t"]
    store.fork("ann", "t", 1)  # regenerate: a new branch, now active
    store.append("ann", "t", [Message.assistant("turquoise")])
    assert ids(search, "ann", "turquoise") == ["t"]
    assert ids(search, "ann", "crimson") == ["t"]  # the old answer is kept, and found


def test_a_thread_deleted_after_the_listing_is_never_indexed_into_another_one(
    make_store: Callable[[], Store],
) -> None:
    """The race of a search's catch-up, by hand: the owner's threads are listed, then one is
    deleted, another user's new thread may take its key (SQLite reuses it) and the owner
    starts a thread of the same id again. Indexing the listed thread writes nothing: its
    text never lands in the other user's namespace, nor shows in their search."""
    store = make_store()
    chat(store, "ann", "x", "my secret kayak plans", "ok")
    search = ThreadSearch(store)
    (listed,) = search.threads("ann")
    store.delete_thread("ann", "x")
    chat(store, "bob", "y", "about bicycles", "ok")
    chat(store, "ann", "x", "more secret kayak plans", "ok")  # same id, a new thread
    indexed = search._index_batch(listed)
    bob = store.get_thread("bob", "y")
    assert store.chunks.keyword("kayak", [namespace(bob)], None, 10) == []
    assert store.chunks.count(namespace(bob)) == 0  # nothing written there at all
    assert indexed is None  # not the thread that was listed
    assert ids(search, "bob", "kayak") == []
    assert ids(search, "bob", "bicycles") == ["y"]
    assert ids(search, "ann", "kayak") == ["x"]  # the new one, indexed as itself


def _namespace_rows(store: Store, ns: str) -> list[tuple[int]]:
    sql = "SELECT chunks FROM chunk_namespaces WHERE namespace = "
    if hasattr(store, "_pool"):  # PostgreSQL
        with store._db.read() as conn:  # type: ignore[attr-defined]
            return conn.execute(sql + "%s", (ns,)).fetchall()
    with store.transaction():
        return store.connection.execute(sql + "?", (ns,)).fetchall()  # type: ignore[attr-defined]


def test_deleting_a_thread_deletes_its_search_text_by_trigger(
    make_store: Callable[[], Store],
) -> None:
    """As recall's namespace: the store's delete_thread knows nothing of thread search. On
    PostgreSQL the namespace's row goes too; SQLite keeps it at 0 chunks, since it reuses the
    thread's key and the row's rising version is what keeps a cached segment from serving the
    deleted thread's text to the thread that gets its key."""
    store = make_store()
    chat(store, "ann", "t", "about kayaks", "ok")
    search = thread_search(store)
    assert ids(search, "ann", "kayaks") == ["t"]
    ns = namespace(store.get_thread("ann", "t"))
    assert store.chunks.count(ns) == 4  # title, 2 messages, the mark
    store.delete_thread("ann", "t")
    assert store.chunks.count(ns) == 0
    assert store.chunks.keyword("kayaks", [ns], None, 10) == []
    assert _namespace_rows(store, ns) in ([], [(0,)])
    if hasattr(store, "_pool"):
        assert _namespace_rows(store, ns) == []


def test_a_search_catches_up_only_a_few_threads_and_says_so(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    for i in range(25):  # written straight to the store (an import): not indexed yet
        chat(store, "ann", f"t{i:02d}", f"walrus fact {i}", "ok")
    search = ThreadSearch(store)
    # the thread bound alone (the time bound would make the count depend on the machine)
    found = search.find("ann", "walrus", limit=100, max_threads=20, max_s=None)
    assert found.pending == 5 and len(found.hits) == 20
    newest = {f"t{i:02d}" for i in range(5, 25)}  # newest first
    assert {h.thread.id for h in found.hits} == newest
    search.wait()  # the rest, caught up in the background
    assert store.chunks.last(namespace(store.get_thread("ann", "t00"))).key == "~"  # type: ignore[union-attr]
    found = search.find("ann", "walrus", limit=100, max_threads=0)
    assert found.pending == 0 and len(found.hits) == 25
    stalled = ThreadSearch(store).find("ann", "walrus", max_threads=20, max_s=0.0)
    assert stalled.pending == 0  # a fresh process: every mark says current, nothing to do


def test_a_turn_stores_no_search_text_and_a_search_catches_up(tmp_path: Path) -> None:
    """Thread search costs a turn nothing (its text is indexed when a search asks): a turn's
    cost and bytes stay the conversation's (benchmarks/turn_cost.py)."""
    from chatwright.bot import Chatbot
    from chatwright.store import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db")
    bot = Chatbot("test:echo", store=store)
    bot.chat("t", "a question about narwhals", owner="ann")
    bot.wait_background()
    ns = namespace(store.get_thread("ann", "t"))
    assert store.chunks.count(ns) == 0  # nothing written for search by the turn
    found = thread_search(store).find("ann", "narwhals", max_threads=20)
    assert [h.thread.id for h in found.hits] == ["t"] and found.pending == 0
    assert store.chunks.last(ns).key == "~"  # type: ignore[union-attr]
    store.close()
