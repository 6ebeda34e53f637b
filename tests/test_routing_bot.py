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


def test_semantic_scores_mix_in_the_best_matching_chunk(store):
    from chatwright.routing import SemanticRouter, build_profiles, with_best_chunks

    bot = make_bot(store)
    profiles = build_profiles(bot.index, bot.candidate_collections("local"), bot.index.embedder)
    query = "hold the reset button for ten seconds"
    vector = bot.index.embedder.embed([query])[0]
    scored = with_best_chunks(bot.index, profiles, query, vector)
    best = {p.name: p.best_chunk for p in scored}
    assert best["manuals"] > best["hr"]
    plain = SemanticRouter(chunk_weight=0.0).scores(vector, scored)
    mixed = SemanticRouter(chunk_weight=0.7).scores(vector, scored)
    assert mixed["manuals"] == pytest.approx(0.3 * plain["manuals"] + 0.7 * best["manuals"], 1e-3)
    assert SemanticRouter(chunk_weight=0.7).scores(vector, profiles) == plain  # none known


def test_a_broken_router_falls_back_to_all_collections_with_a_note(store):
    bot = make_bot(store)

    def broken(*args, **kwargs):
        raise RuntimeError("profiles unreadable")

    bot.index.search = broken  # the semantic router's chunk search fails
    decision, collections, _ = asyncio.run(bot.route("How do I reset the router?"))
    assert decision.fallback and sorted(c.name for c in collections) == ["hr", "manuals"]
    assert any("routing failed" in n and "profiles unreadable" in n for n in decision.notes)
