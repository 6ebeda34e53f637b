"""Two live ``chatwright serve`` processes on one PostgreSQL database, as a team runs them.

Concurrent turns on one thread through both, an approval answered through the other replica,
a stream resumed through the other replica, and one replica killed with SIGKILL mid-turn while
the other keeps serving: nothing acknowledged is lost and the thread's history stays linear.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CONFIG = """
model = "test:tools"
embedder = "test:hash"
database_url = "{url}"

[tools]
builtin = ["remember"]
auto_approve = []

[server]
preload = false
stream_flush_s = 0.05
replica_heartbeat_s = 0.25
replica_stale_s = 1.5

[bots.slow]
model = "test:slow"
"""


@pytest.fixture
def database_url() -> str:
    import _postgres

    return _postgres.require_database()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One ``chatwright serve`` process."""

    def __init__(self, config: Path, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chatwright",
                "serve",
                "--config",
                str(config),
                "--data-dir",
                str(data_dir),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the replica exited: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/api/me", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the replica did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def replicas(database_url: str, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    config = tmp_path / "chatwright.toml"
    config.write_text(CONFIG.format(url=database_url))
    started = [Replica(config, tmp_path / f"data{i}") for i in range(2)]  # no shared disk
    try:
        for replica in started:
            replica.wait_ready()
        yield started[0], started[1]
    finally:
        for replica in started:
            replica.stop()


def events(response: httpx.Response) -> Iterator[tuple[str | None, str, Any]]:
    ident, name = None, "message"
    for line in response.iter_lines():
        if line.startswith("id:"):
            ident = line[3:].strip()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield ident, name, json.loads(line[5:].strip())
            ident, name = None, "message"


def messages(url: str, thread: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/api/threads/{thread}/messages?limit=500").json()["messages"]


def test_two_replicas_serve_one_database_and_survive_a_sigkill(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    client = httpx.Client(timeout=30)

    # concurrent turns on one thread through both replicas: one writer at a time
    def turn(url: str, i: int) -> None:
        body = {"text": f"turn {i}", "bot": "slow", "stream": False}
        assert client.post(f"{url}/api/threads/shared/messages", json=body).status_code == 200

    workers = [threading.Thread(target=turn, args=((a, b)[i % 2].url, i)) for i in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stored = messages(b.url, "shared")
    assert [m["seq"] for m in stored] == list(range(1, 13))
    for user, answer in zip(stored[::2], stored[1::2], strict=True):
        assert answer["text"] == "echo: " + user["text"]

    # an approval answered through the other replica
    ask = {"text": 'call remember {"fact": "works nights"}'}
    with client.stream("POST", f"{a.url}/api/threads/tools/messages", json=ask) as r:
        names = []
        for _, name, data in events(r):
            names.append(name)
            if name == "approval_needed":
                call = data["call"]["id"]
                for _ in range(100):  # the event reaches the store within stream_flush_s
                    answer = client.post(
                        f"{b.url}/api/threads/tools/approvals/{call}", json={"approved": True}
                    )
                    if answer.status_code == 200:
                        break
                    time.sleep(0.05)
                assert answer.status_code == 200, answer.text
    assert names[-1] == "done"
    assert [m["text"] for m in client.get(f"{b.url}/api/memory").json()["memories"]] == [
        "works nights"
    ]

    # a long turn on A; its client goes away; A is killed mid-turn; the stream is resumed on B
    words = " ".join(f"w{i}" for i in range(200))  # 10 s at 50 ms a word
    seen: list[tuple[str | None, str, Any]] = []
    with client.stream(
        "POST", f"{a.url}/api/threads/t/messages", json={"text": words, "bot": "slow"}
    ) as r:
        for item in events(r):
            seen.append(item)
            if len(seen) == 10:
                break
    assert seen[0][1] == "start"  # acknowledged: the user's message is stored
    time.sleep(0.2)  # past a flush
    a.process.send_signal(signal.SIGKILL)
    a.process.wait()

    # B keeps serving meanwhile
    other = client.post(
        f"{b.url}/api/threads/other/messages", json={"text": "still there?", "stream": False}
    )
    assert other.status_code == 200 and other.json()["text"] == "echo: still there?"

    with client.stream(
        "GET", f"{b.url}/api/threads/t/stream", headers={"Last-Event-ID": seen[-1][0] or ""}
    ) as r:
        rest = list(events(r))
    assert rest[-1][1] == "error" and rest[-1][2]["type"] == "interrupted"
    resumed = [int(i.split(":")[1]) for i, _, _ in seen + rest if i]
    assert resumed == list(range(1, len(resumed) + 1))  # what was stored, in order, once

    # the thread is not locked by the dead replica, and its history is linear
    after = client.post(f"{b.url}/api/threads/t/messages", json={"text": "again", "stream": False})
    assert after.status_code == 200, after.text
    stored = messages(b.url, "t")
    assert [m["seq"] for m in stored] == list(range(1, len(stored) + 1))
    assert stored[0]["text"] == words  # the acknowledged message survived the kill
    assert [m["text"] for m in stored[-2:]] == ["again", "echo: again"]
    client.close()
