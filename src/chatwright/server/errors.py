"""Every error the server sends is JSON that says what went wrong and how to fix it.

Two shapes, by path:

- ``/api/...`` and the rest: ``{"error": {"message", "hint", "type"}}``;
- ``/v1/...`` (the OpenAI-compatible endpoint): ``{"error": {"message", "type", "param",
  "code"}}``, the shape the OpenAI SDKs parse (the hint is appended to the message).

Statuses follow the chatwright error tree (``errors.py``): a caller's mistake is a 4xx
(``ThreadNotFound`` and other "not found" → 404, "already exists" → 409, the rest → 400), a
model that cannot answer is 502 (503 when unavailable), a store failure is 500 with its
message. Request validation is 422 (400 for a body that is not JSON at all). Anything
unexpected is logged with its traceback and answered 500 without details. Under ``/v1``
request validation is 400, as OpenAI answers it.

Responses escape lone surrogates (``\\ud800``) instead of failing: a message stored with one
(the store keeps any string) can always be read back over HTTP.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from chatwright.errors import (
    ChatwrightError,
    ModelError,
    ModelUnavailable,
    StoreError,
    ThreadNotFound,
    UserError,
)

__all__ = [
    "ApiError",
    "SafeJSONResponse",
    "allowed_methods",
    "error_body",
    "http_hint",
    "install_error_handlers",
    "is_openai",
    "status_of",
    "to_json",
    "type_of",
]

log = logging.getLogger("chatwright.server")

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_PARAM = re.compile(r"\\{[^/]+?\\}")  # a path parameter, in a re.escape()d template
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def to_json(value: Any) -> str:
    """JSON text that is always valid UTF-8: lone surrogates are written as ``\\uXXXX``."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class SafeJSONResponse(JSONResponse):
    """The server's JSON response: :func:`to_json`, so any stored string can be sent."""

    def render(self, content: Any) -> bytes:
        return to_json(content).encode("utf-8")


class ApiError(Exception):
    """An error answered as is: ``status``, a message, a hint, a machine-readable type."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        hint: str | None = None,
        type: str = "error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.type = type
        self.param = param
        self.headers = headers
        self.extra = extra  # more fields of the error object (``/api`` only)


def type_of(exc: ChatwrightError) -> str:
    """``ThreadNotFound`` → ``thread_not_found``; a plain UserError says what kind it is."""
    if type(exc) is UserError:
        status = status_of(exc)
        return {404: "not_found", 409: "conflict"}.get(status, "invalid_request")
    return _CAMEL.sub("_", type(exc).__name__).lower()


def status_of(exc: ChatwrightError) -> int:
    if isinstance(exc, ThreadNotFound):
        return 404
    if isinstance(exc, UserError):
        if exc.message.endswith(" not found"):
            return 404
        if exc.message.endswith(" already exists"):
            return 409
        return 400
    if isinstance(exc, ModelUnavailable):
        return 503
    if isinstance(exc, ModelError):
        return 502
    return 500  # StoreError, and anything else of ours


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",  # OpenAI's type for a request rate limit
}


def error_body(
    path: str,
    status: int,
    message: str,
    hint: str | None,
    type: str,
    param: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON of an error, in the shape the path's clients expect (see the module);
    ``extra`` fields are added to the ``/api`` shape (OpenAI's has exactly its four)."""
    if is_openai(path):
        text = f"{message} (hint: {hint})" if hint else message
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request")
        return {"error": {"message": text, "type": kind, "param": param, "code": type}}
    return {"error": {"message": message, "hint": hint, "type": type, **(extra or {})}}


def is_openai(path: str) -> bool:
    """Whether ``path`` is the OpenAI-compatible endpoint's (errors in OpenAI's shape)."""
    return path.startswith("/v1/") or path == "/v1"


