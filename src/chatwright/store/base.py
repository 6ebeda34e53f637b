"""What a conversation store must do, and the values it hands back.

Every call names the owner: a thread belongs to exactly one owner, thread ids are scoped per
owner, and another owner's thread is indistinguishable from one that does not exist.

Users and their API keys (the HTTP server's) live here too. A key's secret is shown once, when
it is made, and only its SHA-256 is stored: a leaked database gives no working key. Secrets
are 256 random bits, so a plain hash (no salt, no slow KDF) is enough, and a key is found by
its hash with an ordinary index lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatwright.types import Message, Trace

__all__ = [
    "ApiKeyInfo",
    "CollectionInfo",
    "DocumentInfo",
    "MemoryItem",
    "Store",
    "StoredMessage",
    "Summary",
    "ThreadInfo",
    "UserInfo",
    "hash_secret",
    "new_secret",
]

SECRET_PREFIX = "cw-"


def new_secret() -> str:
    """A fresh API key secret: ``cw-`` and 43 URL-safe characters (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What is stored of a secret, and looked up: its SHA-256, in hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


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


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user of the HTTP server: the owner name their data is stored under."""

    name: str
    created_at: float
    keys: int = 0  # active (not revoked) API keys


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key, without its secret (only the secret's hash is stored)."""

    id: str  # public: shown by `chatwright keys list`, used to revoke
    user: str
    name: str
    prefix: str  # the secret's first characters, to recognise it
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


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

    def get_trace(self, owner: str, thread_id: str, seq: int) -> Trace | None:
        """The trace stored with the assistant message ``seq``, if any."""
        ...

    # -- users and API keys (the HTTP server's) ---------------------------------------------
    def create_user(self, name: str) -> UserInfo: ...

    def find_user(self, name: str) -> UserInfo | None: ...

    def list_users(self) -> list[UserInfo]: ...

    def delete_user(self, name: str) -> None:
        """Delete the user and their keys (their threads and collections stay)."""
        ...

    def create_api_key(self, user: str, name: str = "") -> tuple[str, str]:
        """A new key for ``user``: (its id, its secret). The secret is not stored."""
        ...

    def find_key(self, secret_hash: str, *, revoked: bool = False) -> ApiKeyInfo | None:
        """The active key with this :func:`hash_secret`, or None (unknown, or revoked unless
        ``revoked``)."""
        ...

    def list_keys(self, user: str | None = None) -> list[ApiKeyInfo]: ...

    def revoke_key(self, key_id: str) -> ApiKeyInfo: ...

    def touch_key(self, key_id: str) -> None:
        """Record that the key was just used."""
        ...

    def has_api_keys(self) -> bool:
        """Whether any active key exists."""
        ...

    def close(self) -> None: ...
