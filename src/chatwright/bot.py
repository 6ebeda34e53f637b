"""Chatbot: wires the stages of a turn together. Every way in (CLI, HTTP, Python) calls this.

A turn flows one way::

    load → context → rewrite → route → retrieve → generate → persist

The user's message is stored before the model is called; the answer and the turn's trace are
stored together in one transaction. Stages that cannot help (rewrite, route, retrieve with no
collections) are skipped and cost nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from chatwright import trust
from chatwright.agent import (
    TOOL_DATA_RULE,
    AgentRun,
    Approver,
    Generation,
    Limits,
    run_agent,
    unanswered,
    waiting_calls,
)
from chatwright.config import Settings, load_settings
from chatwright.errors import (
    ChatwrightError,
    InvalidMessage,
    ModelError,
    ModelUnavailable,
    ThreadNotFound,
    UserError,
)
from chatwright.memory import STRATEGIES, Context, Memory, counter_for
from chatwright.memory.manager import Loaded
from chatwright.models import (
    Model,
    ModelRequest,
    ModelSettings,
    ToolSpec,
    get_model,
    is_remote,
)
from chatwright.models.embeddings import get_embedder
from chatwright.retrieval import SearchIndex
from chatwright.retrieval.external import ExternalSource, as_source, retrieve_with_sources
from chatwright.retrieval.extract import (
    Extraction,
    asks_about_user,
    extract,
    from_user,
    resolve_answer_mode,
)
from chatwright.retrieval.rag import Retrieved, retrieve, rewrite_query
from chatwright.retrieval.recall import ThreadRecall
from chatwright.routing import (
    SEMANTIC_OPTIONS,
    AllRouter,
    ChitChatRouter,
    LlmRouter,
    Route,
    Router,
    RulesRouter,
    SemanticRouter,
    achain,
    build_profiles,
    embed_exemplars,
    merge_clauses,
    route_clauses,
    searched,
    with_evidence,
)
from chatwright.routing.profiles import source_profiles
from chatwright.store import Store, StoredMessage, ThreadInfo, open_store
from chatwright.store.base import BranchInfo, CollectionInfo, MemoryItem
from chatwright.store.sqlite import check_thread_id
from chatwright.tools import ApprovalPolicy, Tool, ToolContext, Toolset, tool
from chatwright.tools.builtin import builtin_tools
from chatwright.types import (
    Answer,
    ApprovalRequest,
    CitationEvent,
    CitationPart,
    Message,
    StageTrace,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    ToolResultPart,
    Trace,
    TurnEnd,
    TurnStart,
)

__all__ = ["ANSWER_MODES", "Chatbot", "Event"]

_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")
_SPACED_MENTION = re.compile(r"[ \t]*" + _MENTION.pattern)
_TURN_MESSAGES = 200  # how far back a regenerated answer's user message is looked for
# Why a turn's answer is missing when the next turn finds its user message unanswered.
NO_ANSWER = "no answer was stored (the turn failed, or its process stopped, before one came)"

Event: TypeAlias = (
    TurnStart
    | TextDelta
    | ToolCallEvent
    | ToolResultEvent
    | ApprovalRequest
    | CitationEvent
    | TurnEnd
)
T = TypeVar("T")
ANSWER_MODES = ("auto", "generate", "extract")


class Chatbot:
    """A stateful chatbot: threads that persist, one pipeline per turn.

    >>> bot = Chatbot("test:echo", store=SQLiteStore(":memory:"))
    >>> bot.chat("t1", "hello").text
    'echo: hello'
    """

    def __init__(
        self,
        model: Model | str | None = None,
        *,
        store: Store | None = None,
        settings: Settings | None = None,
        system_prompt: str | None = None,
        owner: str | None = None,
        tools: Iterable[Tool | Callable[..., Any] | Any] = (),  # + LangChain tools, dicts
    ) -> None:
        self.settings = settings or Settings()
        name = model if isinstance(model, str) else self.settings.model
        self.model: Model = (
            model if not isinstance(model, (str, type(None))) else get_model(name, self.settings)
        )
        self.store: Store = store or open_store(self.settings)
        self.owner = owner or self.settings.user
        self.system_prompt = self.settings.system_prompt if system_prompt is None else system_prompt
        self.notes: list[str] = []  # set-up notes, carried in every turn's trace
        self.toolset = Toolset(tools)
        self.sources: dict[str, ExternalSource] = {}  # add_source: other libraries' retrievers
        self._mcp: list[Any] | None = None  # MCP servers, connected at the first turn
        self._router_chain: list[Router] | None = None
        self.index = self._search_index()
        summarizer_name = self.settings.memory.summarizer_model
        self.memory = Memory(
            self.store,
            self.settings.memory,
            self.model,
            counter_for(self.model),
            history_messages=self.settings.history_messages,
            answer_tokens=self.settings.max_answer_tokens,
            summarizer=get_model(summarizer_name, self.settings) if summarizer_name else None,
            recall=ThreadRecall(self.index, self.store) if self.index is not None else None,
        )

    def _search_index(self) -> SearchIndex:
        """The store's search index with the configured embedder: built once per store and
        embedder, and shared by every bot on that store."""
        embedder = None
        if self.settings.embedder:
            name = self.settings.embedder
            try:
                embedder = self.store.shared(
                    ("embedder", name), lambda: get_embedder(name, self.settings)
                )
            except ChatwrightError as e:
                self.notes.append(f"embedder unavailable, keyword search only: {e.message}")
        return SearchIndex.for_store(self.store, embedder)

    @classmethod
    def from_config(
        cls,
        config_file: str | Path | None = None,
        *,
        store: Store | None = None,
        **overrides: Any,
    ) -> Chatbot:
        """Build from chatwright.toml + CHATWRIGHT_* env vars, with ``overrides`` on top."""
        settings = load_settings(config_file, **overrides)
        return cls(store=store, settings=settings)

    # -- turns ----------------------------------------------------------------------------
    def check_message(self, text: str) -> str:
        """Refuse an empty or oversized message before anything is stored."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidMessage("the message is empty", hint="type something to send")
        limit = self.settings.max_message_chars
        if len(text) > limit:
            raise InvalidMessage(
                f"the message has {len(text):,} characters, over the limit of {limit:,}",
                hint="shorten it, or raise max_message_chars in chatwright.toml",
            )
        return text

    async def stream(
        self,
        thread_id: str | None,
        text: str,
        *,
        owner: str | None = None,
        approver: Approver | None = None,
        answer_mode: str | None = None,
        client_tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[Event]:
        """Run one turn: a TurnStart once the message is stored, then text deltas and tool
        events as they come, then a TurnEnd.

        ``thread_id`` is the caller's key: an id not seen before starts that thread; None
        starts a new thread with a generated id. ``approver(request, tool)`` decides calls
        that need approval (see :class:`chatwright.tools.ApprovalPolicy`): it returns a bool
        or an awaitable of one; without an approver such calls are refused.
        ``answer_mode``: auto, generate or extract for this turn (default:
        ``[knowledge] answer_mode``). ``client_tools``: tools the caller runs, offered beside
        the bot's: a call of one ends the turn, its answer holding the calls (metadata
        ``client_calls``: their ids) until :meth:`resume_stream` brings their results.
        """
        owner = owner or self.owner
        self.check_message(text)
        self.check_client_tools(client_tools, owner)
        check = getattr(self.model, "check", None)  # e.g. no API key: fail before any write
        if check is not None:
            check()
        mode = answer_mode
        if mode is not None and mode not in ANSWER_MODES:
            raise UserError(f"unknown answer mode {mode!r}", hint=f"use {', '.join(ANSWER_MODES)}")
        thread_id = check_thread_id(thread_id) if thread_id else uuid.uuid4().hex[:12]
        # aclosing: if our consumer stops early, the turn is closed now (keeping the partial
        # answer), not whenever the garbage collector gets to it.
        async with (
            self.store.locks.hold(owner, thread_id),
            aclosing(
                _Turn(self, owner, thread_id, approver, mode, client_tools=client_tools).run(text)
            ) as events,
        ):
            async for event in events:
                yield event

    async def achat(
        self,
        thread_id: str | None,
        text: str,
        *,
        owner: str | None = None,
        approver: Approver | None = None,
        answer_mode: str | None = None,
    ) -> Answer:
        """Run one turn and return the stored answer."""
        answer = None
        events = self.stream(
            thread_id, text, owner=owner, approver=approver, answer_mode=answer_mode
        )
        async for event in events:
            if isinstance(event, TurnEnd):
                answer = event.answer
        assert answer is not None  # a turn's stream always ends with TurnEnd
        return answer

    def chat(
        self,
        thread_id: str | None,
        text: str,
        *,
        owner: str | None = None,
        approver: Approver | None = None,
        answer_mode: str | None = None,
    ) -> Answer:
        """Run one turn (blocking) and return the answer; ``str(answer)`` is its text."""
        return _run_sync(
            self.achat(thread_id, text, owner=owner, approver=approver, answer_mode=answer_mode)
        )

    async def resume_stream(
        self,
        thread_id: str,
        results: Sequence[ToolResultPart],
        *,
        owner: str | None = None,
        approver: Approver | None = None,
        answer_mode: str | None = None,
        client_tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[Event]:
        """Go on with the turn that ended with calls of the client's tools (see
        :meth:`stream`), now that the client sent their ``results``: they are stored as a
        tool message of the thread (untrusted tool output, as any), and the model sees them
        and answers or calls more tools, with no new user message. A result for a call the
        thread does not wait for, or a waiting call left without one, is a UserError before
        anything is stored. The model answers (``answer_mode`` is not used). Events as
        :meth:`stream` (TurnStart's ``user_seq`` is the message the turn answers)."""
        owner = owner or self.owner
        check = getattr(self.model, "check", None)
        if check is not None:
            check()
        thread_id = check_thread_id(thread_id)
        self.check_client_tools(client_tools, owner)
        async with self.store.locks.hold(owner, thread_id):
            user, steps = self._waiting_turn(owner, thread_id)
            tool = _client_results(thread_id, steps, results)
            await self.store.append_async(
                owner, thread_id, [tool], tokens=[self.memory.count(tool)]
            )
            turn = _Turn(
                self,
                owner,
                thread_id,
                approver,
                "generate",
                client_tools=client_tools,
                steps=[*steps, tool],
            )
            async with aclosing(turn.run(user.message.text, resend=user)) as events:
                async for event in events:
                    yield event

    def _waiting_turn(self, owner: str, thread_id: str) -> tuple[StoredMessage, list[Message]]:
        """The user message of the turn waiting for client tool results, and what followed."""
        recent = self.store.recent(owner, thread_id, _TURN_MESSAGES)
        messages = [m.message for m in recent]
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        if not waiting_calls(messages) or not users:
            raise UserError(
                f"thread {thread_id!r} is not waiting for tool results",
                hint="send tool messages only to answer the tool_calls of the thread's last"
                " answer; send a user message to start a new turn",
            )
        return recent[users[-1]], messages[users[-1] + 1 :]

    def check_client_tools(self, specs: Sequence[ToolSpec], owner: str | None = None) -> None:
        """A UserError naming a client tool called like one of the bot's own tools."""
        if not specs:
            return
        ours = {t.name for t in self.tools(owner)}
        clash = next((s.name for s in specs if s.name in ours), None)
        if clash is not None:
            raise UserError(
                f"the client tool {clash!r} has the name of one of the bot's own tools",
                hint=f"rename your tool; the bot's tools are: {', '.join(sorted(ours))}",
            )

    # -- branches: regenerate, edit and resend, switch -------------------------------------
    async def regenerate_stream(
        self,
        thread_id: str,
        seq: int,
        *,
        owner: str | None = None,
        approver: Approver | None = None,
        answer_mode: str | None = None,
    ) -> AsyncIterator[Event]:
        """Answer again: a new branch forks before answer ``seq`` (on the active branch) and
        the turn runs again for the same user message. The old answer stays on its branch.
        Events as :meth:`stream` (TurnStart's ``user_seq`` is the message answered again)."""
        async for event in self._forked(thread_id, seq, None, owner, approver, answer_mode):
            yield event

    async def edit_stream(
        self,
        thread_id: str,
        seq: int,
        text: str,
        *,
        owner: str | None = None,
        approver: Approver | None = None,
        answer_mode: str | None = None,
    ) -> AsyncIterator[Event]:
        """Resend user message ``seq`` as ``text``: a new branch forks before it, and the
        turn runs there. The old message and what followed it stay on their branch."""
        self.check_message(text)
        async for event in self._forked(thread_id, seq, text, owner, approver, answer_mode):
            yield event

    def regenerate(self, thread_id: str, seq: int, *, owner: str | None = None) -> Answer:
        """:meth:`regenerate_stream`, blocking; the new answer."""
        return _run_sync(_last_answer(self.regenerate_stream(thread_id, seq, owner=owner)))

    def edit(self, thread_id: str, seq: int, text: str, *, owner: str | None = None) -> Answer:
        """:meth:`edit_stream`, blocking; the answer to the edited message."""
        return _run_sync(_last_answer(self.edit_stream(thread_id, seq, text, owner=owner)))

    def branches(self, thread_id: str, *, owner: str | None = None) -> list[BranchInfo]:
        return self.store.branches(owner or self.owner, thread_id)

    async def aswitch_branch(
        self, thread_id: str, branch: int, *, owner: str | None = None
    ) -> ThreadInfo:
        """Make ``branch`` the active one, once no turn runs on the thread (its answer must
        land on the branch it started on)."""
        owner = owner or self.owner
        async with self.store.locks.hold(owner, thread_id):
            # a write (fsync, the store's lock): off the event loop, as appends are
            return await asyncio.to_thread(self.store.switch_branch, owner, thread_id, branch)

    def switch_branch(self, thread_id: str, branch: int, *, owner: str | None = None) -> ThreadInfo:
        return _run_sync(self.aswitch_branch(thread_id, branch, owner=owner))

    async def _forked(
        self,
        thread_id: str,
        seq: int,
        text: str | None,
        owner: str | None,
        approver: Approver | None,
        answer_mode: str | None,
    ) -> AsyncIterator[Event]:
        """A turn on a new branch: forked before user message ``seq`` with ``text``, or
        (``text`` None) before answer ``seq``, answering its user message again."""
        owner = owner or self.owner
        check = getattr(self.model, "check", None)
        if check is not None:
            check()
        if answer_mode is not None and answer_mode not in ANSWER_MODES:
            raise UserError(
                f"unknown answer mode {answer_mode!r}", hint=f"use {', '.join(ANSWER_MODES)}"
            )
        thread_id = check_thread_id(thread_id)
        async with self.store.locks.hold(owner, thread_id):
            after, resend = self._fork_point(owner, thread_id, seq, edit=text is not None)
            previous = self.store.get_thread(owner, thread_id).branch
            await asyncio.to_thread(self.store.fork, owner, thread_id, after)
            turn = _Turn(self, owner, thread_id, approver, answer_mode)
            said = text if resend is None else resend.message.text
            try:
                async with aclosing(turn.run(said, resend=resend)) as events:
                    async for event in events:
                        yield event
            except BaseException:
                # Nothing was stored on the new branch (the model failed before a word): the
                # thread goes back to the branch it was on; the empty branch shows nowhere.
                last = self.store.recent(owner, thread_id, 1)
                if resend is not None and last and last[-1].seq == resend.seq:
                    await asyncio.to_thread(self.store.switch_branch, owner, thread_id, previous)
                raise

    def _fork_point(
        self, owner: str, thread_id: str, seq: int, *, edit: bool
    ) -> tuple[int, StoredMessage | None]:
        """(the seq to fork after, the user message to answer again if regenerating)."""
        found = self.store.recent(owner, thread_id, 1, before_seq=seq + 1)
        if not found or found[-1].seq != seq:
            raise UserError(
                f"message {seq} is not on the thread's active branch",
                hint="use a seq from the thread's messages, or switch to its branch first",
            )
        role = found[-1].message.role
        if edit:
            if role != "user":
                raise UserError(
                    f"message {seq} is an {role} message: only your own messages can be edited",
                    hint="to get another answer, regenerate it instead",
                )
            before = self.store.recent(owner, thread_id, 1, before_seq=seq)
            return (before[-1].seq if before else 0), None
        if role != "assistant":
            raise UserError(
                f"message {seq} is a {role} message, not an answer: only answers can be"
                " regenerated",
                hint="to change your message, edit it instead",
            )
        earlier = self.store.recent(owner, thread_id, _TURN_MESSAGES, before_seq=seq)
        user = next((m for m in reversed(earlier) if m.message.role == "user"), None)
        if user is None:
            raise UserError(f"no message of yours comes before answer {seq}: nothing to answer")
        return user.seq, user

    # -- threads --------------------------------------------------------------------------
    def threads(self, *, owner: str | None = None, limit: int = 50) -> list[ThreadInfo]:
        return self.store.list_threads(owner or self.owner, limit=limit)

    def thread(self, thread_id: str, *, owner: str | None = None) -> ThreadInfo:
        return self.store.get_thread(owner or self.owner, thread_id)

    def history(self, thread_id: str, *, owner: str | None = None) -> Iterator[StoredMessage]:
        return self.store.messages(owner or self.owner, thread_id)

    def delete_thread(self, thread_id: str, *, owner: str | None = None) -> None:
        self.store.delete_thread(owner or self.owner, thread_id)

    def set_memory_strategy(
        self, thread_id: str, strategy: str | None, *, owner: str | None = None
    ) -> ThreadInfo:
        """Choose this thread's memory strategy (None: back to the bot's default)."""
        if strategy is not None and strategy not in STRATEGIES:
            raise UserError(
                f"unknown memory strategy {strategy!r}", hint=f"use one of {', '.join(STRATEGIES)}"
            )
        owner = owner or self.owner
        metadata = dict(self.store.get_thread(owner, thread_id).metadata)
        metadata.pop("memory_strategy", None)
        if strategy is not None:
            metadata["memory_strategy"] = strategy
        return self.store.update_thread_metadata(owner, thread_id, metadata)

    def preview_context(
        self, thread_id: str, text: str = "(your next message)", *, owner: str | None = None
    ) -> Context:
        """What the model would see if ``text`` were sent next (nothing is stored)."""
        owner = owner or self.owner
        self.store.get_thread(owner, thread_id)
        loaded = self.memory.load(owner, thread_id)
        return self.memory.build(owner, thread_id, loaded, Message.user(text), self.system_prompt)

    # -- tools ----------------------------------------------------------------------------
    def tool(self, function: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Decorator: offer a typed function to the model (``@bot.tool`` or
        ``@bot.tool(side_effects=True, timeout_s=5)``); returns the :class:`Tool`."""
        if function is not None:
            return self.toolset.add(tool(function, **options) if options else function)
        return lambda fn: self.toolset.add(tool(**options)(fn))

    def builtin_names(self) -> list[str]:
        """The built-in tools offered (``[tools] builtin``; default: both for remote models,
        none for the embedded one, which picks tools poorly)."""
        names = self.settings.tools.builtin
        if names is None:
            remote = is_remote(self.model.name)
            names = ["search_knowledge", "remember"] if remote else []
        return list(names)

    @property
    def mcp_servers(self) -> list[Any]:
        """The configured MCP servers, connected on first use (a failure is noted, not fatal)."""
        if self._mcp is None:
            self._mcp = []
            if self.settings.mcp:
                from chatwright.tools.mcp import mcp_servers, start_all

                self._mcp = mcp_servers(self.settings)
                start_all(self._mcp)
                for server in self._mcp:
                    if server.error:
                        self.notes.append(f"MCP server {server.name}: {server.status()}")
        return self._mcp

    def tools(self, owner: str | None = None) -> list[Tool]:
        """The tools a turn of ``owner`` offers: built-ins, this bot's own, the MCP servers'.
        ``search_knowledge`` only when the owner has something to search."""
        owner = owner or self.owner
        cfg = self.settings.tools
        names = self.builtin_names()
        searchable = self.candidate_collections(owner) or self.candidate_sources(owner)
        if "search_knowledge" in names and not searchable:
            names.remove("search_knowledge")
        found = builtin_tools(names, timeout_s=cfg.tool_timeout_s)
        found += list(self.toolset)
        for server in self.mcp_servers:
            found += server.tools()
        unique: dict[str, Tool] = {}
        for t in found:
            unique.setdefault(t.name, t)  # the first wins: built-ins, then the bot's, then MCP
        return [
            t if t.max_output_chars <= cfg.max_output_chars else _with_output_limit(t, cfg)
            for t in unique.values()
        ]

    @property
    def policy(self) -> ApprovalPolicy:
        """Which tool calls wait for approval (``[tools] auto_approve``)."""
        return ApprovalPolicy(frozenset(self.settings.tools.auto_approve))

    def describe_tools(self, owner: str | None = None) -> list[dict[str, Any]]:
        """The tools of :meth:`tools` as JSON-ready values (for ``tools list`` and the API)."""
        policy = self.policy
        return [
            {
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "side_effects": t.side_effects,
                "auto_approved": policy.auto(t),
                "source": t.source,
            }
            for t in self.tools(owner)
        ]

    def limits(self) -> Limits:
        cfg = self.settings.tools
        return Limits(
            max_steps=cfg.max_steps,
            max_tool_calls=cfg.max_tool_calls,
            max_parallel=cfg.max_parallel,
            token_budget=cfg.token_budget,
            time_limit_s=cfg.time_limit_s,
            approval_timeout_s=cfg.approval_timeout_s,
        )

    # -- user memory ----------------------------------------------------------------------
    def remember(
        self, text: str, *, owner: str | None = None, untrusted: Sequence[str] = ()
    ) -> MemoryItem:
        """Keep a short fact about the user, shown in the context of all their threads.
        ``untrusted``: the sources of untrusted text in the turn that asked for it (see
        :mod:`chatwright.trust`); such a memory makes the turns that show it untrusted."""
        marked = ", ".join(untrusted) or None
        return self.store.add_memory(owner or self.owner, clean_memory(text), untrusted=marked)

    def edit_memory(self, memory_id: int, text: str, *, owner: str | None = None) -> MemoryItem:
        """Replace the text of one of the user's memories."""
        return self.store.update_memory(owner or self.owner, memory_id, clean_memory(text))

    def memories(self, *, owner: str | None = None) -> list[MemoryItem]:
        return self.store.list_memories(owner or self.owner)

    def forget(self, memory_id: int, *, owner: str | None = None) -> None:
        self.store.delete_memory(owner or self.owner, memory_id)

    # -- knowledge ------------------------------------------------------------------------
    def candidate_collections(self, owner: str) -> list[CollectionInfo]:
        """The collections a turn may search: with something indexed; the configured ones,
        else all of the owner's."""
        if self.index is None:
            return []
        wanted = set(self.settings.knowledge.collections)
        return [
            c
            for c in self.store.list_collections(owner)
            if c.chunks and (not wanted or c.name in wanted)
        ]

    def add_source(
        self,
        name: str,
        retriever: Any,
        *,
        description: str = "",
        owner: str | None = None,
        timeout_s: float = 10.0,
    ) -> ExternalSource:
        """Search ``retriever`` (a LangChain or LlamaIndex retriever, or a function ``query ->
        list[str | dict]``) like a collection called ``name``: routed by ``description``,
        its passages cited (see :mod:`chatwright.retrieval.external`). ``owner``: only that
        user's turns search it (default: every user of this bot). A failing source costs a
        turn its passages only. A stored collection of the same name is searched instead."""
        source = as_source(
            name, retriever, description=description, owner=owner, timeout_s=timeout_s
        )
        self.sources[name] = source
        return source

    def candidate_sources(self, owner: str) -> list[ExternalSource]:
        """The sources (:meth:`add_source`) a turn of ``owner`` may search."""
        wanted = set(self.settings.knowledge.collections)
        return [
            s
            for s in self.sources.values()
            if s.owner in (None, owner) and (not wanted or s.name in wanted)
        ]

    def _routers(self) -> list[Router]:
        """The configured chain, small talk first (built once)."""
        if self._router_chain is None:
            cfg = self.settings.routing
            embedder = self.index.embedder if self.index is not None else None
            chain_: list[Router] = [ChitChatRouter()]
            for name in cfg.strategy:
                if name == "rules" and cfg.rules:
                    chain_.append(RulesRouter(cfg.rules))
                elif name == "semantic" and embedder is not None:
                    options = cfg.model_dump(include=SEMANTIC_OPTIONS)
                    chain_.append(SemanticRouter(chitchat=embed_exemplars(embedder), **options))
                elif name == "llm":
                    model = get_model(cfg.llm_model, self.settings) if cfg.llm_model else self.model
                    chain_.append(LlmRouter(model, cfg.llm_timeout_s))
                elif name == "all":
                    chain_.append(AllRouter())
            self._router_chain = chain_
        return self._router_chain

    async def route(
        self, query: str, *, owner: str | None = None, pinned: Sequence[str] = ()
    ) -> tuple[Route, list[CollectionInfo | ExternalSource], Any]:
        """Which collections to search for ``query``: (the route, those collections, the
        query's vector for the search, or None). ``@name`` in the query and ``pinned`` names
        override the router; a pinned collection that is gone falls back to the router."""
        candidates = self.candidate_collections(owner or self.owner)
        stored = {c.name for c in candidates}  # a collection wins over a source of its name
        sources = [s for s in self.candidate_sources(owner or self.owner) if s.name not in stored]
        by_name: dict[str, CollectionInfo | ExternalSource] = {c.name: c for c in candidates}
        by_name.update((s.name, s) for s in sources)
        mentioned = [m for m in _MENTION.findall(query) if m in by_name]
        if mentioned:
            chosen = list(dict.fromkeys(mentioned))
            route = Route(chosen, "mention", reason="named in the message with @")
            return route, [by_name[n] for n in chosen], None
        # A pin is honoured while its collection exists, empty or not (the user chose it).
        existing = (
            {c.name: c for c in self.store.list_collections(owner or self.owner)} if pinned else {}
        )
        notes = [
            f"pinned collection {n!r} is gone: routed instead" for n in pinned if n not in existing
        ]
        live_pins = list(dict.fromkeys(n for n in pinned if n in existing))
        if live_pins:
            notes += [
                f"pinned collection {n!r} has no documents"
                for n in live_pins
                if not existing[n].chunks
            ]
            route = Route(live_pins, "pinned", reason="pinned to this thread", notes=notes)
            return route, [existing[n] for n in live_pins], None
        embedder = self.index.embedder if self.index is not None else None
        vector = None
        if embedder is not None and query.strip():
            assert self.index is not None
            vector = await asyncio.to_thread(self.index.embed_query, query)
        assert self.index is not None or not candidates
        try:
            profiles = build_profiles(self.index, candidates, embedder) if candidates else []
            profiles += source_profiles(self.index, sources, embedder)
            routers = self._routers()
            semantic = next((r for r in routers if isinstance(r, SemanticRouter)), None)
            k = self.settings.routing.vote_k
            nearest = None
            if vector is not None and semantic is not None and searched(profiles):
                assert self.index is not None  # one vector search across the collections,
                nearest = self.index.nearest(vector, searched(profiles), k)  # reused to retrieve
                profiles = with_evidence(
                    self.index,
                    profiles,
                    query,
                    vector,
                    k,
                    keywords=semantic.uses_keywords,
                    nearest=nearest,
                    vocabulary=semantic.uses_vocabulary,
                )
            route = await achain(routers, profiles, query, vector)
            route.search = nearest
            if semantic is not None and semantic.clauses and route.strategy == "semantic":
                assert self.index is not None  # a message asking two things: each clause too
                t0 = time.perf_counter()
                parts = await asyncio.to_thread(
                    route_clauses, self.index, semantic, profiles, query, k
                )
                route = merge_clauses(route, parts, min_score=semantic.clause_score)
                route.ms += (time.perf_counter() - t0) * 1000
        except Exception as e:  # a broken router costs the turn its routing, not its answer
            route = Route(
                list(by_name),
                "fallback",
                reason="routing failed: all collections",
                fallback=True,
                notes=[f"routing failed ({type(e).__name__}: {e}); searched all collections"],
            )
        route.notes[:0] = notes
        return route, [by_name[n] for n in route.collections if n in by_name], vector

    def pin_collections(
        self, thread_id: str, names: Sequence[str] | None, *, owner: str | None = None
    ) -> ThreadInfo:
        """Search only ``names`` in this thread (None: let the router choose again)."""
        owner = owner or self.owner
        for name in names or ():
            self.store.get_collection(owner, name)  # type: ignore[attr-defined]
        metadata = dict(self.store.get_thread(owner, thread_id).metadata)
        metadata.pop("pinned_collections", None)
        if names:
            metadata["pinned_collections"] = list(names)
        return self.store.update_thread_metadata(owner, thread_id, metadata)

    def passages_k(self) -> int:
        """How many passages a turn retrieves (see KnowledgeSettings.k)."""
        k = self.settings.knowledge.k
        return k if k is not None else (2 if self.model.name.startswith("local:") else 5)

    async def search_passages(
        self,
        query: str,
        chosen: Sequence[CollectionInfo | ExternalSource],
        *,
        off_loop: bool = False,
        **search: Any,
    ) -> tuple[list[Retrieved], dict[str, str], list[str]]:
        """The best passages for ``query`` from ``chosen`` (stored collections and
        :meth:`add_source` sources): ``(passages, each source's outcome, notes)``; the turn's
        retrieve stage and the ``search_knowledge`` tool both search through here.
        ``off_loop``: search the collections in a worker thread even without sources (a tool
        call; the turn searches inline, reusing its route's vector search)."""
        k, counter = self.passages_k(), self.memory.counter
        if off_loop and not any(isinstance(c, ExternalSource) for c in chosen):
            if self.index is None:
                return [], {}, []
            namespaces = [c.namespace for c in chosen]
            found = await asyncio.to_thread(
                retrieve, self.index, query, namespaces, k, counter, **search
            )
            return found, {}, []
        return await retrieve_with_sources(self.index, query, chosen, k, counter, **search)

    def answer_mode(self, requested: str | None, has_passages: bool) -> tuple[str, str]:
        """``(mode, why)``: how this turn answers (see ``[knowledge] answer_mode``)."""
        mode, why = resolve_answer_mode(
            requested or self.settings.knowledge.answer_mode, self.model.name, has_passages
        )
        if mode == "extract" and (self.index is None or self.index.embedder is None):
            return "generate", "no embedder to rank sentences with"
        return mode, why

    def recites(self, requested: str | None) -> bool:
        """Whether a question about the user is answered by quoting what they said (see
        :func:`chatwright.retrieval.extract.from_user`): as answers from documents are, for
        the embedded model in ``auto`` and always in ``extract``."""
        return self.answer_mode(requested, has_passages=True)[0] == "extract"

    def rewrite_mode(self) -> str:
        mode = self.settings.knowledge.rewrite
        if mode != "auto":
            return mode
        remote = is_remote(self.model.name)
        return "llm" if remote else "concat"  # the embedded model is too small to rewrite

    def wait_background(self, timeout: float | None = None) -> None:
        """Wait for background work (summary updates) to finish."""
        self.memory.wait(timeout)

    def close(self) -> None:
        self.memory.close()
        for server in self._mcp or ():
            server.close()
        self.store.close()

    def __enter__(self) -> Chatbot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Turn:
    """One turn's state: the stages run in order, each timed into the trace."""

    def __init__(
        self,
        bot: Chatbot,
        owner: str,
        thread_id: str,
        approver: Approver | None = None,
        answer_mode: str | None = None,
        *,
        client_tools: Sequence[ToolSpec] = (),
        steps: Sequence[Message] = (),
    ) -> None:
        self.bot = bot
        self.owner = owner
        self.thread_id = thread_id
        self.approver = approver
        self.answer_mode = answer_mode
        self.client_tools = tuple(client_tools)  # run by the caller (Chatbot.stream)
        self.steps = list(steps)  # the turn so far, when it resumes (Chatbot.resume_stream)
        self.query = ""  # the standalone query passages were retrieved for, and its vector
        self.question = ""  # the user's words it was made from (@mentions dropped)
        self.mentioned: list[str] = []  # collections chosen by @name in the message
        self.query_vector: Any = None
        self.trace = Trace(model=bot.model.name)
        self.citations: list[CitationPart] = []
        self.agent = AgentRun()
        self.agent.ids.update(c.id for m in self.steps for c in m.tool_calls)
        self._started = time.perf_counter()

    # -- for tools: passages found during the turn become citations of its answer ----------
    def next_citation_index(self) -> int:
        return max((c.index for c in self.citations), default=0) + 1

    def add_citation(self, citation: CitationPart) -> None:
        self.citations.append(citation)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageTrace]:
        record = StageTrace(name=name)
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.ms = round((time.perf_counter() - start) * 1000, 3)
            self.trace.stages.append(record)

    def skip(self, name: str, why: str) -> None:
        self.trace.stages.append(StageTrace(name=name, skipped=True, note=why))

    async def run(self, text: str, *, resend: StoredMessage | None = None) -> AsyncIterator[Event]:
        """The turn for ``text``; or, regenerating, for the stored user message ``resend``
        (on the path of the branch just forked after it)."""
        bot, store, memory = self.bot, self.bot.store, self.bot.memory
        with self.stage("load") as s:
            # The user's message is on disk before the model is called (and before the first
            # event: a message acknowledged is never lost). Awaited: other turns run meanwhile,
            # and concurrent turns share the commit.
            user = Message.user(text) if resend is None else resend.message
            tokens = memory.count(user)
            if resend is not None:
                stored = resend
            else:
                new = [*self._unanswered(), user]
                *_, stored = await store.append_async(
                    self.owner,
                    self.thread_id,
                    new,
                    create=True,
                    tokens=[*(memory.count(m) for m in new[:-1]), tokens],
                )
            loaded = memory.load(self.owner, self.thread_id, before_seq=stored.seq)
            s.data = {"messages": len(loaded.entries), "user_seq": stored.seq}
        yield TurnStart(thread_id=self.thread_id, user_seq=stored.seq)
        retrieved = await self._knowledge(text, loaded)
        tools = bot.tools(self.owner)
        system_prompt = bot.system_prompt
        if tools or self.client_tools:
            system_prompt = f"{system_prompt}\n\n{TOOL_DATA_RULE}".strip()
        with self.stage("context") as s:
            shown = _without_mentions(text, self.mentioned)
            context = memory.build(
                self.owner,
                self.thread_id,
                loaded,
                user if shown == text else Message.user(shown),
                system_prompt,
                new_tokens=tokens,
                passages=[r.passage for r in retrieved],
            )
            messages = [*context.messages, *self.steps]
            s.data = context.report()
            if tools:
                s.data["tools"] = [t.name for t in tools]
            self.trace.notes.extend([*bot.notes, *context.notes])
        used = set(context.passages_used)
        self.citations = [r.citation for r in retrieved if r.citation.index in used]
        request = ModelRequest(
            messages=tuple(messages),
            settings=ModelSettings(
                max_tokens=bot.settings.max_answer_tokens, temperature=bot.settings.temperature
            ),
        )
        # Text the user did not write is in the context (passages, recalled turns, tool
        # output, a summary, an earlier answer or a memory written with such text in view):
        # calls with side effects must ask, and what the model writes is stored as tainted.
        untrusted = trust.context_sources(
            messages,
            passages=bool(used),
            recalled=bool(context.recalled_seqs),
            summary=context.summary_through_seq is not None,
            memory=any(loaded.user_memory_untrusted[: context.user_memory_used]),
        )
        if untrusted:  # said in the context stage's trace (s)
            s.data["untrusted"] = list(untrusted)
        run = self.agent
        mode, why = bot.answer_mode(self.answer_mode, bool(retrieved))
        quoted = (
            await self._recite(text, loaded, context) if bot.recites(self.answer_mode) else None
        )
        taint = untrusted  # quoting the user's own words adds none
        if quoted is not None:
            self.citations = []
        elif mode == "extract":
            quoted = await self._quote(retrieved, why)
            taint = trust.merge(untrusted, [trust.PASSAGES])  # it quotes the passages
        if quoted is not None:
            run.current = Generation(text=[], finish="stop", untrusted=taint)
            try:
                for piece in quoted:
                    run.current.text.append(piece)
                    yield TextDelta(text=piece)
            except BaseException:  # the consumer went away mid-answer
                self._keep_partial(run.current, "interrupted")
                raise
        else:
            try:
                with self.stage("generate") as s:
                    # aclosing: when our consumer stops, the loop stores its step (calls paired
                    # with results) before the partial answer is kept below, not later.
                    async with aclosing(
                        run_agent(
                            bot.model,
                            request,
                            run,
                            tools=tools,
                            context=ToolContext(self.owner, self.thread_id, bot, self),
                            limits=bot.limits(),
                            policy=bot.policy,
                            approver=self.approver,
                            untrusted=untrusted,
                            on_step=self._store_step,
                            count=memory.count,
                            model_timeout_s=bot.settings.model_timeout_s,
                            client=self.client_tools,
                        )
                    ) as events:
                        async for event in events:
                            yield event
                    s.data = {"mode": "generate", "why": why, **run.report()}
                    self.trace.notes.extend(run.notes)
            except TimeoutError:
                self._keep_partial(run.current, "timed out")
                raise ModelUnavailable(
                    f"{bot.model.name} did not finish within {bot.settings.model_timeout_s:g} s",
                    hint="raise model_timeout_s in chatwright.toml, or check the model server",
                ) from None
            except ModelError as e:
                self._keep_partial(run.current, e.message)
                raise
            except BaseException:  # cancelled, interrupted (Ctrl-C), or the consumer went away
                self._keep_partial(run.current, "interrupted")
                raise
        generation = run.current
        extra: dict[str, Any] = {"stopped": run.stopped} if run.stopped else {}
        if run.waiting:  # the client runs these calls: its results resume the turn
            extra["client_calls"] = [c.id for c in run.waiting]
        answer = await self._persist_async(generation, **extra)
        if run.held is not None:  # the results of the bot's own calls of that step
            self._store_step([run.held])
        memory.after_turn(self.owner, self.thread_id, loaded, context)
        for citation in answer.citations:
            yield CitationEvent(citation=citation)
        yield TurnEnd(answer=answer)

    async def _knowledge(self, text: str, loaded: Loaded) -> list[Retrieved]:
        """Rewrite, route and retrieve: passages from the user's collections (none: skipped)."""
        bot = self.bot
        if not bot.candidate_collections(self.owner) and not bot.candidate_sources(self.owner):
            for stage in ("rewrite", "route", "retrieve"):
                self.skip(stage, "no collections")
            return []
        plain = _MENTION.sub("", text).strip() or text
        with self.stage("rewrite") as s:
            query, how = await rewrite_query(
                plain,
                [e.message for e in loaded.entries],
                mode=bot.rewrite_mode(),
                model=bot.model,
                timeout_s=bot.settings.knowledge.rewrite_timeout_s,
            )
            s.data = {"query": query, "how": how}
        self.query, self.question = query, plain
        with self.stage("route") as s:
            info = bot.store.find_thread(self.owner, self.thread_id)
            pinned = info.metadata.get("pinned_collections", []) if info else []
            route, collections, vector = await bot.route(
                f"{text} {query}" if _MENTION.search(text) else query,
                owner=self.owner,
                pinned=pinned,
            )
            s.data = route.to_dict()
            self.trace.notes.extend(route.notes)
        self.query_vector = vector
        if route.strategy == "mention":  # directives: the model does not see them
            self.mentioned = list(route.collections)
        if not collections:
            self.skip("retrieve", f"routed to no collection ({route.reason or route.strategy})")
            return []
        with self.stage("retrieve") as s:
            sources: dict[str, str] = {}  # each external source's outcome (add_source)
            try:
                found, sources, notes = await bot.search_passages(
                    query, collections, query_vector=vector, nearest=route.search
                )
                self.trace.notes.extend(notes)  # a failing source costs its passages only
            except Exception as e:  # a failing search costs the turn its passages only
                self.trace.notes.append(f"retrieval failed, answered without passages: {e}")
                found = []
            s.data = {
                **({"sources": sources} if sources else {}),
                "query": query,
                "passages": [
                    {
                        "index": r.passage.index,
                        "from": r.passage.label,
                        "score": round(r.score, 4),
                    }
                    for r in found
                ],
            }
        return found

    async def _recite(self, text: str, loaded: Loaded, context: Context) -> list[str] | None:
        """A question about the user answered with what they said: their memories (not
        those saved from untrusted turns), their messages in the window and in the turns
        recalled for this one, quoted. ``None``: not such a question, or nothing they said
        fits it well (the model answers)."""
        if not asks_about_user(text):
            return None
        bot = self.bot
        assert bot.index is not None and bot.index.embedder is not None  # bot.recites
        memories = loaded.user_memory
        trusted = [
            m for m, bad in zip(memories, loaded.user_memory_untrusted, strict=False) if not bad
        ]
        said = [e.message.text for e in loaded.entries if e.message.role == "user"]
        recalled = [
            line.removeprefix("User: ")
            for item in context.recalled
            for line in item.text.splitlines()
            if line.startswith("User: ")
        ]
        statements = [*trusted[:16][::-1], *recalled[:16], *said[-16:]]
        if not statements:
            return None
        with self.stage("recite") as s:
            try:
                vector = self.query_vector
                if vector is None:
                    vector = await asyncio.to_thread(bot.index.embed_query, text)
                found = await asyncio.to_thread(
                    from_user, text, vector, statements, bot.index.memoized
                )
            except Exception as e:  # the model answers instead
                self.trace.notes.append(f"answering from what you said failed ({e}); generated")
                s.data = {"failed": str(e)}
                return None
            s.data = {"statements": len(statements)}
            if found is None:
                s.data["quoted"] = 0
                return None
            s.data.update(found.report())
        return found.pieces()

    async def _quote(self, retrieved: list[Retrieved], why: str) -> list[str] | None:
        """The extract answer mode: the passages' best sentences, quoted with their [n]; the
        answer's pieces to stream, or None when quoting failed (the model answers instead)."""
        bot, knowledge = self.bot, self.bot.settings.knowledge
        assert bot.index is not None and bot.index.embedder is not None  # bot.answer_mode
        with self.stage("generate") as s:
            try:
                vector = self.query_vector
                if vector is None:  # routed by @mention or pin: embed the query (memoized)
                    vector = await asyncio.to_thread(bot.index.embed_query, self.query)
                found: Extraction = await asyncio.to_thread(
                    extract,
                    self.query,
                    vector,
                    [r.passage for r in retrieved],
                    bot.index.memoized,
                    question=self.question,
                    count=knowledge.extract_sentences,
                    min_score=knowledge.extract_min_score,
                    keyword_weight=knowledge.extract_keyword_weight,
                )
            except Exception as e:  # a failing embedder costs the turn its quotes, not its answer
                self.trace.notes.append(f"quoting failed ({type(e).__name__}: {e}); generated")
                s.data = {"mode": "extract", "why": why, "failed": str(e)}
                return None
            s.data = {"mode": "extract", "why": why, **found.report()}
        cited = set(found.cited)
        self.citations = [r.citation for r in retrieved if r.citation.index in cited]
        return found.pieces()

    def _unanswered(self) -> list[Message]:
        """The answer the thread's previous turn never stored, said: an empty answer marked
        interrupted, when the thread ends with a user message or tool results. That turn is
        over (its process was killed, or its model failed before a word): this runs under the
        thread's turn lock, which no turn of it, in any process or replica, holds meanwhile."""
        try:
            recent = self.bot.store.recent(self.owner, self.thread_id, 2)
        except ThreadNotFound:  # a new thread
            return []
        waiting = waiting_calls([m.message for m in recent])
        if waiting:  # the client sent a new message instead of its tools' results
            self.trace.notes.append(f"client tool calls not answered: {_call_names(waiting)}")
            return [unanswered(waiting, "the client sent a new message instead of a result")]
        if not recent or recent[-1].message.role not in ("user", "tool"):
            return []
        last = recent[-1]
        if last.message.role == "tool" and recent[0].message.metadata.get("interrupted"):
            return []  # cut short at its tool calls: marked then, with "not run" results
        self.trace.notes.append(f"message #{last.seq} got no answer: marked interrupted")
        return [Message.assistant("", interrupted=True, reason=NO_ANSWER)]

    def _store_step(self, messages: list[Message]) -> None:
        """A step's tool calls and their results, stored together as they complete."""
        memory = self.bot.memory
        self.bot.store.append(
            self.owner, self.thread_id, messages, tokens=[memory.count(m) for m in messages]
        )

    def _finish_trace(self, generation: Generation) -> None:
        self.trace.input_tokens = self.agent.input_tokens or generation.usage.input_tokens
        self.trace.output_tokens = self.agent.output_tokens or generation.usage.output_tokens
        self.trace.total_ms = round((time.perf_counter() - self._started) * 1000, 3)

    async def _persist_async(self, generation: Generation, **metadata: Any) -> Answer:
        """Store the answer with the turn's trace; the event loop goes on meanwhile."""
        message, trace = self._final_message(generation, metadata)
        with self.stage("persist"):
            stored = await self.bot.store.append_async(
                self.owner,
                self.thread_id,
                [message],
                trace=trace,
                tokens=[self.bot.memory.count(message)],
            )
        return self._answer(generation, message, stored[-1].seq, metadata)

    def _persist(self, generation: Generation, **metadata: Any) -> Answer:
        """:meth:`_persist_async` without awaiting: for a turn cut short, whose task may be
        being cancelled."""
        message, trace = self._final_message(generation, metadata)
        with self.stage("persist"):
            stored = self.bot.store.append(
                self.owner,
                self.thread_id,
                [message],
                trace=trace,
                tokens=[self.bot.memory.count(message)],
            )
        return self._answer(generation, message, stored[-1].seq, metadata)

    def _final_message(
        self, generation: Generation, metadata: dict[str, Any]
    ) -> tuple[Message, Trace | None]:
        """The answer to store, and the trace to store with it (None: traces are off)."""
        if generation.finish not in (None, "stop", "tool_calls"):
            metadata.setdefault("finish", generation.finish)
        message = generation.message(**metadata)
        if self.citations:
            message = message.model_copy(update={"parts": (*message.parts, *self.citations)})
        self._finish_trace(generation)
        # The stored trace goes into the same transaction as the answer, so it ends at
        # `generate`: a commit cannot time itself. The returned trace adds `persist`. A copy
        # of its lists is enough (the stages before are complete; a deep copy cost 0.25 ms).
        trace = None
        if self.bot.settings.store_traces:
            trace = self.trace.model_copy(
                update={"stages": [*self.trace.stages], "notes": [*self.trace.notes]}
            )
        return message, trace

    def _answer(
        self, generation: Generation, message: Message, seq: int, metadata: dict[str, Any]
    ) -> Answer:
        self._finish_trace(generation)
        return Answer(
            thread_id=self.thread_id,
            text=message.text,
            message=message,
            seq=seq,
            trace=self.trace,
            interrupted=bool(metadata.get("interrupted")),
        )

    def _keep_partial(self, generation: Generation, why: str) -> None:
        """Store what was streamed before a turn was cut short, marked as such. Tool calls
        that never ran are stored with a "not run" result each, so they stay paired."""
        if not (generation.text or generation.tool_calls):
            return
        self.trace.notes.append(f"answer cut short: {why}")
        if not generation.tool_calls:
            self._persist(generation, interrupted=True, reason=why)
            return
        message = generation.message(interrupted=True, reason=why)
        self._finish_trace(generation)
        trace = self.trace.model_copy(deep=True) if self.bot.settings.store_traces else None
        memory = self.bot.memory
        pair = [message, unanswered(generation.tool_calls, why)]
        self.bot.store.append(
            self.owner, self.thread_id, pair, trace=trace, tokens=[memory.count(m) for m in pair]
        )


def _call_names(calls: Sequence[Any]) -> str:
    return ", ".join(f"{c.id} ({c.name})" for c in calls)


def _client_results(
    thread_id: str, steps: Sequence[Message], results: Sequence[ToolResultPart]
) -> Message:
    """The client's ``results`` for the calls the turn waits for, as one tool message named
    after the stored calls (the client's names are not trusted); a UserError otherwise."""
    waiting = {c.id: c for c in waiting_calls(steps)}
    got: dict[str, ToolResultPart] = {}
    for result in results:
        call = waiting.get(result.tool_call_id)
        if call is None:
            raise UserError(
                f"a tool result answers call {result.tool_call_id!r}, which thread"
                f" {thread_id!r} is not waiting for",
                hint=f"answer the calls it waits for: {_call_names(waiting.values())}",
            )
        if call.id in got:
            raise UserError(
                f"two tool results answer call {call.id!r}", hint="send one result per call"
            )
        got[call.id] = result.model_copy(update={"name": call.name})
    missing = [c for c in waiting.values() if c.id not in got]
    if missing:
        raise UserError(
            f"no tool result for the waiting call {_call_names(missing)}",
            hint="send a tool message for every call of the thread's last answer",
        )
    return Message.tool(*(got[i] for i in waiting), **{trust.KEY: [trust.TOOL_OUTPUT]})


async def _last_answer(events: AsyncIterator[Event]) -> Answer:
    """The answer a turn's events end with."""
    answer = None
    async for event in events:
        if isinstance(event, TurnEnd):
            answer = event.answer
    assert answer is not None  # a turn's stream always ends with TurnEnd
    return answer


def _without_mentions(text: str, names: Sequence[str]) -> str:
    """``text`` without the ``@name`` mentions of ``names`` (they chose the turn's
    collections; shown to the model, it echoes them), or as it is if nothing else is left."""
    if not names:
        return text
    plain = _SPACED_MENTION.sub(lambda m: "" if m.group(1) in names else m.group(0), text)
    if plain == text:
        return text
    return plain.strip() or text


def clean_memory(text: str) -> str:
    """A memory as it is kept: one line of printable text, 1 to 500 characters (it goes into
    every prompt of the user's threads)."""
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if not text:
        raise InvalidMessage("nothing to remember", hint="give the fact as text")
    if len(text) > 500:
        raise InvalidMessage("a memory is at most 500 characters", hint="keep it to one fact")
    return text


def _with_output_limit(t: Tool, cfg: Any) -> Tool:
    import dataclasses

    return dataclasses.replace(t, max_output_chars=cfg.max_output_chars)


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, also when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
