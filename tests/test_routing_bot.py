"""Routing inside a turn: small talk searches nothing, @mentions and pins override the router."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from chatwright import Chatbot, SQLiteStore
from chatwright.config import RoutingSettings, Settings
from chatwright.retrieval import Chunk

DOCS = {
    "manuals": (
        "Router and printer manuals",
        [
            "To reset the Skylink router hold the reset button for ten seconds.",
            "The printer needs new ink when the light blinks orange.",
        ],
    ),
    "hr": (
        "Leave and holiday policy",
        [
            "Employees get 25 days of paid leave per year.",
            "Sick leave needs a note from a doctor after three days.",
        ],
    ),
}


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "chatwright.db")
    yield s
    s.close()


def make_bot(store, **routing) -> Chatbot:
    settings = Settings(embedder="test:hash", routing=RoutingSettings(**routing))
    bot = Chatbot("test:echo", store=store, settings=settings)
    for name, (description, texts) in DOCS.items():
        info = store.create_collection("local", name, description)
        bot.index.add(info.namespace, [Chunk(f"{name}{i}", t) for i, t in enumerate(texts)])
    return bot


def test_small_talk_routes_to_no_collection_and_searches_nothing(store):
    answer = make_bot(store).chat("t", "Hello, how are you?")
    route = answer.trace.stage("route").data
    assert route["collections"] == [] and route["strategy"] == "chitchat"
    retrieve = answer.trace.stage("retrieve")
    assert retrieve.skipped and "no collection" in retrieve.note
    assert answer.citations == []


def test_a_question_routes_to_the_collection_that_fits(store):
    answer = make_bot(store).chat("t", "How do I reset the Skylink router button?")
    assert answer.trace.stage("route").data["collections"] == ["manuals"]
    assert all(c.chunk_id.startswith("manuals") for c in answer.citations)


def test_an_at_mention_overrides_the_router_and_is_not_searched_for(store):
    answer = make_bot(store).chat("t", "@hr how do I reset the router?")
    route = answer.trace.stage("route").data
    assert route["collections"] == ["hr"] and route["strategy"] == "mention"
    assert "@hr" not in answer.trace.stage("retrieve").data["query"]


def test_a_pin_overrides_the_router_and_a_deleted_pin_falls_back(store):
    bot = make_bot(store)
    bot.chat("t", "first")
    bot.pin_collections("t", ["hr"])
    answer = bot.chat("t", "How do I reset the Skylink router button?")
    assert answer.trace.stage("route").data["strategy"] == "pinned"
    assert answer.trace.stage("route").data["collections"] == ["hr"]
    store.delete_collection("local", "hr")
    answer = bot.chat("t", "How do I reset the Skylink router button?")
    assert answer.trace.stage("route").data["collections"] == ["manuals"]
    assert any("pinned collection 'hr' is gone" in n for n in answer.trace.notes)
    bot.pin_collections("t", None)
    assert "pinned_collections" not in store.get_thread("local", "t").metadata


def test_rules_come_first_in_the_chain(store):
    bot = make_bot(store, rules={"hr": [r"\bholiday"]})
    decision, collections, _ = asyncio.run(bot.route("holiday plans for the printer?"))
    assert decision.strategy == "rules" and [c.name for c in collections] == ["hr"]


def test_the_route_command_prints_the_decision(tmp_path):
    store = SQLiteStore(tmp_path / "chatwright.db")
    make_bot(store)
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env |= {"CHATWRIGHT_DATA_DIR": str(tmp_path), "CHATWRIGHT_EMBEDDER": "test:hash"}
    proc = subprocess.run(
        [sys.executable, "-m", "chatwright", "route", "--json", "thanks a lot!"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["collections"] == []


def test_routing_makes_one_vector_search_across_collections(store):
    """The evidence comes from ONE search of all the collections, with the query vector that
    retrieval reuses; and one keyword search only when a keyword rule could change the
    decision: by default, when a second collection scores close to the best."""
    off = {"keyword_lead": 0.0}
    for options, modes in (
        (off, ["nearest"]),
        ({}, ["nearest"]),  # clear-cut: the keyword lead could not change it
        ({"keyword_lead_margin": 10.0}, ["nearest", "keyword"]),  # every rival is close
        ({**off, "keyword_share": 0.5}, ["nearest", "keyword"]),
    ):
        settings = Settings(embedder="test:hash", routing=RoutingSettings(**options))
        bot = Chatbot("test:echo", store=store, settings=settings)
        if not store.list_collections("local"):
            for name, (description, texts) in DOCS.items():
                info = store.create_collection("local", name, description)
                chunks = [Chunk(f"{name}{i}", t) for i, t in enumerate(texts)]
                bot.index.add(info.namespace, chunks)
        calls = []
        search, nearest = bot.index.search, bot.index.nearest

        def counted(query, namespaces, k=10, _search=search, _calls=calls, **kw):
            _calls.append((kw.get("mode"), sorted(namespaces)))
            return _search(query, namespaces, k, **kw)

        def counted_nearest(vector, namespaces, k=0, _nearest=nearest, _calls=calls):
            _calls.append(("nearest", sorted(namespaces)))
            return _nearest(vector, namespaces, k)

        bot.index.search, bot.index.nearest = counted, counted_nearest
        decision, _, vector = asyncio.run(bot.route("hold the reset button for ten seconds"))
        bot.index.search, bot.index.nearest = search, nearest
        assert vector is not None and decision.collections == ["manuals"]
        assert [m for m, _ in calls] == modes and all(len(ns) == 2 for _, ns in calls)
        assert set(decision.why) == {"manuals", "hr"} and decision.why["hr"].startswith("left")
        assert decision.search is not None and "search" not in decision.to_dict()


def test_retrieval_reuses_the_routes_vector_search(store):
    """A turn passes over the vectors once: the router's search across the collections; the
    retrieve stage ranks by it (the same passages as a search of its own)."""
    bot = make_bot(store)
    chunks = bot.index.chunks
    calls = []
    vector, similarities = chunks.vector, chunks.similarities
    chunks.vector = lambda *a, **kw: calls.append("vector") or vector(*a, **kw)
    chunks.similarities = lambda *a, **kw: calls.append("all") or similarities(*a, **kw)
    try:
        answer = bot.chat("t", "How do I reset the Skylink router button?")
    finally:
        del chunks.vector, chunks.similarities
    assert calls == ["all"]
    assert answer.trace.stage("route").data["collections"] == ["manuals"]
    found = answer.trace.stage("retrieve").data["passages"]
    manuals = store.get_collection("local", "manuals").namespace
    fresh = bot.index.search("How do I reset the Skylink router button?", [manuals], k=5)
    assert found and [p["score"] for p in found] == [round(h.score, 4) for h in fresh]


def test_a_routes_search_ranks_any_of_its_collections_as_a_search_would(store):
    """``Nearest.ranking`` over any subset of the searched collections is the exact vector
    ranking of that subset; a subset it did not cover, or a deeper one, is searched again."""
    bot = make_bot(store)
    namespaces = [c.namespace for c in store.list_collections("local")]
    vector = bot.index.embed_query("paid leave for the printer")
    nearest = bot.index.nearest(vector, namespaces)
    for chosen in ([namespaces[0]], [namespaces[1]], namespaces):
        for depth in (1, 3, 100):
            expected = bot.index.chunks.vector(vector, chosen, None, depth)
            assert nearest.ranking(chosen, depth) == expected
    assert nearest.ranking(["collection:99"], 3) is None
    # a backend that cannot score every chunk in one pass: one search per namespace, kept to
    # the search depth, and a deeper ranking is searched again
    del_similarities = type(bot.index.chunks).similarities
    try:
        del type(bot.index.chunks).similarities
        kept = bot.index.nearest(vector, namespaces, 2)
    finally:
        type(bot.index.chunks).similarities = del_similarities
    assert kept.depth == bot.index.depth and kept.top(2) == nearest.top(2)
    assert kept.ranking(namespaces, kept.depth + 1) is None
    assert kept.ranking(namespaces, 3) == nearest.ranking(namespaces, 3)
    assert [n for n, _ in nearest.top(2)] == [
        bot.index.chunks.fetch([pk])[pk].namespace
        for pk, _ in bot.index.chunks.vector(vector, namespaces, None, 2)
    ]


def test_a_message_asking_two_things_searches_both(store):
    """Each clause is routed too; without that rule only one collection is searched."""
    question = "How do I reset the Skylink router button, and how many days of paid leave?"
    only = {"margin": 0.0, "keyword_share": 2.0, "clause_score": 0.0}
    decision, _, _ = asyncio.run(make_bot(store, **only).route(question))
    assert sorted(decision.collections) == ["hr", "manuals"]
    assert any("clause" in why for why in decision.why.values())
    settings = Settings(embedder="test:hash", routing=RoutingSettings(clauses=False, **only))
    plain = Chatbot("test:echo", store=store, settings=settings)
    decision, _, _ = asyncio.run(plain.route(question))
    assert len(decision.collections) == 1


def test_a_pin_to_an_empty_collection_is_honoured(store):
    bot = make_bot(store)
    store.create_collection("local", "later", "nothing here yet")
    decision, collections, _ = asyncio.run(bot.route("reset the router", pinned=["later"]))
    assert decision.strategy == "pinned" and [c.name for c in collections] == ["later"]
    assert any("no documents" in n for n in decision.notes)


@pytest.mark.parametrize(
    "message", ["🙂", "x" * 30_000, "reset the router " * 2_000, "   ", "¿qué?"]
)
def test_odd_messages_route_without_error(store, message):
    decision, collections, _ = asyncio.run(make_bot(store).route(message))
    assert not any("routing failed" in n for n in decision.notes)
    assert {c.name for c in collections} <= {"manuals", "hr"}
    if not any(ch.isalnum() for ch in message):
        assert collections == []  # nothing to search for


@pytest.mark.parametrize("count", [0, 1, 50])
def test_any_number_of_collections(tmp_path, count):
    store = SQLiteStore(tmp_path / "c.db")
    settings = Settings(embedder="test:hash")
    bot = Chatbot("test:echo", store=store, settings=settings)
    for i in range(count):
        info = store.create_collection("local", f"c{i}", "" if i % 2 else f"topic {i}")
        bot.index.add(info.namespace, [Chunk(f"k{i}", f"topic {i} words about subject {i}")])
    decision, collections, _ = asyncio.run(bot.route("words about subject 7"))
    if count == 0:
        assert collections == [] and decision.reason == "no collections"
    else:
        assert 1 <= len(collections) <= 3 and not decision.fallback
    if count == 50:
        assert "c7" in decision.collections  # no description: chosen by its content
    store.close()


def test_a_broken_router_falls_back_to_all_collections_with_a_note(store):
    bot = make_bot(store)

    def broken(*args, **kwargs):
        raise RuntimeError("profiles unreadable")

    bot.index.nearest = broken  # the semantic router's chunk search fails
    decision, collections, _ = asyncio.run(bot.route("How do I reset the router?"))
    assert decision.fallback and sorted(c.name for c in collections) == ["hr", "manuals"]
    assert any("routing failed" in n and "profiles unreadable" in n for n in decision.notes)


def test_a_turns_route_takes_the_collection_the_phrases_single_out(store):
    """[routing] phrase_lead reaches the turn's router: hr scores best, but only manuals'
    keyword matches hold the query's phrases ("skylink router", "reset button")."""
    q = "leave paid sick employees doctor note days year skylink router reset button"
    options = {"keyword_lead": 0.0, "clauses": False, "phrase_margin": 10.0}
    off, _, _ = asyncio.run(make_bot(store, phrase_lead=0, **options).route(q))
    assert off.collections == ["hr"]
    for info in store.list_collections("local"):
        store.delete_collection("local", info.name)
    route, _, _ = asyncio.run(make_bot(store, phrase_lead=2, **options).route(q))
    assert route.collections == ["manuals"] and "singled out by the phrases" in route.reason
    assert "'skylink router'" in route.why["manuals"]


