"""``chatwright db migrate``: a SQLite install copied into PostgreSQL keeps everything that
matters (messages, traces, summaries, memories, keys that authenticate, collections that
search the same, recall namespaces that stay their thread's), refuses a non-empty target, and
leaves the target empty when it fails. Also ``chatwright db info``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from _postgres import database_url, drop_database, fresh_database, require_server

if database_url() is None and os.environ.get("CI") != "true":
    pytest.skip("pgserver/psycopg not installed", allow_module_level=True)
BASE_URL = require_server()

import psycopg  # noqa: E402

from chatwright import Chatbot, SQLiteStore  # noqa: E402
from chatwright.cli import app  # noqa: E402
from chatwright.config import MemorySettings, Settings  # noqa: E402
from chatwright.ingest.pipeline import Ingestor  # noqa: E402
from chatwright.models.embeddings import get_embedder  # noqa: E402
from chatwright.retrieval.index import SearchIndex  # noqa: E402
from chatwright.store import transfer  # noqa: E402
from chatwright.store.base import Summary, ThreadInfo, hash_secret  # noqa: E402
from chatwright.store.postgres import PostgresStore  # noqa: E402
from chatwright.types import Message  # noqa: E402

OWNER = "ada"
DOCUMENTS = {
    "backups.md": [
        "Backups run every night at two o'clock and are kept for thirty days.",
        "To restore a backup, open the console, pick the snapshot and press restore.",
        "Backup encryption keys are rotated every quarter by the operations team.",
        "Offsite copies of the backups are stored in a second region.",
    ],
    "leave.md": [
        "New staff get twenty vacation days in their first year.",
        "Vacation requests go to your manager at least two weeks ahead.",
        "Sick leave needs a doctor's note after three days.",
        "Parental leave lasts sixteen weeks, fully paid.",
    ],
    "kitchen.md": [
        "The coffee machine on the third floor is descaled every Monday.",
        "Milk in the fridge is replaced on Tuesdays and Fridays.",
        "Please wash your own mugs before leaving the kitchen.",
        "The kitchen closes at eight in the evening for cleaning.",
    ],
    "security.md": [
        "Badges must be worn visibly at all times inside the building.",
        "Lost badges are reported to reception, which blocks them at once.",
        "Visitors sign in at reception and are escorted by their host.",
        "Laptops lock after five minutes without use.",
    ],
}
QUERIES = [
    "how are backup encryption keys rotated",
    "vacation days for new staff",
    "when is the coffee machine descaled",
    "I lost my badge",
    "parental leave weeks",
]


@dataclass
class Source:
    """A SQLite install with a bit of everything, and what the tests check it by."""

    path: Path
    secret: str
    revoked_secret: str


@pytest.fixture
def url() -> Iterator[str]:
    assert BASE_URL is not None
    fresh = fresh_database(BASE_URL)
    yield fresh
    drop_database(fresh)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """Built once: the tests only read it (a migration only reads its source)."""
    root = tmp_path_factory.mktemp("source")
    path = root / "data" / "chatwright.db"
    with pytest.MonkeyPatch.context() as env:  # as conftest's _isolated, for the module
        for name in [n for n in os.environ if n.startswith("CHATWRIGHT_")]:
            env.delenv(name)
        env.chdir(root)
        store = SQLiteStore(path)
        try:
            secret, revoked = _accounts(store)
            _threads(store)
            _memories(store)
            _collection(store, root / "docs")
        finally:
            store.close()
    return Source(path, secret, revoked)


def _accounts(store: SQLiteStore) -> tuple[str, str]:
    store.create_user(OWNER)
    store.create_user("bob")
    key_id, secret = store.create_api_key(OWNER, "laptop")
    store.touch_key(key_id)
    old_id, old = store.create_api_key("bob", "old")
    store.revoke_key(old_id)
    return secret, old


def _bot(store: SQLiteStore) -> Chatbot:
    memory = MemorySettings(strategy="tokens", context_tokens=600)
    settings = Settings(memory=memory, embedder="test:hash", max_answer_tokens=100)
    return Chatbot("test:echo", store=store, settings=settings, owner=OWNER)


def _threads(store: SQLiteStore) -> None:
    store.create_thread(OWNER, "gone")  # deleted below: the next threads' keys have a gap
    bot = _bot(store)
    bot.chat("long", "My sister's name is Priya.")
    for i in range(30):  # enough to push old turns out of the context: they get recalled
        bot.chat("long", f"Small talk number {i} about the weather and football.")
        bot.wait_background()
    bot.chat("short", "Hello there, ünïcödé and emoji 🎉")
    bot.chat("short", "A second question?", owner=OWNER)
    bot.chat("short", "Bob's own thread", owner="bob")
    bot.wait_background()
    store.delete_thread(OWNER, "gone")
    store.save_summary(
        OWNER, "short", Summary(2, "They said hello.", 4, created_at=1700000000.125, model="x")
    )
    store.update_thread_metadata(OWNER, "short", {"pinned_collections": ["kb"], "n": 1.5})
    store.append(OWNER, "odd", [Message.user("a NUL \x00 inside")], create=True, tokens=[7])


def _memories(store: SQLiteStore) -> None:
    store.add_memory(OWNER, "likes tea")
    dropped = store.add_memory(OWNER, "lives in Paris")
    store.add_memory(OWNER, "has a cat called Miso")
    store.delete_memory(OWNER, dropped.id)
    store.add_memory("bob", "prefers short answers")


def _collection(store: SQLiteStore, docs: Path) -> None:
    docs.mkdir()
    for name, paragraphs in DOCUMENTS.items():
        (docs / name).write_text(f"# {name[:-3].title()}\n\n" + "\n\n".join(paragraphs))
    store.create_collection(OWNER, "scratch")
    store.delete_collection(OWNER, "scratch")  # a gap in the collections' keys too
    index = SearchIndex.for_store(store, get_embedder("test:hash"))
    report = Ingestor(store, index, OWNER, chunk_tokens=30, overlap=0).ingest([docs], "kb")
    assert report.chunks_added >= 8


def migrate(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, ["db", "migrate", *args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


@pytest.fixture
def target(source: Source, url: str) -> Iterator[PostgresStore]:
    result = migrate("--from", str(source.path), "--to", url)
    assert "MISMATCH" not in result.stdout
    store = PostgresStore(url)
    yield store
    store.close()


# -- everything arrives ---------------------------------------------------------------------
def test_threads_arrive_with_the_same_keys_messages_traces_and_summaries(
    source: Source, target: PostgresStore
) -> None:
    sqlite = SQLiteStore(source.path)
    try:
        for owner in (OWNER, "bob"):
            threads = sqlite.list_threads(owner, limit=100)
            assert threads and target.list_threads(owner, limit=100) == [
                _storable_title(t) for t in threads
            ]
            for thread in threads:
                _same_thread(sqlite, target, owner, thread.id)
        assert target.get_thread(OWNER, "short").metadata == {
            "pinned_collections": ["kb"],
            "n": 1.5,
        }
    finally:
        sqlite.close()


def _storable_title(thread: ThreadInfo) -> ThreadInfo:
    """PostgreSQL text cannot hold NUL: the store keeps it as U+FFFD (its messages keep it)."""
    return replace(thread, title=thread.title and thread.title.replace("\x00", "\ufffd"))


def _same_thread(sqlite: SQLiteStore, target: PostgresStore, owner: str, thread: str) -> None:
    before = list(sqlite.messages(owner, thread))
    after = list(target.messages(owner, thread))
    assert [(m.seq, m.created_at, m.tokens, m.message) for m in after] == [
        (m.seq, m.created_at, m.tokens, m.message) for m in before
    ]
    assert target.traces(owner, thread, limit=1000) == sqlite.traces(owner, thread, limit=1000)
    assert target.summaries(owner, thread) == sqlite.summaries(owner, thread)


def test_a_message_holding_nul_arrives_intact(source: Source, target: PostgresStore) -> None:
    [stored] = target.messages(OWNER, "odd")
    assert stored.message.text == "a NUL \x00 inside" and stored.tokens == 7


def test_memories_users_and_keys_arrive(source: Source, target: PostgresStore) -> None:
    sqlite = SQLiteStore(source.path)
    try:
        for owner in (OWNER, "bob"):
            assert target.list_memories(owner) == sqlite.list_memories(owner)
        assert target.list_users() == sqlite.list_users()
        assert target.list_keys() == sqlite.list_keys()
    finally:
        sqlite.close()
    key = target.find_key(hash_secret(source.secret))
    assert key is not None and key.user == OWNER and key.last_used_at is not None
    assert target.find_key(hash_secret(source.revoked_secret)) is None  # still revoked
    assert target.find_key(hash_secret(source.revoked_secret), revoked=True) is not None


def test_the_collection_searches_the_same(source: Source, target: PostgresStore, url: str) -> None:
    with psycopg.connect(url) as conn:  # built after the vectors were in, in the same commit
        assert conn.execute("SELECT to_regclass('chunks_hnsw_256')").fetchone() != (None,)
    sqlite = SQLiteStore(source.path)
    try:
        assert target.list_collections(OWNER) == sqlite.list_collections(OWNER)
        assert target.list_documents(OWNER, "kb") == sqlite.list_documents(OWNER, "kb")
        namespace = sqlite.get_collection(OWNER, "kb").namespace
        embedder = get_embedder("test:hash")
        before = SearchIndex.for_store(sqlite, embedder)
        after = SearchIndex.for_store(target, embedder)
        assert target.chunks.dimension(namespace) == sqlite.chunks.dimension(namespace) == 256
        for query in QUERIES:
            for mode in ("keyword", "vector", "hybrid"):
                expected = [h.key for h in before.search(query, [namespace], k=3, mode=mode)]
                found = [h.key for h in after.search(query, [namespace], k=3, mode=mode)]
                assert found == expected, (query, mode)
    finally:
        sqlite.close()


def test_a_threads_recall_namespace_is_still_its_own(source: Source, target: PostgresStore) -> None:
    sqlite = SQLiteStore(source.path)
    try:
        uid = sqlite.get_thread(OWNER, "long").uid
        namespace = f"thread:{uid}"
        assert sqlite.chunks.count(namespace) > 0
        assert target.get_thread(OWNER, "long").uid == uid
        assert target.chunks.count(namespace) == sqlite.chunks.count(namespace)
        before, after = sqlite.chunks.vectors(namespace, ""), target.chunks.vectors(namespace, "")
        assert after.keys() == before.keys()
        for key, vector in after.items():  # 8 bits -> float32, made unit length again
            assert vector is not None and abs(float(np.linalg.norm(vector)) - 1) < 1e-6
            assert np.allclose(vector, before[key], atol=5e-3)  # half a step of 8 bits
    finally:
        sqlite.close()
    hits = SearchIndex.for_store(target, get_embedder("test:hash")).search(
        "sister name Priya", [namespace], k=1
    )
    assert hits and "Priya" in hits[0].text


def test_new_rows_get_new_keys_past_the_copied_ones(source: Source, target: PostgresStore) -> None:
    largest = max(t.uid for o in (OWNER, "bob") for t in target.list_threads(o, limit=100))
    assert target.create_thread(OWNER, "new").uid > largest
    memories = [m.id for m in target.list_memories(OWNER)]
    assert target.add_memory(OWNER, "a new fact").id > max(memories)
    assert target.create_collection(OWNER, "more").uid > target.get_collection(OWNER, "kb").uid
    assert target.create_api_key(OWNER)[0]  # the key sequence moved on too


def test_the_summary_table_shows_every_count(source: Source, url: str) -> None:
    result = migrate("--from", str(source.path), "--to", url)
    for table in transfer.COPIED_TABLES:
        assert table in result.stdout
    assert "namespaces" in result.stdout and "MISMATCH" not in result.stdout
    assert "copied 4 threads" in result.stderr and "secret" not in result.stderr


def test_the_source_comes_from_the_settings(source: Source, url: str) -> None:
    migrate("--data-dir", str(source.path.parent), "--to", url)
    store = PostgresStore(url)
    try:
        assert store.find_thread(OWNER, "long") is not None
    finally:
        store.close()


# -- refusals and failures ------------------------------------------------------------------
def test_a_second_migration_into_the_same_database_is_refused(
    source: Source, target: PostgresStore, url: str
) -> None:
    threads = target.list_threads(OWNER)
    result = migrate("--from", str(source.path), "--to", url, code=2)
    assert "is not empty" in result.stderr and "hint:" in result.stderr
    assert target.list_threads(OWNER) == threads


@pytest.mark.parametrize("what", ["user", "memory"])
def test_any_data_makes_the_target_not_empty(source: Source, url: str, what: str) -> None:
    store = PostgresStore(url)
    try:
        if what == "user":
            store.create_user("someone")
        else:
            store.add_memory("someone", "a fact")
    finally:
        store.close()
    result = migrate("--from", str(source.path), "--to", url, code=2)
    assert "not empty" in result.stderr


def test_a_missing_source_is_a_clear_error(tmp_path: Path, url: str) -> None:
    result = migrate("--from", str(tmp_path / "nothing.db"), "--to", url, code=2)
    assert "no SQLite database at" in result.stderr and "--from" in result.stderr
    assert not (tmp_path / "nothing.db").exists()
    empty = migrate("--data-dir", str(tmp_path / "empty"), "--to", url, code=2)
    assert "no SQLite database at" in empty.stderr


def test_a_file_that_is_not_a_chatwright_database_is_refused(tmp_path: Path, url: str) -> None:
    (tmp_path / "notes.db").write_text("just text, not SQLite")
    result = migrate("--from", str(tmp_path / "notes.db"), "--to", url, code=2)
    assert "cannot read" in result.stderr


def test_the_target_must_be_postgresql(source: Source) -> None:
    result = migrate("--from", str(source.path), "--to", "sqlite:///x.db", code=2)
    assert "--to must be a PostgreSQL URL" in result.stderr


def test_a_failure_midway_leaves_the_target_empty(
    source: Source, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []
    real = transfer._chunk_batches

    def failing(rows: Any) -> Any:
        for namespace, batch in real(rows):
            written.append(namespace)
            if len(written) == 2:  # messages, collections, one namespace already written
                raise OSError("disk on fire")
            yield namespace, batch

    monkeypatch.setattr(transfer, "_chunk_batches", failing)
    result = CliRunner().invoke(app, ["db", "migrate", "--from", str(source.path), "--to", url])
    assert result.exit_code != 0 and isinstance(result.exception, OSError)
    store = PostgresStore(url)
    try:
        summary = transfer.summarize(store)
        assert set(summary.counts.values()) == {0} and summary.namespaces == 0
        assert store.find_thread(OWNER, "long") is None
        assert store.create_thread(OWNER, "first").uid == 1  # no sequence moved either
        store.delete_thread(OWNER, "first")
    finally:
        store.close()
    monkeypatch.undo()
    migrate("--from", str(source.path), "--to", url)  # and it can be done again


def test_a_count_mismatch_rolls_back_and_exits_1(
    source: Source, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = transfer._target_counts

    def one_message_short(conn: Any) -> tuple[dict[str, int], dict[str, int]]:
        tables, namespaces = real(conn)
        return tables | {"messages": tables["messages"] - 1}, namespaces

    monkeypatch.setattr(transfer, "_target_counts", one_message_short)
    result = migrate("--from", str(source.path), "--to", url, code=1)
    assert "MISMATCH" in result.stdout and "does not match the source" in result.stderr
    monkeypatch.undo()
    store = PostgresStore(url)
    try:
        assert set(transfer.summarize(store).counts.values()) == {0}
    finally:
        store.close()


# -- db info --------------------------------------------------------------------------------
def test_info_shows_the_backend_schema_and_counts(source: Source, url: str) -> None:
    runner = CliRunner()
    data_dir = str(source.path.parent)
    result = runner.invoke(app, ["db", "info", "--data-dir", data_dir, "--json"])
    assert result.exit_code == 0, result.output
    before = json.loads(result.stdout)
    assert before["backend"] == "sqlite" and before["location"] == str(source.path)
    assert before["schema_version"] == before["latest_version"] > 0
    migrate("--from", str(source.path), "--to", url)
    env = {"CHATWRIGHT_DATABASE_URL": url}
    result = runner.invoke(app, ["db", "info", "--json"], env=env)
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)
    assert after["backend"] == "postgresql" and after["counts"] == before["counts"]
    assert after["namespaces"] == before["namespaces"] > 1
    table = runner.invoke(app, ["db", "info"], env=env)
    assert "messages" in table.stdout and "postgresql" in table.stdout


def test_info_on_a_data_dir_not_yet_used_creates_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["db", "info", "--data-dir", str(tmp_path / "new")])
    assert result.exit_code == 0 and "not created yet" in result.stderr
    assert not (tmp_path / "new").exists()
