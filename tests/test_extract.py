"""The extract answer mode: sentences quoted from the passages with their [n] (issue 19)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from chatwright import Chatbot, SQLiteStore
from chatwright.config import KnowledgeSettings, Settings
from chatwright.errors import UserError
from chatwright.memory.context import Passage
from chatwright.models.embeddings import get_embedder
from chatwright.retrieval import Chunk
from chatwright.retrieval.extract import (
    LEAD,
    NOT_FOUND,
    YOU_SAID,
    asks_about_user,
    extract,
    from_user,
    resolve_answer_mode,
    sentences,
    split_sentences,
    units,
)
from chatwright.types import CitationEvent, TextDelta, TurnEnd

EMBEDDER = get_embedder("test:hash")


def passage(index: int, text: str, label: str = "") -> Passage:
    return Passage(index=index, text=text, label=label or f"doc {index}", tokens=0)


def quote(query: str, passages: list[Passage], **options):
    vector = EMBEDDER.embed([query])[0]
    return extract(query, vector, passages, EMBEDDER, **options)


# -- splitting ------------------------------------------------------------------------------
def test_sentences_split_at_ends_but_not_at_abbreviations_initials_or_decimals():
    text = 'He said "yes." Then he left. Version 3.5 is out, e.g. Foo works. J. Smith agreed!'
    assert split_sentences(text) == [
        'He said "yes."',
        "Then he left.",
        "Version 3.5 is out, e.g. Foo works.",
        "J. Smith agreed!",
    ]


def test_non_english_text_splits_too():
    assert split_sentences("東京は日本の首都です。人口は多い。") == [
        "東京は日本の首都です。",
        "人口は多い。",
    ]
    assert split_sentences("La ville est belle. Élodie y habite depuis 2010.") == [
        "La ville est belle.",
        "Élodie y habite depuis 2010.",
    ]


def test_headings_questions_fragments_and_images_are_dropped():
    text = (
        "# Installing\n\n"
        "Getting started\n"
        "Run the installer from the download page to set it up.\n"
        "What does it cost? Lifespan. See also.\n"
        "![diagram](https://example.com/a.png)\n"
        "https://example.com/docs\n"
        "Read the [manual](https://example.com/m) before you change any settings."
    )
    assert sentences(passage(1, text)) == [
        "Run the installer from the download page to set it up.",
        "Read the manual before you change any settings.",
    ]


def test_a_sentence_introducing_a_list_keeps_the_list():
    text = (
        "To reset the router, follow these steps:\n"
        "1. Unplug the router from the wall.\n"
        "2. Hold the reset button for ten seconds.\n"
        "3. Plug it back in.\n"
        "The lights blink while the router restarts."
    )
    found = sentences(passage(1, text))
    assert found[0].splitlines() == [
        "To reset the router, follow these steps:",
        "1. Unplug the router from the wall.",
        "2. Hold the reset button for ten seconds.",
        "3. Plug it back in.",
    ]
    assert found[1] == "The lights blink while the router restarts."


# -- ranking, quoting, citing ----------------------------------------------------------------
ROUTER = passage(
    1,
    "The Atlas X200 router costs 149 euros. It ships with two antennas and a power cable. "
    "The warranty lasts two years from the date of purchase.",
    "Atlas X200 · Price",
)
LEAVE = passage(
    2, "Employees get 25 days of paid leave per year. Unused leave expires in March.", "Leave"
)


def test_the_best_sentences_are_quoted_in_passage_order_with_their_citation():
    found = quote("How much does the Atlas X200 router cost in euros?", [ROUTER, LEAVE], count=2)
    assert found.found and found.text.startswith(LEAD + "\n\n")
    assert "> The Atlas X200 router costs 149 euros. [1]" in found.text
    assert found.quoted == 2 and 1 in found.cited
    lines = [line for line in found.text.splitlines() if line.startswith("> ") and "[" in line]
    assert [line.rsplit("[", 1)[1] for line in lines] == sorted(
        line.rsplit("[", 1)[1] for line in lines
    )  # passage order
    assert "".join(found.pieces()) == found.text


def test_near_duplicates_from_overlapping_passages_are_quoted_once():
    overlap = passage(2, "The Atlas X200 router costs 149 euros. It is sold in Europe only.")
    found = quote("How much does the Atlas X200 router cost?", [ROUTER, overlap], count=3)
    assert found.text.count("costs 149 euros") == 1


def test_the_list_is_quoted_whole_when_its_introduction_is_the_best_sentence():
    steps = passage(
        1,
        "Unrelated sentence about the weather in spring here.\n"
        "To reset the Atlas router, follow these steps:\n"
        "- Unplug the power cable.\n"
        "- Hold the reset button.",
    )
    found = quote("how to reset the Atlas router steps", [steps], count=1)
    assert "> - Unplug the power cable.\n> - Hold the reset button. [1]" in found.text


def test_far_from_the_question_it_says_so_and_names_the_closest_sources():
    found = quote("quantum chromodynamics lattice gauge", [ROUTER, LEAVE], min_score=0.5)
    assert not found.found and found.text.startswith(NOT_FOUND)
    assert "- [1] Atlas X200 · Price" in found.text and "- [2] Leave" in found.text
    assert found.cited == (1, 2)


# -- bad input ------------------------------------------------------------------------------
def test_a_passage_with_no_sentence_boundaries_is_cut_not_an_error():
    table = passage(1, "| name | price | stock " * 200)  # one 4,400-character "sentence"
    found = quote("price of items", [table])
    assert found.found and found.text.startswith(LEAD)
    assert all(len(u.text) <= 402 for u in units([table]))


def test_a_30000_character_passage_is_bounded_in_time():
    text = " ".join(
        f"Sentence number {i} talks about topic {i % 50} at length." for i in range(600)
    )
    big = passage(1, text[:30_000])
    start = time.perf_counter()
    found = quote("topic 7", [big])
    assert found.found and found.candidates <= 16
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("question", ["price", "?", "x"])
def test_a_one_word_question_gets_an_answer_or_a_clear_not_found(question):
    found = quote(question, [ROUTER], min_score=0.0)
    assert found.text.startswith((LEAD, NOT_FOUND))


def test_passages_with_nothing_quotable_say_not_found():
    found = quote("anything", [passage(1, "Hi.\nOK?\n")])
    assert not found.found and found.candidates == 0 and "[1]" in found.text
    assert quote("anything", []).text == NOT_FOUND


def test_a_zero_query_vector_does_not_fail():
    found = extract("q", np.zeros(256, dtype=np.float32), [ROUTER], EMBEDDER, min_score=-1)
    assert found.found


def test_which_mode_a_turn_uses():
    assert resolve_answer_mode("auto", "local:gemma-3-270m", True)[0] == "extract"
    assert resolve_answer_mode("auto", "openai:gpt-4o", True)[0] == "generate"
    assert resolve_answer_mode("extract", "openai:gpt-4o", True)[0] == "extract"
    assert resolve_answer_mode("generate", "local:gemma-3-270m", True)[0] == "generate"
    assert resolve_answer_mode("extract", "local:gemma-3-270m", False) == (
        "generate",
        "no passages to quote",
    )


# -- in a turn ------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "chatwright.db")
    yield s
    s.close()


def bot_with_docs(store, **knowledge) -> Chatbot:
    settings = Settings(embedder="test:hash", knowledge=KnowledgeSettings(**knowledge))
    bot = Chatbot("test:echo", store=store, settings=settings)
    info = store.create_collection("local", "manuals", "Product manuals")
    text = (
        "The Atlas X200 router costs 149 euros. It ships with two antennas. "
        "The warranty lasts two years."
    )
    meta = {"document_id": 1, "source": "x200.md", "title": "Atlas X200"}
    bot.index.add(info.namespace, [Chunk("x200-1", text, meta)])
    return bot


async def collect(bot: Chatbot, text: str, **options) -> list:
    return [e async for e in bot.stream("t", text, **options)]


async def test_a_turn_in_extract_mode_streams_a_quoted_cited_answer_and_stores_it(store):
    bot = bot_with_docs(store, answer_mode="extract", extract_min_score=-1.0)
    events = await collect(bot, "How much does the Atlas X200 router cost?")
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text.startswith(LEAD) and "costs 149 euros" in text and "[1]" in text
    assert sum(isinstance(e, TextDelta) for e in events) >= 2  # streamed in pieces
    [citation] = [e.citation for e in events if isinstance(e, CitationEvent)]
    assert citation.index == 1 and citation.title == "Atlas X200"
    answer = events[-1].answer
    assert isinstance(events[-1], TurnEnd) and answer.text == text
    generate = answer.trace.stage("generate").data
    assert generate["mode"] == "extract" and generate["why"] == "asked for"
    stored = list(bot.history("t"))[-1].message
    assert stored.text == text and [c.index for c in stored.citations] == [1]


async def test_the_request_mode_overrides_the_bot_setting(store):
    bot = bot_with_docs(store)  # auto, and test:echo is not the embedded model: generate
    events = await collect(bot, "What does the router cost?")
    assert events[-1].answer.text.startswith("echo:")
    events = await collect(bot, "What does the router cost?", answer_mode="extract")
    assert events[-1].answer.text.startswith((LEAD, NOT_FOUND))


async def test_extract_mode_without_passages_generates(store):
    bot = Chatbot("test:echo", store=store, settings=Settings(embedder="test:hash"))
    events = await collect(bot, "hello", answer_mode="extract")
    answer = events[-1].answer
    assert answer.text == "echo: hello"
    assert answer.trace.stage("generate").data["why"] == "no passages to quote"


async def test_an_unknown_mode_is_refused(store):
    bot = bot_with_docs(store)
    with pytest.raises(UserError):
        await collect(bot, "hello", answer_mode="poetry")


# -- the API field and the CLI flag ----------------------------------------------------------
DOC = "The Atlas X200 router costs 149 euros in every shop."


def _index_doc(settings: Settings) -> None:
    store = SQLiteStore(settings.db_path)
    try:
        bot = Chatbot("test:echo", store=store, settings=settings)
        info = store.create_collection(settings.user, "manuals", "Product manuals")
        bot.index.add(info.namespace, [Chunk("x200-1", DOC, {"title": "Atlas X200"})])
    finally:
        store.close()


def test_the_api_takes_an_answer_mode_per_message(tmp_path):
    from fastapi.testclient import TestClient

    from chatwright.server import create_app

    settings = Settings(
        model="test:echo",
        embedder="test:hash",
        data_dir=tmp_path / "data",
        server={"preload": False},
    )
    _index_doc(settings)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        url = "/api/threads/t/messages"
        question = "What does the Atlas X200 router cost?"
        body = {"text": question, "stream": False}
        assert client.post(url, json=body).json()["text"].startswith("echo:")
        quoted = client.post(url, json={**body, "answer_mode": "extract"}).json()
        assert quoted["text"].startswith(LEAD) and "149 euros" in quoted["text"]
        assert [c["index"] for c in quoted["citations"]] == [1]
        assert quoted["trace"]["stages"][-2]["data"]["mode"] == "extract"
        assert client.post(url, json={**body, "answer_mode": "poetry"}).status_code == 422
        v1 = {
            "model": "test:echo",
            "messages": [{"role": "user", "content": question}],
            "answer_mode": "extract",
        }
        done = client.post("/v1/chat/completions", json=v1, headers={"X-Chatwright-Thread": "v"})
        assert done.json()["choices"][0]["message"]["content"].startswith(LEAD)


def test_the_cli_takes_an_answer_mode(tmp_path):
    import os
    import subprocess
    import sys

    settings = Settings(model="test:echo", embedder="test:hash", data_dir=tmp_path)
    _index_doc(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env |= {"CHATWRIGHT_DATA_DIR": str(tmp_path), "CHATWRIGHT_EMBEDDER": "test:hash"}
    question = "What does the Atlas X200 router cost?"
    args = [sys.executable, "-m", "chatwright", "ask", "-m", "test:echo", question]
    proc = subprocess.run(
        [*args, "--answer-mode", "extract"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(LEAD) and "149 euros" in proc.stdout and "[1]" in proc.stdout
    bad = subprocess.run(
        [*args, "--answer-mode", "poetry"], capture_output=True, text=True, env=env, timeout=60
    )
    assert bad.returncode == 2


# -- the evaluation --------------------------------------------------------------------------
def test_rouge_l_and_content_recall():
    from chatwright.evals.answers import content_recall, rouge_l

    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("", "anything") == 0.0
    assert round(rouge_l("police killed the gunman", "the gunman kill police"), 3) == 0.5
    assert content_recall("Routers cost 149 euros", "The router costs 149 euros.") == 1.0


def test_the_answer_eval_runs_on_mtrag_format_tasks(tmp_path):
    import json

    from chatwright.evals.answers import evaluate, load_tasks, summarize

    def task(i: int, label: str, contexts: list[str]) -> dict:
        return {
            "task_id": f"t{i}",
            "input": [{"speaker": "user", "text": "What does the Atlas X200 router cost?"}],
            "contexts": [{"document_id": f"d{i}", "text": t} for t in contexts],
            "targets": [{"speaker": "agent", "text": "The Atlas X200 router costs 149 euros."}],
            "answerability": [label],
            "Collection": "c",
        }

    rows = [task(1, "ANSWERABLE", [DOC]), task(2, "UNANSWERABLE", [])]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    results = evaluate(load_tasks(path), mode="extract", embedder=EMBEDDER)
    assert [r.mode for r in results] == ["extract", "extract"]  # the pool fed the second
    assert results[0].cited and results[0].rouge_l > 0.5
    summary = summarize(results)
    assert summary["all"]["tasks"] == 2 and summary["ANSWERABLE"]["leaked"] == 0


# -- ranking details -----------------------------------------------------------------------
def test_a_passages_lead_sentence_wins_a_near_tie():
    p = passage(1, "Solar panels are sold in many shops. Solar panels turn light into heat.")
    for weight, expected in ((0.0, "heat"), (2.0, "shops")):
        found = quote("solar panels turn light into heat", [p], count=1, position_weight=weight)
        assert expected in found.text, (weight, found.text)


def test_the_users_own_words_pick_the_keywords_not_the_previous_question():
    p = passage(
        1,
        "The Atlas X200 router costs 149 euros in shops. "
        "The Atlas X200 warranty lasts two years from purchase.",
    )
    standalone = "How much does the Atlas X200 cost? and the warranty"
    vector = EMBEDDER.embed(["Atlas X200"])[0]  # neutral: keywords decide
    options = dict(count=1, position_weight=0.0, keyword_weight=1.0)
    found = extract(standalone, vector, [p], EMBEDDER, question="and the warranty", **options)
    assert "two years" in found.text
    found = extract(standalone, vector, [p], EMBEDDER, **options)
    assert "149 euros" in found.text


# -- questions about the user: quoting what they said --------------------------------------
def recite(question: str, statements: list[str], **options):
    vector = EMBEDDER.embed([question])[0]
    return from_user(question, vector, statements, EMBEDDER, **options)


def test_questions_about_the_user_are_told_apart_from_others():
    for q in ("What is my name?", "where do I live", "Remind me of my dog's name.", "Am I late?"):
        assert asks_about_user(q), q
    for q in ("What is the capital of France?", "My name is Ada.", "Thanks, that's all!"):
        assert not asks_about_user(q), q


def test_a_question_about_the_user_quotes_what_they_said():
    said = ["I live in Lisbon.", "My name is Ada.", "What is the weather like?"]
    found = recite("What is my name?", said, min_score=0.3)
    assert found is not None and found.text.startswith(YOU_SAID)
    assert "> My name is Ada." in found.text and "weather" not in found.text


def test_nothing_close_enough_or_not_about_the_user_is_left_to_the_model():
    said = ["My name is Ada."]
    assert recite("What is my favourite film?", said, min_score=0.5) is None
    assert recite("What is the capital of France?", said, min_score=-1.0) is None
    assert recite("What is my name?", [], min_score=-1.0) is None
    assert recite("What is my name?", ["What is my name?"], min_score=-1.0) is None


def test_a_close_runner_up_is_quoted_too_and_a_far_one_is_not():
    said = ["My name is Ada.", "My sister's name is Maria.", "I like green tea."]
    found = recite("What is my name?", said, min_score=0.0, margin=1.0)
    assert found is not None and found.quoted == 2
    found = recite("What is my name?", said, min_score=0.0, margin=0.0)
    assert found is not None and found.quoted == 1


async def test_a_bot_answers_a_question_about_the_user_from_their_memory_and_messages(store):
    settings = Settings(embedder="test:hash", knowledge=KnowledgeSettings(answer_mode="extract"))
    bot = Chatbot("test:echo", store=store, settings=settings)
    bot.remember("My favourite colour is green.")
    await bot.achat("t", "I live in Lisbon.")
    answer = await bot.achat("t", "Where do I live?")
    assert answer.text.startswith(YOU_SAID) and "Lisbon" in answer.text
    assert [s.name for s in answer.trace.stages if s.name == "recite"] == ["recite"]
    answer = await bot.achat("t", "What is my favourite colour?")
    assert "green" in answer.text and not answer.citations
    answer = await bot.achat("t", "What is the capital of France?")
    assert answer.text.startswith("echo:")  # not about the user: the model answers
    generate = Settings(embedder="test:hash", knowledge=KnowledgeSettings(answer_mode="generate"))
    plain = Chatbot("test:echo", store=store, settings=generate)
    assert (await plain.achat("t", "Where do I live?")).text.startswith("echo:")


def test_quoted_sentences_are_embedded_once_across_turns(tmp_path):
    from chatwright.retrieval import SearchIndex

    class Counting:
        name, dim = "counting", EMBEDDER.dim

        def __init__(self) -> None:
            self.texts: list[str] = []

        def embed(self, texts):
            self.texts += list(texts)
            return EMBEDDER.embed(texts)

    counting = Counting()
    db = SQLiteStore(tmp_path / "db")
    index = SearchIndex(db, counting)
    first = index.memoized.embed(["one sentence", "two sentences", "one sentence"])
    again = index.memoized.embed(["two sentences", "three"])
    db.close()
    assert counting.texts == ["one sentence", "two sentences", "three"]
    assert np.allclose(first[1], again[0]) and first.shape == (3, EMBEDDER.dim)


def test_a_question_about_the_user_quotes_a_recalled_turn(store):
    from chatwright.config import MemorySettings

    settings = Settings(
        embedder="test:hash",
        knowledge=KnowledgeSettings(answer_mode="extract"),
        memory=MemorySettings(strategy="tokens", context_tokens=600),
        max_answer_tokens=100,
    )
    bot = Chatbot("test:echo", store=store, settings=settings)
    bot.chat("t", "My sister's name is Priya.")
    for i in range(40):
        bot.chat("t", f"Small talk number {i} about the weather and football.")
        bot.wait_background()
    answer = bot.chat("t", "What is my sister's name?")
    context = answer.trace.stage("context").data
    assert context.get("recalled_seqs") == [1] and context["turns_dropped"] > 0
    assert answer.text.startswith(YOU_SAID) and "Priya" in answer.text
