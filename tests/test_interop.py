"""Interop in Python: LangChain tools and OpenAI-style tool dicts in ``Chatbot(tools=...)``;
LangChain and LlamaIndex retrievers as collection sources (``bot.add_source``)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool, StructuredTool, ToolException, tool
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import BaseModel, Field

from chatwright import Chatbot, SQLiteStore
from chatwright.config import Settings
from chatwright.errors import ConfigError, UserError
from chatwright.retrieval import Chunk
from chatwright.tools import Tool, ToolContext, Toolset, from_langchain, from_openai


def turn(bot: Chatbot, text: str, **kwargs: Any) -> str:
    return bot.chat("t1", text, **kwargs).text


# -- LangChain tools ------------------------------------------------------------------------
@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
async def shout(text: str) -> str:
    """Say it louder."""
    await asyncio.sleep(0)
    return text.upper() + "!"


class CityArgs(BaseModel):
    city: str = Field(description="The city's name.")
    days: int = Field(default=1, ge=1, le=7)


def _forecast(city: str, days: int = 1) -> str:
    return f"{city}: sunny for {days} days"


forecast = StructuredTool.from_function(
    _forecast, name="forecast", description="The weather ahead.", args_schema=CityArgs
)


class Counter(BaseTool):
    """A BaseTool subclass (what LangChain's own integrations are)."""

    name: str = "count_words"
    description: str = "Count the words in a text."

    def _run(self, text: str) -> int:
        return len(text.split())


@tool
def broken(x: int) -> str:
    """Always fails."""
    raise ToolException(f"the backend is down (x={x})")


def test_langchain_tools_are_offered_with_their_schemas(store: SQLiteStore) -> None:
    bot = Chatbot("test:tools", store=store, tools=[add, shout, forecast, Counter()])
    tools = {t.name: t for t in bot.tools()}
    assert set(tools) == {"add", "shout", "forecast", "count_words"}
    assert tools["add"].description == "Add two integers."
    assert tools["add"].parameters["required"] == ["a", "b"]
    assert tools["add"].parameters["properties"]["a"]["type"] == "integer"
    city = tools["forecast"].parameters["properties"]["city"]
    assert city["description"] == "The city's name."
    assert tools["forecast"].source == "langchain"
    assert tools["count_words"].parameters["properties"]["text"]["type"] == "string"


def test_sync_async_structured_and_subclassed_langchain_tools_run(store: SQLiteStore) -> None:
    bot = Chatbot("test:tools", store=store, tools=[add, shout, forecast, Counter()])
    assert turn(bot, 'call add {"a": 2, "b": 40}') == "tool said: add: 42"
    assert turn(bot, 'call shout {"text": "hi"}') == "tool said: shout: HI!"
    assert turn(bot, 'call forecast {"city": "Oslo", "days": 3}') == (
        "tool said: forecast: Oslo: sunny for 3 days"
    )
    assert turn(bot, 'call count_words {"text": "one two three"}') == ("tool said: count_words: 3")


def test_bad_arguments_go_back_to_the_model_and_the_turn_still_answers(
    store: SQLiteStore,
) -> None:
    bot = Chatbot("test:tools", store=store, tools=[add, forecast, broken])
    said = turn(bot, 'call add {"a": "two", "b": 1}')
    assert "Invalid call to add: a: Input should be a valid integer" in said
    said = turn(bot, 'call forecast {"city": "Oslo", "days": 30}')
    assert "Invalid call to forecast: days: Input should be less than or equal to 7" in said
    said = turn(bot, 'call broken {"x": 1}')
    assert "broken failed: ToolException: the backend is down (x=1)" in said
    assert len(list(bot.history("t1"))) >= 9  # every turn stored: calls, results, answers


def test_a_langchain_tool_with_side_effects_waits_for_approval(store: SQLiteStore) -> None:
    sent: list[str] = []

    @tool
    def send_mail(to: str) -> str:
        """Send a mail."""
        sent.append(to)
        return "sent"

    asked: list[str] = []

    def refuse(request: Any, t: Tool) -> bool:
        asked.append(t.name)
        return False

    marked = from_langchain(send_mail, side_effects=True)
    bot = Chatbot("test:tools", store=store, tools=[marked])
    turn(bot, 'call send_mail {"to": "a@example.org"}', approver=refuse)
    assert asked == ["send_mail"] and sent == []
    send_mail.metadata = {"side_effects": True}  # LangChain's own metadata says it too
    assert from_langchain(send_mail).side_effects is True
    assert from_langchain(add).side_effects is False


def test_a_langchain_tool_name_no_provider_accepts_is_refused_with_the_fix() -> None:
    spaced = StructuredTool.from_function(_forecast, name="weather report", description="x")
    with pytest.raises(ConfigError) as raised:
        Toolset([spaced])
    assert "name=" in str(raised.value.hint)
    assert from_langchain(spaced, name="weather_report").name == "weather_report"


# -- OpenAI-style dicts ---------------------------------------------------------------------
WEATHER = {
    "name": "weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def weather(city: str, unit: str = "C") -> dict[str, Any]:
    return {"city": city, "temp": 21 if unit == "C" else 70, "unit": unit}


async def aweather(city: str, unit: str = "C") -> str:
    await asyncio.sleep(0)
    return f"{city} is mild"


def test_openai_tool_dicts_in_every_shape_run(store: SQLiteStore) -> None:
    chat_completions = {"type": "function", "function": WEATHER, "callable": weather}
    responses = {"type": "function", **WEATHER, "name": "aweather", "callable": aweather}
    legacy = {**WEATHER, "name": "legacy_weather", "callable": weather}
    bot = Chatbot("test:tools", store=store, tools=[chat_completions, responses, legacy])
    tools = {t.name: t for t in bot.tools()}
    assert tools["weather"].parameters == WEATHER["parameters"]
    assert tools["weather"].description == "The weather in a city."
    said = turn(bot, 'call weather {"city": "Rome", "unit": "F"}')
    assert json.loads(said.removeprefix("tool said: weather: ")) == {
        "city": "Rome",
        "temp": 70,
        "unit": "F",
    }
    assert turn(bot, 'call aweather {"city": "Rome"}') == "tool said: aweather: Rome is mild"
    assert '"temp":21' in turn(bot, 'call legacy_weather {"city": "Oslo"}')


def test_openai_tool_arguments_are_checked_against_the_schema(store: SQLiteStore) -> None:
    calls: list[Any] = []
    spec = {"type": "function", "function": WEATHER, "callable": lambda **kw: calls.append(kw)}
    bot = Chatbot("test:tools", store=store, tools=[spec])
    said = turn(bot, 'call weather {"unit": "K"}')
    assert "Invalid call to weather" in said
    assert "'city' is a required property" in said
    assert "unit: 'K' is not one of ['C', 'F']" in said
    assert calls == []  # never called with arguments its schema refuses


def test_a_dict_tool_can_be_marked_as_having_side_effects(store: SQLiteStore) -> None:
    spec = {"type": "function", "function": WEATHER, "callable": weather, "side_effects": True}
    assert from_openai(spec).side_effects is True
    assert from_openai({"function": WEATHER}, weather).side_effects is False


@pytest.mark.parametrize(
    ("spec", "message", "hint"),
    [
        ({"type": "function", "function": WEATHER}, "has no 'callable'", '"callable"'),
        ({"type": "web_search", "callable": weather}, "only function tools", "function"),
        ({"function": {"description": "x"}, "callable": weather}, "has no 'name'", "name"),
        ({"function": WEATHER, "callable": "weather"}, "not callable", "callable"),
        ({"function": WEATHER, "callable": weather, "handler": 1}, "unknown keys: handler", ""),
        ({"function": "weather", "callable": weather}, "must be a dict", ""),
        ({"name": "bad name!", "callable": weather}, "invalid tool name", "1-64"),
        (
            {"name": "w", "parameters": {"type": "array"}, "callable": weather},
            "must describe an object",
            "",
        ),
        (
            {"name": "w", "parameters": ["city"], "callable": weather},
            "must be a JSON schema",
            "",
        ),
        (
            {
                "name": "w",
                "parameters": {"type": "object", "properties": {"a": {"type": "strnig"}}},
                "callable": weather,
            },
            "not a valid JSON schema at properties/a/type",
            "json-schema.org",
        ),
    ],
)
def test_malformed_tool_dicts_say_what_is_wrong(
    spec: dict[str, Any], message: str, hint: str, store: SQLiteStore
) -> None:
    with pytest.raises(ConfigError) as raised:
        Chatbot("test:tools", store=store, tools=[spec])
    assert message in raised.value.message
    assert hint in (raised.value.hint or "")


def test_mixed_tools_keep_unique_names_and_plain_values_are_refused(store: SQLiteStore) -> None:
    def add_numbers(a: int, b: int) -> int:  # a plain function, as before
        return a + b

    dict_add = {"name": "add", "callable": add_numbers}
    with pytest.raises(ConfigError) as raised:
        Toolset([add, dict_add])
    assert "two tools are named 'add'" in raised.value.message
    with pytest.raises(ConfigError) as raised:
        Toolset([42])
    assert "LangChain tool" in str(raised.value.hint)
    both = Toolset([add, add_numbers])
    assert both.names == ["add", "add_numbers"]


async def test_a_langchain_tool_called_directly_gets_validated_arguments() -> None:
    made = from_langchain(add)
    out = await made.call('{"a": 1, "b": 2}', ToolContext("u", "t"))
    assert (out.content, out.is_error) == ("3", False)
    out = await made.call('{"a": 1}', ToolContext("u", "t"))
    assert out.is_error and "b: Field required" in out.content


# -- retrievers as collection sources -------------------------------------------------------
POLICY = [
    Document(
        "Employees get 25 days of paid leave per year.",
        metadata={"source": "https://intranet.example/hr/leave", "title": "Leave policy"},
        id="leave",
    ),
    Document(
        "Sick leave needs a note from a doctor after three days.",
        metadata={"source": "hr/sick.pdf", "title": "Sick leave", "page": 2},
        id="sick",
    ),
]


class KeywordRetriever(BaseRetriever):
    """A tiny LangChain retriever: documents sharing a word with the query, most first."""

    docs: list[Document]
    calls: list[str] = []

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        self.calls.append(query)
        words = set(query.lower().split())
        scored = [(len(words & set(d.page_content.lower().split())), d) for d in self.docs]
        return [d for n, d in sorted(scored, key=lambda x: -x[0]) if n]


def source_bot(store: SQLiteStore, **kwargs: Any) -> Chatbot:
    bot = Chatbot("test:echo", store=store, settings=Settings(embedder="test:hash"), **kwargs)
    info = store.create_collection("local", "manuals", "Router and printer manuals")
    texts = [
        "To reset the Skylink router hold the reset button for ten seconds.",
        "The printer needs new ink when the light blinks orange.",
    ]
    bot.index.add(info.namespace, [Chunk(f"manuals{i}", t) for i, t in enumerate(texts)])
    return bot


def test_a_langchain_retriever_is_routed_by_its_description_and_cited(
    store: SQLiteStore,
) -> None:
    bot = source_bot(store)
    retriever = KeywordRetriever(docs=POLICY, calls=[])
    bot.add_source("policy", retriever, description="Employee leave, holiday and sick policy")
    answer = bot.chat("t", "How many days of paid leave do employees get?")
    assert answer.trace.stage("route").data["collections"] == ["policy"]
    assert retriever.calls == ["How many days of paid leave do employees get?"]
    retrieve = answer.trace.stage("retrieve").data
    assert retrieve["sources"] == {"policy": "2 passages"}
    assert retrieve["passages"][0]["from"] == "Leave policy"
    first = answer.citations[0]
    assert first.source == "https://intranet.example/hr/leave"
    assert first.title == "Leave policy"
    assert first.chunk_id == "source:policy:leave"
    assert {c.page for c in answer.citations} >= {2}  # the document's own page
    # a question for the stored collection still goes there, not to the source
    answer = bot.chat("t", "How do I reset the Skylink router button?")
    assert answer.trace.stage("route").data["collections"] == ["manuals"]


def test_langchain_in_memory_retriever_and_a_collection_are_fused_and_numbered_once(
    store: SQLiteStore,
) -> None:
    vectors = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    vectors.add_documents(POLICY)
    bot = source_bot(store)
    bot.add_source("policy", vectors.as_retriever(search_kwargs={"k": 2}), description="HR")
    answer = bot.chat("t", "@manuals @policy reset the router, and paid leave?")
    route = answer.trace.stage("route").data
    assert route["strategy"] == "mention" and set(route["collections"]) == {"manuals", "policy"}
    cited = answer.citations
    assert [c.index for c in cited] == list(range(1, len(cited) + 1))
    kinds = {c.chunk_id.split(":")[0] if c.chunk_id else "" for c in cited}
    assert "source" in kinds and any(c.chunk_id.startswith("manuals") for c in cited)


class FakeLlamaIndexRetriever:
    """Shaped like a LlamaIndex retriever (``.retrieve`` -> NodeWithScore), not installed."""

    def retrieve(self, query: str) -> list[Any]:
        node = SimpleNamespace(
            node_id="n-7",
            metadata={"file_name": "garden.md", "title": "Basil"},
            get_content=lambda: "Basil wants sun and water every morning.",
        )
        return [SimpleNamespace(node=node, score=0.83)]


def test_a_llamaindex_retriever_is_a_source_too(store: SQLiteStore) -> None:
    bot = source_bot(store)
    source = bot.add_source("garden", FakeLlamaIndexRetriever(), description="Gardening notes")
    assert source.kind == "llamaindex"
    answer = bot.chat("t", "@garden how often does basil need water?")
    (cited,) = answer.citations
    assert (cited.source, cited.title, cited.chunk_id) == (
        "garden.md",
        "Basil",
        "source:garden:n-7",
    )
    assert cited.text == "Basil wants sun and water every morning."


def test_plain_functions_sync_and_async_are_sources(store: SQLiteStore) -> None:
    def notes(query: str) -> list[Any]:
        return ["Plain note about the office wifi password.", {"text": "Wifi is on floor 2."}]

    async def faq(query: str) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        return [{"page_content": "The wifi name is Guest.", "source": "faq.html", "score": 3.0}]

    bot = source_bot(store)
    assert bot.add_source("notes", notes).kind == "callable"
    bot.add_source("faq", faq)
    answer = bot.chat("t", "@notes @faq what is the wifi?")
    sources = {c.source for c in answer.citations}
    assert {"notes", "faq.html"} <= sources  # no source of its own: the source's name
    assert answer.trace.stage("retrieve").data["sources"] == {
        "notes": "2 passages",
        "faq": "1 passage",
    }


def test_a_failing_or_slow_source_is_in_the_trace_and_the_turn_still_answers(
    store: SQLiteStore,
) -> None:
    def down(query: str) -> list[str]:
        raise ConnectionError("vector database unreachable")

    async def slow(query: str) -> list[str]:
        await asyncio.sleep(5)
        return ["too late"]

    def odd(query: str) -> Any:
        return 42

    bot = source_bot(store)
    bot.add_source("down", down)
    bot.add_source("slow", slow, timeout_s=0.2)
    bot.add_source("odd", odd)
    bot.add_source("policy", KeywordRetriever(docs=POLICY, calls=[]))
    answer = bot.chat("t", "@down @slow @odd @policy how much paid leave?")
    assert answer.text.startswith("echo:")
    outcome = answer.trace.stage("retrieve").data["sources"]
    assert outcome["down"] == "failed: ConnectionError: vector database unreachable"
    assert outcome["slow"] == "failed: timed out after 0.2 s"
    assert outcome["odd"].startswith("failed: ValueError: it returned int")
    assert outcome["policy"] == "1 passage"
    assert any("source 'down' failed" in n for n in answer.trace.notes)
    assert {c.source for c in answer.citations} <= {p.metadata["source"] for p in POLICY}
    assert [m.message.role for m in bot.history("t")] == ["user", "assistant"]


def test_a_source_is_searched_only_for_its_owner(store: SQLiteStore) -> None:
    bot = Chatbot("test:echo", store=store, settings=Settings(embedder="test:hash"))
    bot.add_source("alice_notes", lambda q: ["Alice's secret plan."], owner="alice")
    mine = bot.chat("t", "@alice_notes what is the plan?", owner="alice")
    assert [c.text for c in mine.citations] == ["Alice's secret plan."]
    theirs = bot.chat("t", "@alice_notes what is the plan?", owner="bob")
    assert theirs.citations == []
    assert theirs.trace.stage("retrieve").skipped


def test_a_stored_collection_wins_over_a_source_of_its_name(store: SQLiteStore) -> None:
    bot = source_bot(store)
    called: list[str] = []
    bot.add_source("manuals", lambda q: called.append(q) or ["from the source"])
    answer = bot.chat("t", "@manuals how do I reset the router?")
    assert called == [] and all(c.chunk_id.startswith("manuals") for c in answer.citations)


@pytest.mark.parametrize(
    ("name", "retriever", "message"),
    [
        ("bad name!", lambda q: [], "invalid source name"),
        ("ok", 42, "int is not a retriever"),
        ("ok", object(), "object is not a retriever"),
    ],
)
def test_bad_sources_are_refused_when_added(
    name: str, retriever: Any, message: str, store: SQLiteStore
) -> None:
    bot = Chatbot("test:echo", store=store)
    with pytest.raises(ConfigError) as raised:
        bot.add_source(name, retriever)
    assert message in raised.value.message
    assert bot.sources == {}


# -- chatwright inside LangChain ------------------------------------------------------------
def test_chatwright_as_a_langchain_chat_model_keeps_the_thread(store: SQLiteStore) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from chatwright.integrations.langchain import ChatwrightChatModel

    bot = Chatbot("test:echo", store=store)
    chat = ChatwrightChatModel(bot=bot, thread_id="lc")
    reply = chat.invoke([SystemMessage("be brief"), HumanMessage("hello there")])
    assert isinstance(reply, AIMessage) and reply.content == "echo: hello there"
    assert reply.response_metadata["thread_id"] == "lc"
    reply = chat.invoke("and again")  # a plain string is a human message to LangChain
    assert reply.content == "echo: and again"
    assert [m.message.text for m in bot.history("lc")] == [
        "hello there",
        "echo: hello there",
        "and again",
        "echo: and again",
    ]
    with pytest.raises(UserError):  # nothing to answer
        chat.invoke([SystemMessage("only a system message")])


async def test_chatwright_chat_model_streams_pieces(store: SQLiteStore) -> None:
    from chatwright.integrations.langchain import ChatwrightChatModel

    chat = ChatwrightChatModel(bot=Chatbot("test:echo", store=store), thread_id="s")
    pieces = [chunk.content async for chunk in chat.astream("one two three")]
    assert len([p for p in pieces if p]) > 1
    assert "".join(str(p) for p in pieces) == "echo: one two three"


def test_a_collection_as_a_langchain_retriever(store: SQLiteStore) -> None:
    from chatwright.integrations.langchain import ChatwrightRetriever

    bot = source_bot(store)
    retriever = ChatwrightRetriever(bot=bot, collections=["manuals"], k=1)
    (doc,) = retriever.invoke("reset the Skylink router")
    assert doc.page_content.startswith("To reset the Skylink router")
    assert doc.metadata["collection"] == "manuals" and doc.id == "manuals0"
    with pytest.raises(UserError):  # a collection that is not there is named
        ChatwrightRetriever(bot=bot, collections=["nope"]).invoke("x")


def test_odd_results_are_made_citable(store: SQLiteStore) -> None:
    long_text = "word " * 5000  # a whole document as one result

    def odd(query: str) -> list[dict[str, Any]]:
        meta = {"title": 1999, "page": "ii", "published": object()}
        return [{"text": long_text, "metadata": meta, "id": 7}]

    bot = Chatbot("test:echo", store=store, settings=Settings(embedder="test:hash"))
    bot.add_source("archive", odd)
    (cited,) = bot.chat("t", "@archive what happened in 1999?").citations
    assert cited.title == "1999" and cited.page is None and cited.source == "archive"
    assert cited.chunk_id == "source:archive:7"
    assert len(cited.text) <= 4002 and cited.text.endswith("…")


def test_the_search_knowledge_tool_searches_sources_too(store: SQLiteStore) -> None:
    from chatwright.config import ToolsSettings

    settings = Settings(embedder="test:hash", tools=ToolsSettings(builtin=["search_knowledge"]))
    bot = Chatbot("test:tools", store=store, settings=settings)
    assert bot.tools() == []  # nothing to search yet
    bot.add_source("policy", KeywordRetriever(docs=POLICY, calls=[]), description="HR")
    bot.add_source("down", lambda q: 1 / 0)
    assert [t.name for t in bot.tools()] == ["search_knowledge"]  # a source is enough
    answer = bot.chat(
        "t", 'call search_knowledge {"query": "paid leave", "collections": ["policy", "down"]}'
    )
    assert "[1] Leave policy" in answer.text
    assert "source 'down' failed (ZeroDivisionError: division by zero)" in answer.text
    assert answer.citations[0].source == "https://intranet.example/hr/leave"
