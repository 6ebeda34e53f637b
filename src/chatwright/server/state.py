"""What the running server holds: settings, the store, one Chatbot per bot, turns, jobs, auth.

Bots are built once at start-up, all on one store: the default bot from the top-level
settings (named by ``[server] default_bot``, "default" unless set) and one per
``[bots.<name>]`` section, each section's fields overriding the top-level ones. A request names
its bot (``bot`` in the body, ``model`` on ``/v1``) or gets the default. Model names that no
bot uses are served only when they are test models (``test:echo``...): a server must not
spend its operator's API credits on whatever model a caller names.

:meth:`ServerState.start_turn` is how an endpoint starts a turn of a thread: not while the
thread waits for an approval (409 with the pending calls: the new turn would wait behind the
old one for as long as nobody answers), and not past ``[server] max_turns_per_user`` turns
of the user running here at once (429 with ``Retry-After``; :meth:`ServerState.turn_slot`
counts stateless completions the same way).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from chatwright.bot import Chatbot
from chatwright.config import BotSettings, Settings
from chatwright.errors import ChatwrightError
from chatwright.ingest.pipeline import Ingestor
from chatwright.server.auth import Authenticator
from chatwright.server.errors import ApiError
from chatwright.server.jobs import Jobs
from chatwright.server.turns import Approvals, TurnRun, Turns, read_store
from chatwright.store import Store
from chatwright.store.base import StreamInfo

__all__ = ["ServerState", "TurnSlots", "bot_settings", "build_bots", "waiting_calls"]

log = logging.getLogger("chatwright.server")
TURN_RETRY_S = 2  # Retry-After of a 429 for too many turns: turns take seconds


class TurnSlots:
    """How many turns each user runs here, at most ``limit`` at once (0: no limit). Used on
    the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: dict[str, int] = {}

    def take(self, owner: str) -> None:
        """Count one more turn of ``owner``'s, or raise the 429."""
        held = self.running.get(owner, 0)
        if self.limit and held >= self.limit:
            raise ApiError(
                429,
                f"you have {held} turns running, the most one user may run at once",
                hint="wait for one to end, or stop one (POST /api/threads/{id}/cancel); "
                "the limit is max_turns_per_user in [server]",
                type="too_many_turns",
                headers={"Retry-After": str(TURN_RETRY_S)},
            )
        self.running[owner] = held + 1

    def give_back(self, owner: str) -> None:
        left = self.running.get(owner, 0) - 1
        if left > 0:
            self.running[owner] = left
        else:
            self.running.pop(owner, None)


def waiting_calls(store: Store, stream_id: str) -> dict[str, dict[str, Any]]:
    """The calls of a recorded stream that asked for approval and have no result yet."""
    waiting: dict[str, dict[str, Any]] = {}
    after = 0
    while rows := store.streams.events(stream_id, after):
        after = rows[-1][0]
        for _, name, data in rows:
            if name == "approval_needed":
                payload = json.loads(data)
                waiting[payload["call"]["id"]] = payload
            elif name == "tool_result":
                waiting.pop(json.loads(data)["result"]["tool_call_id"], None)
    return waiting


def bot_settings(settings: Settings, section: BotSettings) -> Settings:
    """``settings`` with a ``[bots.<name>]`` section's fields on top."""
    update: dict[str, Any] = {}
    for name in ("model", "system_prompt", "temperature", "max_answer_tokens"):
        value = getattr(section, name)
        if value is not None:
            update[name] = value
    if section.collections is not None:
        update["knowledge"] = settings.knowledge.model_copy(
            update={"collections": list(section.collections)}
        )
    return settings.model_copy(update=update)


def build_bots(settings: Settings, store: Store) -> dict[str, Chatbot]:
    """The default bot and every configured one, sharing ``store``."""
    default = settings.server.default_bot
    bots: dict[str, Chatbot] = {}
    if default not in settings.bots:
        bots[default] = Chatbot(settings=settings, store=store)
    for name, section in settings.bots.items():
        bots[name] = Chatbot(settings=bot_settings(settings, section), store=store)
    return bots


