"""Recall of old turns through the bot: indexed in the background, searched per turn."""

from __future__ import annotations

import json

import pytest

from chatwright import Chatbot, SQLiteStore
from chatwright.config import MemorySettings, Settings
from chatwright.evals.recall import FACTS, make_conversation, recall_at_k


def make_bot(store, *, embedder="test:hash", **memory) -> Chatbot:
    memory.setdefault("strategy", "tokens")
    memory.setdefault("context_tokens", 600)
    settings = Settings(memory=MemorySettings(**memory), embedder=embedder, max_answer_tokens=100)
    return Chatbot("test:echo", store=store, settings=settings)


def talk(bot, thread, n, start=0, owner=None):
    for i in range(start, start + n):
        bot.chat(thread, f"Small talk number {i} about the weather and football.", owner=owner)
        bot.wait_background()


def context_of(bot, thread, text, owner=None):
    bot.model = bot.memory.model = __import__("chatwright").get_model("test:context")
    try:
        answer = bot.chat(thread, text, owner=owner)
    finally:
        bot.model = bot.memory.model = __import__("chatwright").get_model("test:echo")
    return answer, [m["parts"][0]["text"] for m in json.loads(answer.text)["messages"]]


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "chatwright.db")
    yield s
    s.close()


def test_a_fact_from_long_ago_is_recalled_with_when_it_was_said(store):
    bot = make_bot(store)
    bot.chat("t", "My sister's name is Priya.")
    talk(bot, "t", 40)
    answer, texts = context_of(bot, "t", "What is my sister's name?")
    block = next(t for t in texts if t.startswith("Earlier in this conversation"))
    assert "My sister's name is Priya." in block and "message 1]" in block
    assert answer.trace.stage("context").data["recalled_seqs"] == [1]
    assert "recalled" in answer.trace.stage("context").data["tokens"]


def test_unrelated_old_turns_are_not_pushed_into_the_prompt(store):
    bot = make_bot(store)
    bot.chat("t", "My sister's name is Priya.")
    talk(bot, "t", 40)
    answer, texts = context_of(bot, "t", "Quantum chromodynamics lattice?")
    assert not any(t.startswith("Earlier in this conversation") for t in texts)
    assert "recalled_seqs" not in answer.trace.stage("context").data


def test_turns_inside_the_window_are_not_recalled(store):
    bot = make_bot(store, context_tokens=4096)
    bot.chat("t", "My sister's name is Priya.")
    talk(bot, "t", 3)
    _, texts = context_of(bot, "t", "What is my sister's name?")
    assert not any(t.startswith("Earlier in this conversation") for t in texts)
    assert texts.count("My sister's name is Priya.") == 1  # in the window, once


def test_recall_off_recalls_nothing(store):
    bot = make_bot(store, recall=False)
    bot.chat("t", "My sister's name is Priya.")
    talk(bot, "t", 40)
    _, texts = context_of(bot, "t", "What is my sister's name?")
    assert not any("Priya" in t for t in texts)
    assert store.connection.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0


def test_keyword_recall_works_without_an_embedder(store):
    bot = make_bot(store, embedder=None)
    bot.chat("t", "My sister's name is Priya.")
    talk(bot, "t", 40)
    _, texts = context_of(bot, "t", "Tell me about Priya")
    assert any(t.startswith("Earlier") and "Priya" in t for t in texts)


def test_deleting_a_thread_deletes_its_recall_index(store):
    bot = make_bot(store)
    bot.chat("t", "My sister's name is Priya.")
    talk(bot, "t", 40)
    assert store.connection.execute("SELECT count(*) FROM chunks").fetchone()[0] > 0
    bot.delete_thread("t")
    assert store.connection.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
    bot.chat("t", "hello again")
    _, texts = context_of(bot, "t", "What is my sister's name?")
    assert not any("Priya" in t for t in texts)


def test_one_owner_never_recalls_another_owners_thread(store):
    bot = make_bot(store)
    bot.chat("t", "My sister's name is Priya.", owner="ada")
    talk(bot, "t", 40, owner="ada")
    talk(bot, "t", 40, owner="bob")
    _, texts = context_of(bot, "t", "What is my sister's name?", owner="bob")
    assert not any("Priya" in t for t in texts)


def test_old_turns_are_indexed_once_in_the_background(store):
    bot = make_bot(store)
    talk(bot, "t", 30)
    recall = bot.memory.recall
    through = recall.indexed_through("local", "t")
    indexed = store.connection.execute("SELECT count(*) FROM chunks").fetchone()[0]
    assert 0 < through < 60 and indexed == through // 2
    keys = [r[0] for r in store.connection.execute("SELECT key FROM chunks ORDER BY key")]
    assert len(keys) == len(set(keys))


def test_the_recall_evaluation_finds_planted_facts_by_keyword(store):
    conversation = make_conversation(turns=200, seed=3)
    assert len(conversation.questions) == 2 * len(FACTS)
    literal = [q for q in conversation.questions if not q.paraphrased]
    figures = recall_at_k(literal, lambda q: [q_.planted_turn for q_ in literal if q_.text == q])
    assert figures["literal"] == 1.0 and figures["paraphrased"] == 0.0


def test_a_failing_recall_costs_the_turn_its_recall_not_its_answer(store):
    bot = make_bot(store)
    talk(bot, "t", 40)

    def broken(*args, **kwargs):
        raise RuntimeError("embedder crashed")

    bot.memory.recall.recall = broken
    answer = bot.chat("t", "still answering?")
    assert answer.text == "echo: still answering?"
    assert any("recall failed" in n and "embedder crashed" in n for n in answer.trace.notes)
