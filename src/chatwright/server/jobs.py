"""Document ingest as durable background jobs: an upload returns at once, and a worker of any
replica ingests it.

``POST /api/collections/{name}/documents`` stages the uploaded files (:func:`stage_files`:
usable names only, each once), then :meth:`Jobs.submit` stores them with the job in the
store's job queue (``store.jobs``, :class:`~chatwright.store.base.JobQueue`) and deletes the
staging directory: replicas share the database, not a disk. A user may have
``[server] max_jobs_per_user`` jobs queued or running (on all replicas together); past that
an upload is a 429 with ``Retry-After``. Each server process runs ``[server] ingest_workers``
worker threads. A worker claims the next job, fair between users: the oldest queued job of
the user with the fewest running jobs, and of those users the one served longest ago, so
users take turns and one user's twenty uploads do not hold up another's one. A job that has
run for ``slice_s`` gives way after its current document when another user's job waits that
would be claimed first: it goes back in the queue and resumes later where it stopped, so
even one upload of twenty large files, on one worker, holds up no one for long. A worker
writes the job's files into a temporary ``uploads/`` directory (a
document's source is ``uploads/report.pdf``: uploading a file of that name again updates that
document) and runs the ordinary :class:`~chatwright.ingest.Ingestor`, one transaction per
document; the event loop never waits for parsing or embedding. A heartbeat thread writes the
job's progress (files done of total, the current file) as it changes and every
``heartbeat_s`` even while one long document is embedding, so ``GET /api/jobs/{id}`` on any
replica shows it live. Files that cannot be read (unsupported type, malformed, empty) are
listed in the job's ``errors`` with the reason; the others are ingested. A job where no file
could be read is ``failed``.

A job outlives the process running it. At shutdown a worker stops after the document it is
writing and puts the job back in the queue. A worker that crashed stops beating: after
``stale_after_s`` a worker of any replica (or of this one, restarted) takes the job over, and
as ingest is idempotent (documents already written are found unchanged by their hash) it
resumes where the other stopped. A job abandoned ``max_attempts`` times fails. The store keeps
the newest 500 finished jobs of each user; their documents stay, of course.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, BinaryIO

from chatwright.config import WebSettings
from chatwright.errors import ChatwrightError, UserError
from chatwright.ingest.pipeline import Ingestor, IngestReport, Progress
from chatwright.ingest.web import WebIngest
from chatwright.server.errors import ApiError
from chatwright.store.base import JobInfo, JobQueue, Store

__all__ = ["Jobs", "Staged", "job_json", "safe_file_name", "stage_files"]

log = logging.getLogger("chatwright.server")

UPLOAD_DIR = "uploads"  # the staged files' parent: sources are "uploads/<file name>"
INGEST = "ingest"  # the kind of job this module queues and runs: uploaded files...
INGEST_WEB = "ingest-web"  # ...and web pages (payload: urls, depth, max_pages)
_COALESCE_S = 0.2  # progress written at most this often (a burst of small files)
JOBS_RETRY_S = 10  # Retry-After of a 429 for too many jobs: an upload takes a while
# How a job ended: (state, report, errors). A module-level alias: inside `Jobs`, whose method
# `list` shadows the builtin, `list[...]` would not name the type.
Outcome = tuple[str, dict[str, Any], list[dict[str, str]]]


class _Stopped(Exception):
    """Raised from the progress callback to stop a job at shutdown."""


class _Lost(Exception):
    """Raised from the progress callback when the job is no longer this worker's."""


class _GiveWay(Exception):
    """Raised from the progress callback when another user's job should run first."""


def safe_file_name(name: str | None) -> str | None:
    """The upload's base name, or None when it cannot be a file name here."""
    base = PurePosixPath((name or "").replace("\\", "/")).name.strip()
    if not base or base in (".", "..") or base.startswith(".") or len(base) > 200:
        return None
    if len(base.encode("utf-8", "surrogatepass")) > 255:  # the file system's limit is bytes
        return None
    if not base.isprintable():
        return None
    return base


