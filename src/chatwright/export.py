"""Thread export: the full stored transcript as JSON or Markdown (compaction never loses it).

JSON (``thread_to_json``; what ``importing.py`` reads back)::

    {
      "thread":   {"id", "owner", "title", "created_at", "updated_at" (ISO 8601),
                   "message_count", "metadata", "uid",
                   "branch": the active branch's id (0: main)},
      "branches": [{"id", "parent" (null for main), "fork_seq", "created_at" (ISO 8601),
                    "first_seq", "last_seq", "messages", "replaces"}, ...],   main first
      "path":     [seq, ...],   the active branch's messages, in order: the conversation shown
      "messages": [{"seq", "created_at" (ISO 8601), "branch", "role", "parts", "metadata"},
                   ...]          every message of every branch, by seq
    }

A branch continues after message ``fork_seq`` of ``parent`` (0: before the first message); its
conversation is its parent's up to ``fork_seq``, then its own messages. ``replaces`` is the
parent's message after the fork that the branch is an alternative to (a regenerated answer, an
edited message). An export made before branches existed has no ``branches`` nor ``path``, and
its messages no ``branch``: all of it is the conversation (main).

Markdown (``thread_to_markdown``): the active branch's conversation, with a note where a
message has alternatives on other branches.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from chatwright.store import StoredMessage, ThreadInfo
from chatwright.store.base import BranchInfo, Store
from chatwright.store.branches import alternatives
from chatwright.types import _jsonable

__all__ = ["export_thread", "thread_to_json", "thread_to_markdown"]

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _escape_surrogates(text: str) -> str:
    """Valid UTF-8 JSON even for lone surrogates: write them as \\uXXXX escapes."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def export_thread(store: Store, owner: str, thread_id: str, fmt: str) -> str:
    """The thread as ``fmt`` (json, markdown or md): JSON holds every branch, Markdown the
    active one (see the module's docstring)."""
    info = store.get_thread(owner, thread_id)
    branches = store.branches(owner, thread_id)
    if fmt == "json":
        path = [m.seq for m in store.messages(owner, thread_id)]
        every = store.messages(owner, thread_id, all_branches=True)
        return thread_to_json(info, every, branches=branches, path=path)
    return thread_to_markdown(info, store.messages(owner, thread_id), branches=branches)


def thread_to_json(
    info: ThreadInfo,
    messages: Iterable[StoredMessage],
    *,
    branches: Sequence[BranchInfo] = (),
    path: Sequence[int] | None = None,
) -> str:
    """``messages`` (every branch's, for a whole export) as JSON; ``branches`` and ``path``
    (the active branch's seqs) say which conversation each message belongs to."""
    data: dict[str, Any] = {
        "thread": {
            **asdict(info),
            "created_at": _iso(info.created_at),
            "updated_at": _iso(info.updated_at),
        },
    }
    if branches:
        data["branches"] = [{**asdict(b), "created_at": _iso(b.created_at)} for b in branches]
    if path is not None:
        data["path"] = list(path)
    data["messages"] = [
        {"seq": m.seq, "created_at": _iso(m.created_at), "branch": m.branch, **_jsonable(m.message)}
        for m in messages
    ]
    return _escape_surrogates(json.dumps(data, ensure_ascii=False, indent=2))


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``, so it cannot be closed early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _markdown_body(m: StoredMessage) -> str:
    lines = [m.message.text] if m.message.text else []
    for call in m.message.tool_calls:
        lines.append(f"*called* `{call.name}` with `{call.arguments}`")
    for result in m.message.tool_results:
        fence = _fence(result.content)
        lines.append(f"*{result.name or 'tool'} returned:*\n\n{fence}\n{result.content}\n{fence}")
    for c in m.message.citations:
        where = c.title or c.source or c.document_id or "source"
        lines.append(f"[{c.index}] {where}" + (f", page {c.page}" if c.page else ""))
    if m.message.metadata.get("interrupted"):
        lines.append("*(answer cut short)*")
    return "\n\n".join(lines)


def thread_to_markdown(
    info: ThreadInfo, messages: Iterable[StoredMessage], *, branches: Sequence[BranchInfo] = ()
) -> str:
    """The conversation ``messages`` (the active branch's) as Markdown; with ``branches``, a
    note on each message that has alternatives on other branches."""
    out = [
        f"# {info.title or info.id}",
        "",
        f"Thread `{info.id}`, started {_iso(info.created_at)}.",
    ]
    if len(branches) > 1:
        out += [
            "",
            f"Shown: branch {info.branch} of {len(branches)} (0 is main); the JSON export"
            " holds every branch.",
        ]
    alts = alternatives(branches)
    for m in messages:
        out += ["", f"## {m.message.role} · #{m.seq} · {_iso(m.created_at)}", ""]
        if m.seq in alts:
            others = ", ".join(f"#{seq} (branch {b})" for seq, b in alts[m.seq] if seq != m.seq)
            place = [seq for seq, _ in alts[m.seq]].index(m.seq) + 1
            out += [f"*Version {place} of {len(alts[m.seq])}; other versions: {others}.*", ""]
        out.append(_markdown_body(m))
    return _escape_surrogates("\n".join(out) + "\n")
