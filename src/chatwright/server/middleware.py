"""Two pure ASGI middlewares (no buffering, so streamed answers stay streamed).

:class:`LimitBody` refuses a body over the limit with 413: at once when ``Content-Length``
says so, else by counting the bytes as they arrive (a chunked upload cannot slip past). A body
whose media type the endpoint does not read is refused with 415 before anything reads it (when
an endpoint answers that method there: else the router's 404 or 405 says what is wrong).

:class:`SecurityHeaders` adds the page's Content-Security-Policy, ``nosniff`` and
``no-referrer`` to every response, and ``Cache-Control: no-store`` to API answers (they hold
private data). The interactive API docs (``/docs``) load Swagger UI from its CDN and run an
inline script, so they get a policy that allows exactly that.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatwright.server.errors import error_body, to_json

__all__ = ["CSP", "BodyTooLarge", "LimitBody", "SecurityHeaders", "is_upload"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_DOCS_CSP = (  # Swagger UI (vendored: web.py) sets inline styles
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc")
_UPLOAD = re.compile(r"^/api/(?:collections/[^/]+/documents|import)/?$")  # + thread import
_WITH_BODY = {"POST", "PUT", "PATCH"}


def is_upload(method: str, path: str) -> bool:
    """Whether the request is an upload: documents or a thread import (multipart, with the
    larger limit)."""
    return method == "POST" and bool(_UPLOAD.match(path))


class BodyTooLarge(HTTPException):
    """Raised while reading a body that turned out larger than the limit."""

    kind = "payload_too_large"

    def __init__(self, limit: int, *, upload: bool) -> None:
        super().__init__(413, f"the request body is over the limit of {limit:,} bytes")
        self.hint = (
            "upload fewer or smaller files, or raise max_upload_bytes in [server]"
            if upload
            else "send less, or raise max_body_bytes in [server] of chatwright.toml"
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


async def _send_error(
    send: Send,
    path: str,
    status: int,
    message: str,
    hint: str,
    kind: str,
    headers: dict[str, str] | None = None,
) -> None:
    body = to_json(error_body(path, status, message, hint, kind)).encode("utf-8")
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class LimitBody:
    """Refuse bodies over the limit (413) and of a media type not read here (415)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_upload_bytes: int,
        upload: Callable[[str, str], bool] = is_upload,
        routed: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes
        self.upload = upload
        self.routed = routed  # (method, path): does an endpoint answer it (else: 404/405)?

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        upload = self.upload(method, path)
        limit = self.max_upload if upload else self.max_body
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            error = BodyTooLarge(limit, upload=upload)
            await _send_error(send, path, 413, str(error.detail), error.hint, error.kind)
            return
        refusal = self._media_refusal(scope, upload, length)
        if refusal is not None and (self.routed is None or self.routed(method, path)):
            await _send_error(send, path, 415, *refusal)
            return
        await self._limited(scope, receive, send, limit, upload)

    def _media_refusal(
        self, scope: Scope, upload: bool, length: str | None
    ) -> tuple[str, str, str] | None:
        path = scope["path"]
        if scope["method"] not in _WITH_BODY or not path.startswith(("/api/", "/v1/")):
            return None
        chunked = _header(scope, b"transfer-encoding") is not None
        if not chunked and (length is None or length == "0"):
            return None  # no body: nothing to read
        media = _media_type(_header(scope, b"content-type"))
        if upload:
            if media == "multipart/form-data":
                return None
            return (
                f"uploads must be multipart/form-data, not {media or 'no content type'}",
                "send the files as form fields named 'files' (curl -F files=@report.pdf ...)",
                "unsupported_media_type",
            )
        if media == "application/json" or (
            media.startswith("application/") and media.endswith("+json")
        ):
            return None
        return (
            f"the body must be JSON, not {media or 'no content type'}",
            "send it with Content-Type: application/json",
            "unsupported_media_type",
        )

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, limit: int, upload: bool
    ) -> None:
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, upload=upload)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as error:
            if started:
                raise
            await _send_error(send, scope["path"], 413, str(error.detail), error.hint, error.kind)


