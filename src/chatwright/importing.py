"""Thread import: a chatwright export (JSON) or an OpenAI/ChatGPT-style export, as new threads.

Formats, recognised by their shape (:func:`parse_export`):

- **chatwright**: what ``chatwright threads export`` and ``GET /api/threads/{id}/export``
  write (``export.py``): ``{"thread": {...}, "branches": [...], "path": [...], "messages":
  [{seq, created_at, branch, role, parts, metadata}, ...]}``. Messages come back as they were
  (parts, tool calls and results included, metadata), and so do the branches: replayed in
  seq order, each forked where it forked before, and the active one active again. An export
  from before branches (no ``branch`` on its messages) is one conversation.
- **ChatGPT** (``conversations.json`` of "Export data"): a list of conversations (or one),
  each ``{"title", "create_time", "mapping": {node id: {"message", "parent", "children"}},
  "current_node"}``. The mapping is a tree (every edit or regeneration is a branch); the
  branch that was on screen, from the root to ``current_node``, is imported. Only user and
  assistant text is kept: system prompts, hidden messages, tool traffic and images are left
  out (their pairing with calls cannot be rebuilt).
- **OpenAI messages**: ``{"messages": [{"role", "content"}, ...]}`` (chat-completions style;
  ``content`` a string or a list of ``{"type": "text", "text"}``), with an optional title.

Every thread gets a new id (nothing already stored is touched) and its original times in
each message's metadata (``original_time``, Unix seconds) and the thread's (``imported``).

An export is text someone else wrote (or crafted): every imported message, the user's
included, is stored as untrusted (``metadata["untrusted"] = [trust.IMPORTED]``), so while it
is in a later turn's context, tools with side effects ask first (``trust.py``); a system
message becomes a user message (it is not this bot's configuration). Limits, checked before
anything is written: :data:`MAX_THREADS` threads per import, :data:`MAX_MESSAGES` messages in
all, a user's message no longer than a turn's (``max_message_chars``), and the branch limits
of ``store/branches.py`` (:data:`~chatwright.store.branches.MAX_BRANCHES`,
:data:`~chatwright.store.branches.MAX_BRANCH_DEPTH`).

:func:`import_threads` writes each thread in a transaction of its own (the store is not held
for the whole file); when one fails, the threads it already wrote are deleted again, so a bad
import stores nothing (a crash in between can leave whole threads, never half of one).
Errors are :class:`~chatwright.errors.UserError` naming where in the file the problem is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from chatwright import trust
from chatwright.config import Settings
from chatwright.errors import UserError
from chatwright.store import Store, ThreadInfo
from chatwright.store.branches import MAX_BRANCH_DEPTH, MAX_BRANCHES
from chatwright.titles import Exchange, keyword_title
from chatwright.types import Message, openai_content_text

__all__ = [
    "MAX_MESSAGES",
    "MAX_THREADS",
    "ImportedThread",
    "check_limits",
    "import_threads",
    "parse_export",
]

MAX_TITLE = 200
MAX_THREADS = 1_000  # threads per import (all its files together)
MAX_MESSAGES = 20_000  # messages per import, all its threads together
# a user message's longest, when the caller gives no limit: a turn's default
MAX_MESSAGE_CHARS: int = Settings.model_fields["max_message_chars"].default
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_HINT = (
    "import a file written by `chatwright threads export` (JSON), ChatGPT's conversations.json,"
    ' or {"messages": [{"role": "user", "content": "..."}]}'
)


@dataclass(frozen=True, slots=True)
class ImportedThread:
    """A thread read from an export, not yet stored."""

    title: str | None
    messages: list[Message]
    source: str  # chatwright | chatgpt | openai
    created_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # chatwright exports: each message's (old seq, branch), the branches' (parent, fork_seq)
    # and the active branch; empty for a single conversation
    seqs: list[tuple[int, int]] = field(default_factory=list)
    forks: dict[int, int] = field(default_factory=dict)  # branch -> fork_seq (old seqs)
    active: int = 0


def _bad(where: str, what: str) -> UserError:
    return UserError(f"not an export chatwright can import: {where}: {what}", hint=_HINT)


def _time(value: Any) -> float | None:
    """Unix seconds from a number or an ISO 8601 string; None when absent or unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    return None


def _stamped(message: Message, when: float | None) -> Message:
    if when is None:
        return message
    return message.model_copy(update={"metadata": {**message.metadata, "original_time": when}})


