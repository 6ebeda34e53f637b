"""Branches: regenerate an answer, edit a message and resend, switch between the results.

The store part runs on every backend (``make_store``: SQLite and PostgreSQL); the bot, API,
CLI and export parts on SQLite. The log stays append-only: every old message is still there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chatwright import Chatbot, SQLiteStore, get_model
from chatwright.config import MemorySettings, Settings
from chatwright.errors import ModelResponseError, ThreadNotFound, UserError
from chatwright.export import export_thread
from chatwright.models.test import ScriptedModel
from chatwright.server import create_app
from chatwright.store import Store
from chatwright.store.base import IndexedChunk, Summary
from chatwright.store.branches import alternatives
from chatwright.types import Message

A, B = "alice", "bob"


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    return make_store()


def path(store: Store, owner: str = A, thread_id: str = "t") -> list[str]:
    return [m.message.text for m in store.messages(owner, thread_id)]


def conversation(store: Store) -> None:
    """main: 1 q1, 2 a1, 3 q2, 4 a2."""
    store.append(A, "t", [Message.user("q1"), Message.assistant("a1")], create=True)
    store.append(A, "t", [Message.user("q2"), Message.assistant("a2")])


# -- the store, on every backend -------------------------------------------------------------
def test_a_fork_continues_after_a_message_and_keeps_the_old_turns(store: Store) -> None:
    conversation(store)
    made = store.fork(A, "t", 3)  # regenerate a2: fork after q2
    assert (made.id, made.parent, made.fork_seq) == (1, 0, 3)
    assert store.get_thread(A, "t").branch == 1
    assert path(store) == ["q1", "a1", "q2"]
    [stored] = store.append(A, "t", [Message.assistant("a2 again")])
    assert (stored.seq, stored.branch) == (5, 1)
    assert path(store) == ["q1", "a1", "q2", "a2 again"]
    assert [m.seq for m in store.recent(A, "t", 2)] == [3, 5]
    assert [m.seq for m in store.recent(A, "t", 10, before_seq=5)] == [1, 2, 3]
    # append-only: every message is still stored, each on its branch
    every = [(m.seq, m.branch, m.message.text) for m in store.messages(A, "t", all_branches=True)]
    assert every == [(1, 0, "q1"), (2, 0, "a1"), (3, 0, "q2"), (4, 0, "a2"), (5, 1, "a2 again")]
    store.switch_branch(A, "t", 0)
    assert path(store) == ["q1", "a1", "q2", "a2"]
    assert [m.seq for m in store.recent(A, "t", 3)] == [2, 3, 4]


def test_nested_branches_read_their_ancestors_up_to_each_fork(store: Store) -> None:
    conversation(store)
    store.fork(A, "t", 2)  # edit q2: branch 1 continues after a1
    store.append(A, "t", [Message.user("q2 edited"), Message.assistant("a2'")])  # 5, 6
    store.append(A, "t", [Message.user("q3"), Message.assistant("a3")])  # 7, 8
    nested = store.fork(A, "t", 7)  # regenerate a3 on branch 1
    assert (nested.parent, nested.fork_seq) == (1, 7)
    store.append(A, "t", [Message.assistant("a3 again")])  # 9
    assert path(store) == ["q1", "a1", "q2 edited", "a2'", "q3", "a3 again"]
    assert [m.seq for m in store.recent(A, "t", 4)] == [5, 6, 7, 9]
    assert [m.seq for m in store.recent(A, "t", 100)] == [1, 2, 5, 6, 7, 9]
    assert store.on_path(A, "t", [1, 2, 3, 4, 8, 9, 99]) == {1, 2, 9}
    infos = store.branches(A, "t")
    assert [(b.id, b.parent, b.fork_seq, b.first_seq, b.messages, b.replaces) for b in infos] == [
        (0, None, 0, 1, 4, None),
        (1, 0, 2, 5, 4, 3),
        (2, 1, 7, 9, 1, 8),
    ]
    alts = alternatives(infos)
    # "q2" 1/2, "q2 edited" 2/2: back to it shows branch 2, where a3 was regenerated
    assert alts[5] == alts[3] == [(3, 0), (5, 2)]
    assert alts[9] == [(8, 1), (9, 2)]
    assert 1 not in alts and 2 not in alts


def test_a_fork_before_the_first_message_shares_nothing(store: Store) -> None:
    conversation(store)
    store.fork(A, "t", 0)
    assert path(store) == []
    store.append(A, "t", [Message.user("q1 edited")])
    assert path(store) == ["q1 edited"]
    assert alternatives(store.branches(A, "t"))[5] == [(1, 0), (5, 1)]


def test_bad_branch_input_is_refused_and_changes_nothing(store: Store) -> None:
    conversation(store)
    with pytest.raises(UserError, match="branch 7 not found"):
        store.switch_branch(A, "t", 7)
    with pytest.raises(UserError, match="no message 40"):
        store.fork(A, "t", 40)
    with pytest.raises(ThreadNotFound):
        store.fork(B, "t", 1)  # another owner's thread is not found
    with pytest.raises(ThreadNotFound):
        store.switch_branch(B, "t", 0)
    with pytest.raises(ThreadNotFound):
        store.branches(B, "t")
    assert store.get_thread(A, "t").branch == 0
    assert [b.id for b in store.branches(A, "t")] == [0]
    assert path(store) == ["q1", "a1", "q2", "a2"]


def test_summaries_of_another_branch_are_never_used(store: Store) -> None:
    conversation(store)
    store.save_summary(A, "t", Summary(through_seq=2, text="up to a1", tokens=3))
    store.save_summary(A, "t", Summary(through_seq=4, text="up to a2", tokens=3))
    store.fork(A, "t", 3)
    store.append(A, "t", [Message.assistant("a2 again")])
    latest = store.latest_summary(A, "t")
    assert latest is not None and latest.text == "up to a1"  # a2 is not on this path
    store.switch_branch(A, "t", 0)
    assert store.latest_summary(A, "t").text == "up to a2"  # type: ignore[union-attr]


def test_a_thread_made_before_branches_migrates_onto_main(tmp_path: Path) -> None:
    path_ = tmp_path / "old.db"
    SQLiteStore(path_).close()
    db = sqlite3.connect(path_)  # back to the schema before m011, with a thread on it
    db.executescript(
        "DROP INDEX messages_by_branch; DROP TABLE branches;"
        " ALTER TABLE messages DROP COLUMN branch; ALTER TABLE threads DROP COLUMN branch;"
        " PRAGMA user_version = 10;"
        " INSERT INTO threads (owner, id, created_at, updated_at, last_seq)"
        "  VALUES ('alice', 'old', 1, 1, 2);"
        " INSERT INTO messages (thread_pk, seq, role, created_at, text)"
        "  VALUES (1, 1, 'user', 1, 'hi'), (1, 2, 'assistant', 1, 'hello');"
    )
    db.close()
    store = SQLiteStore(path_)
    assert store.get_thread(A, "old").branch == 0
    assert [(m.seq, m.branch) for m in store.messages(A, "old")] == [(1, 0), (2, 0)]
    store.fork(A, "old", 1)
    store.append(A, "old", [Message.assistant("hello again")])
    assert path(store, A, "old") == ["hi", "hello again"]
    store.close()


def test_summaries_are_kept_per_branch_and_where_a_branch_forks(store: Store) -> None:
    from chatwright.store.sqlite import SUMMARY_VERSIONS as N

    def save(*seqs: int) -> None:
        for seq in seqs:
            store.save_summary(A, "t", Summary(through_seq=seq, text=f"to {seq}", tokens=3))

    def kept() -> list[int]:
        return [s.through_seq for s in store.summaries(A, "t")]

    store.append(A, "t", [Message.user(f"m{i}") for i in range(1, 31)], create=True)  # 1-30
    save(*range(1, 13))  # main: the newest N are kept
    assert kept() == list(range(13 - N, 13))
    store.fork(A, "t", 12)
    store.append(A, "t", [Message.user(f"b{i}") for i in range(15)])  # 31-45 on branch 1
    save(*range(31, 46))
    # a busy branch prunes only its own summaries: main's are all still there
    assert kept() == list(range(13 - N, 13)) + list(range(46 - N, 46))
    store.switch_branch(A, "t", 0)
    assert store.latest_summary(A, "t").through_seq == 12  # type: ignore[union-attr]
    save(*range(13, 31))  # main goes on: its newest N, and 12, where branch 1 starts from
    assert kept() == [12, *range(31 - N, 31), *range(46 - N, 46)]
    store.fork(A, "t", 12)  # a new branch from there finds its summary without a re-read
    assert store.latest_summary(A, "t").through_seq == 12  # type: ignore[union-attr]


def test_the_newest_chunks_are_read_a_page_at_a_time(store: Store) -> None:
    chunks = store.chunks  # type: ignore[attr-defined]
    chunks.write("ns", [IndexedChunk(f"{i:012d}-x", f"text {i}", {"i": i}) for i in range(1, 8)])
    chunks.write("other", [IndexedChunk("999999999999", "elsewhere", {})])
    assert [c.metadata["i"] for c in chunks.newest("ns", 3)] == [7, 6, 5]
    page = chunks.newest("ns", 3, below="000000000005-x")
    assert [(c.key, c.text) for c in page] == [
        ("000000000004-x", "text 4"),
        ("000000000003-x", "text 3"),
        ("000000000002-x", "text 2"),
    ]
    assert [c.metadata["i"] for c in chunks.newest("ns", 3, below=page[-1].key)] == [1]
    assert chunks.newest("empty", 3) == []


def test_a_rename_on_condition_never_overwrites_another_title(store: Store) -> None:
    store.create_thread(A, "t")
    assert store.rename_thread(A, "t", "auto", only_if=None).title == "auto"  # was untitled
    assert store.rename_thread(A, "t", "auto 1", only_if=None).title == "auto"
    store.rename_thread(A, "t", "Mine")  # the user's, in between
    assert store.rename_thread(A, "t", "auto 2", only_if="auto").title == "Mine"
    assert store.rename_thread(A, "t", "Mine 2", only_if="Mine").title == "Mine 2"


def test_recall_indexes_the_path_left_behind_after_a_switch(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit, talk on the new branch (its turns indexed), back to main and talk: main's
    turns from before the fork are indexed on main's path, and recalled there."""
    monkeypatch.setattr("chatwright.retrieval.recall._MARK_PAGE", 4)  # read in pages
    memory = MemorySettings(strategy="tokens", context_tokens=600)
    settings = Settings(memory=memory, embedder="test:hash", max_answer_tokens=100)
    bot = Chatbot("test:echo", store=store, settings=settings)

    def talk(n: int, tag: str) -> None:
        for i in range(n):
            bot.chat("t", f"Small talk {tag} number {i} about the weather and football.")
            bot.wait_background()

    talk(3, "a")
    bot.chat("t", "My cat's name is Nimbus.")  # still in main's window
    bot.wait_background()
    bot.edit("t", 1, "Hello again.")  # a branch before all of it: main's turns not indexed
    talk(25, "b")  # the branch's turns are: past every seq of main's so far
    bot.switch_branch("t", 0)
    talk(25, "c")  # Nimbus falls out of main's window
    bot.model = bot.memory.model = get_model("test:context")
    answer = bot.chat("t", "What is my cat's name? Nimbus?")
    texts = [m["parts"][0]["text"] for m in json.loads(answer.text)["messages"]]
    assert "My cat's name is Nimbus." not in texts[-1]  # not in the window: recalled
    assert any("My cat's name is Nimbus." in t for t in texts[:-1])
    assert 7 in answer.trace.stage("context").data["recalled_seqs"]