@dataclass
class Staged:
    """Uploaded files written to a temporary directory, and those refused on the way."""

    root: Path
    paths: list[Path] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def stage_files(files: list[tuple[str | None, BinaryIO]]) -> Staged:
    """Write ``(file name, content)`` pairs under a new temporary ``uploads/`` directory."""
    root = Path(tempfile.mkdtemp(prefix="chatwright-upload-"))
    staged = Staged(root)
    try:
        folder = root / UPLOAD_DIR
        folder.mkdir()
        for name, content in files:
            base = safe_file_name(name)
            if base is None:
                staged.errors.append({"file": str(name or ""), "reason": "not a usable file name"})
                continue
            target = folder / base
            if target.exists():
                staged.errors.append({"file": base, "reason": "the same name was uploaded twice"})
                continue
            with target.open("wb") as out:
                shutil.copyfileobj(content, out, 1024 * 1024)
            staged.paths.append(target)
    except BaseException:  # a full disk, a cancelled request: leave nothing behind
        staged.cleanup()
        raise
    return staged


def job_json(job: JobInfo) -> dict[str, Any]:
    """The job as ``GET /api/jobs/{id}`` shows it (``JobOut``)."""
    payload, progress, result = job.payload, job.progress, job.result
    total = int(payload.get("total", 0))
    written = result.get("chunks_added", 0) + result.get("chunks_reused", 0)
    return {
        "id": job.id,
        "collection": payload.get("collection", ""),
        "files": payload.get("files", []),
        "total": total,
        "status": job.state,
        "done": total if result else progress.get("done", 0),
        "current": progress.get("current") if job.state == "running" else None,
        "chunks": written if result else progress.get("chunks", 0),
        "report": result or None,
        "errors": [_error(e) for e in (*payload.get("refused", ()), *job.errors)],
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _error(error: Mapping[str, Any]) -> dict[str, str]:
    return {"file": str(error.get("file", "")), "reason": str(error.get("reason", ""))}


def report_json(report: IngestReport) -> dict[str, Any]:
    return {
        "files": report.files,
        "added": report.added,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "skipped": len(report.skipped),
        "chunks_added": report.chunks_added,
        "chunks_reused": report.chunks_reused,
        "chunks_removed": report.chunks_removed,
        "bytes": report.bytes,
        "seconds": round(report.seconds, 3),
    }


class Jobs:
    """Queues uploads in the store and runs this process's worker threads.

    ``ingestor(owner)`` gives the :class:`Ingestor` for a job's owner; an owner may have
    ``max_per_owner`` jobs queued or running (0: any number). The timings are class
    attributes (tests shorten them): a worker beats every ``heartbeat_s``; a job whose worker
    has not beaten for ``stale_after_s`` is taken over; an idle worker looks for work every
    ``poll_s`` (at once for jobs submitted here); a job looks whether to give way every
    ``slice_s``.
    """

    heartbeat_s = 2.0
    stale_after_s = 30.0
    poll_s = 0.5
    slice_s = 5.0
    max_attempts = 3

    def __init__(
        self,
        store: Store,
        ingestor: Callable[[str], Ingestor],
        *,
        workers: int = 1,
        max_per_owner: int = 0,
        web: WebSettings | None = None,
    ) -> None:
        self.store = store
        self._ingestor = ingestor
        self.web = web or WebSettings()  # for web page jobs: the SSRF allow-list, the limits
        self.workers = workers
        self.max_per_owner = max_per_owner
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._wake = threading.Event()

    @property
    def queue(self) -> JobQueue:
        return self.store.jobs

    def start(self) -> None:
        """Start the worker threads (once; not after :meth:`shutdown`)."""
        with self._lock:
            if self._threads or self._stopping.is_set():
                return
            for n in range(self.workers):
                worker = f"{self.name}/{n}"
                thread = threading.Thread(
                    target=self._work, args=(worker,), name=f"chatwright-ingest-{n}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def admit(self, owner: str) -> None:
        """Raise the 429 when ``owner`` has as many jobs queued or running as allowed."""
        if not self.max_per_owner:
            return
        queued, running = self.queue.backlog(owner).get(owner, (0, 0))
        if queued + running >= self.max_per_owner:
            raise ApiError(
                429,
                f"you have {queued + running} uploads queued or being ingested, the most one"
                " user may have",
                hint="upload again once one has finished (GET /api/jobs); the limit is"
                " max_jobs_per_user in [server]",
                type="too_many_jobs",
                headers={"Retry-After": str(JOBS_RETRY_S)},
            )

    def submit(self, owner: str, collection: str, staged: Staged) -> JobInfo:
        """Queue the staged files (stored with the job; the staging directory is deleted)."""
        try:
            if self._stopping.is_set():
                raise UserError("the server is shutting down", hint="upload again later")
            files = [(path.name, path.read_bytes()) for path in staged.paths]
        finally:
            staged.cleanup()
        payload = {
            "collection": collection,
            "files": [name for name, _ in files] + [e["file"] for e in staged.errors],
            "total": len(files),
            "refused": staged.errors,
        }
        job = self.queue.enqueue(owner, INGEST, payload, files)
        self.start()
        self._wake.set()
        return job

    def submit_urls(
        self, owner: str, collection: str, urls: list[str], depth: int, max_pages: int | None
    ) -> JobInfo:
        """Queue the web pages at ``urls`` (and, to ``depth``, the pages they link to on the
        same site; at most ``max_pages``, never more than ``[web] max_pages``)."""
        if self._stopping.is_set():
            raise UserError("the server is shutting down", hint="try again later")
        payload = {
            "collection": collection,
            "files": urls,
            "urls": urls,
            "depth": depth,
            "max_pages": min(max_pages or self.web.max_pages, self.web.max_pages),
            "total": len(urls),
        }
        job = self.queue.enqueue(owner, INGEST_WEB, payload)
        self.start()
        self._wake.set()
        return job

    def get(self, owner: str, job_id: str) -> JobInfo | None:
        """The job, if it is ``owner``'s (another user's job is not found)."""
        return self.queue.get(owner, job_id)

    def list(self, owner: str) -> list[JobInfo]:
        return self.queue.list(owner)

    def shutdown(self) -> None:
        """Stop: running jobs after their current document, back in the queue."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    # -- the workers ------------------------------------------------------------------------
    def _work(self, worker: str) -> None:
        while not self._stopping.is_set():
            try:
                job = self.queue.claim(
                    worker, stale_after_s=self.stale_after_s, max_attempts=self.max_attempts
                )
            except Exception as e:  # the database is away: try again later
                log.warning("cannot take an ingest job: %s", e)
                self._stopping.wait(self.heartbeat_s)
                continue
            if job is None:
                if self._wake.wait(self.poll_s):
                    self._wake.clear()
                continue
            if self._stopping.is_set():  # claimed as the shutdown began
                self._release(job, worker, "stopped by the shutdown")
                return
            if job.attempts > 1:
                log.info("taking over ingest job %s (attempt %d)", job.id, job.attempts)
            self._run(job, worker)

    def _run(self, job: JobInfo, worker: str) -> None:
        beat = _Heartbeat(self.queue, job.id, worker, self.heartbeat_s)
        try:
            with beat, tempfile.TemporaryDirectory(prefix="chatwright-job-") as root:
                outcome = self._ingest(job, Path(root), beat)
        except _Stopped:
            self._release(job, worker, "stopped by the shutdown")
            return
        except _GiveWay:
            self._release(job, worker, "gave way to another user's job")
            return
        except _Lost:
            log.warning("ingest job %s was taken over by another worker", job.id)
            return
        except Exception as e:
            outcome = _failure(job.id, beat.current, e)
        try:
            if not self.queue.finish(job.id, worker, *outcome):
                log.warning("ingest job %s was taken over before it finished here", job.id)
        except Exception as e:  # it goes stale, and is run again (ingest is idempotent)
            log.error("cannot record the end of ingest job %s: %s", job.id, e)

    def _release(self, job: JobInfo, worker: str, why: str) -> None:
        try:
            self.queue.release(job.id, worker)
            log.info("ingest job %s %s; queued again", job.id, why)
        except Exception as e:  # it goes stale, and is taken over
            log.warning("cannot queue ingest job %s again: %s", job.id, e)

    def _ingest(self, job: JobInfo, root: Path, beat: _Heartbeat) -> Outcome:
        """Ingest the job's files: (state, report, errors)."""
        if job.kind == INGEST_WEB:
            return self._ingest_web(job, beat)
        if job.kind != INGEST:
            return "failed", {}, [{"file": "", "reason": f"unknown kind of job {job.kind!r}"}]
        folder = root / UPLOAD_DIR
        folder.mkdir()
        paths = []
        for name, data in self.queue.files(job.id):
            if safe_file_name(name) != name:  # staged names are safe; a row may not be
                continue
            (folder / name).write_bytes(data)
            paths.append(folder / name)
        if not paths:
            return "failed", {}, []
        beat.update(current=paths[0].name)
        report = self._ingestor(job.owner).ingest(
            [str(p) for p in paths],
            job.payload["collection"],
            progress=self._progress(beat, len(paths), job.owner),
            literal=True,  # uploaded names are names, not patterns
        )
        errors = [{"file": Path(s.path).name, "reason": s.reason} for s in report.skipped]
        return ("done" if report.read else "failed"), report_json(report), errors

    def _ingest_web(self, job: JobInfo, beat: _Heartbeat) -> Outcome:
        """Fetch and ingest the job's web pages (through the SSRF guard): (state, report,
        errors). Stopped or giving way, it resumes later: pages already stored are unchanged."""
        urls = [str(u) for u in job.payload.get("urls", [])]
        beat.update(current=urls[0] if urls else "")
        web = WebIngest.from_settings(
            self._ingestor(job.owner),
            self.web,
            depth=int(job.payload.get("depth", 0)),
            max_pages=int(job.payload.get("max_pages") or self.web.max_pages),
        )
        report = web.ingest(
            urls,
            job.payload["collection"],
            progress=self._progress(beat, len(urls), job.owner),
        )
        errors = [{"file": s.path, "reason": s.reason} for s in report.skipped]
        errors += [{"file": "", "reason": note} for note in web.notes]
        return ("done" if report.read else "failed"), report_json(report), errors

    def _progress(self, beat: _Heartbeat, total: int, owner: str) -> Callable[[Progress], None]:
        looked = time.monotonic()

        def tell(event: Progress) -> None:
            nonlocal looked
            # files refused before reading (unsupported type) count as handled from the start
            done = event.done + max(0, total - event.total)
            beat.update(done=done, chunks=event.chunks, current=Path(event.path).name)
            if self._stopping.is_set():
                raise _Stopped
            if beat.lost:
                raise _Lost
            if done < total and time.monotonic() - looked >= self.slice_s:
                looked = time.monotonic()
                if self._others_first(owner):
                    raise _GiveWay

        return tell

    def _others_first(self, owner: str) -> bool:
        """Whether a queued job of another owner would be claimed before this owner's, were
        this job back in the queue: that owner runs fewer jobs than this one does."""
        try:
            backlog = self.queue.backlog()
        except Exception:  # the database is away: go on
            return False
        mine = backlog.get(owner, (0, 0))[1]
        return any(
            queued and running < mine
            for other, (queued, running) in backlog.items()
            if other != owner
        )


def _failure(job_id: str, file: str, error: Exception) -> Outcome:
    """The outcome of a job that ``error`` stopped while on ``file``."""
    if isinstance(error, ChatwrightError):
        reason = f"{error.message} (hint: {error.hint})" if error.hint else error.message
    else:
        log.error("ingest job %s failed", job_id, exc_info=error)
        reason = f"internal error: {error}"
    return "failed", {}, [{"file": file, "reason": reason}]


class _Heartbeat:
    """``with beat:`` — a thread that writes the job's progress when it changes (at most every
    ``_COALESCE_S``) and a heartbeat at least every ``every`` seconds; ``lost`` once the job
    is no longer this worker's."""

    def __init__(self, queue: JobQueue, job_id: str, worker: str, every: float) -> None:
        self.queue = queue
        self.job_id = job_id
        self.worker = worker
        self.every = every
        self.progress: dict[str, Any] = {"done": 0, "chunks": 0, "current": None}
        self.lost = False
        self._changed = threading.Event()
        self._over = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"chatwright-heartbeat-{job_id}", daemon=True
        )

    @property
    def current(self) -> str:
        return str(self.progress.get("current") or "")

    def update(self, **progress: Any) -> None:
        self.progress = {**self.progress, **progress}
        self._changed.set()

    def _beat(self) -> None:
        while not self._over.is_set():
            self._changed.wait(self.every)
            self._changed.clear()
            if self._over.is_set():
                return
            try:
                alive = self.queue.heartbeat(self.job_id, self.worker, self.progress)
            except Exception as e:  # a passing database error: the next beat may do
                log.warning("cannot record the progress of ingest job %s: %s", self.job_id, e)
                continue
            if not alive:
                self.lost = True
                return
            self._over.wait(_COALESCE_S)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._over.set()
        self._changed.set()
        self._thread.join()
