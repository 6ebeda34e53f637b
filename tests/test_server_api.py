"""The HTTP API in process (FastAPI's TestClient): every endpoint, errors, users, keys.

Streaming against a real server (disconnects, the OpenAI SDK, approvals) is in
test_server_live.py; the commands in test_server_cli.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chatwright import Chatbot
from chatwright.config import Settings
from chatwright.errors import ModelResponseError, ModelUnavailable
from chatwright.models import ModelRequest
from chatwright.server import create_app
from chatwright.server.middleware import CSP
from chatwright.store import SQLiteStore
from chatwright.tools import Tool
from chatwright.types import Done, TextDelta, Usage

LOCAL = "http://localhost"  # the server on loopback answers to local host names only

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- helpers ----------------------------------------------------------------------------------
def make_settings(tmp_path: Path, **server: Any) -> Settings:
    return Settings(
        model="test:echo",
        embedder="test:hash",
        data_dir=tmp_path / "data",
        server={"preload": False, **server},
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url=LOCAL) as c:
        yield c


def store_of(client: TestClient) -> SQLiteStore:
    return client.app.state.chatwright.store  # type: ignore[attr-defined,no-any-return]


def sse(text: str) -> list[tuple[str, Any]]:
    """(event, data) pairs of a Server-Sent Events body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "hint", "type"}, body
    return body["error"]  # type: ignore[no-any-return]


def key_for(client: TestClient, user: str, name: str = "") -> tuple[str, dict[str, str]]:
    store = store_of(client)
    if store.find_user(user) is None:
        store.create_user(user)
    key_id, secret = store.create_api_key(user, name)
    return key_id, {"Authorization": f"Bearer {secret}"}


def wait_job(client: TestClient, job_id: str, headers: dict[str, str] | None = None) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {job}")


class BrokenModel:
    """Streams ``pieces``, then fails with ``error`` (before any text when pieces is empty)."""

    def __init__(self, pieces: list[str], error: Exception) -> None:
        self.name = "test:broken"
        self.pieces = pieces
        self.error = error

    async def stream(self, request: ModelRequest) -> AsyncIterator[Any]:
        for piece in self.pieces:
            yield TextDelta(text=piece)
        raise self.error
        yield Usage()  # pragma: no cover - makes this an async generator
        yield Done()  # pragma: no cover


def app_with(tmp_path: Path, model: Any, **kwargs: Any) -> TestClient:
    settings = make_settings(tmp_path)
    store = SQLiteStore(settings.db_path)
    bot = Chatbot(model, store=store, settings=settings, **kwargs)
    return TestClient(create_app(settings, bots={"default": bot}), base_url=LOCAL)


# -- me, threads --------------------------------------------------------------------------------
def test_me_is_the_local_user_on_loopback_without_keys(client: TestClient) -> None:
    me = client.get("/api/me").json()
    assert me["user"] == "local" and me["auth"] == "local" and me["key"] is None
    assert me["default_bot"] == "default"
    assert me["bots"] == [
        {"name": "default", "model": "test:echo", "description": "", "default": True}
    ]
    assert me["limits"]["max_message_chars"] == 32_000
    # any bearer is accepted while no key exists (the OpenAI SDK always sends one)
    assert client.get("/api/me", headers={"Authorization": "Bearer x"}).status_code == 200


def test_threads_create_get_list_rename_delete(client: TestClient) -> None:
    made = client.post("/api/threads", json={"title": "  My   plans "})
    assert made.status_code == 201
    thread = made.json()
    assert thread["title"] == "My plans" and thread["message_count"] == 0
    assert thread["pinned"] == []
    assert set(thread) == {
        "id",
        "title",
        "created_at",
        "updated_at",
        "message_count",
        "pinned",
        "branch",
    }
    tid = thread["id"]
    assert client.get(f"/api/threads/{tid}").json() == thread
    assert client.post("/api/threads", json={"id": "chosen"}).json()["id"] == "chosen"
    assert client.post("/api/threads").status_code == 201  # no body at all
    listed = client.get("/api/threads").json()
    assert listed["limit"] == 50 and listed["offset"] == 0 and len(listed["threads"]) == 3
    page = client.get("/api/threads", params={"limit": 1, "offset": 1}).json()
    assert len(page["threads"]) == 1
    renamed = client.patch(f"/api/threads/{tid}", json={"title": "Holidays"})
    assert renamed.json()["title"] == "Holidays"
    assert client.delete(f"/api/threads/{tid}").status_code == 204
    gone = client.get(f"/api/threads/{tid}")
    assert gone.status_code == 404 and error_of(gone)["type"] == "thread_not_found"
    assert error_of(gone)["hint"] == "list your threads with GET /api/threads"
    assert client.delete(f"/api/threads/{tid}").status_code == 404


