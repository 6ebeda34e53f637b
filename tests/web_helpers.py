"""Helpers for the browser tests of the web page (tests/test_web.py).

A live uvicorn server on a free loopback port, in a thread, and models for the page's tests.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from chatwright.models.base import ModelEvent, ModelRequest
from chatwright.types import Done, TextDelta, ToolCallEvent, ToolCallPart, Usage

CHROMIUM = "/usr/bin/chromium"


class LiveServer:
    """Runs an ASGI ``app`` with uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any) -> None:
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
