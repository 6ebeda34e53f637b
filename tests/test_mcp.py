"""MCP servers as tool sources, against a real MCP server (tests/mcp_server.py) over stdio and
streamable HTTP: listing, naming, side effects, calls from several event loops, validation,
errors, timeouts, broken servers, a server that dies mid-session, and a clean close."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatwright.config import MCPServerSettings, Settings
from chatwright.tools import ToolContext, ToolOutput, ToolSource
from chatwright.tools.mcp import (
    MCPServer,
    MCPTool,
    mcp_servers,
    render_result,
    start_all,
    tool_names,
)

pytest.importorskip("mcp")

SERVER = str(Path(__file__).with_name("mcp_server.py"))
CTX = ToolContext(owner="alice", thread_id="t1")
TOOLS = {"add", "write_note", "fail", "slow", "picture", "crash", "pid"}


def stdio(**overrides: Any) -> MCPServerSettings:
    return MCPServerSettings(command=sys.executable, args=[SERVER], **overrides)


def by_name(server: MCPServer) -> dict[str, MCPTool]:
    return {t.name: t for t in server.tools()}  # type: ignore[misc]


def call(tool: MCPTool, arguments: dict[str, Any] | str) -> ToolOutput:
    """One turn's worth of event loop, as chatwright runs tools from sync code."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return asyncio.run(tool.call(text, CTX))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def demo() -> Iterator[MCPServer]:
    """One stdio server shared by the tests that do not break it."""
    server = MCPServer("demo", stdio())
    server.start()
    assert server.status() == "connected, 7 tools", server.status()
    yield server
    server.close()


@pytest.fixture
def own() -> Iterator[MCPServer]:
    """A server of its own, for a test that crashes or closes it."""
    server = MCPServer("own", stdio())
    server.start()
    assert server.connected, server.status()
    yield server
    server.close()


# -- listing -------------------------------------------------------------------------------
def test_tools_are_listed_with_the_prefix_and_schema(demo: MCPServer) -> None:
    assert isinstance(demo, ToolSource)
    tools = by_name(demo)
    assert set(tools) == {f"demo_{n}" for n in TOOLS}
    add = tools["demo_add"]
    assert add.remote_name == "add"
    assert add.description == "Add two integers."
    assert add.parameters == {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    assert add.source == "mcp:demo"
    assert add.timeout_s == demo.settings.timeout_s
    assert tools["demo_fail"].parameters == {"type": "object", "properties": {}}


def test_prefix_setting_is_sanitised() -> None:
    with MCPServer("x", stdio(prefix="my.files v2")) as server:
        assert "my_files_v2_add" in by_name(server)


def test_tool_names_are_valid_unique_and_stable() -> None:
    names = tool_names("srv", ["a.b", "a_b", "x" * 80, "ok-1"])
    assert names[0] == "srv_a_b"
    assert names[1].startswith("srv_a_b_") and names[1] != names[0]
    assert len(names[2]) == 64 and names[2].startswith("srv_xxx")
    assert names[3] == "srv_ok-1"
    assert tool_names("srv", ["a.b", "a_b", "x" * 80, "ok-1"]) == names


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("auto", {"add": False, "write_note": True, "crash": True, "pid": False}),
        ("all", {"add": True, "write_note": True, "crash": True, "pid": True}),
        ("none", {"add": False, "write_note": False, "crash": False, "pid": False}),
    ],
)
def test_side_effects_follow_annotations_unless_overridden(
    demo: MCPServer, mode: str, expected: dict[str, bool]
) -> None:
    if mode == "auto":  # the live server's listing, as configured by default
        tools = {t.remote_name: t for t in by_name(demo).values()}
    else:  # the same listing, read under another setting
        server = MCPServer("demo", stdio(side_effects=mode))
        tools = {t.remote_name: t for t in server._make_tools(_listing(demo))}
    assert {name: tools[name].side_effects for name in expected} == expected


def _listing(server: MCPServer) -> list[Any]:
    """The server's raw MCP tool listing, fetched through its portal."""
    from chatwright.tools.mcp import _list_tools

    conn = server._conn
    assert conn is not None and conn.session is not None and server._portal is not None
    return server._portal.submit(_list_tools(conn.session)).result(10)