def test_a_taken_thread_id_is_409(client: TestClient) -> None:
    assert client.post("/api/threads", json={"id": "t"}).status_code == 201
    taken = client.post("/api/threads", json={"id": "t"})
    assert taken.status_code == 409 and error_of(taken)["type"] == "conflict"


# -- turns ------------------------------------------------------------------------------------
def test_a_turn_streams_typed_events_then_done(client: TestClient) -> None:
    response = client.post("/api/threads/t1/messages", json={"text": "hello there"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    names = [name for name, _ in events]
    assert events[0] == ("start", {"thread_id": "t1", "user_seq": 1})
    assert names[-2:] == ["trace", "done"]
    assert set(names[1:-2]) == {"text_delta"}
    assert "".join(data["text"] for name, data in events if name == "text_delta") == (
        "echo: hello there"
    )
    trace = events[-2][1]["trace"]
    assert trace["model"] == "test:echo"
    assert trace["stages"][0]["name"] == "load"
    done = events[-1][1]
    assert done == {
        "thread_id": "t1",
        "seq": 2,
        "text": "echo: hello there",
        "message": {"role": "assistant", "parts": [{"kind": "text", "text": "echo: hello there"}]}
        | {"metadata": {}},
        "interrupted": False,
    }
    history = client.get("/api/threads/t1/messages").json()["messages"]
    assert [(m["seq"], m["role"], m["text"]) for m in history] == [
        (1, "user", "hello there"),
        (2, "assistant", "echo: hello there"),
    ]


def test_a_turn_without_streaming_answers_json(client: TestClient) -> None:
    answer = client.post("/api/threads/t/messages", json={"text": "hi", "stream": False}).json()
    assert answer["text"] == "echo: hi" and answer["seq"] == 2 and answer["thread_id"] == "t"
    assert answer["citations"] == [] and answer["interrupted"] is False
    assert answer["trace"]["model"] == "test:echo"
    assert client.get("/api/threads/t").json()["message_count"] == 2


def test_history_has_parts_and_pages(client: TestClient) -> None:
    for i in range(3):
        client.post("/api/threads/t/messages", json={"text": f"m{i}", "stream": False})
    first = client.get("/api/threads/t/messages", params={"limit": 4}).json()
    assert [m["seq"] for m in first["messages"]] == [1, 2, 3, 4]
    assert first["next_after"] == 4
    rest = client.get("/api/threads/t/messages", params={"after": 4}).json()
    assert [m["seq"] for m in rest["messages"]] == [5, 6] and rest["next_after"] is None
    message = rest["messages"][1]
    assert message["parts"] == [{"kind": "text", "text": "echo: m2"}]
    assert message["metadata"] == {} and message["created_at"] > 0
    assert client.get("/api/threads/nope/messages").status_code == 404


def test_traces_by_seq_and_latest(client: TestClient) -> None:
    client.post("/api/threads/t/messages", json={"text": "one", "stream": False})
    client.post("/api/threads/t/messages", json={"text": "two", "stream": False})
    latest = client.get("/api/threads/t/trace/latest").json()
    assert latest["seq"] == 4 and latest["trace"]["model"] == "test:echo"
    assert client.get("/api/threads/t/trace/2").json()["seq"] == 2
    missing = client.get("/api/threads/t/trace/1")  # a user message has no trace
    assert missing.status_code == 404 and "no trace" in error_of(missing)["message"]
    assert client.get("/api/threads/t/trace/first").status_code == 422
    assert client.get("/api/threads/nope/trace/latest").status_code == 404


def test_export_as_json_and_markdown(client: TestClient) -> None:
    client.post("/api/threads/t/messages", json={"text": "export me", "stream": False})
    as_json = client.get("/api/threads/t/export")
    assert as_json.headers["content-type"] == "application/json"
    assert 'filename="thread-t.json"' in as_json.headers["content-disposition"]
    assert [m["seq"] for m in as_json.json()["messages"]] == [1, 2]
    as_md = client.get("/api/threads/t/export", params={"format": "markdown"})
    assert as_md.headers["content-type"].startswith("text/markdown")
    assert "echo: export me" in as_md.text
    assert client.get("/api/threads/t/export", params={"format": "pdf"}).status_code == 422


def test_pins_use_the_users_collections(client: TestClient) -> None:
    client.post("/api/threads", json={"id": "t"})
    client.post("/api/collections", json={"name": "docs"})
    pinned = client.put("/api/threads/t/pins", json={"collections": ["docs", "docs"]})
    assert pinned.status_code == 200 and pinned.json()["pinned"] == ["docs"]
    assert client.put("/api/threads/t/pins", json={"collections": []}).json()["pinned"] == []
    unknown = client.put("/api/threads/t/pins", json={"collections": ["nope"]})
    assert unknown.status_code == 404 and "nope" in error_of(unknown)["message"]
    assert client.put("/api/threads/zz/pins", json={"collections": []}).status_code == 404


def test_a_model_failing_before_any_output_is_an_error_event_after_start(tmp_path: Path) -> None:
    """The stream opens once the message is stored (``start``); a model that then fails is an
    ``error`` event. Bad input is refused with an HTTP error before anything is stored."""
    model = BrokenModel([], ModelUnavailable("the model server is down", hint="start it"))
    with app_with(tmp_path, model) as client:
        response = client.post("/api/threads/t/messages", json={"text": "hi"})
        assert response.status_code == 200
        events = sse(response.text)
        assert [name for name, _ in events] == ["start", "error"]
        assert events[-1][1] == {
            "message": "the model server is down",
            "hint": "start it",
            "type": "model_unavailable",
        }
        assert client.post("/api/threads/t/messages", json={"text": " "}).status_code == 400
        # the user's message was stored before the model was called
        assert [m["role"] for m in client.get("/api/threads/t/messages").json()["messages"]] == [
            "user"
        ]


def test_an_error_after_the_stream_began_is_an_error_event(tmp_path: Path) -> None:
    model = BrokenModel(["partial ", "answer"], ModelResponseError("the provider broke"))
    with app_with(tmp_path, model) as client:
        events = sse(client.post("/api/threads/t/messages", json={"text": "hi"}).text)
        assert [name for name, _ in events] == ["start", "text_delta", "text_delta", "error"]
        assert events[-1][1] == {
            "message": "the provider broke",
            "hint": None,
            "type": "model_response_error",
        }
        stored = client.get("/api/threads/t/messages").json()["messages"][-1]
        assert stored["text"] == "partial answer" and stored["metadata"]["interrupted"] is True
        failed = client.post("/api/threads/u/messages", json={"text": "hi", "stream": False})
        assert failed.status_code == 502


# -- tools --------------------------------------------------------------------------------------
def test_tools_lists_the_bots_tools(tmp_path: Path) -> None:
    def lookup_order(order_id: str) -> str:
        """Find an order.

        Args:
            order_id: the order's number.
        """
        return "shipped"

    cancel = Tool.from_function(lambda order_id: "ok", name="cancel_order", side_effects=True)
    with app_with(tmp_path, "test:echo", tools=[lookup_order, cancel]) as client:
        tools = {t["name"]: t for t in client.get("/api/tools").json()["tools"]}
    assert tools["lookup_order"]["description"].startswith("Find an order")
    assert tools["lookup_order"]["parameters"]["properties"]["order_id"]["type"] == "string"
    assert tools["lookup_order"]["side_effects"] is False
    assert tools["lookup_order"]["source"] == "python"
    assert tools["cancel_order"]["side_effects"] is True
    assert tools["cancel_order"]["auto_approved"] is False


def test_tools_report_mcp_servers_and_their_state(tmp_path: Path) -> None:
    import sys

    server = Path(__file__).parent / "mcp_server.py"
    settings = Settings(
        model="test:echo",
        embedder="test:hash",
        data_dir=tmp_path / "data",
        server={"preload": False},
        mcp={
            "demo": {"command": sys.executable, "args": [str(server)]},
            "gone": {"command": "/nonexistent/server"},
        },
    )
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        body = client.get("/api/tools").json()
    names = {t["name"]: t for t in body["tools"]}
    assert names["demo_add"]["source"] == "mcp:demo" and not names["demo_add"]["side_effects"]
    status = {s["name"]: s["status"] for s in body["mcp_servers"]}
    assert status["demo"].startswith("connected") and status["gone"].startswith("failed")


# -- collections, documents, jobs ---------------------------------------------------------------
def test_collections_upload_and_documents(client: TestClient) -> None:
    made = client.post("/api/collections", json={"name": "handbook", "description": "HR rules"})
    assert made.status_code == 201 and made.json()["documents"] == 0
    assert client.post("/api/collections", json={"name": "handbook"}).status_code == 409
    assert client.post("/api/collections", json={"name": "bad name!"}).status_code == 400
    files = [
        (
            "files",
            ("leave.md", b"# Leave\n\nYou get 25 days of paid leave a year.", "text/markdown"),
        ),
        ("files", ("travel.txt", b"Travel is booked through the portal.", "text/plain")),
        ("files", ("data.xyz", b"what is this", "application/octet-stream")),
    ]
    accepted = client.post("/api/collections/handbook/documents", files=files)
    assert accepted.status_code == 202
    job_id = accepted.json()["job_id"]
    assert accepted.headers["location"] == f"/api/jobs/{job_id}"
    job = wait_job(client, job_id)
    assert job["status"] == "done" and job["done"] == job["total"] == 3
    assert job["report"]["added"] == 2 and job["report"]["skipped"] == 1
    assert job["errors"] == [{"file": "data.xyz", "reason": "unsupported file type '.xyz'"}]
    assert [j["id"] for j in client.get("/api/jobs").json()["jobs"]] == [job_id]
    detail = client.get("/api/collections/handbook").json()
    assert detail["documents"] == 2 and detail["chunks"] >= 2
    docs = {d["source"]: d for d in detail["document_list"]}
    assert set(docs) == {"uploads/leave.md", "uploads/travel.txt"}
    assert docs["uploads/leave.md"]["title"] == "Leave"
    listed = client.get("/api/collections").json()["collections"]
    assert [(c["name"], c["description"], c["documents"]) for c in listed] == [
        ("handbook", "HR rules", 2)
    ]
    patched = client.patch("/api/collections/handbook", json={"description": "All HR rules"})
    assert patched.json()["description"] == "All HR rules"
    # the uploaded documents answer questions
    answer = client.post(
        "/api/threads/t/messages",
        json={"text": "@handbook how many days of paid leave?", "stream": False},
    ).json()
    assert any(c["source"] == "uploads/leave.md" for c in answer["citations"])
    doc_id = docs["uploads/travel.txt"]["id"]
    assert client.delete(f"/api/collections/handbook/documents/{doc_id}").status_code == 204
    assert client.delete(f"/api/collections/handbook/documents/{doc_id}").status_code == 404
    assert client.get("/api/collections/handbook").json()["documents"] == 1
    assert client.delete("/api/collections/handbook").status_code == 204
    assert client.get("/api/collections/handbook").status_code == 404


def test_a_job_of_unreadable_files_fails_with_reasons(client: TestClient) -> None:
    client.post("/api/collections", json={"name": "c"})
    files = [
        ("files", ("broken.docx", b"not a zip at all", "application/octet-stream")),
        ("files", ("empty.txt", b"", "text/plain")),
        ("files", ("../../.hidden", b"x", "text/plain")),
    ]
    job = wait_job(client, client.post("/api/collections/c/documents", files=files).json()["id"])
    assert job["status"] == "failed"
    reasons = {e["file"]: e["reason"] for e in job["errors"]}
    assert set(reasons) == {"broken.docx", "empty.txt", "../../.hidden"}
    assert reasons["../../.hidden"] == "not a usable file name"
    assert client.get("/api/collections/c").json()["documents"] == 0
    missing = client.post("/api/collections/nope/documents", files=files[:1])
    assert missing.status_code == 404
    assert client.get("/api/jobs/job_nope").status_code == 404


# -- user memory --------------------------------------------------------------------------------
def test_memory_add_list_edit_forget(client: TestClient) -> None:
    item = client.post("/api/memory", json={"text": "I am  vegetarian"})
    assert item.status_code == 201 and item.json()["text"] == "I am vegetarian"
    mid = item.json()["id"]
    assert [m["text"] for m in client.get("/api/memory").json()["memories"]] == ["I am vegetarian"]
    edited = client.patch(f"/api/memory/{mid}", json={"text": "I am vegan"})
    assert edited.json()["text"] == "I am vegan"
    assert client.patch(f"/api/memory/{mid}", json={"text": "x" * 501}).status_code == 400
    assert client.post("/api/memory", json={"text": "  "}).status_code == 400
    assert client.delete(f"/api/memory/{mid}").status_code == 204
    assert client.delete(f"/api/memory/{mid}").status_code == 404
    assert client.patch("/api/memory/999", json={"text": "x"}).status_code == 404
    assert client.get("/api/memory").json()["memories"] == []


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input_is_a_4xx_json_error(client: TestClient) -> None:
    url = "/api/threads/t/messages"
    bad_json = client.post(url, content=b'{"text": ', headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and error_of(bad_json)["type"] == "invalid_json"
    wrong_type = client.post(url, json={"text": 42})
    assert wrong_type.status_code == 422
    assert error_of(wrong_type)["message"].startswith("invalid request: text:")
    assert client.post(url, json={"text": "hi", "stream": "yes"}).status_code == 422
    assert client.post(url, json={"txt": "hi"}).status_code == 422  # unknown field, no text
    assert client.post(url, json=["hi"]).status_code == 422
    empty = client.post(url, json={"text": "   "})
    assert empty.status_code == 400 and error_of(empty)["type"] == "invalid_message"
    too_long = client.post(url, json={"text": "x" * 32_001})
    assert too_long.status_code == 400 and "32,000" in error_of(too_long)["message"]
    unknown_bot = client.post(url, json={"text": "hi", "bot": "nope"})
    assert unknown_bot.status_code == 404 and error_of(unknown_bot)["type"] == "bot_not_found"
    plain = client.post(url, content=b"hi", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and error_of(plain)["type"] == "unsupported_media_type"
    assert client.post("/api/collections/c/documents", json={"a": 1}).status_code == 415
    bad_id = client.post("/api/threads/bad%0Aid/messages", json={"text": "hi"})
    assert bad_id.status_code == 400
    nowhere = client.get("/api/nowhere")
    assert nowhere.status_code == 404 and error_of(nowhere)["type"] == "http_404"
    assert client.put("/api/threads").status_code == 405
    assert client.get("/api/threads", params={"limit": 0}).status_code == 422
    assert client.get("/api/threads", params={"limit": "many"}).status_code == 422
    # nothing of the above left a message behind
    assert client.get("/api/threads").json()["threads"] == []


def test_oversized_bodies_are_413(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_body_bytes=2048, max_upload_bytes=4096)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        big = client.post("/api/threads/t/messages", json={"text": "x" * 3000})
        assert big.status_code == 413 and error_of(big)["type"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted
            yield b'{"text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        streamed = client.post(
            "/api/threads/t/messages",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413 and "2,048 bytes" in error_of(streamed)["message"]
        client.post("/api/collections", json={"name": "c"})
        upload = client.post(
            "/api/collections/c/documents", files=[("files", ("a.txt", b"z" * 5000, "text/plain"))]
        )
        assert upload.status_code == 413 and "max_upload_bytes" in error_of(upload)["hint"]
        small = client.post(
            "/api/collections/c/documents", files=[("files", ("a.txt", b"z" * 3000, "text/plain"))]
        )
        assert small.status_code == 202  # uploads have their own, larger limit
        wait_job(client, small.json()["job_id"])
        assert client.get("/api/threads").json()["threads"] == []


def test_any_string_round_trips_lone_surrogates_included(client: TestClient) -> None:
    body = '{"text": "odd \\ud800 text", "stream": false}'
    answer = client.post(
        "/api/threads/t/messages", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 200 and answer.json()["text"] == "echo: odd \ud800 text"
    events = client.post(
        "/api/threads/t/messages",
        content=body.replace("false", "true"),
        headers={"content-type": "application/json"},
    )
    assert sse(events.text)[-1][1]["text"] == "echo: odd \ud800 text"
    assert client.get("/api/threads/t/messages").json()["messages"][0]["text"] == "odd \ud800 text"


# -- users and keys ------------------------------------------------------------------------------
def test_users_never_see_each_others_data(client: TestClient) -> None:
    _, ada = key_for(client, "ada")
    _, bob = key_for(client, "bob")
    client.post(
        "/api/threads/shared/messages", json={"text": "ada's", "stream": False}, headers=ada
    )
    client.post("/api/collections", json={"name": "notes"}, headers=ada)
    memory = client.post("/api/memory", json={"text": "ada fact"}, headers=ada).json()
    files = [("files", ("a.md", b"# A\n\nada's document", "text/markdown"))]
    job = client.post("/api/collections/notes/documents", files=files, headers=ada).json()
    wait_job(client, job["id"], ada)

    for path in ("/api/threads/shared", "/api/threads/shared/messages", "/api/collections/notes"):
        assert client.get(path, headers=bob).status_code == 404, path
    assert client.get(f"/api/jobs/{job['id']}", headers=bob).status_code == 404
    assert client.get("/api/jobs", headers=bob).json()["jobs"] == []
    assert (
        client.patch(f"/api/memory/{memory['id']}", json={"text": "x"}, headers=bob).status_code
        == 404
    )
    assert client.delete(f"/api/memory/{memory['id']}", headers=bob).status_code == 404
    assert client.delete("/api/collections/notes", headers=bob).status_code == 404
    assert client.delete("/api/threads/shared", headers=bob).status_code == 404
    for path, key in (("/api/threads", "threads"), ("/api/collections", "collections")):
        assert client.get(path, headers=bob).json()[key] == []
    assert client.get("/api/memory", headers=bob).json()["memories"] == []
    # the same thread id is bob's own thread
    bobs = client.post(
        "/api/threads/shared/messages", json={"text": "bob's", "stream": False}, headers=bob
    )
    assert bobs.json()["seq"] == 2
    texts = [
        m["text"]
        for m in client.get("/api/threads/shared/messages", headers=ada).json()["messages"]
    ]
    assert texts == ["ada's", "echo: ada's"]
    assert client.get("/api/me", headers=bob).json()["user"] == "bob"


def test_keys_once_one_exists(client: TestClient) -> None:
    key_id, ada = key_for(client, "ada", "laptop")
    me = client.get("/api/me", headers=ada).json()
    assert me["user"] == "ada" and me["auth"] == "key"
    assert me["key"] == {"id": key_id, "name": "laptop"}
    missing = client.get("/api/me")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "chatwright keys create" in error_of(missing)["hint"]
    wrong = client.get("/api/me", headers={"Authorization": "Bearer cw-wrong"})
    assert wrong.status_code == 401 and error_of(wrong)["type"] == "invalid_api_key"
    basic = client.get("/api/me", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401 and "Bearer" in error_of(basic)["message"]
    store_of(client).revoke_key(key_id)
    revoked = client.get("/api/me", headers=ada)
    assert revoked.status_code == 401 and "revoked" in error_of(revoked)["message"]
    # with no active key left, loopback is open again (but the revoked key stays refused)
    assert client.get("/api/me").json()["user"] == "local"
    assert client.get("/api/me", headers=ada).status_code == 401
    _, ada2 = key_for(client, "ada")
    assert client.get("/api/me", headers=ada2).status_code == 200
    store_of(client).delete_user("ada")
    assert client.get("/api/me", headers=ada2).json()["user"] == "local"  # no keys: open
    assert client.get("/openapi.json").status_code == 200  # the spec needs no key


def test_auth_keys_and_none_and_non_loopback(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, auth="keys")), base_url=LOCAL) as client:
        assert client.get("/api/me").status_code == 401
        _, ada = key_for(client, "ada")
        assert client.get("/api/me", headers=ada).json()["user"] == "ada"
    with TestClient(
        create_app(make_settings(tmp_path / "b", auth="none")), base_url=LOCAL
    ) as client:
        assert (
            client.get("/api/me", headers={"Authorization": "Bearer x"}).json()["user"] == "local"
        )
    with TestClient(
        create_app(make_settings(tmp_path / "c"), host="0.0.0.0"), base_url=LOCAL
    ) as client:
        assert client.get("/api/me").status_code == 401
        assert client.get("/v1/models").json()["error"]["type"] == "authentication_error"


# -- the web page and headers ---------------------------------------------------------------------
def test_security_headers_on_every_response(client: TestClient) -> None:
    for path in ("/", "/api/me", "/api/nowhere", "/static/nowhere.js", "/v1/models"):
        response = client.get(path)
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert client.get("/api/me").headers["cache-control"] == "no-store"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text + docs.headers["content-security-policy"]  # works offline
    assert "frame-ancestors 'none'" in docs.headers["content-security-policy"]
    spec = client.get("/openapi.json").json()
    assert "/api/threads/{thread_id}/messages" in spec["paths"]
    assert "/v1/chat/completions" in spec["paths"]


def test_the_web_page_and_its_files(tmp_path: Path, settings: Settings) -> None:
    static = tmp_path / "static"
    (static / "vendor").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>page</title>")
    (static / "app.js").write_text("console.log(1)")
    with TestClient(create_app(settings, static_dir=static), base_url=LOCAL) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<title>page</title>" in page.text
        assert page.headers["content-type"].startswith("text/html")
        script = client.get("/static/app.js")
        assert script.text == "console.log(1)" and "javascript" in script.headers["content-type"]
        assert client.get("/static/../config.py").status_code == 404
    with TestClient(
        create_app(settings, static_dir=tmp_path / "missing"), base_url=LOCAL
    ) as client:
        page = client.get("/")
        assert page.status_code == 200 and "not installed" in page.text
        assert client.get("/static/app.js").status_code == 404


# -- the OpenAI-compatible endpoint (the SDK itself: test_server_live.py) --------------------------
def test_v1_models_lists_bots_and_models(tmp_path: Path) -> None:
    settings = Settings(
        model="test:echo",
        embedder="test:hash",
        data_dir=tmp_path / "data",
        server={"preload": False},
        bots={"support": {"model": "test:slow", "description": "helpdesk"}},
    )
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert set(models) == {"default", "support", "test:echo", "test:slow"}
    assert models["support"]["chatwright"] == {
        "kind": "bot",
        "model": "test:slow",
        "description": "helpdesk",
        "default": False,
    }
    assert models["test:slow"]["chatwright"]["kind"] == "model"
    assert models["default"]["object"] == "model" and models["default"]["owned_by"] == "chatwright"


def test_v1_chat_completions_stateless_and_with_a_thread(client: TestClient) -> None:
    body = {"model": "test:echo", "messages": [{"role": "user", "content": "hi"}]}
    done = client.post("/v1/chat/completions", json=body).json()
    assert done["object"] == "chat.completion"
    assert done["choices"][0]["message"] == {"role": "assistant", "content": "echo: hi"}
    assert done["choices"][0]["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == 2
    assert client.get("/api/threads").json()["threads"] == []  # stateless: nothing stored
    assert client.app.state.chatwright.slots.running == {}  # type: ignore[attr-defined]
    with_thread = client.post(
        "/v1/chat/completions", json=body, headers={"X-Chatwright-Thread": "api"}
    )
    assert with_thread.headers["x-chatwright-thread"] == "api"
    assert with_thread.json()["chatwright"]["thread_id"] == "api"
    assert client.get("/api/threads/api").json()["message_count"] == 2
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True}).text
    lines = [line[5:].strip() for line in streamed.splitlines() if line.startswith("data:")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "echo: hi" and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_v1_errors_are_openai_shaped(client: TestClient) -> None:
    unknown = client.post(
        "/v1/chat/completions",
        json={"model": "openai:gpt-4o", "messages": [{"role": "user", "content": "x"}]},
    )
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found" and error["param"] == "model"
    invalid = client.post("/v1/chat/completions", json={"model": "test:echo", "messages": []})
    assert invalid.status_code == 400 and invalid.json()["error"]["type"] == "invalid_request_error"
    bad_role = client.post(
        "/v1/chat/completions",
        json={"model": "test:echo", "messages": [{"role": "x", "content": ""}]},
    )
    assert bad_role.status_code == 400 and bad_role.json()["error"]["param"] == "messages"
    last_not_user = client.post(
        "/v1/chat/completions",
        json={"model": "test:echo", "messages": [{"role": "assistant", "content": "x"}]},
        headers={"X-Chatwright-Thread": "t"},
    )
    assert last_not_user.status_code == 400


def test_v1_types_are_strict_and_content_null_only_beside_tool_calls(client: TestClient) -> None:
    hi = {"role": "user", "content": "hi"}
    for body, param in (
        ({"messages": [{"role": "user", "content": None}]}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages"),
        ({"messages": [{"role": "system", "content": None}, hi]}, "messages"),
        ({"messages": [{"role": "assistant", "content": None}, hi]}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"messages": [hi], "stream": "yes"}, "stream"),
        ({"messages": [hi], "stream": 1}, "stream"),
        ({"messages": [hi], "max_tokens": "5"}, "max_tokens"),
    ):
        refused = client.post("/v1/chat/completions", json={"model": "test:echo", **body})
        assert refused.status_code == 400, body
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param
    called = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        hi,
        {"role": "assistant", "content": None, "tool_calls": [called]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
        {"role": "user", "content": "and?"},
    ]
    answered = client.post("/v1/chat/completions", json={"model": "test:echo", "messages": history})
    assert answered.status_code == 200
    assert answered.json()["choices"][0]["message"]["content"] == "echo: and?"


def test_thread_ids_that_are_not_utf8_in_the_url_are_refused(client: TestClient) -> None:
    """a%ff and a%fe would both decode to 'a\ufffd': the same thread."""
    for bad in ("a%ff", "a%fe", "%c3", "a%ed%a0%80"):  # the last: an encoded surrogate
        sent = client.post(f"/api/threads/{bad}/messages", json={"text": "hi", "stream": False})
        assert sent.status_code == 400 and error_of(sent)["type"] == "invalid_path", bad
        assert client.get(f"/api/threads/{bad}/messages").status_code == 400
    assert client.get("/api/threads").json()["threads"] == []  # none was made
    accent = client.post("/api/threads/caf%C3%A9/messages", json={"text": "hi", "stream": False})
    assert accent.status_code == 200 and accent.json()["thread_id"] == "café"
    openai_shaped = client.get("/v1/models/%ff")
    assert (
        openai_shaped.status_code == 400 and openai_shaped.json()["error"]["code"] == "invalid_path"
    )


def test_cors_origins_and_preload_at_start_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_origins=["https://app.example"], preload=True)
    store = SQLiteStore(settings.db_path)
    store.create_user("ada")
    store.create_collection("ada", "notes")
    store.close()
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        preflight = client.options(
            "/api/me",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = client.get("/api/me", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# -- who may call: host, origin, authentication before the body ---------------------------------
def test_a_loopback_server_refuses_other_host_names(client: TestClient) -> None:
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends its own Host."""
    refused = client.get("/api/threads", headers={"Host": "rebind.evil.example"})
    assert refused.status_code == 400 and error_of(refused)["type"] == "invalid_host"
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert client.get("/api/threads", headers={"Host": host}).status_code == 200


def test_changes_from_another_origin_are_refused(client: TestClient) -> None:
    """CSRF: a form or fetch from another site's page cannot post to the server."""
    evil = {"Origin": "http://evil.example"}
    refused = client.post("/api/threads", json={"id": "x"}, headers=evil)
    assert refused.status_code == 403 and error_of(refused)["type"] == "forbidden_origin"
    files = {"files": ("a.md", b"# poison", "text/markdown")}
    client.post("/api/collections", json={"name": "notes"})
    upload = client.post("/api/collections/notes/documents", files=files, headers=evil)
    assert upload.status_code == 403
    assert client.get("/api/threads/x").status_code == 404  # nothing was created
    same = client.post("/api/threads", json={"id": "y"}, headers={"Origin": "http://localhost"})
    assert same.status_code == 201
    assert client.get("/api/threads", headers=evil).status_code == 200  # reads: CORS decides


def test_a_listed_origin_may_post(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_origins=["http://app.example"])
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        made = client.post(
            "/api/threads", json={"id": "z"}, headers={"Origin": "http://app.example"}
        )
    assert made.status_code == 201


def test_requests_are_authenticated_before_their_body_is_read(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, auth="keys")), base_url=LOCAL) as client:
        bad_json = client.post(
            "/api/threads", content=b"{bad", headers={"Content-Type": "application/json"}
        )
        assert bad_json.status_code == 401  # not 400: the body was never parsed
        assert bad_json.headers["www-authenticate"].startswith("Bearer")
        big = client.post(
            "/api/collections/x/documents",
            files={"files": ("a.md", b"x" * 2_000_000, "text/markdown")},
        )
        assert big.status_code == 401


def test_thread_ids_that_cannot_be_a_url_segment_are_refused(client: TestClient) -> None:
    for bad in ("a/b", "..", "."):
        refused = client.post("/api/threads", json={"id": bad})
        assert refused.status_code == 400 and "cannot contain '/'" in error_of(refused)["message"]
    through_openai = client.post(
        "/v1/chat/completions",
        json={"model": "test:echo", "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Chatwright-Thread": "x/y"},
    )
    assert through_openai.status_code == 400


def test_upload_names_are_names_not_patterns_and_odd_ones_are_refused(client: TestClient) -> None:
    client.post("/api/collections", json={"name": "docs"})
    long_name = "é" * 100 + "你" * 90 + ".md"  # 193 characters, 470 bytes
    files = [
        ("files", ("report [final].md", b"# Report\n\nThe final figure is 42.", "text/markdown")),
        ("files", ("*.md", b"# Star\n\nA file really called star.", "text/markdown")),
        ("files", (long_name, b"# Long\n\nname", "text/markdown")),
    ]
    job = client.post("/api/collections/docs/documents", files=files).json()
    for _ in range(200):
        state = client.get(f"/api/jobs/{job['id']}").json()
        if state["status"] in ("done", "failed"):
            break
        time.sleep(0.02)
    assert state["status"] == "done"
    sources = {d["source"] for d in client.get("/api/collections/docs").json()["document_list"]}
    assert sources == {"uploads/report [final].md", "uploads/*.md"}
    assert any(e["reason"] == "not a usable file name" for e in state["errors"])


def test_a_loopback_server_refuses_connections_from_elsewhere(tmp_path: Path) -> None:
    """Embedded under a server listening on the network, a loopback app still only answers
    local connections (it decided to need no key because it is local)."""
    far_app = create_app(make_settings(tmp_path / "far"))
    with TestClient(far_app, base_url=LOCAL, client=("10.1.2.3", 5000)) as far:
        refused = far.get("/api/threads")
        assert refused.status_code == 403 and error_of(refused)["type"] == "forbidden_peer"
    near_app = create_app(make_settings(tmp_path / "near"))
    with TestClient(near_app, base_url=LOCAL, client=("127.0.0.1", 5000)) as near:
        assert near.get("/api/threads").status_code == 200


def test_memory_text_is_one_printable_line(client: TestClient) -> None:
    made = client.post("/api/memory", json={"text": "likes\x00 tea\x1b[31m\nand cake"}).json()
    assert made["text"] == "likes tea [31m and cake"
    edited = client.patch(f"/api/memory/{made['id']}", json={"text": "\x00\x00"})
    assert edited.status_code == 400
