"""Connection limits that uvicorn lacks: header and body timeouts, connections per client.

uvicorn times out only idle keep-alive connections (``timeout_keep_alive``): a client that
opens a connection and sends half a request line, or a body a byte now and then, holds its
socket (and a file descriptor) for as long as it likes, before any authentication. Its
``limit_concurrency`` counts every connection of every client together, so one client could
still take them all. :func:`uvicorn_options` gives ``uvicorn.run`` (or ``uvicorn.Config``) an
HTTP protocol class built here, on uvicorn's own (httptools when installed, else h11), with
``[server]``'s limits:

- ``header_timeout_s``: a request's headers must be complete this long after the connection
  opened or the previous answer ended. A partial request is answered 408 and closed; an idle
  connection is just closed.
- ``body_timeout_s``: a body (once its headers are in) may pause at most this long between
  two parts; then 408 (or only the close, if the answer has begun).
- ``max_connections_per_client``: a client address with this many connections open gets 429
  (``Retry-After``) on its next one, which is closed at once. Behind a reverse proxy every
  client has the proxy's address: raise it, or 0 for no limit.

WebSockets are off (``ws="none"``): the app serves none, and an upgraded connection would
leave these counts.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from chatwright.config import ServerSettings
from chatwright.server.errors import error_body, to_json

__all__ = ["limited_protocol", "uvicorn_options"]


def _response(status: int, reason: str, message: str, hint: str, kind: str, *extra: bytes) -> bytes:
    body = to_json(error_body("/", status, message, hint, kind)).encode("utf-8")
    head = [
        f"HTTP/1.1 {status} {reason}".encode(),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *extra,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_TIMEOUT = _response(
    408,
    "Request Timeout",
    "the request did not arrive in time",
    "send the whole request without pausing (see header_timeout_s and body_timeout_s)",
    "request_timeout",
)
_TOO_MANY = _response(
    429,
    "Too Many Requests",
    "too many connections from your address",
    "close some connections, or reuse one (keep-alive); the limit is "
    "max_connections_per_client in [server]",
    "too_many_connections",
    b"retry-after: 1",
)


class _Limits:
    """Mixed into uvicorn's HTTP protocol: one instance per connection. The timer runs for
    what the connection waits on: ``"headers"`` (of the next request) or ``"body"``."""

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0
    max_per_client: ClassVar[int] = 0
    open_per_client: ClassVar[dict[str, int]]  # of this server's connections (its subclass)

    # uvicorn's protocol has these
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    cycle: Any
    flow: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._waiting: str | None = None
        self._seen: Any = None  # the request whose headers came last
        self._partial = False  # bytes of the next request arrived
        self._counted: str | None = None  # the client address counted for this connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        host = self.client[0] if self.client else None
        if host is not None and self.max_per_client:
            held = self.open_per_client.get(host, 0)
            if held >= self.max_per_client:
                transport.write(_TOO_MANY)
                transport.close()
                return
            self.open_per_client[host] = held + 1
            self._counted = host
        self._wait("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        if self._counted is not None:
            left = self.open_per_client.get(self._counted, 1) - 1
            if left > 0:
                self.open_per_client[self._counted] = left
            else:
                self.open_per_client.pop(self._counted, None)
            self._counted = None
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._waiting == "headers":
            self._partial = True
        super().data_received(data)  # type: ignore[misc]
        self._follow(arrived=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self.transport.is_closing():
            return
        self._follow(arrived=False)
        cycle = self.cycle
        if cycle is self._seen and cycle.response_complete and not cycle.more_body:
            self._wait("headers")  # no request pipelined behind: the next one's headers

    def _follow(self, *, arrived: bool) -> None:
        """Move the timer along with the request: its headers came, its body moves or ended."""
        cycle = self.cycle
        if cycle is None or self.transport.is_closing():
            return
        if cycle is not self._seen:
            self._seen = cycle
            if cycle.more_body:
                self._wait("body")
            else:
                self._stop()
        elif self._waiting == "body":
            if not cycle.more_body:
                self._stop()
            elif arrived:
                self._wait("body")

    def _wait(self, what: str) -> None:
        self._stop()
        self._waiting = what
        self._partial = False
        limit = self.header_timeout_s if what == "headers" else self.body_timeout_s
        self._timer = self.loop.call_later(limit, self._expired)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._waiting = None

    def _expired(self) -> None:
        what, self._timer = self._waiting, None
        if self.transport.is_closing():
            return
        if what == "body":
            if self.flow is not None and self.flow.read_paused:
                self._wait("body")  # the app has not read what came: the pause is ours
                return
            cycle = self.cycle
            answer = not cycle.response_started
            cycle.disconnected = True  # the app reading the body sees the client gone
            cycle.message_event.set()
        else:
            answer = self._partial
        self._waiting = None
        if answer:
            self.transport.write(_TIMEOUT)
        self.transport.close()


def _base_protocol() -> type[asyncio.Protocol]:
    try:
        import httptools  # noqa: F401
    except ImportError:  # uvicorn's pure-Python parser
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


def limited_protocol(
    server: ServerSettings, base: type[asyncio.Protocol] | None = None
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (``base``, default httptools or else h11) with ``server``'s
    limits; each class counts its own connections (one per server)."""
    base = base or _base_protocol()
    attributes = {
        "header_timeout_s": server.header_timeout_s,
        "body_timeout_s": server.body_timeout_s,
        "max_per_client": server.max_connections_per_client,
        "open_per_client": {},
    }
    return type(f"Limited{base.__name__}", (_Limits, base), attributes)


def uvicorn_options(server: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` or ``uvicorn.Config`` that apply the limits."""
    return {"http": limited_protocol(server), "ws": "none"}
