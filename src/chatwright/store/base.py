"""What a conversation store must do, and the values it hands back.

Every call names the owner: a thread belongs to exactly one owner, thread ids are scoped per
owner, and another owner's thread is indistinguishable from one that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatwright.types import Message, Trace

__all__ = [
    "CollectionInfo",
    "DocumentInfo",
    "MemoryItem",
    "Store",
    "StoredMessage",
    "Summary",
    "ThreadInfo",
]


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    id: str
    owner: str
    title: str | None
    created_at: float
    updated_at: float
    message_count: int
    metadata: dict[str, Any] = field(default_factory=dict)
    uid: int = 0  # the store's own key for the thread, unique among live threads


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored: its place in the thread, when it was written, its token count."""

    seq: int
    created_at: float
    message: Message
    tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """A version of a thread's running summary, covering every message up to ``through_seq``."""

    through_seq: int
    text: str
    tokens: int
    created_at: float = 0.0
    model: str | None = None


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    """A named set of documents; searched under :attr:`namespace`."""

    name: str
    owner: str
    description: str
    created_at: float
    updated_at: float
    documents: int = 0
    chunks: int = 0
    uid: int = 0

    @property
    def namespace(self) -> str:
        return f"collection:{self.uid}"


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """An ingested file: where it came from, its content hash, how many chunks it made."""

    id: int
    collection: str
    source: str
    title: str | None
    content_hash: str
    bytes: int
    chunks: int
    ingested_at: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """A fact a user asked to be remembered across their threads."""

    id: int
    text: str
    created_at: float
    updated_at: float


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
        tokens: Sequence[int | None] | None = None,
    ) -> list[StoredMessage]:
        """Append ``messages`` (with their token counts, and the turn's ``trace``) in one
        transaction, durably."""
        ...

    def update_thread_metadata(
        self, owner: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadInfo: ...

    def save_summary(self, owner: str, thread_id: str, summary: Summary) -> None: ...

    def latest_summary(self, owner: str, thread_id: str) -> Summary | None: ...

    def summaries(self, owner: str, thread_id: str) -> list[Summary]: ...

    def add_memory(self, owner: str, text: str) -> MemoryItem: ...

    def list_memories(self, owner: str) -> list[MemoryItem]: ...

    def update_memory(self, owner: str, memory_id: int, text: str) -> MemoryItem: ...

    def delete_memory(self, owner: str, memory_id: int) -> None: ...

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
