"""Memory: token counting, context building per strategy, running summaries, user memory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatwright import Chatbot, Message, SQLiteStore
from chatwright.config import MemorySettings, Settings
from chatwright.memory import Budget, Entry, Recalled, build_context, count_message, counter_for
from chatwright.memory import tokens as tokens_module
from chatwright.memory.summary import select_batch
from chatwright.memory.tokens import ESTIMATE, estimate_tokens
from chatwright.models import ModelRequest
from chatwright.store.base import Summary
from chatwright.types import Done, TextDelta, ToolCallPart, ToolResultPart, Usage

# -- token counting ------------------------------------------------------------------------


def test_estimate_is_a_quarter_of_the_utf8_bytes_rounded_up():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("é" * 4) == 2  # 8 bytes


def test_openai_models_count_with_tiktoken():
    class Named:
        name = "openai:gpt-4o"

    counter = counter_for(Named())
    assert counter.name == "tiktoken:cl100k_base"
    assert counter.count("hello world") == 2
    assert counter.note is None


def test_a_missing_tokenizer_falls_back_to_the_estimate_with_a_note(monkeypatch):
    def broken():
        raise ImportError("no tiktoken")

    monkeypatch.setattr(tokens_module, "_tiktoken", broken)

    class Named:
        name = "openai:gpt-4o"

    counter = counter_for(Named())
    assert counter.name == "estimate" and "estimated" in counter.note
    assert counter.count("abcdefgh") == 2


def test_models_that_count_their_own_tokens_are_used():
    class Counting:
        name = "local:x"

        def count_tokens(self, text: str) -> int:
            return 7

    assert counter_for(Counting()).count("anything") == 7


def test_message_count_includes_tool_calls_and_results():
    plain = count_message(Message.assistant("hi"), ESTIMATE)
    call = ToolCallPart(id="c", name="lookup", arguments='{"q": "a long query here"}')
    with_call = count_message(Message.assistant("hi", tool_calls=[call]), ESTIMATE)
    assert with_call > plain
    result = Message.tool(ToolResultPart(tool_call_id="c", content="x" * 400))
    assert count_message(result, ESTIMATE) >= 100


# -- context building (pure) ---------------------------------------------------------------


def entries_for(*turns: tuple[str, str], start: int = 1) -> list[Entry]:
    out, seq = [], start
    for question, answer in turns:
        for message in (Message.user(question), Message.assistant(answer)):
            out.append(Entry(seq, 1_700_000_000.0 + seq, message, count_message(message, ESTIMATE)))
            seq += 1
    return out


def build(history, *, strategy="tokens", total=2000, **kw):
    budget = Budget(total=total, answer=kw.pop("answer", 100), window_turns=kw.pop("turns", 10))
    return build_context(
        strategy=strategy,
        system_prompt=kw.pop("system", "Be brief."),
        history=history,
        new_message=kw.pop("new", Message.user("new question")),
        budget=budget,
        counter=ESTIMATE,
        **kw,
    )


def texts(context):
    return [m.text for m in context.messages]


def test_window_keeps_the_last_n_whole_turns():
    history = entries_for(*[(f"q{i}", f"a{i}") for i in range(6)])
    context = build(history, strategy="window", turns=2)
    assert texts(context) == ["Be brief.", "q4", "a4", "q5", "a5", "new question"]
    assert context.turns_kept == 2 and context.turns_dropped == 4
    assert context.window_start_seq == 9


def test_tokens_keeps_as_many_recent_turns_as_fit():
    history = entries_for(*[(f"question {i} " * 10, f"answer {i} " * 10) for i in range(20)])
    context = build(history, total=400)
    assert context.total_tokens <= 400 - 100
    assert 0 < context.turns_kept < 20
    assert texts(context)[-1] == "new question"
    kept = texts(context)[1:-1]
    assert kept[-1].startswith("answer 19")  # the newest turn is kept first


@given(
    sizes=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 400)), max_size=30),
    total=st.integers(300, 3000),
    new_size=st.integers(1, 6000),
    strategy=st.sampled_from(["window", "tokens", "summary"]),
    recalled_sizes=st.lists(st.integers(1, 300), max_size=5),
)
@settings(max_examples=300, deadline=None)
def test_never_over_budget_and_never_drops_the_new_message(
    sizes, total, new_size, strategy, recalled_sizes
):
    history = entries_for(*[("u" * a, "a" * b) for a, b in sizes])
    new = Message.user("n" * new_size)
    summary = Summary(through_seq=0, text="s" * 900, tokens=225)
    recalled = [Recalled(0, 0.0, "r" * (4 * n), n) for n in recalled_sizes]
    context = build(
        history, strategy=strategy, total=total, new=new, summary=summary, recalled=recalled
    )
    sent = sum(count_message(m, ESTIMATE) for m in context.messages)
    assert sent <= total - 100
    assert context.messages[-1].role == "user" and context.messages[-1].text[:1] == "n"
    # whole turns: every kept assistant message follows its user message
    middle = [m for m in context.messages if m.role != "system"][:-1]
    assert [m.role for m in middle] == ["user", "assistant"] * (len(middle) // 2)


def test_a_new_message_larger_than_the_window_is_cut_in_the_middle_with_a_note():
    new = Message.user("START " + "filler " * 3000 + " END")
    context = build(entries_for(("q", "a")), total=500, new=new)
    last = context.messages[-1].text
    assert last.startswith("START") and last.endswith("END") and "[…]" in last
    assert sum(count_message(m, ESTIMATE) for m in context.messages) <= 400
    assert any("larger than the window" in n for n in context.notes)


def test_tool_calls_stay_with_their_results():
    call = ToolCallPart(id="c1", name="weather", arguments="{}")
    messages = [
        Message.user("old"),
        Message.assistant("", tool_calls=[call]),
        Message.tool(ToolResultPart(tool_call_id="c1", content="sunny " * 50)),
        Message.assistant("It is sunny."),
        Message.user("recent"),
        Message.assistant("ok"),
    ]
    history = [Entry(i + 1, 0.0, m, count_message(m, ESTIMATE)) for i, m in enumerate(messages)]
    for total in range(150, 400, 5):
        kept = [m for m in build(history, total=total).messages if m.role != "system"]
        has_call = any(m.tool_calls for m in kept)
        has_result = any(m.tool_results for m in kept)
        assert has_call == has_result, total


def test_summary_strategy_puts_the_summary_before_the_recent_turns():
    summary = Summary(through_seq=6, text="The user is Ada from Lyon.", tokens=7)
    context = build(entries_for(("q", "a"), start=7), strategy="summary", summary=summary)
    assert texts(context)[1].startswith("Summary of the conversation so far (up to message 6)")
    assert "Ada from Lyon" in texts(context)[1]
    assert context.summary_through_seq == 6
    assert "summary" in context.tokens
    assert "Ada" not in " ".join(texts(build(entries_for(("q", "a")), summary=summary)))


def test_user_memory_is_in_the_system_message_within_its_share():
    facts = [f"fact number {i} " * 5 for i in range(50)]
    context = build(entries_for(("q", "a")), user_memory=facts)
    system = context.messages[0].text
    assert system.startswith("Be brief.") and "fact number 0" in system
    assert "fact number 49" not in system  # over the user-memory share
    assert 0 < context.tokens["user_memory"] <= 300


def test_recalled_turns_are_marked_with_when_and_skip_the_window():
    history = entries_for(("recent q", "recent a"), start=100)
    recalled = [
        Recalled(first_seq=12, created_at=1_700_000_000.0, text="User: my cat is Tom", tokens=8),
        Recalled(first_seq=100, created_at=1_700_000_000.0, text="User: recent q", tokens=8),
    ]
    context = build(history, recalled=recalled)
    block = next(m.text for m in context.messages if m.text.startswith("Earlier in"))
    assert "my cat is Tom" in block and "2023-11-14" in block and "message 12" in block
    assert context.recalled_seqs == [12]


# -- through the bot: exactly what the model receives --------------------------------------


def seen(answer) -> list[tuple[str, str]]:
    payload = json.loads(answer.text)
    return [(m["role"], m["parts"][0]["text"] if m["parts"] else "") for m in payload["messages"]]


def context_bot(store, **memory) -> Chatbot:
    settings = Settings(memory=MemorySettings(**memory), system_prompt="SYS")
    return Chatbot("test:context", store=store, settings=settings)


def fill(store, thread, n, size=20):
    for i in range(n):
        store.append(
            "local",
            thread,
            [Message.user(f"q{i} " + "x" * size), Message.assistant(f"a{i} " + "y" * size)],
            create=True,
        )


def test_window_strategy_through_the_bot(store):
    fill(store, "t", 5)
    bot = context_bot(store, strategy="window", window_turns=2)
    got = seen(bot.chat("t", "now"))
    assert [r for r, _ in got] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert got[1][1].startswith("q3") and got[-1] == ("user", "now")


def test_tokens_strategy_through_the_bot_fits_the_configured_window(store):
    fill(store, "t", 30, size=200)
    bot = context_bot(store, strategy="tokens", context_tokens=600)
    answer = bot.chat("t", "now")
    context = answer.trace.stage("context").data
    assert context["strategy"] == "tokens"
    assert sum(context["tokens"].values()) <= 600 - 300  # answer reserve: min(512, 600 // 2)
    assert 0 < context["turns_kept"] < 30


def test_per_thread_strategy_overrides_the_bot(store):
    fill(store, "t", 5)
    bot = context_bot(store, strategy="tokens", window_turns=1)
    bot.set_memory_strategy("t", "window")
    assert len(seen(bot.chat("t", "now"))) == 4  # system, one turn, the new message
    bot.set_memory_strategy("t", None)
    assert len(seen(bot.chat("t", "again"))) > 4


class Summarizer:
    """A summarizer model that records what it was asked and answers a numbered summary."""

    name = "test:summarizer"

    def __init__(self, fail: int = 0) -> None:
        self.requests: list[ModelRequest] = []
        self.fail = fail

    async def stream(self, request: ModelRequest) -> AsyncIterator:
        self.requests.append(request)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("summarizer is down")
        yield TextDelta(text=f"SUMMARY v{len(self.requests)}")
        yield Usage()
        yield Done()


def summary_bot(store, summarizer) -> Chatbot:
    bot = Chatbot(
        "test:echo",
        store=store,
        settings=Settings(
            memory=MemorySettings(
                strategy="summary",
                context_tokens=700,
                summarize_after_tokens=150,
                summarize_batch_tokens=400,
            ),
            max_answer_tokens=100,
        ),
    )
    bot.memory.summarizer = summarizer
    return bot


def test_summaries_are_incremental_and_in_the_background(store):
    summarizer = Summarizer()
    bot = summary_bot(store, summarizer)
    for i in range(12):
        bot.chat("t", f"message number {i} " + "about cats " * 20)
        bot.wait_background()
    versions = store.summaries("local", "t")
    assert len(versions) >= 2
    assert [v.through_seq for v in versions] == sorted({v.through_seq for v in versions})
    second = summarizer.requests[1].messages[-1].text
    assert "SUMMARY v1" in second  # the previous summary is folded into, not redone
    first_batch_last = versions[0].through_seq
    assert f"message number {first_batch_last // 2 - 1} " not in second.split("New messages:")[1]
    # the full transcript is kept: compaction changes what the model sees, not what is stored
    assert len(list(store.messages("local", "t"))) == 24


def test_the_summary_is_what_the_model_sees_for_older_turns(store):
    summarizer = Summarizer()
    bot = summary_bot(store, summarizer)
    for i in range(10):
        bot.chat("t", f"turn {i} " + "words " * 30)
        bot.wait_background()
    bot.model = bot.memory.model = __import__("chatwright").get_model("test:context")
    answer = bot.chat("t", "what do you remember?")
    got = seen(answer)
    assert got[1][0] == "system" and got[1][1].startswith("Summary of the conversation so far")
    through = answer.trace.stage("context").data["summary_through_seq"]
    assert through == store.latest_summary("local", "t").through_seq
    user_texts = [t for r, t in got if r == "user"]
    assert not any(t.startswith("turn 0 ") for t in user_texts)  # covered by the summary


def test_a_failing_summarizer_is_noted_retried_and_loses_nothing(store):
    summarizer = Summarizer(fail=1)
    bot = summary_bot(store, summarizer)
    notes = []
    for i in range(10):
        answer = bot.chat("t", f"turn {i} " + "words " * 30)
        notes.extend(answer.trace.notes)
        bot.wait_background()
    assert any("summary update failed" in n and "summarizer is down" in n for n in notes)
    assert store.latest_summary("local", "t") is not None  # a later update succeeded
    assert len(list(store.messages("local", "t"))) == 20


def test_a_hanging_summarizer_times_out_without_blocking_turns(store):
    class Hanging:
        name = "test:hang"

        async def stream(self, request):
            await asyncio.sleep(30)
            yield TextDelta(text="never")

    bot = summary_bot(store, Hanging())
    bot.settings.memory.summary_timeout_s = 0.2
    for i in range(8):
        bot.chat("t", f"turn {i} " + "words " * 30)  # turns do not wait for the summarizer
    bot.wait_background()
    answer = bot.chat("t", "still here?")
    assert answer.text == "echo: still here?"
    assert any("TimeoutError" in n for n in answer.trace.notes)


def test_select_batch_takes_whole_turns_and_at_least_one_message():
    history = entries_for(*[("u" * 40, "a" * 40) for _ in range(5)])
    batch = select_batch(history, max_tokens=70)
    assert batch[-1].message.role == "assistant" and len(batch) % 2 == 0
    huge = [Entry(1, 0.0, Message.user("x" * 10_000), 2504)]
    assert select_batch(huge, max_tokens=10) == huge


# -- user memory --------------------------------------------------------------------------


def test_remembered_facts_reach_every_thread_of_that_user_only(store):
    bot = context_bot(store)
    item = bot.remember("I'm vegetarian")
    assert seen(bot.chat("one", "hi"))[0][1].endswith("- I'm vegetarian")
    assert "vegetarian" in seen(bot.chat("two", "hi"))[0][1]
    assert "vegetarian" not in seen(bot.chat("three", "hi", owner="bob"))[0][1]
    bot.forget(item.id)
    assert "vegetarian" not in seen(bot.chat("one", "again"))[0][1]


def test_memory_edit_and_delete_are_owner_scoped(store):
    item = store.add_memory("ada", "my project is Atlas")
    with pytest.raises(Exception, match="not found"):
        store.update_memory("bob", item.id, "hijacked")
    with pytest.raises(Exception, match="not found"):
        store.delete_memory("bob", item.id)
    assert store.update_memory("ada", item.id, "my project is Atlas 2").text.endswith("2")
    assert [m.text for m in store.list_memories("ada")] == ["my project is Atlas 2"]


def test_preview_context_shows_what_the_model_would_see_and_stores_nothing(store):
    fill(store, "t", 3)
    bot = context_bot(store)
    context = bot.preview_context("t", "next one")
    assert [m.text for m in context.messages][-1] == "next one"
    assert len(list(store.messages("local", "t"))) == 6


def test_the_trace_reports_strategy_tokens_and_summary(store):
    bot = context_bot(store, strategy="summary")
    fill(store, "t", 2)
    store.save_summary("local", "t", Summary(through_seq=2, text="earlier stuff", tokens=3))
    data = bot.chat("t", "go").trace.stage("context").data
    assert data["strategy"] == "summary" and data["summary_through_seq"] == 2
    assert {"system", "summary", "recent", "new_message"} <= set(data["tokens"])


def test_token_counts_are_stored_once_per_message(store):
    bot = context_bot(store)
    bot.chat("t", "count me")
    stored = list(store.messages("local", "t"))
    assert all(m.tokens is not None and m.tokens > 0 for m in stored)


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "chatwright.db")
    yield s
    s.close()


def test_the_recent_cache_sees_messages_written_elsewhere(store):
    bot = context_bot(store, strategy="tokens")
    bot.chat("t", "first")
    store.append("local", "t", [Message.user("from another process")])  # not through this bot
    got = [text for _, text in seen(bot.chat("t", "second"))]
    assert "from another process" in got and got[-1] == "second"


def test_a_deleted_and_recreated_thread_does_not_see_old_messages(store):
    bot = context_bot(store, strategy="tokens")
    bot.chat("t", "secret from the old thread")
    bot.delete_thread("t")
    for text in ("fresh start", "and more"):
        got = " ".join(text for _, text in seen(bot.chat("t", text)))
        assert "secret" not in got


def test_the_recent_cache_keeps_only_the_configured_window(store):
    bot = context_bot(store, strategy="tokens")
    bot.memory.history_messages = 4
    for i in range(6):
        bot.chat("t", f"m{i}")
    loaded = bot.memory.load("local", "t")
    assert [e.seq for e in loaded.entries] == [8, 9, 10, 11, 12]
