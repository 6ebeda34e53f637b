"""What the running server holds: settings, the store, one Chatbot per bot, turns, jobs, auth.

Bots are built once at start-up, all on one store: the default bot from the top-level
settings (named by ``[server] default_bot``, "default" unless set) and one per
``[bots.<name>]`` section, each section's fields overriding the top-level ones. A request names
its bot (``bot`` in the body, ``model`` on ``/v1``) or gets the default. Model names that no
bot uses are served only when they are test models (``test:echo``...): a server must not
spend its operator's API credits on whatever model a caller names.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from chatwright.bot import Chatbot
from chatwright.config import BotSettings, Settings
from chatwright.errors import ChatwrightError
from chatwright.ingest.pipeline import Ingestor
from chatwright.server.auth import Authenticator
from chatwright.server.errors import ApiError
from chatwright.server.jobs import Jobs
from chatwright.server.turns import Approvals, Turns
from chatwright.store import Store

__all__ = ["ServerState", "bot_settings", "build_bots"]

log = logging.getLogger("chatwright.server")


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
    _by_model: dict[str, Chatbot] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        server = self.settings.server
        self.jobs = Jobs(self.store, self.ingestor, workers=server.ingest_workers)
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
