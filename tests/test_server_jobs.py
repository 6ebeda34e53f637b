"""Upload jobs as replicas see them: queued in the database, run by any replica's worker, taken
over after a crash, put back at a shutdown, their progress the same on every replica.

Each test runs on SQLite and on PostgreSQL (as ``test_store_conformance.py``); a "replica" is
an app on a store object of its own over the same database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chatwright.config import Settings
from chatwright.errors import UserError
from chatwright.ingest.pipeline import IngestReport, Progress
from chatwright.server import create_app
from chatwright.server.jobs import Jobs, Staged
from chatwright.store import Store

LOCAL = "http://localhost"
A = "local"  # the user of a loopback server without keys

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timings for tests: beats every 0.05 s, a job silent for 0.5 s is taken over."""
    monkeypatch.setattr(Jobs, "heartbeat_s", 0.05)
    monkeypatch.setattr(Jobs, "stale_after_s", 0.5)
    monkeypatch.setattr(Jobs, "poll_s", 0.05)


def settings_for(tmp_path: Path) -> Settings:
    return Settings(
        model="test:echo",
        embedder="test:hash",
        data_dir=tmp_path / "data",
        server={"preload": False},
    )


def replica(tmp_path: Path, store: Store, *, workers: bool = True) -> TestClient:
    """An app on ``store``; ``workers=False``: it queues uploads but never runs one."""
    app = create_app(settings_for(tmp_path), store=store)
    if not workers:
        app.state.chatwright.jobs.start = lambda: None
    return TestClient(app, base_url=LOCAL)