# -- calling -------------------------------------------------------------------------------
def test_calls_work_from_one_asyncio_run_after_another(demo: MCPServer) -> None:
    add = by_name(demo)["demo_add"]
    first = call(add, {"a": 1, "b": 2})
    second = call(add, {"a": 40, "b": 2})
    assert (first.content, first.is_error) == ("3", False)
    assert (second.content, second.is_error) == ("42", False)


async def test_calls_work_from_a_running_loop_concurrently(demo: MCPServer) -> None:
    add = by_name(demo)["demo_add"]
    outs = await asyncio.gather(*(add.call(json.dumps({"a": i, "b": 1}), CTX) for i in range(5)))
    assert [o.content for o in outs] == ["1", "2", "3", "4", "5"]


def test_invalid_arguments_are_returned_without_calling_the_server(
    demo: MCPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = by_name(demo)["demo_add"]

    async def must_not_run(*args: object) -> None:
        raise AssertionError("the server was called")

    monkeypatch.setattr(demo, "call_tool", must_not_run)
    out = call(add, {"a": "one"})
    assert out.is_error
    assert "a: 'one' is not of type 'integer'" in out.content
    assert "'b' is a required property" in out.content
    assert out.content.startswith("Invalid call to demo_add")
    assert call(add, "[1, 2]").is_error  # not an object
    assert "not valid JSON" in call(add, "{oops").content


def test_a_tool_error_is_an_error_result_with_the_servers_message(demo: MCPServer) -> None:
    out = call(by_name(demo)["demo_fail"], {})
    assert out.is_error
    assert "the fail tool always fails" in out.content


def test_a_slow_call_times_out_and_the_server_keeps_working(demo: MCPServer) -> None:
    slow = by_name(demo)["demo_slow"]
    slow.timeout_s = 0.5
    start = time.monotonic()
    out = call(slow, {"seconds": 10})
    assert out.is_error and "timed out after 0.5 s" in out.content
    assert time.monotonic() - start < 3
    assert call(by_name(demo)["demo_add"], {"a": 2, "b": 2}).content == "4"
    assert demo.connected


def test_images_are_described_not_dumped(demo: MCPServer) -> None:
    out = call(by_name(demo)["demo_picture"], {})
    assert out.content == "[image: image/png, 67 bytes]"


def test_render_result_uses_structured_content_when_there_is_no_text() -> None:
    from mcp_types import (
        CallToolResult,
        EmbeddedResource,
        ResourceLink,
        TextContent,
        TextResourceContents,
    )

    structured = CallToolResult(content=[], structured_content={"temp": 21})
    assert render_result(structured) == '{"temp": 21}'
    both = CallToolResult(
        content=[TextContent(type="text", text="21 degrees")], structured_content={"temp": 21}
    )
    assert render_result(both) == "21 degrees"
    assert render_result(CallToolResult(content=[])) == "(no output)"
    mixed = CallToolResult(
        content=[
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(uri="file:///a.txt", text="hello"),
            ),
            ResourceLink(type="resource_link", name="b", uri="file:///b.txt"),
        ]
    )
    assert render_result(mixed) == (
        "[resource: file:///a.txt]\nhello\n[resource link: b <file:///b.txt>]"
    )


# -- broken servers ------------------------------------------------------------------------
def test_a_missing_command_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    server = MCPServer("ghost", MCPServerSettings(command="/nonexistent/chatwright-mcp-ghost"))
    with caplog.at_level(logging.WARNING, logger="chatwright.tools.mcp"):
        server.start()
    try:
        assert server.status().startswith(
            "failed to start: command not found: '/nonexistent/chatwright-mcp-ghost'"
        )
        assert "fix `command` in [mcp.ghost]" in server.status()
        assert server.error is not None
        assert server.tools() == []
        assert any("ghost" in r.getMessage() for r in caplog.records)
    finally:
        server.close()


def test_a_server_that_exits_at_once_shows_its_stderr() -> None:
    code = "import sys; sys.exit('boom: no config file')"
    settings = MCPServerSettings(command=sys.executable, args=["-c", code])
    with MCPServer("quitter", settings) as server:
        status = server.status()
        assert status.startswith("failed to start: the server closed the connection"), status
        assert "boom: no config file" in status
        assert "by hand" in status
        assert server.tools() == []


