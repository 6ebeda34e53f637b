"""What every backend does the same way on top of its own queries: the ``get_*`` that turn
"none found" into the error users see, the list/find pairs over one query each, and the parts
shared per store. A backend's store class inherits :class:`StoreCommon` and provides
``find_thread``, ``append``, ``_summaries``, ``_collections`` and ``_users``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from chatwright.errors import ThreadNotFound, UserError
from chatwright.store.base import (
    CollectionInfo,
    SharedParts,
    StoredMessage,
    Summary,
    ThreadInfo,
    UserInfo,
)
from chatwright.types import Message, Trace

__all__ = ["StoreCommon"]

T = TypeVar("T")


class StoreCommon:
    """The backend-independent half of a store (see the module's docstring)."""

    _shared: SharedParts

    # -- provided by each backend ---------------------------------------------------------
    def find_thread(self, owner: str, thread_id: str) -> ThreadInfo | None:
        raise NotImplementedError

    def append(
        self,
        owner: str,
        thread_id: str,
        messages: Sequence[Message],
        *,
        trace: Trace | None = None,
        create: bool = False,
        tokens: Sequence[int | None] | None = None,
    ) -> list[StoredMessage]:
        raise NotImplementedError

    def _summaries(self, owner: str, thread_id: str, order: str) -> list[Summary]:
        """The thread's summaries by ``through_seq``; ``order`` is ``"ASC"`` or
        ``"DESC LIMIT 1"``."""
        raise NotImplementedError

    def _collections(self, owner: str, name: str | None) -> list[CollectionInfo]:
        raise NotImplementedError

    def _users(self, name: str | None) -> list[UserInfo]:
        raise NotImplementedError

    # -- the same for every backend -------------------------------------------------------
    def shared(self, key: Any, build: Callable[[], T]) -> T:
        return self._shared.get(key, build)

    async def append_async(
        self,
        owner: str,
        thread_id: str,
        messages: Sequence[Message],
        *,
        trace: Trace | None = None,
        create: bool = False,
        tokens: Sequence[int | None] | None = None,
    ) -> list[StoredMessage]:
        """``append`` in a worker thread (a backend may do better: SQLite commits in groups)."""
        return await asyncio.to_thread(
            self.append, owner, thread_id, messages, trace=trace, create=create, tokens=tokens
        )

    def get_thread(self, owner: str, thread_id: str) -> ThreadInfo:
        info = self.find_thread(owner, thread_id)
        if info is None:
            raise ThreadNotFound(thread_id)
        return info

    def latest_summary(self, owner: str, thread_id: str) -> Summary | None:
        found = self._summaries(owner, thread_id, "DESC LIMIT 1")
        return found[0] if found else None

    def summaries(self, owner: str, thread_id: str) -> list[Summary]:
        return self._summaries(owner, thread_id, "ASC")

    def find_collection(self, owner: str, name: str) -> CollectionInfo | None:
        found = self._collections(owner, name)
        return found[0] if found else None

    def get_collection(self, owner: str, name: str) -> CollectionInfo:
        info = self.find_collection(owner, name)
        if info is None:
            raise UserError(
                f"collection {name!r} not found",
                hint="list them with `chatwright collections list`",
            )
        return info

    def list_collections(self, owner: str) -> list[CollectionInfo]:
        return self._collections(owner, None)

    def find_user(self, name: str) -> UserInfo | None:
        found = self._users(name)
        return found[0] if found else None

    def list_users(self) -> list[UserInfo]:
        return self._users(None)
