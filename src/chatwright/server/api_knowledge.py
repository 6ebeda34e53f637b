"""``/api/collections`` and ``/api/jobs``: named document collections, uploads, ingest jobs.

An upload (multipart, field ``files``, one or more) is stored with a background job in the
database and ingested by a worker of any replica (``jobs.py``); the answer is 202 with the job's
id at once. ``POST /api/collections/{name}/urls`` queues web pages the same way (fetched by the
worker through ``chatwright.netguard``). Collection names are per user: a name another user
has is simply not one of yours (404).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Path, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from chatwright.netguard import FetchError, normalize_url
from chatwright.server.deps import CurrentUser, State
from chatwright.server.errors import ApiError, SafeJSONResponse
from chatwright.server.jobs import job_json, stage_files
from chatwright.server.schemas import (
    BODY_ERRORS,
    MAX_INT,
    CollectionDetail,
    CollectionOut,
    CollectionPatch,
    JobAccepted,
    JobOut,
    NewCollection,
    errors,
)
from chatwright.store.base import CollectionInfo, DocumentInfo

__all__ = ["router"]

router = APIRouter(
    prefix="/api",
    tags=["collections"],
    default_response_class=SafeJSONResponse,
    responses=errors(401, 422, 500),
)
NOT_FOUND = errors(404)

Name = Annotated[str, Path(description="The collection's name (yours: names are per user).")]
DocumentId = Annotated[int, Path(ge=1, le=MAX_INT, description="The document's id.")]


def collection_json(info: CollectionInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "description": info.description,
        "documents": info.documents,
        "chunks": info.chunks,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
    }


def document_json(doc: DocumentInfo) -> dict[str, Any]:
    return {
        "id": doc.id,
        "source": doc.source,
        "title": doc.title,
        "bytes": doc.bytes,
        "chunks": doc.chunks,
        "content_hash": doc.content_hash,
        "ingested_at": doc.ingested_at,
        "metadata": doc.metadata,
    }


def _not_found(name: str) -> ApiError:
    return ApiError(
        404,
        f"collection {name!r} not found",
        hint="list yours with GET /api/collections; create it with POST /api/collections",
        type="not_found",
    )


def _collection(state: Any, owner: str, name: str) -> CollectionInfo:
    info = state.store.find_collection(owner, name)
    if info is None:
        raise _not_found(name)
    return info


@router.get("/collections")
def list_collections(user: CurrentUser, state: State) -> dict[str, list[CollectionOut]]:
    """Your collections."""
    found = state.store.list_collections(user.user)
    return {"collections": [CollectionOut(**collection_json(c)) for c in found]}


@router.post(
    "/collections",
    status_code=201,
    response_model=CollectionOut,
    responses=errors(*BODY_ERRORS, 409),
)
def create_collection(body: NewCollection, user: CurrentUser, state: State) -> Any:
    """Create an empty collection (a taken name is 409); then upload documents into it."""
    description = " ".join(body.description.split())
    return collection_json(state.store.create_collection(user.user, body.name, description))


@router.get("/collections/{name}", response_model=CollectionDetail, responses=NOT_FOUND)
def get_collection(name: Name, user: CurrentUser, state: State) -> Any:
    """The collection and its documents."""
    info = _collection(state, user.user, name)
    docs = state.store.list_documents(user.user, name)
    return {**collection_json(info), "document_list": [document_json(d) for d in docs]}


@router.patch(
    "/collections/{name}", response_model=CollectionOut, responses=errors(*BODY_ERRORS, 404)
)
def describe_collection(name: Name, body: CollectionPatch, user: CurrentUser, state: State) -> Any:
    """Set what the collection holds (the router reads it)."""
    _collection(state, user.user, name)
    description = " ".join(body.description.split())
    return collection_json(state.store.update_collection(user.user, name, description))


@router.delete("/collections/{name}", status_code=204, responses=NOT_FOUND)
def delete_collection(name: Name, user: CurrentUser, state: State) -> Response:
    """Delete the collection with its documents and their indexed chunks."""
    _collection(state, user.user, name)
    state.store.delete_collection(user.user, name)
    return Response(status_code=204)


@router.post(
    "/collections/{name}/documents",
    status_code=202,
    response_model=JobAccepted,
    responses=errors(*BODY_ERRORS, 404, 429),
)
def upload_documents(
    name: Name,
    files: Annotated[list[UploadFile], File(description="one or more files")],
    user: CurrentUser,
    state: State,
    response: Response,
) -> Any:
    """Upload files (txt, md, html, pdf, docx) to ingest in the background: 202 and a job to
    poll at ``GET /api/jobs/{job_id}``. A user with ``max_jobs_per_user`` uploads queued or
    being ingested gets a 429."""
    _collection(state, user.user, name)
    state.ingestor(user.user)  # before anything is staged: it may refuse
    state.jobs.admit(user.user)
    staged = stage_files([(f.filename, f.file) for f in files])
    job = state.jobs.submit(user.user, name, staged)  # deletes the staged files, come what may
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return {**job_json(job), "job_id": job.id}


class WebPages(BaseModel):
    """Web pages to ingest: fetched by the server through its SSRF guard ([web] settings)."""

    model_config = ConfigDict(extra="forbid")
    urls: list[Annotated[str, StringConstraints(max_length=2048)]] = Field(
        min_length=1, max_length=50, description="http:// or https:// addresses"
    )
    depth: int = Field(default=0, ge=0, le=5, description="follow same-site links this deep")
    max_pages: int | None = Field(
        default=None, ge=1, description="at most this many pages (capped by [web] max_pages)"
    )


@router.post(
    "/collections/{name}/urls",
    status_code=202,
    response_model=JobAccepted,
    responses=errors(*BODY_ERRORS, 404, 429),
)
def ingest_urls(
    name: Name, body: WebPages, user: CurrentUser, state: State, response: Response
) -> Any:
    """Ingest web pages (a page, or a site to ``depth``) in the background: 202 and a job to
    poll at ``GET /api/jobs/{job_id}``. Private, loopback and metadata addresses are refused
    unless the server's ``[web]`` settings allow-list them."""
    _collection(state, user.user, name)
    try:
        urls = list(dict.fromkeys(normalize_url(u) for u in body.urls))
    except FetchError as e:
        raise ApiError(422, e.message, hint=e.hint, param="urls") from None
    state.ingestor(user.user)
    state.jobs.admit(user.user)
    job = state.jobs.submit_urls(user.user, name, urls, body.depth, body.max_pages)
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return {**job_json(job), "job_id": job.id}


