"""A small real MCP server, written with the ``mcp`` SDK, for tests/test_mcp.py.

Run as ``python tests/mcp_server.py`` it speaks MCP over stdio; with ``--http PORT`` it serves
streamable HTTP on ``http://127.0.0.1:PORT/mcp`` instead. Its tools cover what the client must
handle: a read-only tool, a tool with side effects, one that fails, one that is slow, one that
returns an image, and one that kills the server process mid-call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time

from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

# A 1x1 transparent PNG, for the image tool.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)

server = MCPServer("chatwright-test", log_level="WARNING")
notes: list[str] = []


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def write_note(text: str) -> str:
    """Save a note (changes state, so it has side effects)."""
    notes.append(text)
    return f"saved note {len(notes)}: {text}"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def fail() -> str:
    """Always fails, with a message for the model."""
    raise ToolError("the fail tool always fails")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def picture() -> Image:
    """Return a tiny PNG image."""
    return Image(data=PNG, format="png")


@server.tool()
def crash() -> str:
    """Kill the server process at once, mid-call."""
    os._exit(1)


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def pid() -> int:
    """The server's process id."""
    return os.getpid()


def exit_with_parent() -> None:
    """Exit when the test process that started us is gone (killed before its teardown ran).

    A stdio server sees its stdin close; an HTTP server would otherwise live on forever.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP")
    args = parser.parse_args()
    if args.http:
        exit_with_parent()
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run()


if __name__ == "__main__":
    main()