class SecurityHeaders:
    """Add the security headers to every response (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        csp = _DOCS_CSP if path in _DOCS else CSP
        private = path.startswith(("/api/", "/v1/"))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                added = [
                    (b"content-security-policy", csp.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if private:
                    added.append((b"cache-control", b"no-store"))
                headers += [(k, v) for k, v in added if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def _local_peer(address: str) -> bool:
    """Whether a client address is this machine (or a test client, which has no address)."""
    if address in ("testclient", "testserver"):  # Starlette's in-process test client
        return True
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _guarded(path: str) -> bool:
    return path.startswith(("/api/", "/v1/")) or path in ("/api", "/v1")


def _host_name(host: str) -> str:
    """``host`` of a Host header without its port (``[::1]:8000`` → ``[::1]``)."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _utf8_path(scope: Scope) -> bool:
    """Whether the path's percent-escapes decode as UTF-8 (``/api/threads/a%ff`` does not)."""
    raw = scope.get("raw_path")
    if not raw or b"%" not in raw:
        return True
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Guard:
    """Who may talk to the API, decided before any body is read.

    - **Path**: one whose percent-escapes are not UTF-8 is refused (400). The server decodes
      them with U+FFFD for each bad byte, so ``/api/threads/a%ff`` and ``a%fe`` would name the
      same thread.
    - **Host** (a server listening on loopback): only ``localhost``, ``127.0.0.1`` or ``[::1]``.
      A web page that rebinds its own domain to 127.0.0.1 (DNS rebinding) sends its own name
      and is refused: without this, any site could read and drive a key-less local server.
    - **Origin**: a browser request that changes something (POST, PUT, PATCH, DELETE) from
      another origin than the server's own, or one listed in ``cors_origins``, is refused
      (403), so a page elsewhere cannot post forms or uploads to it (CSRF).
    - **Authentication** of ``/api`` and ``/v1`` requests, before their body is read or parsed:
      an unauthenticated client cannot make the server spool a 50 MB upload to be told 401.
      The user found is kept in the request's state for the endpoints.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticate: Callable[[str | None], Any],
        loopback: bool,
        origins: list[str],
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        self.loopback = loopback
        self.origins = {o.rstrip("/") for o in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not _utf8_path(scope):
            await _send_error(
                send,
                path,
                400,
                "the path is not valid UTF-8 once its %-escapes are decoded",
                "percent-encode names as UTF-8 (a%C3%A9 for aé); %ff alone is no character",
                "invalid_path",
            )
            return
        host = _header(scope, b"host") or ""
        peer = (scope.get("client") or ("",))[0]
        if self.loopback and peer and not _local_peer(peer):
            # Listening on loopback, a connection from elsewhere means the app is served on
            # an address it was not told about (embedded under another server): refuse it.
            await _send_error(
                send,
                path,
                403,
                "this server accepts local connections only",
                "to serve a network, run `chatwright serve --host 0.0.0.0` with API keys",
                "forbidden_peer",
            )
            return
        if self.loopback and _host_name(host.lower()) not in _LOCAL_HOSTS:
            await _send_error(
                send,
                path,
                400,
                f"this server answers to localhost only, not {host!r}",
                "open it as http://127.0.0.1:PORT or http://localhost:PORT",
                "invalid_host",
            )
            return
        origin = _header(scope, b"origin")
        if origin and scope["method"] in _UNSAFE and not self._allowed(origin, scope, host):
            await _send_error(
                send,
                path,
                403,
                f"requests from {origin} are not allowed",
                "add the origin to [server] cors_origins to let its pages call this server",
                "forbidden_origin",
            )
            return
        if _guarded(path) and scope["method"] != "OPTIONS":
            try:
                principal = await self.authenticate(_header(scope, b"authorization"))
            except Exception as e:  # ApiError: 401 with its message and hint
                status = getattr(e, "status", 401)
                hint = getattr(e, "hint", None) or ""
                kind = getattr(e, "type", "unauthorized")
                headers = getattr(e, "headers", None) or {}
                await _send_error(send, path, status, str(e), hint, kind, headers)
                return
            scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, scope: Scope, host: str) -> bool:
        origin = origin.rstrip("/")
        return origin in self.origins or origin == f"{scope.get('scheme', 'http')}://{host}"
