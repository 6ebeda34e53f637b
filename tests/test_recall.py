"""Recall of old turns through the bot: indexed in the background, searched per turn."""

from __future__ import annotations

import json
from dataclasses import replace

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
    recall = "SELECT count(*) FROM chunks WHERE namespace LIKE 'thread:%'"  # not thread search's
    assert store.connection.execute(recall).fetchone()[0] == 0


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
    of_recall = "FROM chunks WHERE namespace LIKE 'thread:%'"  # not thread search's
    indexed = store.connection.execute("SELECT count(*) " + of_recall).fetchone()[0]
    assert 0 < through < 60 and indexed == through // 2
    keys = [r[0] for r in store.connection.execute(f"SELECT key {of_recall} ORDER BY key")]
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


# -- what recall searches with (issue 14: LoCoMo, `chatwright eval memory`) -----------------
DAY = 86400.0
MAY_8 = 1683504000.0  # 2023-05-08 00:00 UTC


class SpyEmbedder:
    """test:hash, remembering what it embedded."""

    name = "test:spy"

    def __init__(self, broken: bool = False) -> None:
        from chatwright.models.embeddings import HashEmbedder

        self.inner, self.broken, self.seen = HashEmbedder(), broken, []

    def embed(self, texts):
        if self.broken:
            raise RuntimeError("embedder crashed")
        self.seen.extend(texts)
        return self.inner.embed(texts)


def recall_over(store, messages, embedder=None, thread="t"):
    """A ThreadRecall with ``messages`` ((role, text, when) each) indexed as the background
    job indexes them once they leave the window."""
    from chatwright.memory.context import Entry, group_turns
    from chatwright.retrieval import SearchIndex
    from chatwright.retrieval.recall import ThreadRecall
    from chatwright.types import Message

    made = [Message.user(t) if r == "user" else Message.assistant(t) for r, t, _ in messages]
    stored = store.append("local", thread, made, create=True)
    entries = [Entry(s.seq, m[2], s.message, 0) for s, m in zip(stored, messages, strict=True)]
    recall = ThreadRecall(SearchIndex(store, embedder), store)
    recall.index_turns("local", thread, group_turns(entries))
    return recall


def chat(*pairs, start=MAY_8, step=60.0):
    """(user, assistant) pairs as timed messages, a minute apart."""
    out = []
    for i, (user, assistant) in enumerate(pairs):
        out += [
            ("user", user, start + 2 * i * step),
            ("assistant", assistant, start + (2 * i + 1) * step),
        ]
    return out


def ask(recall, query, k=3, notes=None):
    return recall.recall("local", "t", query, k=k, before_seq=10**9, notes=notes)


def test_an_answer_given_after_a_pause_is_recalled_as_said_then(store):
    messages = [
        ("user", "How was your weekend?", MAY_8),
        ("assistant", "We drove up to see the fjords, breathtaking.", MAY_8 + 3 * DAY),
        *chat(("Anything else?", "Not really."), start=MAY_8 + 3 * DAY + 60),
    ]
    found = ask(recall_over(store, messages), "the fjords")
    assert [(r.first_seq, r.created_at) for r in found] == [(2, MAY_8 + 3 * DAY)]
    assert found[0].text == "Assistant: We drove up to see the fjords, breathtaking."


def test_a_turn_next_to_the_words_of_the_question_ranks_higher(store):
    messages = chat(
        ("Guess what: I signed up for a pottery class!", "Pottery, how fun!"),
        ("It is on Tuesday evenings, the class.", "Sounds relaxing."),
        *[(f"Small talk {i} about the weather.", "Indeed.") for i in range(6)],
        ("Class today.", "ok"),
    )
    found = ask(recall_over(store, messages), "When is my pottery class?")
    # turn 2 has "class" once, like the short turn 9; its neighbour has "pottery class"
    assert [r.first_seq for r in found] == [1, 3, 17]


