"""Helpers for the browser tests of the web page (tests/test_web.py).

A live uvicorn server on a free loopback port, in a thread, and models for the page's tests.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from chatwright.models.base import ModelEvent, ModelRequest
from chatwright.types import Done, TextDelta, ToolCallEvent, ToolCallPart, Usage

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, driven by Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def watched_page(
    browser: Any,
    url: str,
    *,
    allowed: Callable[[Any, str], bool] = lambda page, text: False,
    **context_args: Any,
) -> Iterator[Any]:
    """A page on ``url`` in a fresh browser context; fails the test on a console error (but
    those ``allowed(page, text)`` accepts) or an uncaught exception in the page (a CSP
    violation is a console error)."""
    context = browser.new_context(**context_args)
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error" and not allowed(page, message.text):
            problems.append(f"console error: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    try:
        page.goto(url)
        yield page
        page.wait_for_timeout(50)  # let late console messages arrive
    finally:
        context.close()
    assert not problems, "errors in the page:\n" + "\n".join(problems)


class LiveServer:
    """Runs an ASGI ``app`` with uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="web-test-server", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class ConnectionDropped(Exception):
    """Raised by :class:`StreamCutter` to drop a connection mid-response."""


class StreamCutter:
    """ASGI middleware for the test server: once armed, the next turn stream (``POST
    .../messages``) breaks after ``writes`` body writes: uvicorn drops the connection mid-body,
    as when the replica behind a load balancer dies. The server's turn goes on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.armed = 0

    def arm(self, writes: int) -> None:
        self.armed = writes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not (
            self.armed
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith("/messages")
        ):
            await self.app(scope, receive, send)
            return
        left, self.armed = self.armed, 0

        async def cut(message: Any) -> None:
            nonlocal left
            if message["type"] == "http.response.body" and message.get("body"):
                if left <= 0:
                    raise ConnectionDropped("the test cut this stream")
                left -= 1
            await send(message)

        await self.app(scope, receive, cut)


class NoteTakingModel:
    """Calls ``save_note`` once, then answers from the tool's result: for approval tests."""

    def __init__(self, name: str = "test:notes") -> None:
        self.name = name

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        last_user = max(i for i, m in enumerate(request.messages) if m.role == "user")
        turn = request.messages[last_user + 1 :]
        results = [p for m in turn if m.role == "tool" for p in m.parts]
        if not results:
            call = ToolCallPart(
                id="call_note_1", name="save_note", arguments='{"text": "buy milk"}'
            )
            yield ToolCallEvent(call=call)
            yield Usage(input_tokens=1, output_tokens=1)
            yield Done(reason="tool_calls")
            return
        content = getattr(results[-1], "content", "")
        yield TextDelta(text=f"The tool said: {content}")
        yield Usage(input_tokens=1, output_tokens=1)
        yield Done(reason="stop")


# In the page: record every length the streaming answer's text takes, to see it grow.
WATCH_STREAM_JS = """
() => {
  window.__lengths = [];
  const root = document.getElementById('messages');
  const observer = new MutationObserver(() => {
    const answers = root.querySelectorAll('.msg.assistant .content');
    const last = answers[answers.length - 1];
    if (last) window.__lengths.push(last.textContent.length);
  });
  observer.observe(root, {childList: true, subtree: true, characterData: true});
}
"""


def fulfill_cut_short(route: Any, events: int) -> str:
    """Answer the page's routed request for a turn's stream with the server's first ``events``
    events and half of the next one, then end it: a connection closed early, as when the
    replica behind a load balancer restarts. The server's turn goes on. Returns the SSE id of
    the last whole event."""
    request = route.request
    url = urllib.parse.urlsplit(request.url)
    keep = {"content-type", "accept", "authorization"}
    headers = {k: v for k, v in request.headers.items() if k.lower() in keep}
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request(request.method, url.path, body=request.post_data_buffer, headers=headers)
        res = conn.getresponse()
        body, last_id, whole, has_data = b"", "", 0, False
        while whole < events:
            line = res.readline()
            assert line, f"the stream ended after {whole} events"
            body += line
            if line.startswith(b"id:"):
                last_id = line[3:].strip().decode()
            has_data = has_data or line.startswith(b"data:")
            if not line.strip() and has_data:
                whole, has_data = whole + 1, False
        head = res.readline() + res.readline()  # the next event's id and name
        data = res.readline()
        assert head.startswith(b"id:") and data.startswith(b"data:"), (head, data)
        body += head + data[: len(data) // 2]
        content_type = res.getheader("content-type") or "text/event-stream"
    finally:
        conn.close()
    route.fulfill(status=200, headers={"content-type": content_type}, body=body)
    return last_id