@router.delete("/collections/{name}/documents/{doc_id}", status_code=204, responses=NOT_FOUND)
def delete_document(name: Name, doc_id: DocumentId, user: CurrentUser, state: State) -> Response:
    """Remove a document and its chunks."""
    info = _collection(state, user.user, name)
    doc = next((d for d in state.store.list_documents(user.user, name) if d.id == doc_id), None)
    if doc is None:
        raise ApiError(
            404,
            f"document {doc_id} not found in collection {name!r}",
            hint=f"list its documents with GET /api/collections/{name}",
            type="not_found",
        )
    state.ingestor(user.user).remove(info, doc)
    return Response(status_code=204)


@router.get("/jobs", tags=["jobs"])
def list_jobs(user: CurrentUser, state: State) -> dict[str, list[JobOut]]:
    """Your newest ingest jobs (50 at most), newest first."""
    return {"jobs": [JobOut(**job_json(j)) for j in state.jobs.list(user.user)]}


@router.get("/jobs/{job_id}", tags=["jobs"], response_model=JobOut, responses=NOT_FOUND)
def get_job(job_id: str, user: CurrentUser, state: State) -> Any:
    """An ingest job's progress: status, files done of total, the report, files refused."""
    job = state.jobs.get(user.user, job_id)
    if job is None:
        raise ApiError(
            404,
            f"job {job_id!r} not found",
            hint="the newest 500 finished jobs of each user are kept; list yours at GET /api/jobs",
            type="not_found",
        )
    return job_json(job)
