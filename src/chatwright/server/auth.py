"""Who is asking: API keys per user, or the local user on a loopback server without keys.

A request names its user with ``Authorization: Bearer <key>``. Keys are made with
``chatwright keys create USER`` (the secret is printed once) and stored hashed; a lookup is by
the SHA-256 of the presented secret, so a revoked or deleted key stops working at the next
request (nothing is cached: a lookup costs a few microseconds, a cache would save nothing worth
its invalidation). :meth:`Authenticator.authenticate_async` does the lookup on the event loop
when the store is free, and in a worker thread only when another thread holds the store, so a
request does not pay a thread hop to be authenticated.

``[server] auth`` decides what a request without a valid key gets:

- ``auto`` (default): while the store holds no active key and the server listens on loopback,
  every request is the configured local user (``user``, default ``local``) and any bearer is
  accepted: a personal server works with no set-up, and the OpenAI SDK's required
  ``api_key`` can be anything (but a revoked key is always refused). Once a key exists, a
  key is required.
- ``keys``: a key is always required.
- ``none``: no keys at all, everyone is the local user (loopback only).

Off loopback, :func:`check_exposure` refuses to start without keys: a server reachable from
the network never runs open by accident.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Literal

from starlette.concurrency import run_in_threadpool

from chatwright.errors import UserError
from chatwright.server.errors import ApiError
from chatwright.store.base import ApiKeyInfo, Store, hash_secret

__all__ = ["Authenticator", "Principal", "check_exposure", "is_loopback"]

_TOUCH_EVERY_S = 300.0  # how often a key's last use is written (a write per request is waste)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
KEY_HINT = "create one with `chatwright keys create USER` and send Authorization: Bearer <key>"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Principal:
    """The user a request acts as, and how that was decided."""

    user: str
    via: Literal["key", "local"]
    key_id: str | None = None
    key_name: str | None = None


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal` (or a 401)."""

    def __init__(
        self,
        store: Store,
        *,
        mode: Literal["auto", "keys", "none"],
        local_user: str,
        loopback: bool,
    ) -> None:
        self.store = store
        self.mode = mode
        self.local_user = local_user
        self.loopback = loopback
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def open_access(self) -> bool:
        """Whether a request without a key acts as the local user right now."""
        if self.mode == "none":
            return True
        return self.mode == "auto" and self.loopback and not self.store.has_api_keys()

    def authenticate(self, authorization: str | None) -> Principal:
        """The request's user (blocking: it reads the store)."""
        principal, key = self._identify(authorization)
        if key is not None and self._touch_due(key):
            self.store.touch_key(key.id)
        return principal

    async def authenticate_async(self, authorization: str | None) -> Principal:
        """:meth:`authenticate` for the event loop: the lookup runs inline while no other
        thread holds the store (it takes microseconds), else in a worker thread, so the loop
        never waits for the store's lock; the rare write of a key's last use (every
        ``_TOUCH_EVERY_S``) always goes to a worker thread."""
        lock = getattr(self.store, "lock", None)
        if lock is not None and lock.acquire(blocking=False):
            try:
                principal, key = self._identify(authorization)
            finally:
                lock.release()
        else:
            principal, key = await run_in_threadpool(self._identify, authorization)
        if key is not None and self._touch_due(key):
            await run_in_threadpool(self.store.touch_key, key.id)
        return principal

    def _identify(self, authorization: str | None) -> tuple[Principal, ApiKeyInfo | None]:
        """The request's user, and the active key that says so (None: no key was used)."""
        if self.mode == "none":
            return Principal(self.local_user, "local"), None
        token = _bearer(authorization)
        key = self.store.find_key(hash_secret(token), revoked=True) if token else None
        if key is not None and key.active:
            return Principal(key.user, "key", key.id, key.name), key
        if key is not None:  # revoked: refused even where any other bearer would do
            raise ApiError(
                401,
                f"this API key ({key.id}) was revoked",
                hint="ask for a new key: `chatwright keys create USER`",
                type="invalid_api_key",
                headers=_CHALLENGE,
            )
        if self.open_access():
            return Principal(self.local_user, "local"), None
        if authorization and token is None:
            raise ApiError(
                401,
                "the Authorization header must be 'Bearer <key>'",
                hint=KEY_HINT,
                type="unauthorized",
                headers=_CHALLENGE,
            )
        if token:
            raise ApiError(
                401,
                "this API key is not valid (unknown, revoked, or its user was deleted)",
                hint="ask for a new key: `chatwright keys create USER`",
                type="invalid_api_key",
                headers=_CHALLENGE,
            )
        raise ApiError(
            401, "an API key is required", hint=KEY_HINT, type="unauthorized", headers=_CHALLENGE
        )

    def _touch_due(self, key: ApiKeyInfo) -> bool:
        """Whether to write the key's last use now (then the next is due in
        ``_TOUCH_EVERY_S``)."""
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(key.id, -_TOUCH_EVERY_S) < _TOUCH_EVERY_S:
                return False
            self._touched[key.id] = now
        return True


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_exposure(mode: str, host: str, store: Store) -> None:
    """Refuse to serve off loopback without API keys (see the module's docstring)."""
    if is_loopback(host):
        return
    if mode == "none":
        raise UserError(
            f"refusing to listen on {host} with auth = 'none': anyone who can reach it "
            "could read and write every thread",
            hint='set server.auth to "auto" or "keys" in chatwright.toml and create a key '
            "with `chatwright keys create USER`, or listen on 127.0.0.1",
        )
    if not store.has_api_keys():
        raise UserError(
            f"refusing to listen on {host} without API keys: anyone who can reach it "
            "would act as the local user",
            hint="create a key first: `chatwright keys create USER` "
            "(or listen on 127.0.0.1 with --host 127.0.0.1)",
        )
