"""Document ingest as background jobs: an upload returns at once, a worker thread ingests.

``POST /api/collections/{name}/documents`` stages the uploaded files in a temporary
directory (``uploads/<original file name>``, so a document's source is
``uploads/report.pdf``: uploading a file of the same name again updates that document) and
queues a :class:`Job`. One worker thread runs jobs in turn with the ordinary
:class:`~chatwright.ingest.Ingestor`; the event loop never waits for parsing or embedding.
A job's progress (files done of total, the current file) is read by ``GET /api/jobs/{id}``.
Files that cannot be read (unsupported type, malformed, empty) are listed in the job's
``errors`` with the reason; the others are ingested. A job where no file could be read is
``failed``.

Jobs live in memory: a restart forgets finished ones (their documents stay, of course). At
shutdown, the running job stops after the document it is writing (each document is one
transaction) and queued ones are dropped.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

from chatwright.errors import ChatwrightError, UserError
from chatwright.ingest.pipeline import Ingestor, IngestReport, Progress

__all__ = ["Job", "Jobs", "Staged", "safe_file_name", "stage_files"]

log = logging.getLogger("chatwright.server")

UPLOAD_DIR = "uploads"  # the staged files' parent: sources are "uploads/<file name>"
_KEPT = 500  # finished jobs remembered


class _Stopped(Exception):
    """Raised from the progress callback to stop a job at shutdown."""


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


Status = Literal["queued", "running", "done", "failed"]


@dataclass
class Job:
    """One ingest job, as ``GET /api/jobs/{id}`` shows it."""

    id: str
    owner: str
    collection: str
    files: list[str]
    total: int
    status: Status = "queued"
    done: int = 0
    current: str | None = None
    chunks: int = 0
    report: dict[str, Any] | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("owner")
        return data


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
    """The job list and the worker thread that runs them, one at a time."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatwright-ingest")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(
        self, owner: str, collection: str, staged: Staged, ingestor: Callable[[], Ingestor]
    ) -> Job:
        if self._stopping.is_set():
            staged.cleanup()
            raise UserError("the server is shutting down", hint="upload again later")
        names = [p.name for p in staged.paths]
        job = Job(
            id="job_" + uuid.uuid4().hex[:16],
            owner=owner,
            collection=collection,
            files=names + [e["file"] for e in staged.errors],
            total=len(names),
            errors=list(staged.errors),
        )
        with self._lock:
            self._jobs[job.id] = job
            self._prune()
        self._pool.submit(self._run, job, staged, ingestor)
        return job

    def get(self, owner: str, job_id: str) -> Job | None:
        """The job, if it is ``owner``'s (another user's job is not found)."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def list(self, owner: str) -> list[Job]:
        with self._lock:
            return [j for j in reversed(self._jobs.values()) if j.owner == owner]

    def _prune(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.finished_at is not None]
        for job_id in finished[: max(0, len(finished) - _KEPT)]:
            del self._jobs[job_id]

    def _run(self, job: Job, staged: Staged, ingestor: Callable[[], Ingestor]) -> None:
        try:
            if self._stopping.is_set():
                raise _Stopped
            job.status, job.started_at = "running", time.time()
            job.current = staged.paths[0].name if staged.paths else None
            if not staged.paths:
                job.status = "failed"
                return
            report = ingestor().ingest(
                [str(p) for p in staged.paths],
                job.collection,
                progress=self._progress(job),
                literal=True,  # uploaded names are names, not patterns
            )
            job.report = report_json(report)
            job.errors += [{"file": Path(s.path).name, "reason": s.reason} for s in report.skipped]
            job.status = "done" if report.read else "failed"
            job.done = job.total
        except _Stopped:
            job.status = "failed"
            job.errors.append({"file": job.current or "", "reason": "the server shut down"})
        except ChatwrightError as e:
            job.status = "failed"
            reason = f"{e.message} (hint: {e.hint})" if e.hint else e.message
            job.errors.append({"file": job.current or "", "reason": reason})
        except Exception as e:
            log.error("ingest job %s failed", job.id, exc_info=e)
            job.status = "failed"
            job.errors.append({"file": job.current or "", "reason": f"internal error: {e}"})
        finally:
            job.current = None
            job.finished_at = time.time()
            staged.cleanup()

    def _progress(self, job: Job) -> Callable[[Progress], None]:
        def tell(event: Progress) -> None:
            # files refused before reading (unsupported type) count as handled from the start
            job.done = event.done + max(0, job.total - event.total)
            job.chunks = event.chunks
            job.current = Path(event.path).name
            if self._stopping.is_set():
                raise _Stopped

        return tell

    def shutdown(self) -> None:
        """Stop after the current document; drop queued jobs; wait for the worker."""
        self._stopping.set()
        self._pool.shutdown(wait=True)  # queued jobs see the flag and fail at once
