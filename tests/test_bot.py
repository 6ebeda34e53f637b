"""Chatbot turns: what is stored, what the model sees, and what survives failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest

from chatwright import Chatbot, SQLiteStore
from chatwright.bot import NO_ANSWER
from chatwright.config import Settings
from chatwright.errors import InvalidMessage, ModelResponseError, ModelUnavailable, ThreadNotFound
from chatwright.models import ModelRequest
from chatwright.models.base import ModelEvent
from chatwright.models.test import ScriptedModel
from chatwright.types import (
    Done,
    Message,
    TextDelta,
    ToolCallPart,
    ToolResultPart,
    TurnEnd,
    TurnStart,
    Usage,
)

SYSTEM = "You are a test."


# -- helpers --------------------------------------------------------------------------------
class SlowModel:
    """Streams ``pieces`` with a sleep before each one; then ``fail`` if given, else stops."""

    def __init__(
        self,
        pieces: list[str],
        *,
        delay: float = 0.0,
        fail: BaseException | None = None,
        hang_after: int | None = None,
    ) -> None:
        self.name = "test:slow"
        self.pieces = pieces
        self.delay = delay
        self.fail = fail
        self.hang_after = hang_after
        self.hanging = asyncio.Event()

    async def _hang(self) -> None:
        self.hanging.set()
        await asyncio.sleep(3600)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        for i, piece in enumerate(self.pieces):
            if self.hang_after == i:
                await self._hang()
            await asyncio.sleep(self.delay)
            yield TextDelta(text=piece)
        if self.hang_after == len(self.pieces):
            await self._hang()
        if self.fail is not None:
            raise self.fail
        yield Usage(input_tokens=1, output_tokens=len(self.pieces))
        yield Done()


def stored(store: SQLiteStore, thread_id: str, owner: str = "local") -> list[Message]:
    return [m.message for m in store.messages(owner, thread_id)]


def seen_by_model(answer_text: str) -> list[Message]:
    """The request test:context received, from its answer."""
    payload = json.loads(answer_text)
    return [Message.model_validate(m) for m in payload["messages"]]


def context_bot(store: SQLiteStore, **settings: object) -> Chatbot:
    return Chatbot("test:context", store=store, settings=Settings(**settings), system_prompt=SYSTEM)


# -- basic turns ----------------------------------------------------------------------------
def test_chat_answers_and_stores_both_messages(bot: Chatbot, store: SQLiteStore) -> None:
    answer = bot.chat("t1", "hello there")
    assert answer.text == "echo: hello there"
    assert str(answer) == "echo: hello there"
    assert answer.thread_id == "t1"
    assert answer.seq == 2
    assert not answer.interrupted
    assert stored(store, "t1") == [Message.user("hello there"), Message.assistant(answer.text)]


def test_unknown_thread_id_starts_that_thread(bot: Chatbot, store: SQLiteStore) -> None:
    assert store.find_thread("local", "brand-new") is None
    bot.chat("brand-new", "hi")
    assert bot.thread("brand-new").message_count == 2


def test_none_thread_id_creates_a_new_thread(bot: Chatbot, store: SQLiteStore) -> None:
    one = bot.chat(None, "first")
    two = bot.chat(None, "second")
    assert one.thread_id and two.thread_id and one.thread_id != two.thread_id
    assert {t.id for t in bot.threads()} == {one.thread_id, two.thread_id}
    assert [m.text for m in stored(store, one.thread_id)] == ["first", "echo: first"]


def test_second_turn_appends_to_the_thread(bot: Chatbot) -> None:
    bot.chat("t1", "one")
    answer = bot.chat("t1", "two")
    assert answer.seq == 4
    assert [m.message.text for m in bot.history("t1")] == ["one", "echo: one", "two", "echo: two"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_message_is_refused_and_nothing_stored(
    bot: Chatbot, store: SQLiteStore, text: str
) -> None:
    with pytest.raises(InvalidMessage, match="empty"):
        bot.chat("t1", text)
    assert store.find_thread("local", "t1") is None


def test_oversized_message_is_refused_and_nothing_stored(store: SQLiteStore) -> None:
    bot = Chatbot("test:echo", store=store, settings=Settings(max_message_chars=10))
    with pytest.raises(InvalidMessage, match="over the limit"):
        bot.chat("t1", "x" * 11)
    assert store.find_thread("local", "t1") is None
    assert bot.chat("t1", "x" * 10).text == "echo: " + "x" * 10


def test_oversized_message_refused_in_existing_thread(store: SQLiteStore) -> None:
    bot = Chatbot("test:echo", store=store, settings=Settings(max_message_chars=10))
    bot.chat("t1", "short")
    with pytest.raises(InvalidMessage):
        bot.chat("t1", "y" * 50)
    assert [m.text for m in stored(store, "t1")] == ["short", "echo: short"]


# -- traces ---------------------------------------------------------------------------------
STAGES = ["load", "rewrite", "route", "retrieve", "context", "generate", "persist"]


def test_answer_trace_has_every_stage(bot: Chatbot) -> None:
    trace = bot.chat("t1", "three little words").trace
    assert [s.name for s in trace.stages] == STAGES
    assert [s.name for s in trace.stages if s.skipped] == ["rewrite", "route", "retrieve"]
    assert all(s.ms >= 0 for s in trace.stages)
    assert trace.model == "test:echo"
    assert trace.output_tokens == 4  # "echo:", "three", "little", "words"
    assert trace.input_tokens >= 3
    assert trace.total_ms > 0
    assert trace.stage("generate").data == {
        "mode": "generate",
        "why": "no passages to quote",
        "finish": "stop",
        "steps": 1,
    }


def test_trace_is_stored_with_the_answer(bot: Chatbot, store: SQLiteStore) -> None:
    answer = bot.chat("t1", "hello")
    [(seq, trace)] = store.traces("local", "t1")
    assert seq == answer.seq
    assert trace.output_tokens == answer.trace.output_tokens
    assert trace.input_tokens == answer.trace.input_tokens
    assert [s.name for s in trace.stages][:6] == STAGES[:6]


def test_stored_trace_is_the_turn_up_to_its_own_commit(bot: Chatbot, store: SQLiteStore) -> None:
    answer = bot.chat("t1", "hello")
    [(_, trace)] = store.traces("local", "t1")
    assert [s.name for s in answer.trace.stages] == STAGES
    assert [s.name for s in trace.stages] == STAGES[:-1]  # a commit cannot time itself
    assert trace.stages == answer.trace.stages[:-1]
    assert answer.trace.total_ms >= answer.trace.stage("persist").ms


def test_traces_not_stored_when_disabled(store: SQLiteStore) -> None:
    bot = Chatbot("test:echo", store=store, settings=Settings(store_traces=False))
    bot.chat("t1", "hello")
    assert store.traces("local", "t1") == []


# -- streaming ------------------------------------------------------------------------------
async def test_stream_yields_deltas_then_one_turn_end(bot: Chatbot, store: SQLiteStore) -> None:
    events = [e async for e in bot.stream("t1", "a b c")]
    assert events[0] == TurnStart(thread_id="t1", user_seq=1)
    deltas, last = events[1:-1], events[-1]
    assert len(deltas) >= 2
    assert all(isinstance(e, TextDelta) for e in deltas)
    assert isinstance(last, TurnEnd)
    assert last.answer.text == "".join(d.text for d in deltas) == "echo: a b c"
    assert stored(store, "t1")[-1].text == "echo: a b c"


async def test_achat_returns_the_answer(bot: Chatbot) -> None:
    answer = await bot.achat("t1", "async")
    assert answer.text == "echo: async"


# -- what the model sees --------------------------------------------------------------------
def test_model_sees_system_prompt_then_history_then_new_message(store: SQLiteStore) -> None:
    bot = context_bot(store)
    first = bot.chat("t1", "question one")
    assert seen_by_model(first.text) == [Message.system(SYSTEM), Message.user("question one")]
    second = bot.chat("t1", "question two")
    assert seen_by_model(second.text) == [
        Message.system(SYSTEM),
        Message.user("question one"),
        Message.assistant(first.text),
        Message.user("question two"),
    ]


def test_no_system_message_when_prompt_is_empty(store: SQLiteStore) -> None:
    bot = Chatbot("test:context", store=store, system_prompt="")
    assert seen_by_model(bot.chat("t1", "hi").text) == [Message.user("hi")]


@pytest.mark.parametrize(
    ("history_messages", "expected_history"),
    [
        (0, []),
        (1, []),  # the window would start with a2: dropped
        (2, ["q2", "a2"]),
        (3, ["q2", "a2"]),  # the window would start with a1: dropped
        (4, ["q1", "a1", "q2", "a2"]),
        (20, ["q1", "a1", "q2", "a2"]),
    ],
)
def test_history_window_keeps_whole_turns(
    store: SQLiteStore, history_messages: int, expected_history: list[str]
) -> None:
    bot = context_bot(store, history_messages=history_messages)
    answers = {"a1": bot.chat("t1", "q1").text, "a2": bot.chat("t1", "q2").text}
    seen = seen_by_model(bot.chat("t1", "q3").text)
    expected = [Message.system(SYSTEM)]
    for label in expected_history:
        if label in answers:
            expected.append(Message.assistant(answers[label]))
        else:
            expected.append(Message.user(label))
    expected.append(Message.user("q3"))
    assert seen == expected
    assert seen[1].role != "assistant"


# -- failures -------------------------------------------------------------------------------
def test_model_unavailable_keeps_the_user_message(store: SQLiteStore) -> None:
    model = ScriptedModel([ModelUnavailable("server down")])
    bot = Chatbot(model, store=store)
    with pytest.raises(ModelUnavailable, match="server down"):
        bot.chat("t1", "are you there?")
    assert stored(store, "t1") == [Message.user("are you there?")]
    model.assert_complete()


def test_turn_after_a_failure_continues_the_thread(store: SQLiteStore) -> None:
    model = ScriptedModel([ModelUnavailable("down"), "back"])
    bot = Chatbot(model, store=store)
    with pytest.raises(ModelUnavailable):
        bot.chat("t1", "first")
    assert bot.chat("t1", "second").text == "back"
    first, missing, second, back = stored(store, "t1")
    assert [first.text, second.text, back.text] == ["first", "second", "back"]
    # the answer that never came is said, not silently absent
    assert missing.role == "assistant" and missing.text == ""
    assert missing.metadata == {"interrupted": True, "reason": NO_ANSWER}


def test_a_provider_without_a_key_fails_before_the_thread_is_created(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    bot = Chatbot("openai:gpt-4o-mini", store=store)
    with pytest.raises(ModelUnavailable, match="no API key"):
        bot.chat("t1", "hi")
    assert store.find_thread("local", "t1") is None


def test_a_turn_killed_before_its_answer_is_marked_at_the_next_turn(store: SQLiteStore) -> None:
    bot = context_bot(store)
    bot.chat("t1", "hello")
    store.append("local", "t1", [Message.user("lost question")])  # then kill -9: no answer
    answer = bot.chat("t1", "next question")
    roles = [m.role for m in seen_by_model(answer.text)]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    messages = stored(store, "t1")
    assert [m.text for m in messages[2:5]] == ["lost question", "", "next question"]
    assert messages[3].metadata["interrupted"] is True
    assert any("#3 got no answer" in note for note in answer.trace.notes)
    # said once: the next turns find the thread answered
    bot.chat("t1", "and again")
    assert [m.role for m in stored(store, "t1")][-4:] == ["user", "assistant"] * 2


def test_a_turn_killed_after_its_tool_results_is_marked_at_the_next_turn(
    store: SQLiteStore,
) -> None:
    call = ToolCallPart(id="c1", name="now", arguments="{}")
    store.append(
        "local",
        "t1",
        [
            Message.user("what time is it?"),
            Message.assistant(tool_calls=[call]),
            Message.tool(ToolResultPart(tool_call_id="c1", content="noon")),
        ],
        create=True,
    )
    context_bot(store).chat("t1", "hello?")
    marker = stored(store, "t1")[3]
    assert (marker.role, marker.text, marker.metadata["interrupted"]) == ("assistant", "", True)


def test_model_error_mid_stream_keeps_partial_answer(store: SQLiteStore) -> None:
    model = SlowModel(["Hello", " wor"], fail=ModelResponseError("connection reset"))
    bot = Chatbot(model, store=store)
    with pytest.raises(ModelResponseError, match="connection reset"):
        bot.chat("t1", "hi")
    user, partial = stored(store, "t1")
    assert user == Message.user("hi")
    assert partial.role == "assistant"
    assert partial.text == "Hello wor"
    assert partial.metadata["interrupted"] is True
    assert partial.metadata["reason"] == "connection reset"
    [(_, trace)] = store.traces("local", "t1")
    assert any("cut short" in note for note in trace.notes)


def test_unexpected_exception_mid_stream_keeps_partial_answer(store: SQLiteStore) -> None:
    bot = Chatbot(SlowModel(["part"], fail=RuntimeError("bug in model")), store=store)
    with pytest.raises(RuntimeError, match="bug in model"):
        bot.chat("t1", "hi")
    partial = stored(store, "t1")[-1]
    assert partial.text == "part"
    assert partial.metadata["interrupted"] is True


async def test_consumer_closing_stream_early_keeps_partial_answer(store: SQLiteStore) -> None:
    bot = Chatbot(SlowModel(["one ", "two ", "three"]), store=store)
    got = []
    async with aclosing(bot.stream("t1", "count")) as events:
        async for event in events:
            if isinstance(event, TurnStart):
                continue
            got.append(event.text)
            if len(got) == 2:
                break
    user, partial = stored(store, "t1")
    assert user == Message.user("count")
    assert partial.text == "one two "
    assert partial.metadata["interrupted"] is True


async def test_aclose_after_break_keeps_partial_answer(store: SQLiteStore) -> None:
    bot = Chatbot(SlowModel(["one ", "two ", "three"]), store=store)
    events = bot.stream("t1", "count")
    async for event in events:
        if isinstance(event, TextDelta):
            break
    await events.aclose()
    partial = stored(store, "t1")[-1]
    assert partial.text == "one "
    assert partial.metadata["interrupted"] is True
    # The thread is free again: the next turn runs.
    bot2 = Chatbot("test:echo", store=store)
    assert (await bot2.achat("t1", "next")).seq == 4


async def test_cancelled_turn_keeps_partial_answer(store: SQLiteStore) -> None:
    model = SlowModel(["first "], hang_after=1)
    bot = Chatbot(model, store=store)
    task = asyncio.create_task(bot.achat("t1", "go"))
    hanging = asyncio.create_task(model.hanging.wait())
    await asyncio.wait([task, hanging], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    hanging.cancel()
    assert model.hanging.is_set(), "the turn never reached the model"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    partial = stored(store, "t1")[-1]
    assert partial.text == "first "
    assert partial.metadata["interrupted"] is True


def test_hanging_model_times_out_and_nothing_is_lost(store: SQLiteStore) -> None:
    model = SlowModel(["partial ", "answer"], hang_after=1)
    bot = Chatbot(model, store=store, settings=Settings(model_timeout_s=0.2))
    with pytest.raises(ModelUnavailable, match="did not finish"):
        bot.chat("t1", "slow question")
    user, partial = stored(store, "t1")
    assert user == Message.user("slow question")
    assert partial.text == "partial "
    assert partial.metadata == {"interrupted": True, "reason": "timed out"}


def test_hanging_model_with_no_output_keeps_the_question(store: SQLiteStore) -> None:
    bot = Chatbot(
        SlowModel(["never"], hang_after=0), store=store, settings=Settings(model_timeout_s=0.2)
    )
    with pytest.raises(ModelUnavailable):
        bot.chat("t1", "hello?")
    assert stored(store, "t1") == [Message.user("hello?")]


# -- concurrency ----------------------------------------------------------------------------
async def test_turns_on_one_thread_are_serialised(store: SQLiteStore) -> None:
    bot = Chatbot(SlowModel(["slow ", "answer"], delay=0.05), store=store)
    await asyncio.gather(bot.achat("t1", "first"), bot.achat("t1", "second"))
    roles = [m.role for m in stored(store, "t1")]
    assert roles == ["user", "assistant", "user", "assistant"]


async def test_serialised_turns_see_each_other(store: SQLiteStore) -> None:
    bot = context_bot(store)
    slow = Chatbot(SlowModel(["slow"], delay=0.05), store=store, system_prompt=SYSTEM)
    _, second = await asyncio.gather(slow.achat("t1", "first"), bot.achat("t1", "second"))
    seen = seen_by_model(second.text)
    # Two bots on one store file share the lock directory, so the second turn waits.
    assert [m.text for m in seen] == [SYSTEM, "first", "slow", "second"]


async def test_a_turn_still_running_on_another_replica_is_not_marked(make_store) -> None:
    """Its user message has no answer yet, but its replica holds the thread's turn lock: a
    turn here waits for it and then finds the thread answered, not cut short."""
    there, here = make_store(), make_store()
    slow = Chatbot(SlowModel(["slow ", "answer"], delay=0.2), store=there)
    running = asyncio.ensure_future(slow.achat("t1", "first"))
    while here.find_thread("local", "t1") is None:
        await asyncio.sleep(0.01)
    assert [m.message.role for m in here.messages("local", "t1")] == ["user"]
    second = await context_bot(here).achat("t1", "second")
    await running
    seen = [m.text for m in seen_by_model(second.text)]
    assert seen == [SYSTEM, "first", "slow answer", "second"]
    assert [m.role for m in stored(here, "t1")] == ["user", "assistant"] * 2


async def test_turns_on_different_threads_both_complete(store: SQLiteStore) -> None:
    bot = Chatbot(SlowModel(["done"], delay=0.05), store=store)
    one, two = await asyncio.gather(bot.achat("t1", "a"), bot.achat("t2", "b"))
    assert one.text == two.text == "done"
    assert [m.text for m in stored(store, "t1")] == ["a", "done"]
    assert [m.text for m in stored(store, "t2")] == ["b", "done"]


# -- restart, event loops, owners -----------------------------------------------------------
def test_new_bot_on_same_file_continues_the_thread(data_dir: Path) -> None:
    path = data_dir / "chatwright.db"
    first_store = SQLiteStore(path)
    first = context_bot(first_store).chat("t1", "remember me")
    first_store.close()

    second_store = SQLiteStore(path)
    try:
        answer = context_bot(second_store).chat("t1", "do you?")
        assert seen_by_model(answer.text) == [
            Message.system(SYSTEM),
            Message.user("remember me"),
            Message.assistant(first.text),
            Message.user("do you?"),
        ]
        assert answer.seq == 4
    finally:
        second_store.close()


async def test_chat_works_inside_a_running_event_loop(bot: Chatbot, store: SQLiteStore) -> None:
    asyncio.get_running_loop()  # we are inside one
    assert bot.chat("t1", "sync call").text == "echo: sync call"
    assert len(stored(store, "t1")) == 2


def test_owner_isolation_through_chatbot(bot: Chatbot, store: SQLiteStore) -> None:
    bot.chat("t1", "alice's secret", owner="alice")
    with pytest.raises(ThreadNotFound):
        bot.thread("t1", owner="bob")
    with pytest.raises(ThreadNotFound):
        list(bot.history("t1", owner="bob"))
    with pytest.raises(ThreadNotFound):
        bot.delete_thread("t1", owner="bob")
    assert bot.threads(owner="bob") == []

    bot.chat("t1", "bob here", owner="bob")  # bob's own thread t1
    assert [m.text for m in stored(store, "t1", "alice")] == [
        "alice's secret",
        "echo: alice's secret",
    ]
    assert [m.text for m in stored(store, "t1", "bob")] == ["bob here", "echo: bob here"]


def test_owner_given_to_the_bot_is_the_default(store: SQLiteStore) -> None:
    alice = Chatbot("test:context", store=store, owner="alice", system_prompt="")
    bob = Chatbot("test:context", store=store, owner="bob", system_prompt="")
    alice.chat("t1", "mine")
    answer = bob.chat("t1", "also mine")
    assert seen_by_model(answer.text) == [Message.user("also mine")]
    assert [t.owner for t in alice.threads()] == ["alice"]
    assert store.find_thread("local", "t1") is None