def test_names_the_thread_keeps_using_are_not_embedded_in_the_question(store):
    spy = SpyEmbedder()
    greetings = [(f"Hi there, number {i}.", f"Hello Ada, how are you {i}?") for i in range(10)]
    messages = chat(*greetings, ("I adopted a cat named Miso.", "Lovely!"))
    recall = recall_over(store, messages, spy)
    spy.seen.clear()
    found = ask(recall, "Which pet did Ada adopt?")
    assert spy.seen == ["Which pet did adopt?"]  # Ada is in 10 of 11 turns: says nothing
    assert found[0].first_seq == 21
    spy.seen.clear()
    ask(recall, "What does Miso eat?")
    assert spy.seen == ["What does Miso eat?"]  # a rare name is what the question is about


def test_a_question_that_names_a_date_prefers_the_turns_said_then(store):
    messages = chat(("We walked along the beach and the coast.", "Nice."), start=MAY_8)
    messages += chat(
        ("Beach day! The beach was great.", "Fun."),
        ("Bought some bread.", "ok"),
        start=MAY_8 + 60 * DAY,
    )
    recall = recall_over(store, messages)
    assert ask(recall, "What did we do at the beach?")[0].first_seq == 3  # the better match
    assert ask(recall, "What did we do at the beach on 8 May, 2023?")[0].first_seq == 1
    assert ask(recall, "the beach in May 2023")[0].first_seq == 1


def test_a_failing_embedder_leaves_keyword_recall_with_a_note(store):
    broken = SpyEmbedder(broken=True)
    messages = chat(("My sister's name is Priya.", "Noted."), ("Weather talk.", "Yes."))
    recall = recall_over(store, messages, broken)  # indexed without vectors, not lost
    notes: list[str] = []
    found = ask(recall, "What is my sister's name?", notes=notes)
    assert [r.first_seq for r in found] == [1]
    assert notes and "keywords only" in notes[0] and "embedder crashed" in notes[0]


def test_a_turn_with_a_failing_embedder_still_recalls_by_keyword(store):
    bot = make_bot(store)
    bot.chat("t", "My sister's name is Priya.")
    talk(bot, "t", 40)
    bot.index.embedder = SpyEmbedder(broken=True)
    answer, texts = context_of(bot, "t", "What is my sister's name?")
    assert any(t.startswith("Earlier") and "Priya" in t for t in texts)
    assert any("keywords only" in n for n in answer.trace.notes)


def test_names_are_counted_without_a_keyword_search_each(store, monkeypatch):
    greetings = [(f"Hi there, number {i}.", f"Hello Ada, how are you {i}?") for i in range(10)]
    recall = recall_over(store, chat(*greetings, ("I adopted a cat named Miso.", "Lovely!")))
    calls = []
    keyword = recall.index.chunks.keyword
    monkeypatch.setattr(
        recall.index.chunks, "keyword", lambda *a, **k: calls.append(a[0]) or keyword(*a, **k)
    )
    found = ask(recall, "Did Ada, Bob or Miso adopt Carol's cat?")
    assert calls == ["Did Ada, Bob or Miso adopt Carol's cat?"]  # the ranking's, no more
    assert found[0].first_seq == 21


def test_old_turns_are_embedded_in_short_passes(store):
    from chatwright.retrieval import index as index_module

    spy = SpyEmbedder()
    calls = []
    embed = spy.embed
    spy.embed = lambda texts: calls.append(len(texts)) or embed(texts)
    pairs = [(f"Turn {i} about the garden and the weather.", "Noted.") for i in range(40)]
    recall = recall_over(store, chat(*pairs), spy)
    assert sum(calls) == 40 and max(calls) <= index_module._PASS_TEXTS
    assert recall.index.count("thread:1") == 40


def test_a_backlog_of_old_turns_is_indexed_in_one_go(store):
    from chatwright.types import Message

    bot = make_bot(store)
    bot.chat("t", "Hello.")
    for i in range(700):  # more than a background job's batch of 500 turns
        store.append("local", "t", [Message.user(f"Old turn {i}."), Message.assistant("Ok.")])
    bot.chat("t", "And now?")
    bot.wait_background()
    recall = bot.memory.recall
    through = recall.indexed_through("local", "t")
    total = store.get_thread("local", "t").message_count
    assert through > 2 * 500 and total - through < 100  # all out of the window, not 1 batch


