"""Fake OpenAI and Anthropic HTTP servers, for testing the providers without the internet.

:class:`FakeServer` listens on 127.0.0.1 (a free port) in a background thread, answers each
POST with the next scripted :class:`Reply`, and records every request it receives. The
builders below write replies in each provider's real wire format: OpenAI's
``data: {chunk}`` lines ending in ``data: [DONE]``, and Anthropic's ``event:``/``data:`` pairs.
:class:`FakeOllama` instead answers from its state, as Ollama does (``/api/tags``, ``/v1``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FakeOllama",
    "FakeServer",
    "Recorded",
    "Reply",
    "anthropic_error",
    "anthropic_message_end",
    "anthropic_message_start",
    "anthropic_stream",
    "anthropic_text_block",
    "anthropic_tool_block",
    "closed_port_url",
    "openai_chunk",
    "openai_error",
    "openai_stream",
    "openai_text",
    "openai_tool_call",
    "openai_usage",
]


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP response.

    It is sent after ``delay_s`` seconds (to test timeouts); with ``cut_short`` the headers
    promise more bytes than the body has, so the client sees the connection drop mid-stream.
    """

    status: int
    body: bytes
    content_type: str = "text/event-stream"
    delay_s: float = 0.0
    cut_short: bool = False


@dataclass(frozen=True)
class Recorded:
    """One request the server received: its path, headers and decoded JSON body."""

    path: str
    headers: dict[str, str]
    body: Any


class FakeServer:
    """A local HTTP server playing back scripted replies; use it as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, without a trailing slash."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def last_body(self) -> Any:
        """The JSON body of the most recent request."""
        return self.requests[-1].body

    def add(self, *replies: Reply) -> None:
        """Queue replies, answered one per request in order."""
        with self._lock:
            self._replies.extend(replies)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _answer(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._replies:
                return self._replies.popleft()
        return _json_reply(500, {"error": {"message": "the fake server has no reply scripted"}})


def _handler_for(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = server._answer(Recorded(self.path, headers, json.loads(raw or b"null")))
            server._closing.wait(reply.delay_s)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                length = len(reply.body) + (1000 if reply.cut_short else 0)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(reply.body)
            except ConnectionError:
                pass  # the client gave up waiting, as timeout tests expect

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler


def closed_port_url() -> str:
    """The URL of a local port where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _json_reply(status: int, body: Any) -> Reply:
    return Reply(status, json.dumps(body).encode(), "application/json")


# -- OpenAI chat completions --------------------------------------------------------------
def openai_stream(*chunks: dict[str, Any]) -> Reply:
    """An SSE reply: one ``data:`` line per chunk, then ``data: [DONE]``."""
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks]
    return Reply(200, ("".join(lines) + "data: [DONE]\n\n").encode())


def openai_chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; with ``usage`` only, the final usage chunk (no choices)."""
    choices = [] if usage else [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "choices": choices,
        "usage": usage,
    }


def openai_text(*pieces: str) -> list[dict[str, Any]]:
    """Chunks streaming ``pieces`` of content, the first one also carrying the role."""
    first = [openai_chunk({"role": "assistant", "content": ""})]
    return first + [openai_chunk({"content": p}) for p in pieces]


def openai_tool_call(index: int, call_id: str, name: str, *arguments: str) -> list[dict[str, Any]]:
    """Chunks of one streamed tool call: id and name first, then the arguments in pieces."""
    function = {"name": name, "arguments": ""}
    head = {"index": index, "id": call_id, "type": "function", "function": function}
    rest = [{"index": index, "function": {"arguments": a}} for a in arguments]
    return [openai_chunk({"tool_calls": [d]}) for d in [head, *rest]]


def openai_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The final chunk sent for ``stream_options={"include_usage": true}``."""
    total = prompt_tokens + completion_tokens
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    return openai_chunk(usage={**usage, "total_tokens": total})


def openai_error(status: int, message: str, kind: str = "invalid_request_error") -> Reply:
    """An error response shaped like OpenAI's."""
    return _json_reply(status, {"error": {"message": message, "type": kind, "code": None}})


# -- Anthropic messages -------------------------------------------------------------------
def anthropic_stream(*events: dict[str, Any]) -> Reply:
    """An SSE reply: ``event: <type>`` and ``data: <json>`` for each event."""
    text = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    return Reply(200, text.encode())


def anthropic_message_start(input_tokens: int) -> dict[str, Any]:
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "fake-model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    return {"type": "message_start", "message": message}