@dataclass
class ServerState:
    """Everything a request handler may need, on ``app.state.chatwright``."""

    settings: Settings
    store: Store
    bots: dict[str, Chatbot]
    auth: Authenticator
    owns_store: bool = True
    approvals: Approvals = field(default_factory=Approvals)
    turns: Turns = field(init=False)
    jobs: Jobs = field(init=False)
    slots: TurnSlots = field(init=False)
    _by_model: dict[str, Chatbot] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        server = self.settings.server
        self.jobs = Jobs(
            self.store,
            self.ingestor,
            workers=server.ingest_workers,
            max_per_owner=server.max_jobs_per_user,
            web=self.settings.web,
        )
        self.slots = TurnSlots(server.max_turns_per_user)
        self.turns = Turns(
            self.approvals,
            self.store,
            flush_s=server.stream_flush_s,
            heartbeat_s=server.replica_heartbeat_s,
        )

    @property
    def default_name(self) -> str:
        name = self.settings.server.default_bot
        return name if name in self.bots else next(iter(self.bots))

    @property
    def default(self) -> Chatbot:
        return self.bots[self.default_name]

    def bot(self, name: str | None) -> Chatbot:
        """The bot called ``name`` (None: the default), or a 404 that lists them."""
        if name is None:
            return self.default
        found = self.bots.get(name)
        if found is None:
            raise ApiError(
                404,
                f"no bot named {name!r}",
                hint=f"the bots are: {', '.join(self.bots)} (configure more in [bots.<name>])",
                type="bot_not_found",
            )
        return found

    def bot_for_model(self, name: str) -> Chatbot | None:
        """The bot serving ``name`` (a bot name or a model name), or None if none may."""
        if name in self.bots:
            return self.bots[name]
        for bot in self.bots.values():
            if bot.model.name == name:
                return bot
        if not name.startswith("test:"):
            return None
        with self._lock:
            if name not in self._by_model:
                try:
                    settings = self.default.settings.model_copy(update={"model": name})
                    self._by_model[name] = Chatbot(settings=settings, store=self.store)
                except ChatwrightError:
                    return None
            return self._by_model[name]

    def all_bots(self) -> list[Chatbot]:
        with self._lock:
            return [*self.bots.values(), *self._by_model.values()]

    async def start_turn(
        self,
        bot: Chatbot,
        owner: str,
        thread_id: str,
        text: str,
        *,
        interactive: bool = True,
        answer_mode: str | None = None,
        events: Callable[..., AsyncIterator[Any]] | None = None,
    ) -> TurnRun:
        """Start a turn (``Turns.start``) unless the thread waits for an approval (409) or
        ``owner`` runs as many turns as allowed (429). ``events``: what runs it instead of
        ``bot.stream`` (a regeneration, an edit: ``api_branches.py``)."""
        calls = await self.pending_calls(owner, thread_id)
        if calls:
            names = ", ".join(f"{c['id']} ({c['name']})" for c in calls)
            raise ApiError(
                409,
                f"thread {thread_id!r} is waiting for your approval of tool call {names}",
                hint=f"answer it first: POST /api/threads/{thread_id}/approvals/{calls[0]['id']}"
                ' with {"approved": true} or false; or stop the turn: POST .../cancel',
                type="approval_pending",
                extra={"pending": [c["id"] for c in calls], "calls": calls},
            )
        self.slots.take(owner)
        try:
            run = self.turns.start(
                bot,
                owner,
                thread_id,
                text,
                interactive=interactive,
                answer_mode=answer_mode,
                events=events,
            )
        except BaseException:
            self.slots.give_back(owner)
            raise
        assert run.task is not None
        run.task.add_done_callback(lambda _: self.slots.give_back(owner))
        return run

    @asynccontextmanager
    async def turn_slot(self, owner: str) -> AsyncIterator[None]:
        """``async with``: one of ``owner``'s turns (429 past the limit), for a completion
        that is not a turn of a thread."""
        self.slots.take(owner)
        try:
            yield
        finally:
            self.slots.give_back(owner)

    async def pending_calls(self, owner: str, thread_id: str) -> list[dict[str, Any]]:
        """The tool calls waiting for ``owner``'s approval in the thread, whichever replica
        runs its turn: id, name, arguments, reason, description."""
        calls = [
            {
                **r.call.model_dump(include={"id", "name", "arguments"}),
                "reason": r.reason,
                "description": r.description,
            }
            for r in self.approvals.requests(owner, thread_id)
        ]
        for stream in await self.remote_streams(owner, thread_id):
            waiting = await asyncio.to_thread(waiting_calls, self.store, stream.id)
            calls += [
                {
                    **data["call"],
                    "reason": data.get("reason"),
                    "description": data.get("description"),
                }
                for data in waiting.values()
            ]
        return calls

    async def remote_streams(self, owner: str, thread_id: str) -> list[StreamInfo]:
        """The thread's running turns on other replicas (from the store)."""
        streams = await read_store(self.store, self.store.streams.running, owner, thread_id)
        return [s for s in streams if s.replica != self.turns.replica]

    def ingestor(self, owner: str) -> Ingestor:
        return Ingestor(
            self.store, self.default.index, owner, max_bytes=self.settings.server.max_upload_bytes
        )

    def preload(self) -> None:
        """Load every user's collections into the default bot's search index (best effort)."""
        index = self.default.index
        owners = {self.settings.user, *(u.name for u in self.store.list_users())}
        namespaces = [
            c.namespace for owner in sorted(owners) for c in self.store.list_collections(owner)
        ]
        if namespaces:
            index.preload(namespaces)
            log.info("preloaded %d collection(s)", len(namespaces))

    async def shutdown(self) -> None:
        """Let turns finish (within the grace period), stop jobs, then close."""
        await self.turns.shutdown(self.settings.server.shutdown_grace_s)
        await asyncio.to_thread(self.jobs.shutdown)
        bots = self.all_bots()
        for bot in bots:
            await asyncio.to_thread(bot.wait_background)
        if self.owns_store:  # then the bots are ours too (close() also closes the store)
            for bot in bots:
                bot.close()
