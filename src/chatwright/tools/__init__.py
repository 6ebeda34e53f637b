"""Tools the model may call: typed Python functions, MCP servers' tools, LangChain tools and
OpenAI-style tool dicts (:mod:`.interop`), and the built-ins."""

from chatwright.tools.base import Tool, ToolContext, ToolOutput, ToolRetry, tool
from chatwright.tools.interop import from_langchain, from_openai
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
    "from_langchain",
    "from_openai",
    "tool",
]
