"""Every exception chatwright raises on purpose.

The tree keeps caller mistakes, provider failures and storage problems apart, so that a
front end can map each branch to one kind of answer (a CLI message, an HTTP status)::

    ChatwrightError                 base of everything below; `.hint` says how to fix it
    ├── UserError                   the caller asked for something invalid
    │   ├── ConfigError             chatwright.toml or CHATWRIGHT_* settings are invalid
    │   ├── InvalidMessage          empty, oversized or malformed message
    │   ├── ThreadNotFound          no such thread for this owner (another owner's is "not found")
    │   └── UnknownModel            "provider:model" names no known provider
    ├── ModelError                  the model could not answer
    │   ├── ModelUnavailable        missing extra, missing or corrupt weights, provider unreachable
    │   └── ModelResponseError      the provider answered with an error or nonsense
    └── StoreError                  the database could not be read or written

Constructors have no side effects; raising one never touches the store.
"""

from __future__ import annotations

__all__ = [
    "ChatwrightError",
    "ConfigError",
    "InvalidMessage",
    "ModelError",
    "ModelResponseError",
    "ModelUnavailable",
    "StoreError",
    "ThreadNotFound",
    "UnknownModel",
    "UserError",
]


class ChatwrightError(Exception):
    """Base class; ``hint`` tells the user what to do about it."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UserError(ChatwrightError):
    """The caller asked for something that cannot be done as asked."""


class ConfigError(UserError):
    """Settings are invalid: a malformed chatwright.toml, a bad value, a bad env var."""


class InvalidMessage(UserError):
    """A message is empty, too large or malformed."""


class ThreadNotFound(UserError):
    """No thread with this id belongs to this owner."""

    def __init__(self, thread_id: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"thread {thread_id!r} not found",
            hint=hint or "list your threads with `chatwright threads list`",
        )
        self.thread_id = thread_id


class UnknownModel(UserError):
    """A model name does not resolve to a provider."""


class ModelError(ChatwrightError):
    """The model could not produce an answer."""


class ModelUnavailable(ModelError):
    """The model cannot be used: missing package, missing weights, unreachable server."""


class ModelResponseError(ModelError):
    """The provider answered with an error or with output that cannot be used."""


class StoreError(ChatwrightError):
    """The store could not be opened, read or written."""