def anthropic_text_block(index: int, *pieces: str) -> list[dict[str, Any]]:
    """A text content block streamed as ``text_delta`` pieces."""
    deltas = [{"type": "text_delta", "text": p} for p in pieces]
    return _block(index, {"type": "text", "text": ""}, deltas)


def anthropic_tool_block(index: int, call_id: str, name: str, *json_pieces: str) -> list[dict]:
    """A ``tool_use`` content block whose input streams as ``input_json_delta`` pieces."""
    start = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
    deltas = [{"type": "input_json_delta", "partial_json": p} for p in json_pieces]
    return _block(index, start, deltas)


def _block(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[dict]:
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def anthropic_message_end(stop_reason: str, output_tokens: int) -> list[dict[str, Any]]:
    """``message_delta`` (stop reason, output usage) then ``message_stop``."""
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return [
        {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}},
        {"type": "message_stop"},
    ]


def anthropic_error(status: int, message: str, kind: str) -> Reply:
    """An error response shaped like Anthropic's."""
    return _json_reply(status, {"type": "error", "error": {"type": kind, "message": message}})


# -- Ollama ---------------------------------------------------------------------------------
class FakeOllama:
    """A local server speaking the parts of Ollama's API chatwright uses: ``GET /api/tags``,
    ``GET /v1/models`` and streamed ``POST /v1/chat/completions``, which answers
    ``<model> says: <last user message>``, or Ollama's 404 for a model not pulled.

    With ``api_key`` set, the ``/v1`` routes want ``Authorization: Bearer <api_key>`` (to
    stand in for any OpenAI-compatible server that needs a key). Every request is recorded.
    """

    def __init__(self, models: tuple[str, ...] = ("llama3:latest",), api_key: str | None = None):
        self.models = list(models)
        self.api_key = api_key
        self.delay_s = 0.0  # before each chat answer (to test timeouts)
        self.requests: list[Recorded] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ollama_handler(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def host_port(self) -> str:
        """``127.0.0.1:<port>``: OLLAMA_HOST as people write it, without a scheme."""
        return self.url.removeprefix("http://")

    def __enter__(self) -> FakeOllama:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def find(self, name: str) -> str | None:
        """The pulled model ``name`` means (``llama3`` is ``llama3:latest``), or None."""
        full = name if ":" in name else f"{name}:latest"
        return full if full in self.models else None

    def answer(self, path: str, method: str, headers: dict[str, str], body: Any) -> Reply:
        self.requests.append(Recorded(path, headers, body))
        wanted = f"Bearer {self.api_key}"
        if path.startswith("/v1/") and self.api_key and headers.get("authorization") != wanted:
            return openai_error(401, "Incorrect API key provided", "invalid_api_key")
        if method == "GET" and path == "/api/tags":
            return _json_reply(200, {"models": [_ollama_tag(m) for m in self.models]})
        if method == "GET" and path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 1, "owned_by": "library"}
                for m in self.models
            ]
            return _json_reply(200, {"object": "list", "data": data})
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat(body)
        return _json_reply(404, {"error": "404 page not found"})

    def _chat(self, body: dict[str, Any]) -> Reply:
        time.sleep(self.delay_s)
        model = self.find(str(body.get("model", "")))
        if model is None:
            message = f'model "{body.get("model")}" not found, try pulling it first'
            return _json_reply(404, {"error": {"message": message, "type": "api_error"}})
        last = next(
            (m.get("content") for m in reversed(body["messages"]) if m.get("role") == "user"), ""
        )
        text = f"{model} says: {last}"
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
            reply = {"id": "chatcmpl-1", "object": "chat.completion", "model": model}
            return _json_reply(200, {**reply, "created": 1, "choices": [choice], "usage": usage})
        pieces = [w + " " for w in text.split(" ")]
        pieces[-1] = pieces[-1].rstrip(" ")
        chunks = [*openai_text(*pieces), openai_chunk(finish_reason="stop")]
        return openai_stream(*chunks, openai_usage(3, len(text.split())))


def _ollama_tag(name: str) -> dict[str, Any]:
    details = {"format": "gguf", "family": "llama", "parameter_size": "8.0B"}
    size = 4_661_224_676
    return {"name": name, "model": name, "size": size, "digest": "0" * 64, "details": details}


def _ollama_handler(server: FakeOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = server.answer(self.path, method, headers, json.loads(raw or b"null"))
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def do_GET(self) -> None:
            self._reply("GET")

        def do_POST(self) -> None:
            self._reply("POST")

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler
