"""The server on a real socket (uvicorn on a free loopback port): what only a real connection
shows. A client that goes away mid-answer, the official OpenAI SDK, approvals answered while
the stream is open."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from chatwright import Chatbot
from chatwright.config import Settings
from chatwright.models.test import ScriptedModel, tool_call
from chatwright.server import create_app
from chatwright.server.connections import uvicorn_options
from chatwright.store import SQLiteStore
from chatwright.tools import Tool
from chatwright.types import Message

openai = pytest.importorskip("openai")


def make_settings(tmp_path: Path, **top: Any) -> Settings:
    values: dict[str, Any] = {
        "model": "test:echo",
        "embedder": "test:hash",
        "data_dir": tmp_path / "data",
        "server": {"preload": False, "shutdown_grace_s": 5},
    }
    return Settings(**(values | top))


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port, as ``chatwright serve`` does (with
    its connection limits); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options = uvicorn_options(app.state.chatwright.settings.server)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[str]:
    """A server whose default bot runs test:slow (one word every 50 ms)."""
    with serving(create_app(make_settings(tmp_path, model="test:slow"))) as url:
        yield url


def sse_lines(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs as they arrive."""
    name = "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:].strip())
            name = "message"


def history(url: str, thread: str, headers: dict[str, str] | None = None) -> list[Any]:
    response = httpx.get(f"{url}/api/threads/{thread}/messages", headers=headers)
    return response.json()["messages"] if response.status_code == 200 else []


def wait_for(condition: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError("timed out")


# -- the turn outlives its connection -------------------------------------------------------------
def test_a_client_that_goes_away_does_not_cut_the_turn(live: str) -> None:
    words = " ".join(f"word{i}" for i in range(20))  # about a second at 50 ms a word
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{live}/api/threads/gone/messages", json={"text": words}) as r,
    ):
        assert r.status_code == 200
        arrived = time.monotonic()
        lines = sse_lines(r)
        assert next(lines) == ("start", {"thread_id": "gone", "user_seq": 1})
        assert next(lines) == ("text_delta", {"text": "echo: "})
    # the first word came while the answer was being written, and the client is gone now
    assert len(history(live, "gone")) == 1
    messages = wait_for(lambda: (m := history(live, "gone")) and len(m) == 2 and m)
    assert time.monotonic() - arrived > 0.5
    assert messages[1]["text"] == f"echo: {words}"
    assert "interrupted" not in messages[1]["metadata"]


def test_cancel_stops_a_running_turn_and_keeps_what_arrived(live: str) -> None:
    words = " ".join(f"word{i}" for i in range(40))  # about 2 s at 50 ms a word
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{live}/api/threads/stop/messages", json={"text": words}) as r,
    ):
        lines = sse_lines(r)
        assert next(lines)[0] == "start"
        assert next(lines)[0] == "text_delta"
        stopped = client.post(f"{live}/api/threads/stop/cancel").json()
        assert stopped == {"thread_id": "stop", "cancelled": 1}
        rest = list(lines)
        assert rest[-1][0] == "error" and rest[-1][1]["message"].startswith("stopped")
    messages = wait_for(lambda: (m := history(live, "stop")) and len(m) == 2 and m)
    assert messages[1]["metadata"]["interrupted"] is True
    assert messages[1]["text"].startswith("echo:") and messages[1]["text"] != f"echo: {words}"
    nothing = httpx.post(f"{live}/api/threads/stop/cancel").json()
    assert nothing == {"thread_id": "stop", "cancelled": 0}


def test_shutdown_lets_a_running_turn_finish(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, model="test:slow"))
    words = " ".join(f"w{i}" for i in range(10))
    with (
        serving(app) as url,
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{url}/api/threads/t/messages", json={"text": words}) as r,
    ):
        next(sse_lines(r))
    # serving() has stopped the server: its shutdown waited for the turn
    store = SQLiteStore(tmp_path / "data" / "chatwright.db")
    try:
        stored = [m.message for m in store.messages("local", "t")]
    finally:
        store.close()
    assert [m.text for m in stored] == [words, f"echo: {words}"]


# -- the official OpenAI SDK ----------------------------------------------------------------------
def sdk(url: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="anything", max_retries=0, **kwargs)


