"""Request bodies and response shapes of the HTTP API (they make the OpenAPI spec, /docs).

Bodies are strict (``"true"`` is not a boolean, ``1`` is not a string) and refuse unknown
fields, so a typo is a 422 that names the field instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- requests ---------------------------------------------------------------------------------
class NewThread(_Body):
    id: str | None = Field(default=None, min_length=1, max_length=200)
    title: str | None = Field(default=None, max_length=200)


class ThreadPatch(_Body):
    title: str = Field(min_length=1, max_length=200)


class NewMessage(_Body):
    text: str
    stream: bool = True
    bot: str | None = Field(default=None, description="which bot answers; default: the default")


class Pins(_Body):
    collections: list[str] = Field(max_length=64, description="[] lets the router choose again")


class ApprovalAnswer(_Body):
    approved: bool


class NewCollection(_Body):
    name: str
    description: str = Field(default="", max_length=2000)


class CollectionPatch(_Body):
    description: str = Field(max_length=2000)


class MemoryText(_Body):
    text: str


# -- responses --------------------------------------------------------------------------------
class ThreadOut(BaseModel):
    id: str
    title: str | None
    created_at: float
    updated_at: float
    message_count: int
    pinned: list[str]


class ThreadList(BaseModel):
    threads: list[ThreadOut]
    limit: int
    offset: int


class MessageOut(BaseModel):
    seq: int
    role: str
    text: str
    parts: list[dict[str, Any]]
    metadata: dict[str, Any]
    created_at: float


class MessageList(BaseModel):
    thread_id: str
    messages: list[MessageOut]
    next_after: int | None = Field(description="pass as ?after= for more; null: no more")


class AnswerOut(BaseModel):
    thread_id: str
    seq: int
    text: str
    message: dict[str, Any]
    interrupted: bool
    citations: list[dict[str, Any]]
    trace: dict[str, Any]


class TraceOut(BaseModel):
    thread_id: str
    seq: int
    trace: dict[str, Any]


class DocumentOut(BaseModel):
    id: int
    source: str
    title: str | None
    bytes: int
    chunks: int
    content_hash: str
    ingested_at: float
    metadata: dict[str, Any]


class CollectionOut(BaseModel):
    name: str
    description: str
    documents: int
    chunks: int
    created_at: float
    updated_at: float


class CollectionDetail(CollectionOut):
    document_list: list[DocumentOut]


class MemoryOut(BaseModel):
    id: int
    text: str
    created_at: float
    updated_at: float


class JobOut(BaseModel):
    id: str
    collection: str
    files: list[str]
    status: str = Field(description="queued, running, done or failed")
    done: int
    total: int
    current: str | None
    chunks: int
    report: dict[str, Any] | None
    errors: list[dict[str, str]]
    created_at: float
    started_at: float | None
    finished_at: float | None


class JobAccepted(JobOut):
    job_id: str = Field(description="the job's id again: poll GET /api/jobs/{job_id}")


class ToolOut(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]
    side_effects: bool
    source: str