def _title(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    title = " ".join(value.split())[:MAX_TITLE]
    return title or None


# -- chatwright ---------------------------------------------------------------------------
def _chatwright(data: Mapping[str, Any]) -> ImportedThread:
    thread = data.get("thread")
    rows = data.get("messages")
    if not isinstance(thread, dict) or not isinstance(rows, list):
        raise _bad("thread", "a chatwright export has a 'thread' object and a 'messages' list")
    messages, seqs = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _bad(f"messages[{i}]", "not an object")
        body = {k: row[k] for k in ("role", "parts", "metadata") if k in row}
        try:
            message = Message.model_validate(body)
        except ValidationError as e:
            raise _bad(f"messages[{i}]", _first_error(e)) from None
        if message.role == "system":  # not this bot's configuration: the file's text
            message = message.model_copy(update={"role": "user"})
        messages.append(_stamped(message, _time(row.get("created_at"))))
        seqs.append((_int(row.get("seq", i + 1), f"messages[{i}].seq"), _branch(row, i)))
    forks = _forks(data.get("branches"), {seq for seq, _ in seqs})
    _check_depth(forks, seqs)
    for i, (_, branch) in enumerate(seqs):
        if branch and branch not in forks:
            raise _bad(f"messages[{i}].branch", f"branch {branch} is not in 'branches'")
    order = sorted(range(len(seqs)), key=lambda i: seqs[i][0])
    active = thread.get("branch", 0)
    return ImportedThread(
        _title(thread.get("title")),
        [messages[i] for i in order],
        "chatwright",
        _time(thread.get("created_at")),
        {"id": str(thread.get("id", ""))[:200]},
        seqs=[seqs[i] for i in order],
        forks=forks,
        active=active if isinstance(active, int) and active in forks else 0,
    )


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(where, "must be a whole number >= 0")
    return value


def _branch(row: Mapping[str, Any], i: int) -> int:
    return _int(row.get("branch", 0), f"messages[{i}].branch")


def _forks(branches: Any, seqs: set[int]) -> dict[int, int]:
    """Branch id -> the (old) seq it forks after, main's 0 included; checked."""
    forks = {0: 0}
    if branches is None:
        return forks
    if not isinstance(branches, list):
        raise _bad("branches", "must be a list")
    if len(branches) > MAX_BRANCHES + 1:  # main may be listed too
        raise _too_many_branches(f"{len(branches):,} branches")
    for i, b in enumerate(branches):
        if not isinstance(b, dict):
            raise _bad(f"branches[{i}]", "not an object")
        branch = _int(b.get("id"), f"branches[{i}].id")
        if branch:
            fork = _int(b.get("fork_seq", 0), f"branches[{i}].fork_seq")
            if fork and fork not in seqs:
                raise _bad(f"branches[{i}].fork_seq", f"no message {fork} in the export")
            forks[branch] = fork
    if len(forks) - 1 > MAX_BRANCHES:
        raise _too_many_branches(f"{len(forks) - 1:,} branches")
    return forks


def _too_many_branches(what: str) -> UserError:
    return UserError(
        f"not an export chatwright can import: the thread has too many versions ({what}; at"
        f" most {MAX_BRANCHES} branches, nested at most {MAX_BRANCH_DEPTH} deep)",
        hint="export the active branch only (the Markdown export, or the JSON of a thread"
        " started anew from it), or start a new thread",
    )


def _check_depth(forks: Mapping[int, int], seqs: Sequence[tuple[int, int]]) -> None:
    """Refuse branches nested deeper than a thread may hold (each forks off the branch of the
    message it continues after)."""
    branch_of = dict(seqs)
    depth: dict[int, int] = {0: 0}
    for start in forks:
        trail, node = [], start
        while node not in depth:
            if node in trail or len(trail) > MAX_BRANCH_DEPTH:
                break  # a cycle (refused when replayed) or too deep: the count says which
            trail.append(node)
            node = branch_of.get(forks.get(node, 0), 0)
        base = depth.get(node, len(trail))
        for k, b in enumerate(reversed(trail), 1):
            depth[b] = base + k
        if depth.get(start, 0) > MAX_BRANCH_DEPTH:
            raise _too_many_branches(f"branch {start} is nested {depth[start]} deep")


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))


# -- OpenAI messages ----------------------------------------------------------------------
def _content_text(content: Any, where: str) -> str:
    try:
        return openai_content_text(content, skip_other=True)  # images and the like: left out
    except ValueError as e:
        raise _bad(where, str(e)) from None


def _openai(data: Mapping[str, Any]) -> ImportedThread:
    messages = []
    for i, row in enumerate(data["messages"]):
        where = f"messages[{i}]"
        if not isinstance(row, dict) or row.get("role") not in _ROLES:
            raise _bad(where, "each message needs a role: system, user or assistant")
        text = _content_text(row.get("content"), where)
        if row["role"] in ("user", "assistant") and text.strip():
            message = Message.user(text) if row["role"] == "user" else Message.assistant(text)
            messages.append(_stamped(message, _time(row.get("created_at"))))
    return ImportedThread(_title(data.get("title")), messages, "openai")