def upload(
    client: TestClient, *files: tuple[str, bytes], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    if client.get("/api/collections/docs", headers=headers).status_code == 404:
        client.post("/api/collections", json={"name": "docs"}, headers=headers)
    sent = [("files", (name, data, "text/markdown")) for name, data in files]
    accepted = client.post("/api/collections/docs/documents", files=sent, headers=headers)
    assert accepted.status_code == 202, accepted.text
    return accepted.json()  # type: ignore[no-any-return]


def wait_for(client: TestClient, job_id: str, *states: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in states:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is not {states}: {job}")


def sources(client: TestClient) -> set[str]:
    return {d["source"] for d in client.get("/api/collections/docs").json()["document_list"]}


LEAVE = ("leave.md", b"# Leave\n\nYou get 25 days of paid leave a year.")
TRAVEL = ("travel.md", b"# Travel\n\nTravel is booked through the portal.")


def test_an_upload_queued_on_one_replica_is_ingested_by_another(
    make_store: Callable[[], Store], tmp_path: Path, fast: None
) -> None:
    with replica(tmp_path, make_store(), workers=False) as front:
        accepted = upload(front, LEAVE, TRAVEL)
        assert accepted["status"] == "queued" and accepted["total"] == 2
        assert front.get(f"/api/jobs/{accepted['id']}").json()["status"] == "queued"
        with replica(tmp_path, make_store()) as back:  # shares no disk with `front`
            done = wait_for(back, accepted["id"], "done", "failed")
            assert done["status"] == "done" and done["done"] == done["total"] == 2
            assert done["report"]["added"] == 2 and done["chunks"] >= 2
            assert front.get(f"/api/jobs/{accepted['id']}").json() == done  # same on both
            assert [j["id"] for j in front.get("/api/jobs").json()["jobs"]] == [accepted["id"]]
            assert sources(front) == {"uploads/leave.md", "uploads/travel.md"}
        answer = front.post(
            "/api/threads/t/messages",
            json={"text": "@docs how many days of paid leave?", "stream": False},
        ).json()
        assert any(c["source"] == "uploads/leave.md" for c in answer["citations"])


def test_a_job_of_a_crashed_replica_is_taken_over_after_a_restart(
    make_store: Callable[[], Store], tmp_path: Path, fast: None
) -> None:
    with replica(tmp_path, make_store(), workers=False) as before:
        job = upload(before, LEAVE)
    crashed = make_store()  # a replica that took the job, then died without a word
    claimed = crashed.jobs.claim("crashed-replica", stale_after_s=60)
    assert claimed is not None and claimed.id == job["id"]
    with replica(tmp_path, make_store()) as after:
        done = wait_for(after, job["id"], "done", "failed")
        assert done["status"] == "done" and done["report"]["added"] == 1
        assert sources(after) == {"uploads/leave.md"}
    taken = crashed.jobs.get(A, job["id"])
    assert taken is not None and taken.attempts == 2 and taken.worker != "crashed-replica"
    assert not crashed.jobs.heartbeat(job["id"], "crashed-replica")  # it learns, if it wakes


class SlowIngestor:
    """Reports the first file, then waits (a long document embedding) until let go."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.go = threading.Event()

    def ingest(
        self, paths: list[str], collection: str, *, progress: Callable[[Progress], None], **_: Any
    ) -> IngestReport:
        progress(Progress(paths[0], "added", 1, len(paths), 3))
        self.started.set()
        self.go.wait(20)
        for n, path in enumerate(paths[1:], start=2):
            progress(Progress(path, "added", n, len(paths), 3 * n))
        return IngestReport(collection, files=len(paths), added=len(paths), chunks_added=6)


def test_progress_is_live_on_every_replica_and_beats_while_a_document_embeds(
    make_store: Callable[[], Store], tmp_path: Path, fast: None
) -> None:
    slow = SlowIngestor()
    running = Jobs(make_store(), lambda owner: slow)  # type: ignore[arg-type,return-value]
    with replica(tmp_path, make_store(), workers=False) as other:
        job = upload(other, LEAVE, TRAVEL)
        running.start()
        try:
            assert slow.started.wait(10)
            time.sleep(4 * Jobs.stale_after_s / 2)  # twice as long as a silent job lives
            seen = other.get(f"/api/jobs/{job['id']}").json()
            assert (seen["status"], seen["done"], seen["current"]) == ("running", 1, "leave.md")
            assert seen["chunks"] == 3 and seen["started_at"] is not None
            rival = make_store()  # still beating: no one else may take it
            assert rival.jobs.claim("rival", stale_after_s=Jobs.stale_after_s) is None
            slow.go.set()
            done = wait_for(other, job["id"], "done")
            assert (done["done"], done["chunks"], done["current"]) == (2, 6, None)
        finally:
            slow.go.set()
            running.shutdown()


def test_a_shutdown_puts_the_running_job_back_for_another_to_finish(
    make_store: Callable[[], Store], tmp_path: Path, fast: None
) -> None:
    slow = SlowIngestor()
    store = make_store()
    leaving = Jobs(store, lambda owner: slow)  # type: ignore[arg-type,return-value]
    with replica(tmp_path, make_store(), workers=False) as front:
        job = upload(front, LEAVE, TRAVEL)
        leaving.start()
        assert slow.started.wait(10)
        stopping = threading.Thread(target=leaving.shutdown)
        stopping.start()
        time.sleep(0.1)
        slow.go.set()  # the current document is written; the next is not started
        stopping.join(10)
        queued = store.jobs.get(A, job["id"])
        assert queued is not None and (queued.state, queued.attempts) == ("queued", 0)
        with pytest.raises(UserError, match="shutting down"):
            leaving.submit(A, "docs", Staged(tmp_path / "nothing"))
        with replica(tmp_path, make_store()) as taking_over:
            done = wait_for(taking_over, job["id"], "done", "failed")
            assert done["status"] == "done" and done["report"]["added"] == 2
            assert sources(front) == {"uploads/leave.md", "uploads/travel.md"}


def test_one_users_many_uploads_do_not_hold_up_anothers(
    make_store: Callable[[], Store], tmp_path: Path, fast: None
) -> None:
    store = make_store()
    keys = {}
    for user in ("ada", "bob"):
        store.create_user(user)
        keys[user] = {"Authorization": f"Bearer {store.create_api_key(user)[1]}"}
    with replica(tmp_path, store, workers=False) as front:
        bulk = [(f"n{i}.md", b"# N\n\nbulk text %d" % i) for i in range(20)]
        many = [upload(front, one, headers=keys["ada"])["id"] for one in bulk]
        one = upload(front, ("one.md", b"# One\n\none line"), headers=keys["bob"])
        claimed = [store.jobs.claim(f"w{i}", stale_after_s=60) for i in range(2)]
        assert [j.id for j in claimed if j is not None] == [many[0], one["id"]]
        seen = front.get(f"/api/jobs/{one['id']}", headers=keys["bob"]).json()
        assert seen["status"] == "running" and seen["current"] is None
        assert front.get(f"/api/jobs/{one['id']}", headers=keys["ada"]).status_code == 404
        assert len(front.get("/api/jobs", headers=keys["ada"]).json()["jobs"]) == 20


class FailingIngestor:
    def ingest(self, paths: list[str], collection: str, **_: Any) -> IngestReport:
        raise UserError("the embedder is away", hint="start it")


def test_a_job_that_cannot_run_fails_with_the_reason(
    make_store: Callable[[], Store], tmp_path: Path, fast: None
) -> None:
    store = make_store()
    jobs = Jobs(store, lambda owner: FailingIngestor())  # type: ignore[arg-type,return-value]
    payload = {"collection": "docs", "files": ["a.md"], "total": 1}
    broken = store.jobs.enqueue(A, "ingest", payload, [("a.md", b"# A")])
    empty = store.jobs.enqueue(A, "ingest", {**payload, "files": [], "total": 0})
    odd = store.jobs.enqueue(A, "reindex", {})
    jobs.start()
    try:
        with replica(tmp_path, store, workers=False) as client:
            failed = wait_for(client, broken.id, "done", "failed")
            assert failed["status"] == "failed" and failed["report"] is None
            assert failed["errors"] == [
                {"file": "a.md", "reason": "the embedder is away (hint: start it)"}
            ]
            assert wait_for(client, empty.id, "done", "failed")["status"] == "failed"
            unknown = wait_for(client, odd.id, "done", "failed")
            assert unknown["status"] == "failed"
            assert "unknown kind of job 'reindex'" in unknown["errors"][0]["reason"]
    finally:
        jobs.shutdown()


def test_uploads_past_the_users_limit_are_429_until_one_finishes(
    make_store: Callable[[], Store], tmp_path: Path, fast: None
) -> None:
    store = make_store()
    settings = settings_for(tmp_path).model_copy(
        update={"server": settings_for(tmp_path).server.model_copy(update={"max_jobs_per_user": 2})}
    )
    app = create_app(settings, store=store)
    app.state.chatwright.jobs.start = lambda: None  # queued, never run
    with TestClient(app, base_url=LOCAL) as client:
        first, _ = upload(client, LEAVE), upload(client, TRAVEL)
        sent = [("files", ("more.md", b"# More\n\ntext", "text/markdown"))]
        refused = client.post("/api/collections/docs/documents", files=sent)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "10"
        error = refused.json()["error"]
        assert error["type"] == "too_many_jobs" and "max_jobs_per_user" in error["hint"]
        assert len(client.get("/api/jobs").json()["jobs"]) == 2  # nothing was queued
        assert client.get("/api/me").json()["limits"]["max_jobs_per_user"] == 2
        assert store.jobs.claim("w", stale_after_s=60) is not None  # running still counts
        assert client.post("/api/collections/docs/documents", files=sent).status_code == 429
        store.jobs.finish(first["id"], "w", "done", {})
        assert client.post("/api/collections/docs/documents", files=sent).status_code == 202


class PerDocumentIngestor:
    """Takes ``seconds`` a document; says which owner's documents it did, in order."""

    def __init__(self, done: list[str], owner: str, seconds: float) -> None:
        self.done, self.owner, self.seconds = done, owner, seconds

    def ingest(
        self, paths: list[str], collection: str, *, progress: Callable[[Progress], None], **_: Any
    ) -> IngestReport:
        for n, path in enumerate(paths, start=1):
            time.sleep(self.seconds)
            self.done.append(self.owner)
            progress(Progress(path, "added", n, len(paths), n))
        return IngestReport(collection, files=len(paths), added=len(paths))


def test_one_big_upload_gives_way_to_another_users_small_one(
    make_store: Callable[[], Store], tmp_path: Path, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker, a user's twenty files in one upload: another's one file waits for the
    document being written and a slice, not for the twenty."""
    monkeypatch.setattr(Jobs, "slice_s", 0.2)
    store = make_store()
    done: list[str] = []
    seconds = {"ada": 0.05, "bob": 0.0}
    jobs = Jobs(store, lambda owner: PerDocumentIngestor(done, owner, seconds[owner]))  # type: ignore[arg-type,return-value]
    files = [(f"n{i}.md", b"# N %d" % i) for i in range(20)]
    payload = {"collection": "docs", "files": [n for n, _ in files], "total": 20}
    big = store.jobs.enqueue("ada", "ingest", payload, files)
    jobs.start()
    try:
        deadline = time.monotonic() + 10
        while "ada" not in done:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        small = store.jobs.enqueue("bob", "ingest", {**payload, "total": 1}, files[:1])
        while (finished := store.jobs.get("bob", small.id)) is None or not finished.finished:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert done.count("ada") < 15  # bob's one did not wait for ada's twenty
        while not (job := store.jobs.get("ada", big.id)) or not job.finished:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert job.state == "done" and job.attempts == 1  # giving way is not an attempt
    finally:
        jobs.shutdown()