def test_the_openai_sdk_works_unchanged(live: str) -> None:
    client = sdk(live)
    assert {"default", "test:slow"} <= {m.id for m in client.models.list()}
    asked = [{"role": "user", "content": "hello sdk"}]
    done = client.chat.completions.create(model="test:echo", messages=asked)  # type: ignore[arg-type]
    assert done.choices[0].message.content == "echo: hello sdk"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == 3
    stream = client.chat.completions.create(
        model="default",
        messages=asked,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert "".join(pieces) == "echo: hello sdk"
    assert usage is not None and usage.total_tokens > 0
    with pytest.raises(openai.NotFoundError, match="openai:gpt-4o"):
        client.chat.completions.create(model="openai:gpt-4o", messages=asked)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):  # as OpenAI answers it
        client.chat.completions.create(model="test:echo", messages=[])
    assert httpx.get(f"{live}/api/threads").json()["threads"] == []  # stateless: none stored


def test_the_thread_header_continues_a_chatwright_thread(live: str) -> None:
    client = sdk(live, default_headers={"X-Chatwright-Thread": "sdk"})
    first = client.chat.completions.create(
        model="test:echo",
        messages=[{"role": "user", "content": "My name is Ada."}],
    )
    assert first.choices[0].message.content == "echo: My name is Ada."
    # only the last message is the new turn; the earlier ones come from the thread itself
    stream = client.chat.completions.create(
        model="test:context",
        messages=[
            {"role": "user", "content": "ignored, the thread has its own history"},
            {"role": "user", "content": "What is my name?"},
        ],
        stream=True,
    )
    seen = json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    texts = [
        "".join(p.get("text", "") for p in m["parts"])
        for m in seen["messages"]
        if m["role"] != "system"
    ]
    assert texts == ["My name is Ada.", "echo: My name is Ada.", "What is my name?"]
    stored = [m["text"] for m in history(live, "sdk")]
    assert stored[:3] == ["My name is Ada.", "echo: My name is Ada.", "What is my name?"]
    assert len(stored) == 4


# -- approvals ------------------------------------------------------------------------------------
def test_a_tool_call_waits_for_the_users_approval(tmp_path: Path) -> None:
    deleted: list[str] = []

    def delete_file(path: str) -> str:
        """Delete a file.

        Args:
            path: which file.
        """
        deleted.append(path)
        return f"deleted {path}"

    model = ScriptedModel(
        [
            Message.assistant(tool_calls=[tool_call("delete_file", {"path": "a.txt"}, id="c1")]),
            "It is gone.",
            Message.assistant(tool_calls=[tool_call("delete_file", {"path": "b.txt"}, id="c2")]),
            "I kept it.",
        ]
    )
    settings = make_settings(tmp_path)
    tool = Tool.from_function(delete_file, side_effects=True)
    bot = Chatbot(model, store=SQLiteStore(settings.db_path), settings=settings, tools=[tool])
    with serving(create_app(settings, bots={"default": bot})) as url, httpx.Client(timeout=10) as c:
        for approved, expected in ((True, "deleted a.txt"), (False, "not run")):
            events = []
            with c.stream("POST", f"{url}/api/threads/t/messages", json={"text": "go"}) as r:
                for name, data in sse_lines(r):
                    events.append((name, data))
                    if name == "approval_needed":
                        call_id = data["call"]["id"]
                        assert data["reason"] == "delete_file has side effects"
                        assert data["description"].startswith("Delete a file")
                        pending = c.get(f"{url}/api/threads/t/approvals").json()
                        assert pending["pending"] == [call_id]
                        [waiting] = pending["calls"]  # enough for a page reloaded meanwhile
                        assert waiting["name"] == "delete_file" and waiting["id"] == call_id
                        assert (
                            '"a.txt"' in waiting["arguments"] or '"b.txt"' in waiting["arguments"]
                        )
                        assert waiting["reason"] == "delete_file has side effects"
                        if approved:
                            second_turn_is_refused_at_once(c, url, call_id)
                        answer = c.post(
                            f"{url}/api/threads/t/approvals/{call_id}", json={"approved": approved}
                        )
                        assert answer.json()["approved"] is approved
            names = [name for name, _ in events]
            assert names[:3] == ["start", "tool_call", "approval_needed"]
            assert names[-2:] == ["trace", "done"]
            result = next(data["result"] for name, data in events if name == "tool_result")
            assert result["content"].startswith(expected)
        assert deleted == ["a.txt"]
        again = c.post(f"{url}/api/threads/t/approvals/c1", json={"approved": True})
        assert again.status_code == 404 and "no tool call" in again.json()["error"]["message"]
        roles = [m["role"] for m in history(url, "t")]
        assert roles == ["user", "assistant", "tool", "assistant"] * 2
    model.assert_complete()


