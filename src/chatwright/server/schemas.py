"""Request bodies and response shapes of the HTTP API (they make the OpenAPI spec, /docs).

Bodies are strict (``"true"`` is not a boolean, ``1`` is not a string) and refuse unknown
fields, so a typo is a 422 that names the field instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_INT = 2**63 - 1  # SQLite's largest INTEGER: ids, seqs and offsets past it name nothing


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
    answer_mode: Literal["auto", "generate", "extract"] | None = Field(
        default=None,
        description="how an answer from documents is made: extract quotes the passages' best "
        "sentences with their [n], generate asks the model; default: the bot's setting",
    )


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
    branch: int = Field(default=0, description="the active branch (0: main)")


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
    branch: int = Field(default=0, description="the branch it was written on (0: main)")
    siblings: list[Sibling] | None = Field(
        default=None,
        description="its versions on other branches, itself included, oldest first (a "
        "regenerated answer, an edited message); absent when it has none",
    )


class Sibling(BaseModel):
    seq: int
    branch: int = Field(description="switch to this branch (PUT .../branch) to show it")


class MessageList(BaseModel):
    thread_id: str
    messages: list[MessageOut]
    next_after: int | None = Field(description="pass as ?after= for more; null: no more")


class CitationOut(BaseModel):
    """A passage an answer cites as ``[index]``, and where it is (``chatwright.CitationPart``):
    two sources with the same title differ by ``source`` and ``heading_path``."""

    kind: Literal["citation"] = "citation"
    index: int
    text: str = Field(description="the passage: clean text with light Markdown (lists, code)")
    document_id: str | None = None
    chunk_id: str | None = None
    source: str | None = Field(default=None, description="the file's path in its collection")
    title: str | None = None
    page: int | None = None
    heading_path: list[str] = Field(
        default_factory=list,
        description='the headings above the passage, outermost first: ["Install", "Linux"]',
    )


class AnswerOut(BaseModel):
    thread_id: str
    seq: int
    text: str
    message: dict[str, Any]
    interrupted: bool
    citations: list[CitationOut]
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
    untrusted: str | None = Field(
        default=None,
        description="saved in a turn that read text the user did not write (its sources); "
        "editing the memory clears it",
    )


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
    auto_approved: bool = Field(
        default=False, description="side effects, but runs unasked while nothing untrusted is read"
    )
    source: str = Field(description="python, builtin, or mcp:<server>")


class MCPServerOut(BaseModel):
    name: str
    status: str = Field(description='e.g. "connected, 3 tools" or "failed to start: ..."')


class BotOut(BaseModel):
    name: str
    model: str
    description: str
    default: bool


class BotList(BaseModel):
    bots: list[BotOut]


class ToolList(BaseModel):
    tools: list[ToolOut]
    mcp_servers: list[MCPServerOut] = Field(default_factory=list)


class KeyOut(BaseModel):
    id: str
    name: str | None


class Limits(BaseModel):
    max_message_chars: int
    max_body_bytes: int
    max_upload_bytes: int
    max_jobs_per_user: int = Field(description="uploads queued or ingesting at once; 0: any")
    max_turns_per_user: int = Field(description="turns running at once; 0: any")


class MeOut(BaseModel):
    user: str
    auth: Literal["key", "local"]
    key: KeyOut | None
    version: str
    default_bot: str
    bots: list[BotOut]
    limits: Limits


class PendingCall(BaseModel):
    id: str
    name: str
    arguments: str
    reason: str = ""
    description: str = ""


class PendingApprovals(BaseModel):
    thread_id: str
    pending: list[str] = Field(description="ids of the tool calls waiting for your answer")
    calls: list[PendingCall] = Field(
        default_factory=list, description="those calls: tool, arguments, why they ask"
    )


class Cancelled(BaseModel):
    thread_id: str
    cancelled: int = Field(description="how many running turns were stopped")


class ApprovalOut(BaseModel):
    thread_id: str
    call_id: str
    approved: bool


# -- errors -----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    hint: str | None
    type: str = Field(description="machine-readable: thread_not_found, validation_error, ...")


class ErrorOut(BaseModel):
    """The body of every error under ``/api`` (docs/api.md, "Errors")."""

    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorOut(BaseModel):
    """The body of every error under ``/v1``: OpenAI's shape."""

    error: OpenAIErrorDetail


_STATUS = {
    400: "A mistake the engine caught (empty or too long message, bad id or name), or a body "
    "that is not JSON",
    401: "No key, or an unknown or revoked one",
    404: "No such thing (or another user's)",
    409: "The id or name is taken; or the thread waits for your approval of a tool call "
    "(the error's pending and calls name it)",
    413: "The body is over the limit",
    415: "The body is not JSON (uploads: not multipart/form-data)",
    422: "A parameter or the body has the wrong shape or type",
    429: "Too many of your turns running, or uploads queued (see Retry-After)",
    500: "The store failed, or a bug",
    502: "The model answered with an error",
    503: "The model is unavailable or timed out",
}


BODY_ERRORS = (400, 413, 415)  # a route that reads a JSON body: not JSON, too big, not JSON at all


def errors(*codes: int, model: type[BaseModel] = ErrorOut) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (for a route's ``responses=``)."""
    return {code: {"model": model, "description": _STATUS[code]} for code in codes}