# -- ChatGPT ------------------------------------------------------------------------------
def _chatgpt_path(conversation: Mapping[str, Any], where: str) -> Iterator[Mapping[str, Any]]:
    """The nodes from the root to the current node (the branch that was on screen)."""
    mapping = conversation["mapping"]
    if not isinstance(mapping, dict):
        raise _bad(f"{where}.mapping", "not an object")
    node_id = conversation.get("current_node")
    if not isinstance(node_id, str) or node_id not in mapping:
        # no current node: follow the last child from the root
        roots = [k for k, n in mapping.items() if isinstance(n, dict) and not n.get("parent")]
        node_id = roots[0] if roots else None
        walked: set[str] = set()
        while node_id is not None:
            node = mapping[node_id]
            if not isinstance(node, dict) or node_id in walked:
                raise _bad(f"{where}.mapping", f"node {node_id!r} is not an object or in a cycle")
            walked.add(node_id)
            children = node.get("children")
            if not children:
                break
            if not isinstance(children, list) or not isinstance(children[-1], str):
                raise _bad(f"{where}.mapping.{node_id}.children", "must be a list of node ids")
            node_id = children[-1]
            if node_id not in mapping:
                raise _bad(f"{where}.mapping", f"node {node_id!r} is missing")
    path: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    while node_id is not None:
        node = mapping.get(node_id) if isinstance(node_id, str) else None
        if not isinstance(node, dict) or node_id in seen:
            raise _bad(f"{where}.mapping", f"node {node_id!r} is missing or in a cycle")
        seen.add(node_id)
        path.append(node)
        node_id = node.get("parent")
    return reversed(path)


def _chatgpt_message(node: Mapping[str, Any]) -> Message | None:
    raw = node.get("message")
    if not isinstance(raw, dict):
        return None
    role = (raw.get("author") or {}).get("role")
    meta = raw.get("metadata") or {}
    if role not in ("user", "assistant") or meta.get("is_visually_hidden_from_conversation"):
        return None
    content = raw.get("content") or {}
    if content.get("content_type") not in ("text", "multimodal_text", None):
        return None  # code, execution output, browsing: tool traffic
    parts = content.get("parts") or []
    text = "\n".join(p for p in parts if isinstance(p, str)).strip()
    if not text:
        return None
    message = Message.user(text) if role == "user" else Message.assistant(text)
    return _stamped(message, _time(raw.get("create_time")))


def _chatgpt(conversation: Mapping[str, Any], where: str) -> ImportedThread:
    messages = [m for node in _chatgpt_path(conversation, where) if (m := _chatgpt_message(node))]
    return ImportedThread(
        _title(conversation.get("title")),
        messages,
        "chatgpt",
        _time(conversation.get("create_time")),
        {"id": str(conversation.get("id") or conversation.get("conversation_id") or "")[:200]},
    )