def test_closing_finishes_the_batch_in_progress_and_leaves_the_backlog(store):
    """A bot closed while a long backlog is indexed does not wait for all of it: the next
    process goes on from what was indexed."""
    import threading

    from chatwright.types import Message

    bot = make_bot(store)
    bot.chat("t", "Hello.")
    for i in range(1200):  # three background batches of 500 turns
        store.append("local", "t", [Message.user(f"Old turn {i}."), Message.assistant("Ok.")])
    recall = bot.memory.recall
    index_turns = recall.index_turns
    started, go_on = threading.Event(), threading.Event()
    batches = []

    def gated(*args, **kwargs):
        batches.append(len(args[2]))
        started.set()
        assert go_on.wait(10)
        return index_turns(*args, **kwargs)

    recall.index_turns = gated
    bot.chat("t", "And now?")
    assert started.wait(10)
    closing = threading.Thread(target=bot.close)
    closing.start()
    while not bot.memory._closing.is_set():
        closing.join(0.01)
    go_on.set()
    closing.join(10)
    assert not closing.is_alive()
    assert len(batches) == 1  # the batch in progress, no other


def test_units_keyed_by_their_first_seq_alone_are_still_recalled(store):
    """Units indexed before branches have the key ``<first seq>`` and their span in the
    metadata; recall reads the span from the key where it can, from the metadata otherwise."""
    bot = make_bot(store)
    bot.chat("t", "My sister's name is Priya.")
    talk(bot, "t", 40)
    db = store.connection
    old = db.execute(
        "SELECT pk, key, metadata FROM chunks WHERE namespace LIKE 'thread:%' AND text LIKE ?",
        ("%Priya%",),
    ).fetchone()
    first = json.loads(old[2])["first_seq"]
    with db:
        db.execute("UPDATE chunks SET key = ? WHERE pk = ?", (f"{first:012d}", old[0]))
    answer, texts = context_of(bot, "t", "What is my sister's name?")
    assert any("Priya" in t for t in texts if t.startswith("Earlier in this conversation"))
    assert answer.trace.stage("context").data["recalled_seqs"] == [first]


def test_a_ranked_row_of_another_namespace_is_never_recalled(store, monkeypatch):
    """However a pk of another thread reaches the ranking (a reused id), its row is not used."""
    bot = make_bot(store)
    bot.chat("t", "My sister's name is Priya.", owner="ada")
    talk(bot, "t", 40, owner="ada")
    bot.chat("t", "My sister's name is Zoraida.", owner="bob")
    talk(bot, "t", 40, owner="bob")
    chunks = bot.index.chunks
    bobs = f"thread:{store.find_thread('bob', 't').uid}"
    other = [pk for pk, _ in chunks.keyword("Zoraida", [bobs], None, 5)]
    assert other
    real = chunks.keyword
    monkeypatch.setattr(
        chunks, "keyword", lambda q, ns, f, d: [(pk, 50.0) for pk in other] + real(q, ns, f, d)
    )
    _, texts = context_of(bot, "t", "What is my sister's name?", owner="ada")
    recalled = [t for t in texts if t.startswith("Earlier in this conversation")]
    assert recalled and "Priya" in recalled[0] and "Zoraida" not in recalled[0]


def test_a_unit_replaced_after_ranking_is_passed_over_for_the_next(store, monkeypatch):
    bot = make_bot(store)
    bot.chat("t", "My sister's name is Priya.")
    bot.chat("t", "My sister Priya lives in Lisbon.")
    bot.chat("t", "Priya is a doctor, my sister says.")
    talk(bot, "t", 40)
    recall = bot.memory.recall
    before = recall.recall("local", "t", "sister Priya", k=2, before_seq=10**6)
    assert len(before) == 2
    chunks = bot.index.chunks
    real = chunks.fetch
    first = before[0].text

    def fetch(ids):  # the best unit's row now holds another unit (its pk reused)
        rows = real(ids)
        return {
            pk: replace(r, key="000000000999-000000000999") if r.text == first else r
            for pk, r in rows.items()
        }

    monkeypatch.setattr(chunks, "fetch", fetch)
    after = recall.recall("local", "t", "sister Priya", k=2, before_seq=10**6)
    assert len(after) == 2 and after[0].text == before[1].text  # and the third best
    assert first not in [r.text for r in after]
