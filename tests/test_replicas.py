"""Several replicas on one database behave as one server.

Two apps (two ``ServerState``s, each with its own store connection, so two replicas) serve the
same database on real sockets, on SQLite and on PostgreSQL: a stream resumed through the other
replica, an approval and a cancel answered through the other replica, concurrent turns on one
thread through both. ``test_replica_processes.py`` does it with real processes and SIGKILL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatwright.config import Settings
from chatwright.server import create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

serving = pytest.importorskip("test_server_live").serving


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings that name one database: a SQLite data dir, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return {"data_dir": tmp_path / "data"}
    import _postgres

    return {"data_dir": tmp_path / "data", "database_url": _postgres.require_database()}


def settings(database: dict[str, Any], **top: Any) -> Settings:
    values: dict[str, Any] = {
        "model": "test:slow",
        "embedder": "test:hash",
        "server": {"preload": False, "shutdown_grace_s": 5, "stream_flush_s": 0.05},
    }
    return Settings(**(values | database | top))


@pytest.fixture
def replicas(database: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Two replicas of a server whose model is test:tools with ``remember`` needing approval
    (and test:slow for long answers, as bot "slow")."""
    config = settings(
        database,
        model="test:tools",
        tools={"builtin": ["remember"], "auto_approve": []},
        bots={"slow": {"model": "test:slow"}},
    )
    with ExitStack() as stack:
        urls = [stack.enter_context(serving(create_app(config))) for _ in range(2)]
        yield urls[0], urls[1]


def events(response: httpx.Response) -> Iterator[tuple[str | None, str, Any]]:
    """(id, event, data) as they arrive."""
    ident, name = None, "message"
    for line in response.iter_lines():
        if line.startswith("id:"):
            ident = line[3:].strip()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield ident, name, json.loads(line[5:].strip())
            ident, name = None, "message"


def test_a_stream_resumes_on_the_other_replica(replicas: tuple[str, str]) -> None:
    first, second = replicas
    words = " ".join(f"w{i}" for i in range(30))  # test:slow: 50 ms a word
    seen: list[tuple[str | None, str, Any]] = []
    with httpx.Client(timeout=20) as client:
        body = {"text": words, "bot": "slow"}
        with client.stream("POST", f"{first}/api/threads/t/messages", json=body) as r:
            for item in events(r):
                seen.append(item)
                if len(seen) == 6:
                    break  # the connection drops mid-turn
        last_id = seen[-1][0]
        assert last_id is not None and all(i for i, _, _ in seen)
        with client.stream(
            "GET", f"{second}/api/threads/t/stream", headers={"Last-Event-ID": last_id}
        ) as r:
            assert r.status_code == 200
            rest = list(events(r))
    stream_id = last_id.split(":")[0]
    seqs = [int(i.split(":")[1]) for i, _, _ in seen + rest if i]
    assert seqs == list(range(1, len(seqs) + 1))  # no event lost or repeated
    assert {i.split(":")[0] for i, _, _ in rest if i} == {stream_id}
    text = "".join(d["text"] for _, name, d in seen + rest if name == "text_delta")
    assert text == "echo: " + words
    assert rest[-1][1] == "done" and rest[-1][2]["text"] == "echo: " + words


def test_an_approval_posted_to_the_other_replica_reaches_the_turn(
    replicas: tuple[str, str],
) -> None:
    first, second = replicas
    message = 'call remember {"fact": "likes green tea"}'
    names = []
    with httpx.Client(timeout=20) as client:
        with client.stream("POST", f"{first}/api/threads/t/messages", json={"text": message}) as r:
            for _, name, data in events(r):
                names.append(name)
                if name == "approval_needed":
                    call_id = data["call"]["id"]
                    pending = wait_for(
                        lambda: client.get(f"{second}/api/threads/t/approvals").json()["pending"]
                    )
                    assert pending == [call_id]
                    calls = client.get(f"{second}/api/threads/t/approvals").json()["calls"]
                    assert calls[0]["name"] == "remember"
                    answer = client.post(
                        f"{second}/api/threads/t/approvals/{call_id}", json={"approved": True}
                    )
                    assert answer.status_code == 200, answer.text
        assert names[-1] == "done" and "tool_result" in names
        memories = client.get(f"{second}/api/memory").json()
        assert [m["text"] for m in memories["memories"]] == ["likes green tea"]
        # once the turn's end is recorded (within stream_flush_s), nothing waits any more
        url = f"{second}/api/threads/t/approvals/{call_id}"
        wait_for(lambda: client.post(url, json={"approved": True}).status_code == 404)


def test_a_cancel_posted_to_the_other_replica_stops_the_turn(replicas: tuple[str, str]) -> None:
    first, second = replicas
    words = " ".join(f"w{i}" for i in range(200))  # 10 s if nothing stops it
    names = []
    with httpx.Client(timeout=20) as client:
        with client.stream(
            "POST", f"{first}/api/threads/t/messages", json={"text": words, "bot": "slow"}
        ) as r:
            for _, name, data in events(r):
                names.append((name, data))
                if len(names) == 3:
                    cancelled = wait_for(
                        lambda: client.post(f"{second}/api/threads/t/cancel").json()["cancelled"]
                    )
                    assert cancelled == 1
        assert names[-1][0] == "error" and "cancelled" in names[-1][1]["message"]
        assert len(names) < 100
        stored = client.get(f"{second}/api/threads/t/messages").json()["messages"]
        assert [m["role"] for m in stored] == ["user", "assistant"]  # what arrived is kept


def test_concurrent_turns_on_one_thread_through_both_replicas(
    replicas: tuple[str, str],
) -> None:
    errors: list[BaseException] = []

    def turn(url: str, i: int) -> None:
        try:
            with httpx.Client(timeout=30) as client:
                body = {"text": f"message {i} " + "x " * 5, "bot": "slow", "stream": False}
                response = client.post(f"{url}/api/threads/shared/messages", json=body)
                assert response.status_code == 200, response.text
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=turn, args=(replicas[i % 2], i)) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    stored = httpx.get(f"{replicas[1]}/api/threads/shared/messages?limit=100").json()["messages"]
    assert [m["seq"] for m in stored] == list(range(1, 13))
    for user, answer in zip(stored[::2], stored[1::2], strict=True):  # one writer at a time
        assert user["role"] == "user" and answer["text"] == "echo: " + user["text"]


def test_resuming_needs_a_stream_of_this_users_thread(replicas: tuple[str, str]) -> None:
    first, _ = replicas
    assert httpx.get(f"{first}/api/threads/none/stream").status_code == 404
    bad = httpx.get(f"{first}/api/threads/t/stream", headers={"Last-Event-ID": "nonsense"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]["message"]


def wait_for(condition: Any, timeout: float = 10.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError("timed out")