# -- entry points -------------------------------------------------------------------------
def parse_export(data: bytes | str) -> list[ImportedThread]:
    """The threads in an export (see the module's docstring for the formats); a
    :class:`~chatwright.errors.UserError` saying what is wrong with it otherwise."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad("the file", f"not valid JSON ({e})") from None
    except RecursionError:
        raise _bad("the file", "JSON nested too deep") from None
    try:
        threads = _threads(value)
    except RecursionError:
        raise _bad("the file", "nested too deep") from None
    except (AttributeError, TypeError, KeyError) as e:  # a value of the wrong type somewhere
        raise _bad("the file", f"a value of the wrong type ({type(e).__name__}: {e})") from None
    if len(threads) > MAX_THREADS:
        raise _too_many("threads", len(threads), MAX_THREADS)
    kept = [t for t in threads if t.messages]
    if not kept:
        raise _bad("the file", "no message with text to import")
    return kept


def _too_many(what: str, n: int, limit: int) -> UserError:
    return UserError(
        f"the import has {n:,} {what}, over the limit of {limit:,} per import",
        hint="split the export into smaller files and import them one at a time",
    )


def _threads(value: Any) -> list[ImportedThread]:
    if isinstance(value, dict) and "mapping" in value:
        value = [value]
    if isinstance(value, list):
        if not value:
            raise _bad("the file", "an empty list: no conversations")
        if len(value) > MAX_THREADS:
            raise _too_many("threads", len(value), MAX_THREADS)
        threads = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or "mapping" not in item:
                raise _bad(f"[{i}]", "a ChatGPT conversation has a 'mapping' of messages")
            threads.append(_chatgpt(item, f"[{i}]"))
    elif isinstance(value, dict) and isinstance(value.get("thread"), dict):
        threads = [_chatwright(value)]
    elif isinstance(value, dict) and isinstance(value.get("messages"), list):
        threads = [_openai(value)]
    else:
        raise _bad("the file", "no 'thread', 'messages' or ChatGPT 'mapping' found")
    return threads


def _title_for(thread: ImportedThread) -> str:
    if thread.title:
        return thread.title
    question = next((m.text for m in thread.messages if m.role == "user" and m.text), "")
    answer = next((m.text for m in thread.messages if m.role == "assistant" and m.text), "")
    return keyword_title(Exchange(question, answer)) if question else "Imported conversation"


def check_limits(threads: Sequence[ImportedThread], *, max_chars: int = MAX_MESSAGE_CHARS) -> None:
    """Refuse an import over the limits (the module's docstring), before anything is stored:
    too many threads or messages, or a user message longer than a turn may send."""
    if len(threads) > MAX_THREADS:
        raise _too_many("threads", len(threads), MAX_THREADS)
    total = sum(len(t.messages) for t in threads)
    if total > MAX_MESSAGES:
        raise _too_many("messages", total, MAX_MESSAGES)
    for n, thread in enumerate(threads):
        for i, message in enumerate(thread.messages):
            if message.role == "user" and len(message.text) > max_chars:
                raise UserError(
                    f"thread {n + 1} of the import, message {i + 1}: {len(message.text):,}"
                    f" characters, over the limit of {max_chars:,} for a message",
                    hint="shorten it in the file, or raise max_message_chars in chatwright.toml",
                )


def _untrusted(message: Message) -> Message:
    """``message`` marked as written elsewhere (``trust.IMPORTED``), with any sources it had."""
    had = message.metadata.get(trust.KEY)
    sources = trust.merge([trust.IMPORTED], had if isinstance(had, list) else [])
    sources = tuple(s for s in sources if isinstance(s, str))
    return message.model_copy(update={"metadata": {**message.metadata, trust.KEY: list(sources)}})


def import_threads(
    store: Store,
    owner: str,
    threads: Sequence[ImportedThread],
    *,
    max_chars: int = MAX_MESSAGE_CHARS,
) -> list[ThreadInfo]:
    """Store each thread as a new thread of ``owner``, each in a transaction of its own;
    when one fails, those already written are deleted again (nothing is kept). ``max_chars``:
    the longest user message (a turn's ``max_message_chars``)."""
    check_limits(threads, max_chars=max_chars)
    created: list[ThreadInfo] = []
    try:
        for thread in threads:
            created.append(_write(store, owner, thread))
    except BaseException:
        for info in created:  # undo: a failed import stores nothing
            with contextlib.suppress(Exception):  # the first error is the one to report
                store.delete_thread(owner, info.id)
        raise
    return created


def _write(store: Store, owner: str, thread: ImportedThread) -> ThreadInfo:
    imported: dict[str, Any] = {"format": thread.source, **thread.metadata}
    if thread.created_at is not None:
        imported["created_at"] = thread.created_at
    messages = [_untrusted(m) for m in thread.messages]
    with store.transaction():  # one thread at a time: written whole or not at all
        info = store.create_thread(owner, title=_title_for(thread), metadata={"imported": imported})
        if thread.seqs and any(branch for _, branch in thread.seqs):
            _replay(store, owner, info.id, thread, messages)
        else:
            for start in range(0, len(messages), _APPEND_BATCH):
                store.append(owner, info.id, messages[start : start + _APPEND_BATCH])
    return store.get_thread(owner, info.id)


_APPEND_BATCH = 500  # messages per append call


def _replay(
    store: Store, owner: str, thread_id: str, thread: ImportedThread, messages: list[Message]
) -> None:
    """Append the messages in their old seq order, forking each branch where it forked
    (mapped to the new seqs) the first time one of its messages comes, then make the
    export's active branch active."""
    new_seq: dict[int, int] = {0: 0}
    new_branch: dict[int, int] = {0: 0}
    current = 0
    for message, (old_seq, branch) in zip(messages, thread.seqs, strict=True):
        if branch not in new_branch:
            fork = thread.forks[branch]
            if fork not in new_seq:
                raise _bad(f"branch {branch}", f"forks after message {fork}, which comes later")
            new_branch[branch] = store.fork(owner, thread_id, new_seq[fork]).id
        elif branch != current:
            store.switch_branch(owner, thread_id, new_branch[branch])
        current = branch
        (stored,) = store.append(owner, thread_id, [message])
        new_seq[old_seq] = stored.seq
    active = new_branch.get(thread.active, new_branch[current])
    if active != new_branch[current]:
        store.switch_branch(owner, thread_id, active)