def _respond(
    request: Request,
    status: int,
    message: str,
    hint: str | None,
    type: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> SafeJSONResponse:
    body = error_body(request.url.path, status, message, hint, type, param, extra)
    return SafeJSONResponse(body, status_code=status, headers=headers)


def _where(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def describe_validation(errors: Sequence[Any]) -> tuple[str, str | None, str | None]:
    """(message, hint, param) for pydantic/FastAPI validation errors, readable."""
    lines, param = [], None
    for item in errors[:10]:
        where = _where(item.get("loc", ()))
        param = param or where
        lines.append(f"{where}: {item.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    hint = "see the API reference at /docs for the expected body"
    return "invalid request: " + "; ".join(lines) + more, hint, param


async def _api_error(request: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, ApiError)
    return _respond(
        request,
        exc.status,
        exc.message,
        exc.hint,
        exc.type,
        param=exc.param,
        headers=exc.headers,
        extra=exc.extra,
    )


# The engine's hints name CLI commands; over HTTP, the endpoint that does the same.
_HTTP_HINTS = {
    "`chatwright threads list`": "GET /api/threads",
    "`chatwright collections list`": "GET /api/collections",
    "`chatwright memory list`": "GET /api/memory",
}


def http_hint(hint: str | None) -> str | None:
    for cli, endpoint in _HTTP_HINTS.items():
        if hint and cli in hint:
            hint = hint.replace(cli, endpoint)
    return hint


async def _chatwright_error(request: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, ChatwrightError)
    status = status_of(exc)
    if isinstance(exc, StoreError) or status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return _respond(request, status, exc.message, http_hint(exc.hint), type_of(exc))


async def _validation_error(request: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        why = (detail.get("ctx") or {}).get("error", "")
        return _respond(
            request,
            400,
            f"the request body is not valid JSON{': ' + why if why else ''}",
            'send a JSON object with Content-Type: application/json, e.g. {"text": "hi"}',
            "invalid_json",
        )
    message, hint, param = describe_validation(errors)
    status = 400 if is_openai(request.url.path) else 422  # OpenAI answers 400 to any of them
    return _respond(request, status, message, hint, "validation_error", param=param)


_HTTP_MESSAGES = {
    404: ("no such endpoint", "see the API reference at /docs"),
    405: ("this method is not allowed here", "see the API reference at /docs"),
}


def allowed_methods(app: Any, path: str) -> set[str] | None:
    """The methods the app's OpenAPI spec lists for ``path`` (None: a path it does not list,
    such as the web page's). The router's own 405 names only the first route whose path
    matched, so a path with a GET and a POST route said ``Allow: GET`` to a PUT."""
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "_allow", None)
    if table is None:
        table = []
        for template, operations in app.openapi().get("paths", {}).items():
            pattern = re.compile(_PARAM.sub("[^/]+", re.escape(template)) + "$")
            methods = {m.upper() for m in operations if m in _HTTP_METHODS}
            table.append((pattern, methods))
        app.state._allow = table
    found = [methods for pattern, methods in table if pattern.match(path)]
    return set().union(*found) if found else None


async def _http_error(request: Request, exc: Exception) -> SafeJSONResponse:
    assert isinstance(exc, HTTPException)
    code = exc.status_code
    message, hint = _HTTP_MESSAGES.get(code, (str(exc.detail), None))
    headers = exc.headers
    if code == 405:
        methods = allowed_methods(request.app, request.url.path)
        if methods:
            headers = {**(headers or {}), "Allow": ", ".join(sorted(methods))}
    return _respond(
        request,
        code,
        message,
        getattr(exc, "hint", hint),
        getattr(exc, "kind", f"http_{code}"),
        headers=headers,
    )


async def _unexpected(request: Request, exc: Exception) -> SafeJSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _respond(
        request,
        500,
        f"internal server error ({type(exc).__name__})",
        "this is a bug in chatwright: the server's log has the details",
        "internal_error",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to a JSON error (see the module's docstring)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ChatwrightError, _chatwright_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
