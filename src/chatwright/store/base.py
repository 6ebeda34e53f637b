"""What a conversation store must do, and the values it hands back.

Every call names the owner: a thread belongs to exactly one owner, thread ids are scoped per
owner, and another owner's thread is indistinguishable from one that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatwright.types import Message, Trace

__all__ = ["Store", "StoredMessage", "ThreadInfo"]


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    id: str
    owner: str
    title: str | None
    created_at: float
    updated_at: float
    message_count: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored: its place in the thread and when it was written."""

    seq: int
    created_at: float
    message: Message


class Store(Protocol):
    """Persistence for threads, their append-only messages, and turn traces."""

    def find_thread(self, owner: str, thread_id: str) -> ThreadInfo | None: ...

    def get_thread(self, owner: str, thread_id: str) -> ThreadInfo:
        """The thread, or :class:`~chatwright.errors.ThreadNotFound`."""
        ...

    def create_thread(
        self,
        owner: str,
        thread_id: str | None = None,
        *,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> ThreadInfo: ...

    def list_threads(self, owner: str, *, limit: int = 50, offset: int = 0) -> list[ThreadInfo]: ...

    def rename_thread(self, owner: str, thread_id: str, title: str) -> ThreadInfo: ...

    def delete_thread(self, owner: str, thread_id: str) -> None: ...

    def append(
        self,
        owner: str,
        thread_id: str,
        messages: Sequence[Message],
        *,
        trace: Trace | None = None,
        create: bool = False,
    ) -> list[StoredMessage]:
        """Append ``messages`` (and the turn's ``trace``) in one transaction, durably."""
        ...

    def recent(self, owner: str, thread_id: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages, oldest first; cost does not grow with the thread."""
        ...

    def messages(
        self, owner: str, thread_id: str, *, after_seq: int = 0
    ) -> Iterator[StoredMessage]:
        """Every message after ``after_seq``, oldest first, read in batches."""
        ...

    def traces(self, owner: str, thread_id: str, *, limit: int = 20) -> list[tuple[int, Trace]]:
        """The newest traces as (assistant message seq, trace), oldest first."""
        ...

    def close(self) -> None: ...