def test_a_turns_route_weighs_how_common_the_querys_words_are(store):
    """[routing] vocabulary_weight reaches the turn's router: each collection's score holds
    its vocabulary fit (the keyword index's counts of the query's words), shown in the trace;
    0 turns it off."""
    q = "how many days of sick leave"
    route, _, _ = asyncio.run(make_bot(store, clauses=False).route(q))
    assert route.collections == ["hr"]
    assert "vocabulary +0.00" in route.why["hr"] and "vocabulary -" in route.why["manuals"]
    for info in store.list_collections("local"):
        store.delete_collection("local", info.name)
    off, _, _ = asyncio.run(make_bot(store, clauses=False, vocabulary_weight=0.0).route(q))
    assert off.collections == ["hr"] and not any("vocabulary" in w for w in off.why.values())
    assert off.scores["manuals"] > route.scores["manuals"]  # the term lowered the rival


def test_the_eval_command_reports_every_figure(tmp_path):
    """``chatwright eval routing`` prints exact set, small talk → none, over- and
    under-inclusion, p50/p95 and exact set per expected collection."""
    store = SQLiteStore(tmp_path / "chatwright.db")
    make_bot(store)
    store.close()
    questions = tmp_path / "q.jsonl"
    rows = [
        {"question": "How do I reset the Skylink router button?", "expected": ["manuals"]},
        {"question": "How many days of paid leave do employees get?", "expected": ["hr"]},
        {"question": "thanks a lot!", "expected": []},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env |= {"CHATWRIGHT_DATA_DIR": str(tmp_path), "CHATWRIGHT_EMBEDDER": "test:hash"}
    proc = subprocess.run(
        [sys.executable, "-m", "chatwright", "eval", "routing", str(questions)],
        capture_output=True,
        text=True,
        env=env | {"COLUMNS": "160"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for column in ("exact set", "small talk → none", "over", "under", "p50 ms", "p95 ms"):
        assert column in proc.stdout
    assert "exact set by expected collection" in proc.stdout
    assert "manuals" in proc.stdout and "(small talk)" in proc.stdout
    # the semantic router is the one the user configured ([routing] settings), not the default
    every_message_is_small_talk = {
        "CHATWRIGHT_ROUTING__CHITCHAT_THRESHOLD": "-1",
        "CHATWRIGHT_ROUTING__CHITCHAT_MARGIN": "-2",
    }
    accuracy = {}
    for label, extra in (("default", {}), ("configured", every_message_is_small_talk)):
        proc = subprocess.run(
            [sys.executable, "-m", "chatwright", "eval", "routing", str(questions), "--json"],
            capture_output=True,
            text=True,
            env=env | extra,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        accuracy[label] = json.loads(proc.stdout)["semantic"]["accuracy"]
    assert accuracy["default"] == 1.0 and accuracy["configured"] == 1 / 3


def test_a_follow_up_is_routed_with_the_previous_message(store, tmp_path):
    """The conversation evaluation routes a follow-up as a turn does: with the previous user
    message in front (the embedded model's rewrite), which finds the collection it alone
    does not."""
    from chatwright.evals.routing import evaluate_conversations, load_conversations, strategies_for

    bot = make_bot(store)
    tasks = tmp_path / "tasks.jsonl"
    conversation = {
        "input": [
            {"speaker": "user", "text": "Do employees get paid leave"},
            {"speaker": "agent", "text": "Yes, 25 days."},
            {"speaker": "user", "text": "and for how long?"},
        ],
        "Collection": "policies",
    }
    tasks.write_text(json.dumps(conversation) + "\n" + json.dumps({"Collection": "x"}) + "\n")
    rows = load_conversations(tasks, {"policies": "hr"})
    assert len(rows) == 1 and rows[0]["expected"] == ["hr"]
    collections = bot.candidate_collections("local")
    routers = strategies_for(bot.index.embedder)["semantic"]
    result = evaluate_conversations(rows, bot.index, collections, bot.index.embedder, routers)
    assert result["as a turn"]["accuracy"] == 1.0 and result["alone"]["accuracy"] == 0.0
    assert result["as a turn, follow-ups"]["n"] == 1
