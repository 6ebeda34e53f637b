"""Tools the model may call: typed Python functions, MCP servers' tools, and the built-ins."""

from chatwright.tools.base import Tool, ToolContext, ToolOutput, ToolRetry, tool
from chatwright.tools.toolset import ApprovalPolicy, Toolset, ToolSource, as_tool

__all__ = [
    "ApprovalPolicy",
    "Tool",
    "ToolContext",
    "ToolOutput",
    "ToolRetry",
    "ToolSource",
    "Toolset",
    "as_tool",
    "tool",
]