def second_turn_is_refused_at_once(client: httpx.Client, url: str, call_id: str) -> None:
    """A turn sent to a thread waiting for an approval would wait behind it: 409 instead,
    naming the call, at once (and even when not streamed)."""
    started = time.monotonic()
    second = client.post(
        f"{url}/api/threads/t/messages", json={"text": "again", "stream": False}, timeout=5
    )
    assert second.status_code == 409
    error = second.json()["error"]
    assert error["type"] == "approval_pending" and error["pending"] == [call_id]
    assert [(c["id"], c["name"]) for c in error["calls"]] == [(call_id, "delete_file")]
    assert f"approvals/{call_id}" in error["hint"]
    via_openai = client.post(
        f"{url}/v1/chat/completions",
        json={"model": "default", "messages": [{"role": "user", "content": "again"}]},
        headers={"X-Chatwright-Thread": "t"},
        timeout=5,
    )
    assert via_openai.status_code == 409
    assert f"{call_id} (delete_file)" in via_openai.json()["error"]["message"]
    assert time.monotonic() - started < 3


# -- limits -----------------------------------------------------------------------------------
def test_a_user_runs_at_most_max_turns_per_user_at_once(tmp_path: Path) -> None:
    server = {"preload": False, "shutdown_grace_s": 5, "max_turns_per_user": 1}
    settings = make_settings(tmp_path, model="test:slow", server=server)
    words = " ".join(f"w{i}" for i in range(40))  # about 2 s at 50 ms a word
    hi = {"text": "hi", "stream": False}
    with serving(create_app(settings)) as url, httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{url}/api/threads/a/messages", json={"text": words}) as r:
            assert next(sse_lines(r))[0] == "start"
            other = client.post(f"{url}/api/threads/b/messages", json=hi)
            assert other.status_code == 429 and other.headers["retry-after"] == "2"
            error = other.json()["error"]
            assert error["type"] == "too_many_turns" and "max_turns_per_user" in error["hint"]
            stateless = client.post(
                f"{url}/v1/chat/completions",
                json={"model": "test:echo", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert stateless.status_code == 429 and stateless.json()["error"]["type"] == "requests"
            embeddings = client.post(
                f"{url}/v1/embeddings", json={"model": "test:hash", "input": "hi"}
            )
            assert embeddings.status_code == 429
        assert client.post(f"{url}/api/threads/a/cancel").json()["cancelled"] == 1
        wait_for(lambda: client.post(f"{url}/api/threads/b/messages", json=hi).status_code == 200)


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What the server sends until it closes the connection (a timeout raises)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_half_sent_requests_time_out_and_one_address_holds_few_connections(
    tmp_path: Path,
) -> None:
    server = {
        "preload": False,
        "header_timeout_s": 1.0,
        "body_timeout_s": 1.0,
        "max_connections_per_client": 4,
    }
    with serving(create_app(make_settings(tmp_path, server=server))) as url:
        host, port = url.removeprefix("http://").split(":")

        def connect() -> socket.socket:
            return socket.create_connection((host, int(port)), timeout=5)

        with connect() as half:  # half a request's headers: 408, then closed
            half.sendall(b"GET /api/me HTTP/1.1\r\nHost: localhost\r\n")
            started = time.monotonic()
            answer = read_until_closed(half)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in answer
        assert 0.5 < time.monotonic() - started < 4
        with connect() as idle:  # nothing sent: closed without a word
            assert read_until_closed(idle) == b""
        head = (
            b"POST /api/threads HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 16\r\n\r\n"
        )
        with connect() as stalled:  # a body that stops coming: 408
            stalled.sendall(head + b'{"id": ')
            assert read_until_closed(stalled).startswith(b"HTTP/1.1 408 ")
        with connect() as slow:  # one that pauses, each time less than the limit: fine
            slow.sendall(head)
            for part in (b'{"id"', b': "slo', b'wly"}'):
                time.sleep(0.6)
                slow.sendall(part)
            assert read_until_closed(slow).startswith(b"HTTP/1.1 201 ")
        held = [connect() for _ in range(4)]
        try:
            for sock in held:
                sock.sendall(b"GET /api/me HTTP/1.1\r\n")
            time.sleep(0.2)
            with connect() as fifth:
                answer = read_until_closed(fifth)
            assert answer.startswith(b"HTTP/1.1 429 ") and b"\r\nretry-after: 1\r\n" in answer
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: httpx.get(f"{url}/api/threads/slowly").status_code == 200)
