"""Thread export: the full stored transcript as JSON or Markdown (compaction never loses it)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from chatwright.store import StoredMessage, ThreadInfo
from chatwright.types import _jsonable

__all__ = ["thread_to_json", "thread_to_markdown"]

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _escape_surrogates(text: str) -> str:
    """Valid UTF-8 JSON even for lone surrogates: write them as \\uXXXX escapes."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def thread_to_json(info: ThreadInfo, messages: Iterable[StoredMessage]) -> str:
    data: dict[str, Any] = {
        "thread": {
            **asdict(info),
            "created_at": _iso(info.created_at),
            "updated_at": _iso(info.updated_at),
        },
        "messages": [
            {"seq": m.seq, "created_at": _iso(m.created_at), **_jsonable(m.message)}
            for m in messages
        ],
    }
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


def thread_to_markdown(info: ThreadInfo, messages: Iterable[StoredMessage]) -> str:
    out = [
        f"# {info.title or info.id}",
        "",
        f"Thread `{info.id}`, started {_iso(info.created_at)}.",
    ]
    for m in messages:
        out += ["", f"## {m.message.role} · #{m.seq} · {_iso(m.created_at)}", "", _markdown_body(m)]
    return _escape_surrogates("\n".join(out) + "\n")