# -- the bot -------------------------------------------------------------------------------
def scripted(store: SQLiteStore, replies: list[str | Exception]) -> tuple[Chatbot, ScriptedModel]:
    model = ScriptedModel(replies)
    return Chatbot(model, store=store, system_prompt="", settings=Settings()), model  # type: ignore[arg-type]


def sent(model: ScriptedModel, call: int) -> list[str]:
    return [m.text for m in model.requests[call].messages if m.role != "system"]


def test_regenerate_answers_the_same_message_again_on_a_new_branch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    bot, model = scripted(store, ["a1", "a2", "a2 again"])
    bot.chat("t", "q1")
    bot.chat("t", "q2")
    answer = bot.regenerate("t", 4)
    assert answer.text == "a2 again" and answer.seq == 5
    assert sent(model, 2) == ["q1", "a1", "q2"]  # the old a2 is not in the context
    assert [m.message.text for m in bot.history("t")] == ["q1", "a1", "q2", "a2 again"]
    assert [b.id for b in bot.branches("t")] == [0, 1]
    bot.switch_branch("t", 0)
    assert [m.message.text for m in bot.history("t")] == ["q1", "a1", "q2", "a2"]
    model.assert_complete()


def test_edit_resends_a_new_message_and_later_turns_follow_the_branch(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    bot, model = scripted(store, ["a1", "a2", "a2 for edited", "a3"])
    bot.chat("t", "q1")
    bot.chat("t", "q2 secret")
    assert bot.edit("t", 3, "q2 edited").text == "a2 for edited"
    assert sent(model, 2) == ["q1", "a1", "q2 edited"]
    bot.chat("t", "q3")
    assert sent(model, 3) == ["q1", "a1", "q2 edited", "a2 for edited", "q3"]
    assert not any("secret" in m for m in sent(model, 3))
    every = [m.message.text for m in store.messages("local", "t", all_branches=True)]
    assert "q2 secret" in every and "a2" in every  # nothing overwritten


def test_a_regeneration_that_fails_goes_back_to_the_old_branch(tmp_path: Path) -> None:
    from chatwright.errors import ModelResponseError

    store = SQLiteStore(tmp_path / "db")
    bot, _ = scripted(store, ["a1", ModelResponseError("model down")])
    bot.chat("t", "q1")
    with pytest.raises(ModelResponseError):
        bot.regenerate("t", 2)
    assert store.get_thread("local", "t").branch == 0
    assert [m.message.text for m in bot.history("t")] == ["q1", "a1"]
    assert alternatives(bot.branches("t")) == {}  # the empty branch shows nowhere


def test_the_bot_refuses_a_seq_of_the_wrong_kind(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    bot, _ = scripted(store, ["a1"])
    bot.chat("t", "q1")
    with pytest.raises(UserError, match="only answers can be regenerated"):
        bot.regenerate("t", 1)
    with pytest.raises(UserError, match="only your own messages can be edited"):
        bot.edit("t", 2, "new")
    with pytest.raises(UserError, match="not on the thread's active branch"):
        bot.regenerate("t", 9)
    with pytest.raises(ThreadNotFound):
        bot.regenerate("t", 2, owner="mallory")
    with pytest.raises(UserError, match="branch 3 not found"):
        bot.switch_branch("t", 3)
    assert [b.id for b in bot.branches("t")] == [0]


def test_recalled_turns_come_only_from_the_active_path(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    memory = MemorySettings(strategy="tokens", context_tokens=600)
    settings = Settings(memory=memory, embedder="test:hash", max_answer_tokens=100)
    bot = Chatbot("test:echo", store=store, settings=settings)

    def talk(n: int) -> None:
        for i in range(n):
            bot.chat("t", f"Small talk number {i} about the weather and football.")
            bot.wait_background()

    bot.chat("t", "My sister's name is Priya.")
    talk(25)  # main: Priya's turn falls out of the window and is indexed for recall
    bot.edit("t", 1, "My brother's name is Tom.")  # a branch without Priya
    talk(25)
    bot.model = bot.memory.model = get_model("test:context")
    texts = [
        m["parts"][0]["text"]
        for m in json.loads(bot.chat("t", "What is my sister's name? Priya?").text)["messages"]
    ]
    recalled = [t for t in texts if t.startswith("Earlier in this conversation")]
    assert not any("My sister's name is Priya." in t for t in texts[:-1])
    texts = [
        m["parts"][0]["text"]
        for m in json.loads(bot.chat("t", "What is my brother's name?").text)["messages"]
    ]
    recalled = [t for t in texts if t.startswith("Earlier in this conversation")]
    assert recalled and "My brother's name is Tom." in recalled[0]
    bot.switch_branch("t", 0)  # on main, Priya is recalled again
    texts = [
        m["parts"][0]["text"]
        for m in json.loads(bot.chat("t", "What is my sister's name?").text)["messages"]
    ]
    assert any("My sister's name is Priya." in t for t in texts if t.startswith("Earlier"))


def test_a_turn_answered_again_is_recalled_on_each_branch(tmp_path: Path) -> None:
    """The first turn answered again: two recall units start at message 1, one per branch;
    neither replaces the other."""
    store = SQLiteStore(tmp_path / "db")
    memory = MemorySettings(strategy="tokens", context_tokens=600)
    settings = Settings(memory=memory, embedder="test:hash", max_answer_tokens=100)
    bot = Chatbot("test:echo", store=store, settings=settings)

    def talk(n: int) -> None:
        for i in range(n):
            bot.chat("t", f"Small talk number {i} about the weather and football.")
            bot.wait_background()

    def recalled() -> list[int]:
        bot.model = bot.memory.model = get_model("test:context")
        try:
            answer = bot.chat("t", "What is my cat's name? Nimbus?")
        finally:
            bot.model = bot.memory.model = get_model("test:echo")
        bot.wait_background()
        return list(answer.trace.stage("context").data.get("recalled_seqs", []))

    bot.chat("t", "My cat's name is Nimbus.")  # 1, answered 2
    regenerated = bot.regenerate("t", 2).seq  # branch 1: 1, then this answer
    talk(25)  # the turn (1, regenerated) is indexed
    bot.switch_branch("t", 0)
    talk(25)  # the turn (1, 2) is indexed
    assert recalled() == [1]
    bot.switch_branch("t", 1)
    assert recalled() == [1]  # its own unit: still there
    units = store.connection.execute(
        "SELECT key FROM chunks WHERE namespace LIKE 'thread:%' AND key LIKE '000000000001-%'"
    ).fetchall()
    assert sorted(k for (k,) in units) == [f"000000000001-{s:012d}" for s in (2, regenerated)]


def test_branch_writes_run_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forking and switching write (fsync, the store's lock): never on the event loop."""
    import asyncio

    store = SQLiteStore(tmp_path / "db")
    bot, _ = scripted(store, ["a1", "a1 again", ModelResponseError("down")])
    on_loop: list[tuple[str, bool]] = []

    def watched(name: str) -> Callable[..., Any]:
        real = getattr(store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                on_loop.append((name, True))
            except RuntimeError:
                on_loop.append((name, False))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(store, "fork", watched("fork"))
    monkeypatch.setattr(store, "switch_branch", watched("switch_branch"))
    bot.chat("t", "q1")
    bot.regenerate("t", 2)
    bot.switch_branch("t", 0)
    with pytest.raises(ModelResponseError):
        bot.regenerate("t", 2)  # fails: back to main, also off the loop
    assert on_loop == [
        ("fork", False),
        ("switch_branch", False),
        ("fork", False),
        ("switch_branch", False),
    ]
    assert store.get_thread("local", "t").branch == 0


def test_an_automatic_title_never_overwrites_a_rename_made_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user renames between auto_title's check and its write: theirs stays."""
    import asyncio

    from chatwright.titles import auto_title

    store = SQLiteStore(tmp_path / "db")
    bot, _ = scripted(store, ["Sure, CORS is set in the server settings."])
    bot.chat("t", "How do I enable CORS on the server?")
    real = store.rename_thread

    def user_renames_first(owner: str, thread_id: str, title: str, **kwargs: Any) -> Any:
        real(owner, thread_id, "My title")  # lands just before auto_title's write
        return real(owner, thread_id, title, **kwargs)

    monkeypatch.setattr(store, "rename_thread", user_renames_first)
    assert asyncio.run(auto_title(store, bot.model, "local", "t", use_model=False)) is None
    assert store.get_thread("local", "t").title == "My title"


def test_ollama_is_remote_everywhere_the_bot_asks() -> None:
    """One predicate: built-in tools, query rewriting and titles agree on what is remote."""
    from types import SimpleNamespace

    from chatwright.models import is_remote
    from chatwright.titles import uses_model

    for name, remote in [
        ("ollama:llama3.2", True),
        ("openai:gpt-4o-mini", True),
        ("anthropic:claude-sonnet-4-5", True),
        ("local:gemma-3-270m", False),
        ("test:echo", False),
        ("ollama", False),
    ]:
        assert is_remote(name) is remote, name
        assert uses_model(SimpleNamespace(name=name)) is remote, name  # type: ignore[arg-type]


# -- the HTTP API --------------------------------------------------------------------------
LOCAL = "http://localhost"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        model="test:echo",
        embedder="test:hash",
        data_dir=tmp_path / "data",
        server={"preload": False},
    )
    with TestClient(create_app(settings), base_url=LOCAL) as c:
        yield c


def shown(client: TestClient, thread: str = "t") -> list[tuple[int, str, Any]]:
    messages = client.get(f"/api/threads/{thread}/messages").json()["messages"]
    return [(m["seq"], m["text"], m.get("siblings")) for m in messages]


def test_the_api_regenerates_edits_lists_and_switches_branches(client: TestClient) -> None:
    client.post("/api/threads/t/messages", json={"text": "q1", "stream": False})  # 1, 2
    client.post("/api/threads/t/messages", json={"text": "q2", "stream": False})  # 3, 4
    streamed = client.post("/api/threads/t/messages/4/regenerate")  # streams like a turn
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert '"user_seq":3' in streamed.text.replace(" ", "") and "echo: q2" in streamed.text
    alts = [{"seq": 4, "branch": 0}, {"seq": 5, "branch": 1}]
    assert shown(client) == [
        (1, "q1", None),
        (2, "echo: q1", None),
        (3, "q2", None),
        (5, "echo: q2", alts),
    ]
    edited = client.post(
        "/api/threads/t/messages/3/edit", json={"text": "q2 edited", "stream": False}
    ).json()
    assert edited["text"] == "echo: q2 edited" and edited["seq"] == 7
    q2 = [{"seq": 3, "branch": 1}, {"seq": 6, "branch": 2}]  # q2 as left: answered again
    assert shown(client)[2:] == [(6, "q2 edited", q2), (7, "echo: q2 edited", None)]
    listed = client.get("/api/threads/t/branches").json()
    assert listed["active"] == 2
    assert [(b["id"], b["parent"], b["fork_seq"]) for b in listed["branches"]] == [
        (0, None, 0),
        (1, 0, 3),
        (2, 0, 2),
    ]
    switched = client.put("/api/threads/t/branch", json={"branch": 1})
    assert switched.status_code == 200 and switched.json()["branch"] == 1
    assert [s for s, _, _ in shown(client)] == [1, 2, 3, 5]
    assert client.get("/api/threads/t").json()["branch"] == 1
    exported = client.get("/api/threads/t/export").json()
    assert exported["path"] == [1, 2, 3, 5] and len(exported["messages"]) == 7
    assert [b["id"] for b in exported["branches"]] == [0, 1, 2]


def test_a_page_of_messages_costs_no_count_of_the_thread(client: TestClient) -> None:
    """A page needs each branch's first and last message (an index lookup each), never a
    count of a branch's messages, which grows with the thread (SQLite's statements, traced)."""
    for text in ("q1", "q2"):
        client.post("/api/threads/t/messages", json={"text": text, "stream": False})
    client.post("/api/threads/t/messages/4/regenerate")
    store = client.app.state.chatwright.store  # type: ignore[attr-defined]
    statements: list[str] = []
    store.connection.set_trace_callback(statements.append)
    try:
        page = shown(client)
    finally:
        store.connection.set_trace_callback(None)
    assert page[-1] == (5, "echo: q2", [{"seq": 4, "branch": 0}, {"seq": 5, "branch": 1}])
    reads = [s for s in statements if "FROM messages" in s]
    assert reads and not [s for s in reads if "COUNT(" in s.upper()]
    with store.transaction():
        for sql in reads:
            plan = store.connection.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
            scans = [r for r in plan if str(r[-1]).startswith("SCAN") and "CONSTANT" not in r[-1]]
            assert not scans, (sql, plan)
    listed = client.get("/api/threads/t/branches").json()["branches"]  # counts, where asked
    assert [b["messages"] for b in listed] == [4, 1]


def test_the_api_refuses_bad_branch_input_and_loses_nothing(client: TestClient) -> None:
    client.post("/api/threads/t/messages", json={"text": "q1", "stream": False})
    before = shown(client)
    cases = [
        (client.put("/api/threads/t/branch", json={"branch": 9}), 404, "branch 9 not found"),
        (client.put("/api/threads/t/branch", json={"branch": -1}), 422, ""),
        (client.post("/api/threads/t/messages/1/regenerate"), 400, "not an answer"),
        (client.post("/api/threads/t/messages/2/edit", json={"text": "x"}), 400, "edited"),
        (client.post("/api/threads/t/messages/9/regenerate"), 400, "not on the thread"),
        (client.post("/api/threads/nope/messages/2/regenerate"), 404, "not found"),
        (client.get("/api/threads/nope/branches"), 404, "not found"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"]["message"]
    assert shown(client) == before
    assert [b["id"] for b in client.get("/api/threads/t/branches").json()["branches"]] == [0]


def test_another_users_thread_cannot_be_edited_or_switched(client: TestClient) -> None:
    store = client.app.state.chatwright.store  # type: ignore[attr-defined]
    keys = {}
    for name in ("alice", "bob"):
        store.create_user(name)
        keys[name] = {"Authorization": f"Bearer {store.create_api_key(name)[1]}"}
    alice, bob = keys["alice"], keys["bob"]
    client.post("/api/threads/t/messages", json={"text": "mine", "stream": False}, headers=alice)
    edit = client.post("/api/threads/t/messages/1/edit", json={"text": "x"}, headers=bob)
    assert edit.status_code == 404
    assert client.post("/api/threads/t/messages/2/regenerate", headers=bob).status_code == 404
    switch = client.put("/api/threads/t/branch", json={"branch": 0}, headers=bob)
    assert switch.status_code == 404
    assert client.get("/api/threads/t/branches", headers=bob).status_code == 404
    every = [m.message.text for m in store.messages("alice", "t", all_branches=True)]
    assert every == ["mine", "echo: mine"]
    assert store.find_thread("bob", "t") is None


# -- export ----------------------------------------------------------------------------------
def test_markdown_export_shows_the_active_path_and_notes_the_other_versions(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    bot = Chatbot("test:echo", store=store)
    bot.chat("t", "q1")
    bot.regenerate("t", 2)
    text = export_thread(store, "local", "t", "markdown")
    assert "#3" in text and "#2" not in text.split("other versions")[0].split("Shown")[1]
    assert "Version 2 of 2; other versions: #2 (branch 0)." in text
    assert "Shown: branch 1 of 2" in text
    data = json.loads(export_thread(store, "local", "t", "json"))
    assert data["thread"]["branch"] == 1 and data["path"] == [1, 3]
    assert [(m["seq"], m["branch"]) for m in data["messages"]] == [(1, 0), (2, 0), (3, 1)]
    assert data["branches"][1]["replaces"] == 2


# -- the chat REPL ---------------------------------------------------------------------------
def repl(data: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env["CHATWRIGHT_DATA_DIR"] = str(data)
    command = [sys.executable, "-m", "chatwright", "chat", "-m", "test:echo", "--thread", "c"]
    proc = subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_chat_retries_edits_lists_and_switches_branches(tmp_path: Path) -> None:
    script = "hello\n/retry\n/edit hi there\n/edit #4 first words\n/branches\n/branch 1\n/quit\n"
    proc = repl(tmp_path, script)
    assert proc.stdout.count("echo: hello") >= 2  # the answer, then the retry
    assert "echo: hi there" in proc.stdout and "echo: first words" in proc.stdout
    assert "* branch 3: from 0 after #0, 2 messages" in proc.stdout
    assert "branch 1: from 0 after #1, 1 messages" in proc.stdout
    store = SQLiteStore(tmp_path / "chatwright.db")
    every = [
        (m.seq, m.branch, m.message.text) for m in store.messages("local", "c", all_branches=True)
    ]
    assert every == [
        (1, 0, "hello"),
        (2, 0, "echo: hello"),
        (3, 1, "echo: hello"),
        (4, 2, "hi there"),
        (5, 2, "echo: hi there"),
        (6, 3, "first words"),
        (7, 3, "echo: first words"),
    ]
    assert [m.seq for m in store.messages("local", "c")] == [1, 3]  # /branch 1
    store.close()
    bad = repl(tmp_path, "/branch 9\n/edit\n/quit\n")
    assert "branch 9 not found" in bad.stderr and "edit it to what?" in bad.stderr


# -- chatwright db migrate (SQLite → PostgreSQL) --------------------------------------------
def test_db_migrate_copies_branches_and_the_active_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import _postgres
    from chatwright.cli import app
    from chatwright.store.postgres import PostgresStore

    url = _postgres.require_database()
    db_path = tmp_path / "data" / "chatwright.db"
    source = SQLiteStore(db_path)
    conversation(source)
    source.fork(A, "t", 3)
    source.append(A, "t", [Message.assistant("a2 again")])
    every = list(source.messages(A, "t", all_branches=True))
    branches = source.branches(A, "t")
    source.close()
    result = CliRunner().invoke(app, ["db", "migrate", "--from", str(db_path), "--to", url])
    assert result.exit_code == 0, result.output
    target = PostgresStore(url)
    try:
        assert list(target.messages(A, "t", all_branches=True)) == every
        assert target.branches(A, "t") == branches
        assert target.get_thread(A, "t").branch == 1
        assert path(target) == ["q1", "a1", "q2", "a2 again"]
    finally:
        target.close()
        _postgres.drop_database(url)


# -- limits: too many versions (security review) ---------------------------------------------
def test_a_fork_past_the_branch_limits_is_refused_and_changes_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatwright.store import branches

    assert (branches.MAX_BRANCHES, branches.MAX_BRANCH_DEPTH) == (500, 200)
    monkeypatch.setattr(branches, "MAX_BRANCHES", 3)
    monkeypatch.setattr(branches, "MAX_BRANCH_DEPTH", 2)
    conversation(store)
    store.fork(A, "t", 2)  # branch 1, on main: 1 deep
    store.append(A, "t", [Message.user("q2b")])  # 5
    store.fork(A, "t", 5)  # branch 2, on branch 1: 2 deep
    store.append(A, "t", [Message.user("q2c")])  # 6
    with pytest.raises(branches.TooManyBranches, match="nested 3 deep, over the limit of 2"):
        store.fork(A, "t", 6)
    assert store.get_thread(A, "t").branch == 2 and len(store.branches(A, "t")) == 3
    store.fork(A, "t", 0)  # branch 3: the third
    with pytest.raises(branches.TooManyBranches, match="too many versions") as e:
        store.fork(A, "t", 0)
    assert "start a new thread" in (e.value.hint or "")
    assert len(store.branches(A, "t")) == 4 and store.get_thread(A, "t").branch == 3
    assert path(store, A, "t") == []  # branch 3 forked before the first message


def test_regenerate_past_the_limit_is_a_409(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatwright.store import branches

    monkeypatch.setattr(branches, "MAX_BRANCHES", 1)
    client.post("/api/threads/t/messages", json={"text": "q1", "stream": False})  # 1, 2
    assert client.post("/api/threads/t/messages/2/regenerate").status_code == 200
    for body in ({"stream": False}, {"stream": True}):
        again = client.post("/api/threads/t/messages/3/regenerate", json=body)
        assert again.status_code == 409, again.text
        error = again.json()["error"]
        assert error["type"] == "too_many_branches" and "too many versions" in error["message"]
    edited = client.post("/api/threads/t/messages/1/edit", json={"text": "q", "stream": False})
    assert edited.status_code == 409
    assert [m for _, m, _ in shown(client)] == ["q1", "echo: q1"]


def test_a_deep_chain_stored_before_the_limit_can_still_be_read(tmp_path: Path) -> None:
    """1,500 nested branches (past SQLite's 1,000-level expression limit, as a thread from
    before the depth limit may hold): its path is read all the same, and quickly."""
    import time

    store = SQLiteStore(tmp_path / "c.db")
    try:
        store.append(A, "t", [Message.user("m1")], create=True)
        pk = store.find_thread(A, "t").uid
        n = 1_500
        db = store._db
        with store.transaction():
            for b in range(1, n + 1):  # branch b forks after message b (on branch b - 1)
                db.execute(
                    "INSERT INTO branches (thread_pk, id, parent, fork_seq, created_at)"
                    " VALUES (?, ?, ?, ?, 0)",
                    (pk, b, b - 1, b),
                )
        for b in range(1, n + 1):
            store.switch_branch(A, "t", b)
            store.append(A, "t", [Message.user(f"m{b + 1}")])
        started = time.perf_counter()
        texts = path(store)
        assert len(texts) == n + 1 and texts[-1] == f"m{n + 1}"
        assert time.perf_counter() - started < 5
    finally:
        store.close()


def _holding_reference(branches: list[Any]) -> Any:
    """The first version's rule, by brute force: of the branches whose path holds ``seq``
    (its home branch, or one below it whose every fork on the way is at or after ``seq``),
    the one with the newest message."""
    by_id = {b.id: b for b in branches}

    def up(b: Any) -> dict[int, float]:
        out, bound, node = {b.id: float("inf")}, float("inf"), b
        while node.parent is not None:
            bound = min(bound, node.fork_seq)
            node = by_id[node.parent]
            out[node.id] = bound
        return out

    reach = {b.id: up(b) for b in branches}

    def holding(seq: int, home: int) -> int:
        best, newest = home, by_id[home].last_seq or 0
        for b in branches:
            if b.last_seq is not None and b.last_seq > newest and reach[b.id].get(home, -1) >= seq:
                best, newest = b.id, b.last_seq
        return best

    return holding


def _on_path(rows: dict[int, dict[str, Any]], seq_branch: dict[int, int], b: int) -> list[int]:
    """The seqs on branch ``b``'s path (``rows``: branch -> parent, fork)."""
    links, node, bound = [], b, None
    while node is not None:
        links.append((node, bound))
        parent = rows[node]["parent"]
        bound, node = rows[node]["fork"], parent
    return [
        s
        for s, sb in seq_branch.items()
        if any(sb == n and (c is None or s <= c) for n, c in links)
    ]


def test_versions_match_the_brute_force_rule_on_random_trees() -> None:
    """``alternatives``' branch for each version, against the rule computed by brute force,
    on random regenerate/edit/switch histories."""
    import random

    from chatwright.store.base import BranchInfo

    rng = random.Random(7)
    for _ in range(60):
        seq_branch: dict[int, int] = {}
        rows: dict[int, dict[str, Any]] = {0: {"parent": None, "fork": 0}}
        active, seq = 0, 0

        for _ in range(rng.randint(3, 40)):
            action = rng.random()
            if action < 0.55 or not seq_branch:
                seq += 1
                seq_branch[seq] = active
            elif action < 0.85:
                after = rng.choice([0, *_on_path(rows, seq_branch, active)])
                new = len(rows)
                rows[new] = {"parent": seq_branch[after] if after else 0, "fork": after}
                active = new
            else:
                active = rng.choice(list(rows))
        infos = []
        for b, row in rows.items():
            own = sorted(s for s, sb in seq_branch.items() if sb == b)
            parent = row["parent"]
            later = [s for s, sb in seq_branch.items() if sb == parent and s > row["fork"]]
            infos.append(
                BranchInfo(
                    b,
                    parent,
                    row["fork"],
                    0.0,
                    own[0] if own else None,
                    own[-1] if own else None,
                    len(own),
                    min(later) if parent is not None and later else None,
                )
            )
        reference = _holding_reference(infos)
        for versions in alternatives(infos).values():
            for version, branch in versions:
                assert branch == reference(version, seq_branch[version]), (infos, version)


def test_versions_of_thousands_of_chained_branches_are_quick() -> None:
    """The "which branch holds this version" lists of 6,000 nested branches (each a
    regeneration on the one before: the review's import) in well under a second."""
    import time

    from chatwright.store.base import BranchInfo

    n = 6_000
    # main: 1 q, 2 a; branch b (1..n) forks after the question before the previous answer
    infos = [BranchInfo(0, None, 0, 0.0, 1, 2, 2)]
    for b in range(1, n + 1):
        q, a = 2 * b + 1, 2 * b + 2  # branch b holds its own question and answer
        infos.append(BranchInfo(b, b - 1, q - 2, 0.0, q, a, 2, q - 1))
    started = time.perf_counter()
    alts = alternatives(infos)
    took = time.perf_counter() - started
    assert len(alts) == 2 * n and alts[3] == [(2, 0), (3, n)] and alts[5] == [(4, 1), (5, n)]
    assert took < 1.0, f"{took:.2f} s"