def test_a_server_that_never_answers_times_out() -> None:
    code = "import sys; sys.stdin.read()"  # reads, never answers, exits when stdin closes
    settings = MCPServerSettings(command=sys.executable, args=["-c", code], timeout_s=1)
    start = time.monotonic()
    with MCPServer("mute", settings) as server:
        assert server.status().startswith(
            "failed to start: no answer to the MCP handshake within 1 s"
        ), server.status()
    assert time.monotonic() - start < 5


def test_disabled_servers_are_not_built_or_started() -> None:
    settings = Settings(
        mcp={
            "on": {"command": sys.executable, "args": [SERVER]},
            "off": {"command": "/nonexistent/x", "enabled": False},
        }
    )
    servers = mcp_servers(settings)
    assert [s.name for s in servers] == ["on"]
    try:
        start_all(servers)
        assert servers[0].status() == "connected, 7 tools"
    finally:
        for server in servers:
            server.close()
    off = MCPServer("off", settings.mcp["off"])
    off.start()
    assert off.status() == "disabled" and off.tools() == []


# -- a server that dies --------------------------------------------------------------------
def test_a_server_that_dies_is_reported_then_reconnected(own: MCPServer) -> None:
    tools = by_name(own)
    first_pid = int(call(tools["own_pid"], {}).content)
    out = call(tools["own_crash"], {})
    assert out.is_error and "disconnected" in out.content
    assert own.status().startswith("disconnected: the server closed the connection")
    assert not own.connected
    # The next call reconnects (once) and goes through.
    again = call(tools["own_pid"], {})
    assert not again.is_error, again.content
    assert int(again.content) != first_pid
    assert own.status() == "connected, 7 tools"
    assert not alive(first_pid)


async def test_tools_reconnects_without_blocking_a_running_loop(own: MCPServer) -> None:
    out = await by_name(own)["own_crash"].call("{}", CTX)
    assert out.is_error
    start = time.monotonic()
    assert own.tools() == []  # starts the reconnect, does not wait for it inside a loop
    assert time.monotonic() - start < 0.2
    assert await asyncio.to_thread(own.wait)
    assert len(own.tools()) == 7


def test_reconnects_are_rate_limited(own: MCPServer) -> None:
    call(by_name(own)["own_crash"], {})
    own.settings = own.settings.model_copy(update={"command": "/nonexistent/x"})
    assert own.tools() == []  # one reconnect attempt, which fails
    assert own.status().startswith("disconnected: command not found")
    out = call(MCPTool(name="own_add", server=own, remote_name="add"), {"a": 1, "b": 1})
    assert out.is_error and "a reconnect is tried again in" in out.content


def test_close_leaves_no_child_process_and_no_thread(
    own: MCPServer, caplog: pytest.LogCaptureFixture
) -> None:
    pid = int(call(by_name(own)["own_pid"], {}).content)
    assert alive(pid)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        own.close()
    assert not alive(pid)
    assert own.status() == "closed" and own.tools() == []
    assert not [t for t in threading.enumerate() if t.name == "chatwright-mcp-own"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    out = call(MCPTool(name="own_pid", server=own, remote_name="pid"), {})
    assert out.is_error and "is closed" in out.content


# -- streamable HTTP -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, SERVER, "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the streamable HTTP test server did not start")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


def test_streamable_http_server_lists_and_calls(http_url: str) -> None:
    settings = MCPServerSettings(url=http_url, headers={"X-Test": "1"})
    with MCPServer("web", settings) as server:
        assert server.status() == "connected, 7 tools"
        tools = by_name(server)
        assert call(tools["web_add"], {"a": 20, "b": 22}).content == "42"
        assert call(tools["web_add"], {"a": 1, "b": 1}).content == "2"


def test_an_unreachable_url_is_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with MCPServer("nowhere", MCPServerSettings(url=url, timeout_s=5)) as server:
        status = server.status()
        assert status.startswith(f"failed to start: cannot reach {url}"), status
        assert "is the server running?" in status
