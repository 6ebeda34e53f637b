"""Toolsets: named tools with unique names, and the policy that says which calls need approval."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from chatwright.errors import ConfigError
from chatwright.tools import interop
from chatwright.tools.base import Tool

__all__ = ["ApprovalPolicy", "ToolSource", "Toolset", "as_tool"]


def as_tool(value: Tool | Callable[..., Any] | Any) -> Tool:
    """A :class:`Tool` as is; a plain callable becomes one through its type hints; a LangChain
    tool or an OpenAI-style tool dict with a ``"callable"`` through :mod:`.interop`."""
    if isinstance(value, Tool):
        return value
    if interop.is_langchain_tool(value):
        return interop.from_langchain(value)
    if isinstance(value, Mapping):
        return interop.from_openai(value)
    if callable(value):
        return Tool.from_function(value)
    raise ConfigError(
        f"{value!r} is not a tool",
        hint="pass a function, a chatwright.Tool, a LangChain tool, or an OpenAI-style tool "
        'dict with a "callable"',
    )


@runtime_checkable
class ToolSource(Protocol):
    """Something that contributes tools at run time (an MCP server): they may come and go."""

    name: str

    def tools(self) -> list[Tool]: ...

    def status(self) -> str: ...


class Toolset:
    """An ordered set of tools with unique names."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, value: Tool | Callable[..., Any]) -> Tool:
        t = as_tool(value)
        if t.name in self._tools:
            raise ConfigError(
                f"two tools are named {t.name!r}",
                hint="give one of them another name: @tool(name=...)",
            )
        self._tools[t.name] = t
        return t

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools


@dataclass(frozen=True)
class ApprovalPolicy:
    """Which calls wait for the user's approval.

    Tools without side effects always run. A tool with side effects runs without asking only
    when it is in ``auto_approve`` **and** the turn's context holds nothing untrusted (retrieved
    passages, tool output, recalled turns, a summary, an earlier answer written with such text
    in view, a memory saved from such a turn: see :mod:`chatwright.trust`): once text the user
    did not write is in the model's context, the model may be following that text's orders, so
    every side-effecting call asks.
    """

    auto_approve: frozenset[str] = field(default_factory=frozenset)

    def auto(self, tool: Tool) -> bool:
        """Whether ``tool`` has side effects and may run unasked (while nothing untrusted
        has been read)."""
        return tool.side_effects and bool({tool.name, "*"} & self.auto_approve)

    def reason(self, tool: Tool, *, untrusted: bool | Sequence[str]) -> str | None:
        """Why ``tool`` needs approval now, or None when it may run. ``untrusted``: the
        sources of untrusted text in the context (or a bare True/False)."""
        if not tool.side_effects:
            return None
        if self.auto(tool):
            if not untrusted:
                return None
            sources = "" if isinstance(untrusted, bool) else f" ({', '.join(untrusted)})"
            return (
                f"{tool.name} has side effects and the conversation holds text the user did "
                f"not write{sources}, which could have asked for this call"
            )
        return f"{tool.name} has side effects"
