"""MCP servers as tool sources: their tools join the bot's toolset, named ``<prefix>_<tool>``.

Design
------
An MCP session (``stdio_client`` or ``streamable_http_client`` around a ``ClientSession``) is a
stack of anyio context managers that must be entered and left by one task, on one event loop.
Chatwright calls tools from whatever loop runs the turn, often a fresh ``asyncio.run`` per
turn. So each :class:`MCPServer` owns a *portal*: a daemon thread running its own event loop.
In that loop one long-lived *holder* task opens the transport and the session, lists the
tools, then waits until it is told to stop or the connection ends. Calls go to the portal
with ``asyncio.run_coroutine_threadsafe`` and are awaited from the caller's loop through
``asyncio.wrap_future``; cancelling the caller (a tool timeout) cancels the call in the portal.

A broken server is reported, never fatal: :meth:`MCPServer.start` records why it failed (the
command is missing, the process exits at once, the URL does not answer, the handshake takes
longer than ``timeout_s``) in :meth:`MCPServer.status` and logs a warning. A server that dies
mid-session fails the calls in flight with a clear error (the model reads it as the tool's
result), turns ``status()`` into ``disconnected: <reason>``, and is reconnected on the next
``tools()`` or call, at most once every :data:`RECONNECT_INTERVAL_S` seconds. A stdio server's
stderr goes to a pipe: its last lines explain a failure, and every line is logged at DEBUG.

:meth:`MCPServer.close` asks the holder to leave its context managers (the SDK closes the
child's stdin, then terminates it if it lingers), waits for it, and stops the portal's loop;
servers still open at interpreter exit are closed by an ``atexit`` hook.

The ``mcp`` package is imported only when a server starts, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import collections
import concurrent.futures
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import shlex
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from chatwright.config import MCPServerSettings, Settings
from chatwright.errors import ChatwrightError
from chatwright.tools.base import NAME, Tool, ToolContext, ToolRetry, _clean_schema

if TYPE_CHECKING:
    import mcp_types
    from mcp import ClientSession

__all__ = [
    "RECONNECT_INTERVAL_S",
    "MCPServer",
    "MCPServerUnavailable",
    "MCPTool",
    "MCPToolError",
    "mcp_servers",
    "render_result",
    "start_all",
    "tool_names",
]

logger = logging.getLogger(__name__)

RECONNECT_INTERVAL_S = 5.0  # at most one reconnect attempt this often, per server
CLOSE_TIMEOUT_S = 10.0  # the SDK waits up to 2 s for a stdio child, then 2 s after SIGTERM
_WAIT_MARGIN_S = 5.0  # on top of timeout_s, for a sync wait on a handshake that bounds itself
_CALL_MARGIN_S = 5.0  # the portal's own read timeout: a backstop behind Tool.call's timeout
_STDERR_LINES = 20
_MAX_PROBLEMS = 5  # schema errors reported to the model at once

_CLOSED = "the server closed the connection"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_T = TypeVar("_T")
State = Literal["new", "connecting", "connected", "failed", "disconnected", "closed", "disabled"]


class MCPServerUnavailable(ChatwrightError):
    """The MCP server cannot take calls now: not started, failed, disconnected or closed."""


class MCPToolError(Exception):
    """An MCP tool answered with ``isError``; the message is the server's text."""


# -- the portal: a thread with its own event loop -------------------------------------------
class _Portal:
    """A daemon thread running an event loop forever, to which coroutines are submitted."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"chatwright-mcp-{name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self._finish()

    def _finish(self) -> None:
        loop = self.loop
        for task in asyncio.all_tasks(loop):
            task.cancel()
        self._drain()
        loop.run_until_complete(loop.shutdown_asyncgens())
        self._drain()
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()

    def _drain(self, rounds: int = 5) -> None:
        """Run the loop's tasks to their end, and those their ending starts: a cancelled
        session's cleanup may start tasks of its own (an HTTP client's ``aclose``), which
        must finish before the loop closes, or they fail on a closed loop. Each round waits
        at most CLOSE_TIMEOUT_S, then cancels what is left."""
        for _ in range(rounds):
            pending = asyncio.all_tasks(self.loop)
            if not pending:
                return
            gathered = asyncio.gather(*pending, return_exceptions=True)
            try:
                self.loop.run_until_complete(asyncio.wait_for(gathered, CLOSE_TIMEOUT_S))
            except TimeoutError:
                logger.warning("MCP tasks still running after %.0f s: cancelled", CLOSE_TIMEOUT_S)

    @property
    def in_portal(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Run ``coro`` in the portal's loop (refused once the portal is stopped)."""
        with self._lock:
            if self._stopped:
                coro.close()
                raise MCPServerUnavailable("the MCP server is closed", hint="start() it again")
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Await ``coro`` run in the portal, from any other event loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self, timeout: float) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_portal:
            self._thread.join(timeout)


# -- a stdio server's stderr ---------------------------------------------------------------
class _StderrTail:
    """A pipe for a child's stderr: a thread logs each line and keeps the last few."""

    def __init__(self, server: str) -> None:
        read_fd, write_fd = os.pipe()
        self.writer = os.fdopen(write_fd, "w")
        self._reader = os.fdopen(read_fd, "r", encoding="utf-8", errors="replace")
        self._server = server
        self.lines: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._thread = threading.Thread(
            target=self._pump, name=f"chatwright-mcp-{server}-stderr", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        with self._reader:
            for raw in self._reader:
                line = raw.rstrip()
                if line:
                    self.lines.append(line)
                    logger.debug("[mcp %s] %s", self._server, line)

    def release(self) -> None:
        """Close our copy of the write end (once the child has its own)."""
        if not self.writer.closed:
            self.writer.close()

    def tail(self, wait_s: float = 0.5, chars: int = 400) -> str:
        """The last lines, once the child's stderr has closed (or ``wait_s`` has passed)."""
        self.release()
        self._thread.join(wait_s)
        text = " | ".join(self.lines)
        return text if len(text) <= chars else "..." + text[-chars:]


# -- the read stream, watched for its end --------------------------------------------------
class _WatchedStream:
    """A transport's read stream that calls ``on_end`` when the server closes it.

    A stdio server that dies closes its stdout and nothing else notices: the session stays
    open until the next call fails. Watching the stream marks it disconnected at once.
    """

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:  # read by the SDK's dispatcher, when the transport has it
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        import anyio

        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._on_end()
            raise

    def __aiter__(self) -> _WatchedStream:
        return self

    async def __anext__(self) -> Any:
        import anyio

        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# -- one connection attempt ----------------------------------------------------------------
@dataclass(eq=False)
class _Connection:
    reconnect: bool
    ready: threading.Event = field(default_factory=threading.Event)  # connected or failed
    ready_async: asyncio.Event = field(default_factory=asyncio.Event)  # the same, in the portal
    session: ClientSession | None = None
    stop: asyncio.Event | None = None
    task: asyncio.Task[None] | None = None
    closing: bool = False
    stderr: _StderrTail | None = None

    def settle(self) -> None:
        """Wake whoever waits for the outcome (called in the portal's loop)."""
        self.ready.set()
        self.ready_async.set()


class _HandshakeTimeout(Exception):
    """The server did not finish the handshake in time."""


# -- the server ----------------------------------------------------------------------------
class MCPServer:
    """One configured MCP server, as a :class:`~chatwright.tools.ToolSource`.

    >>> server = MCPServer("files", MCPServerSettings(command="mcp-files"))  # doctest: +SKIP
    >>> server.start()           # never raises for a broken server  # doctest: +SKIP
    >>> server.status()          # "connected, 3 tools" or why not    # doctest: +SKIP
    >>> server.tools()           # files_read, files_list, ...        # doctest: +SKIP
    >>> server.close()           # doctest: +SKIP
    """

    def __init__(self, name: str, settings: MCPServerSettings) -> None:
        self.name = name
        self.settings = settings
        self.prefix = _UNSAFE.sub("_", settings.prefix or name) or "mcp"
        self._lock = threading.RLock()
        self._state: State = "new" if settings.enabled else "disabled"
        self._error: str | None = None
        self._hint: str | None = None
        self._tools: list[MCPTool] = []
        self._conn: _Connection | None = None
        self._portal: _Portal | None = None
        self._live: set[_Connection] = set()  # holders still running (touched in the portal)
        self._last_reconnect = -math.inf

    # -- ToolSource ------------------------------------------------------------------------
    def tools(self) -> list[Tool]:
        """The server's tools; empty unless connected.

        A disconnected server is reconnected here (at most once per RECONNECT_INTERVAL_S);
        outside an event loop this waits for the outcome, inside one the tools appear on a
        later call instead of blocking the loop.
        """
        conn = self._begin_reconnect()
        if conn is not None and not _loop_running():
            self._wait(conn, self._wait_limit())
        with self._lock:
            return list(self._tools) if self._state == "connected" else []

    def status(self) -> str:
        with self._lock:
            state, error, hint = self._state, self._error, self._hint
            n = len(self._tools)
        if state == "connected":
            return f"connected, {n} tool{'' if n == 1 else 's'}"
        if state == "failed":
            return f"failed to start: {error}" + (f" ({hint})" if hint else "")
        if state == "disconnected":
            return f"disconnected: {error}"
        return {"new": "not started", "connecting": "connecting"}.get(state, state)

    @property
    def error(self) -> str | None:
        """Why the server is not connected (None when it is, or was never started)."""
        with self._lock:
            return self._error if self._state in ("failed", "disconnected") else None

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._state == "connected"

    # -- life cycle ------------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        """Connect in the background; with ``wait``, block until connected or failed.

        Never raises for a broken server: see :meth:`status`. Starting a server that is
        connected or connecting does nothing; one that failed or closed is tried again.
        """
        conn = self._begin(reconnect=False)
        if conn is not None and wait:
            self._wait(conn, self._wait_limit())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current connection attempt settles; True when connected."""
        with self._lock:
            conn = self._conn if self._state == "connecting" else None
        if conn is not None:
            self._wait(conn, self._wait_limit() if timeout is None else timeout)
        return self.connected

    def close(self) -> None:
        """Disconnect: the holder leaves the session and transport (a stdio child exits)."""
        with self._lock:
            portal, self._portal = self._portal, None
            if self._conn is not None:
                self._conn.closing = True
            if self._state != "disabled":
                self._state = "closed"
            self._error = self._hint = None
            self._tools = []
        _OPEN.discard(self)
        if portal is None:
            return
        if not portal.in_portal:
            try:
                portal.submit(self._drain()).result(CLOSE_TIMEOUT_S)
            except Exception as e:  # a hung server must not hang the caller's shutdown
                logger.warning("MCP server %r did not close cleanly: %r", self.name, e)
        portal.stop(CLOSE_TIMEOUT_S)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the caller's event loop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> MCPServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MCPServer({self.name!r}, {self.status()!r})"

    # -- calling ---------------------------------------------------------------------------
    async def call_tool(self, name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """Call the server's tool ``name`` (its own name, unprefixed) from any event loop.

        Raises :class:`MCPServerUnavailable` when the server cannot take the call (after one
        reconnect attempt, if it had disconnected); the server's own errors come back as a
        result with ``is_error`` set.
        """
        conn, portal = self._connection_for_call()
        if not conn.ready.is_set():
            await portal.run(conn.ready_async.wait())
        with self._lock:
            if self._conn is not conn or self._state != "connected":
                raise self._unavailable()
        return await portal.run(self._call(conn, name, arguments))

    def _connection_for_call(self) -> tuple[_Connection, _Portal]:
        conn = self._begin_reconnect()
        with self._lock:
            if conn is None and self._state in ("connected", "connecting"):
                conn = self._conn
            if conn is None or self._portal is None:
                raise self._unavailable()
            return conn, self._portal

    async def _call(
        self, conn: _Connection, name: str, arguments: dict[str, Any]
    ) -> mcp_types.CallToolResult:
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED

        session = conn.session
        if session is None:
            raise self._unavailable()
        try:
            return await session.call_tool(
                name, arguments, read_timeout_seconds=self.settings.timeout_s + _CALL_MARGIN_S
            )
        except MCPError as e:
            if e.code != CONNECTION_CLOSED:
                raise
            reason = self._lost(conn, _CLOSED)
            raise MCPServerUnavailable(
                f"MCP server {self.name!r} disconnected during the call: {reason}",
                hint="chatwright reconnects to it on the next call",
            ) from None

    def _unavailable(self) -> MCPServerUnavailable:
        with self._lock:
            state, error, hint = self._state, self._error, self._hint
            wait_s = self._last_reconnect + RECONNECT_INTERVAL_S - time.monotonic()
        what = f"MCP server {self.name!r}"
        if state == "failed":
            return MCPServerUnavailable(f"{what} failed to start: {error}", hint=hint)
        if state == "disconnected":
            return MCPServerUnavailable(
                f"{what} is disconnected: {error}",
                hint=f"a reconnect is tried again in {max(wait_s, 0):.0f} s",
            )
        if state == "disabled":
            return MCPServerUnavailable(
                f"{what} is disabled", hint=f"set enabled = true in [mcp.{self.name}]"
            )
        if state == "closed":
            return MCPServerUnavailable(f"{what} is closed", hint="start() it again")
        return MCPServerUnavailable(f"{what} is not started", hint="call start() first")

    # -- connecting (caller side) -----------------------------------------------------------
    def _begin(self, *, reconnect: bool) -> _Connection | None:
        """Start a connection attempt unless one is under way or done; returns it."""
        missing = _mcp_missing()  # imported here, not in the portal: a clear error, at once
        with self._lock:
            if self._state == "disabled":
                return None
            if missing:
                self._state, self._error = "failed", f"the mcp package is not installed ({missing})"
                self._hint = "pip install 'mcp>=2' into chatwright's environment"
                logger.warning("MCP server %r %s", self.name, self.status())
                return None
            if self._state in ("connecting", "connected"):
                return self._conn
            if self._portal is None:
                self._portal = _Portal(self.name)
                _OPEN.add(self)
            conn = _Connection(reconnect=reconnect)
            self._conn, self._state = conn, "connecting"
            future = self._portal.submit(self._hold(conn))
        future.add_done_callback(self._log_holder_crash)
        return conn

    def _begin_reconnect(self) -> _Connection | None:
        """Start one reconnect of a disconnected server, unless one was tried too recently."""
        with self._lock:
            if self._state != "disconnected":
                return None
            now = time.monotonic()
            if now - self._last_reconnect < RECONNECT_INTERVAL_S:
                return None
            self._last_reconnect = now
            logger.info("reconnecting to MCP server %r", self.name)
            return self._begin(reconnect=True)

    def _wait(self, conn: _Connection, timeout: float) -> None:
        if not conn.ready.wait(timeout):
            logger.warning("MCP server %r: still connecting after %.0f s", self.name, timeout)

    def _wait_limit(self) -> float:
        return self.settings.timeout_s + _WAIT_MARGIN_S

    def _log_holder_crash(self, future: concurrent.futures.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            error = future.exception()
            logger.error("MCP server %r: connection task crashed", self.name, exc_info=error)

    # -- the holder task (portal side) -----------------------------------------------------
    async def _hold(self, conn: _Connection) -> None:
        """Open the session, publish its tools, and keep it open until told to stop."""
        conn.task = asyncio.current_task()
        conn.stop = asyncio.Event()
        self._live.add(conn)
        reason: str | None = None
        hint: str | None = None
        try:
            if not conn.closing:
                await self._open_and_wait(conn)
        except BaseException as e:  # every failure is reported in status()
            reason, hint = self._explain(e)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self._live.discard(conn)
            self._ended(conn, reason, hint)

    async def _open_and_wait(self, conn: _Connection) -> None:
        import anyio
        from mcp import ClientSession

        assert conn.stop is not None
        # One scope around the whole stack (anyio scopes must nest): the handshake deadline,
        # lifted once connected.
        with anyio.CancelScope(deadline=anyio.current_time() + self.settings.timeout_s) as scope:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await self._open_transport(stack, conn)
                watched = _WatchedStream(read, lambda: self._lost(conn, _CLOSED))
                session = await stack.enter_async_context(
                    ClientSession(watched, write, client_info=_client_info())
                )
                await session.initialize()
                listed = await _list_tools(session)
                scope.deadline = math.inf
                if self._connected(conn, session, listed):
                    await conn.stop.wait()
        if scope.cancelled_caught:
            raise _HandshakeTimeout

    async def _open_transport(self, stack: contextlib.AsyncExitStack, conn: _Connection) -> Any:
        s = self.settings
        if s.url is not None:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(
                headers=s.headers or None,
                timeout=httpx2.Timeout(s.timeout_s, read=max(300.0, s.timeout_s)),
            )
            await stack.enter_async_context(http)
            return await stack.enter_async_context(streamable_http_client(s.url, http_client=http))
        from mcp import StdioServerParameters, stdio_client

        assert s.command is not None
        params = StdioServerParameters(command=s.command, args=s.args, env=s.env or None, cwd=s.cwd)
        conn.stderr = _StderrTail(self.name)
        try:
            return await stack.enter_async_context(stdio_client(params, errlog=conn.stderr.writer))
        finally:
            conn.stderr.release()  # the child holds its own copy; EOF comes when it exits

    # -- state changes (portal side) -------------------------------------------------------
    def _connected(self, conn: _Connection, session: ClientSession, listed: list[Any]) -> bool:
        with self._lock:
            if self._conn is not conn or conn.closing:
                return False
            conn.session = session
            self._tools = self._make_tools(listed)
            self._state, self._error, self._hint = "connected", None, None
            n = len(self._tools)
        logger.info("MCP server %r connected: %d tools", self.name, n)
        conn.settle()
        return True

    def _lost(self, conn: _Connection, reason: str) -> str:
        """The connection ended under us: disconnected, and the holder told to leave."""
        with self._lock:
            if self._conn is conn and self._state == "connected" and not conn.closing:
                self._state, self._error, self._hint = "disconnected", reason, None
                self._tools = []
                logger.warning("MCP server %r disconnected: %s", self.name, reason)
            reason = self._error or reason
        if conn.stop is not None:
            conn.stop.set()
        return reason

    def _ended(self, conn: _Connection, reason: str | None, hint: str | None) -> None:
        stderr = conn.stderr.tail() if conn.stderr is not None else ""
        with self._lock:
            conn.session = None
            if self._conn is conn and not conn.closing:
                self._record_end(conn, reason, hint, stderr)
        conn.settle()

    def _record_end(
        self, conn: _Connection, reason: str | None, hint: str | None, stderr: str
    ) -> None:
        detail = f"; stderr: {stderr}" if stderr else ""
        if self._state == "connecting":
            reason = reason or "the server closed the connection during the handshake"
            self._state = "disconnected" if conn.reconnect else "failed"
            self._error, self._hint = reason + detail, hint
            logger.warning("MCP server %r %s", self.name, self.status())
        elif self._state == "connected":
            self._state = "disconnected"
            self._error = (reason or _CLOSED) + detail
            logger.warning("MCP server %r disconnected: %s", self.name, self._error)
        elif self._state == "disconnected" and (reason or detail):
            self._error = (reason or self._error or "") + detail
        self._tools = []

    async def _drain(self) -> None:
        """Tell every holder to leave its session, and wait for them (portal side)."""
        for conn in list(self._live):
            conn.closing = True
            if conn.stop is not None:
                conn.stop.set()
        tasks = [c.task for c in self._live if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S - 1)
            for task in pending:
                task.cancel()

    # -- failures explained ----------------------------------------------------------------
    def _explain(self, error: BaseException) -> tuple[str, str | None]:
        """A reason and a hint for a failed or ended connection."""
        e = _leaf(error)
        s, section = self.settings, f"[mcp.{self.name}]"
        if isinstance(e, asyncio.CancelledError):
            return "the connection was cancelled", None
        if isinstance(e, _HandshakeTimeout):
            where = f"at {s.url}" if s.url else "on the command's stdin/stdout"
            return (
                f"no answer to the MCP handshake within {s.timeout_s:g} s",
                f"check that an MCP server runs {where}, or raise timeout_s in {section}",
            )
        if s.command is not None and isinstance(e, FileNotFoundError):
            return (
                f"command not found: {s.command!r}",
                f"install it, or fix `command` in {section} (a full path if it is not on PATH)",
            )
        if s.command is not None and isinstance(e, PermissionError):
            return f"cannot run {s.command!r}: permission denied", f"fix `command` in {section}"
        if s.command is not None and isinstance(e, OSError):
            return f"cannot run {s.command!r}: {e}", f"fix `command` in {section}"
        if _is_connection_closed(e):
            shown = shlex.join([s.command, *s.args]) if s.command else s.url
            return (
                "the server closed the connection during the handshake",
                f"run `{shown}` by hand to see why" if s.command else f"check that {shown} is up",
            )
        if s.url is not None and _is_mcp_error(e):
            return (
                f"{s.url} refused the MCP handshake: {e}",
                f"check `url` in {section} (streamable HTTP endpoints usually end in /mcp)",
            )
        if type(e).__module__.split(".")[0] in ("httpx2", "httpx", "httpcore"):
            return (
                f"cannot reach {s.url}: {type(e).__name__}: {e}",
                f"is the server running? check `url` in {section}",
            )
        return f"{type(e).__name__}: {e}", None

    # -- tools -----------------------------------------------------------------------------
    def _make_tools(self, listed: list[mcp_types.Tool]) -> list[MCPTool]:
        names = tool_names(self.prefix, [t.name for t in listed])
        return [
            MCPTool(
                name=name,
                description=t.description or t.title or "",
                parameters=_clean_schema(_object_schema(t.input_schema)),
                side_effects=self._side_effects(t),
                timeout_s=self.settings.timeout_s,
                source=f"mcp:{self.name}",
                server=self,
                remote_name=t.name,
                input_schema=_object_schema(t.input_schema),
            )
            for name, t in zip(names, listed, strict=True)
        ]

    def _side_effects(self, t: mcp_types.Tool) -> bool:
        if self.settings.side_effects == "all":
            return True
        if self.settings.side_effects == "none":
            return False
        read_only = t.annotations is not None and t.annotations.read_only_hint is True
        return not read_only


# -- the tools -----------------------------------------------------------------------------
@dataclass(eq=False)
class MCPTool(Tool):
    """A tool of an MCP server: validated against its ``inputSchema``, run on the server."""

    server: MCPServer | None = field(default=None, repr=False)
    remote_name: str = ""  # the tool's name on the server, without the prefix
    input_schema: dict[str, Any] = field(default_factory=dict, repr=False)
    _schema_validator: Any = field(default=None, init=False, repr=False)

    def validate(self, arguments: str) -> dict[str, Any]:
        value = super().validate(arguments)
        validator = self._json_validator()
        if validator is None:
            return value
        try:
            errors = list(validator.iter_errors(value))
        except Exception as e:  # an unresolvable $ref and the like: the server will judge
            logger.debug("cannot check %s's arguments locally: %r", self.name, e)
            return value
        if errors:
            raise ToolRetry(_describe_schema_errors(errors))
        return value

    def _json_validator(self) -> Any:
        if self._schema_validator is None:
            self._schema_validator = _build_validator(self.name, self.input_schema) or False
        return self._schema_validator or None

    async def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        if self.server is None:
            raise MCPServerUnavailable(f"tool {self.name!r} belongs to no MCP server")
        result = await self.server.call_tool(self.remote_name, arguments)
        text = render_result(result)
        if result.is_error:
            raise MCPToolError(text)
        return text


def _build_validator(name: str, schema: dict[str, Any]) -> Any:
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        logger.debug("tool %s: invalid inputSchema (%s), not checked locally", name, e.message)
        return None
    return cls(schema)


def _describe_schema_errors(errors: list[Any]) -> str:
    problems = []
    for error in errors[:_MAX_PROBLEMS]:
        where = ".".join(str(p) for p in error.absolute_path)
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
        problems.append(f"{where}: {message}" if where else message)
    if len(errors) > _MAX_PROBLEMS:
        problems.append(f"and {len(errors) - _MAX_PROBLEMS} more")
    return "; ".join(problems)


# -- helpers -------------------------------------------------------------------------------
def tool_names(prefix: str, names: list[str]) -> list[str]:
    """``<prefix>_<name>`` for each name, made valid for every provider and unique.

    Characters outside ``[A-Za-z0-9_-]`` become ``_``; a name longer than 64 characters, or
    one that clashes with an earlier one once sanitised, is cut and given a short hash of the
    original name, so it stays the same across reconnects.
    """
    seen: set[str] = set()
    out = []
    for original in names:
        name = _UNSAFE.sub("_", f"{prefix}_{original}")
        if len(name) > 64 or name in seen:
            digest = hashlib.sha256(original.encode()).hexdigest()
            name = f"{name[:55]}_{digest[:8]}"
            n = 1
            while name in seen:
                n += 1
                name = f"{name[:55]}_{digest[:6]}{n:02d}"
        assert NAME.match(name), name
        seen.add(name)
        out.append(name)
    return out


def render_result(result: mcp_types.CallToolResult) -> str:
    """A tool result as text: text blocks joined, other blocks described briefly, and the
    structured content (as JSON) when there is no text at all."""
    parts = [_render_block(block) for block in result.content]
    has_text = any(getattr(block, "type", None) == "text" for block in result.content)
    if not has_text and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    parts = [p for p in parts if p]
    return "\n".join(parts) if parts else "(no output)"


def _render_block(block: Any) -> str:
    kind = getattr(block, "type", type(block).__name__)
    if kind == "text":
        return str(block.text)
    if kind in ("image", "audio"):
        return f"[{kind}: {block.mime_type}, {_size(block.data)}]"
    if kind == "resource":
        resource = block.resource
        text = getattr(resource, "text", None)
        if text is not None:
            return f"[resource: {resource.uri}]\n{text}"
        mime = getattr(resource, "mime_type", None) or "binary"
        return f"[resource: {resource.uri}, {mime}, {_size(getattr(resource, 'blob', ''))}]"
    if kind == "resource_link":
        return f"[resource link: {block.name} <{block.uri}>]"
    return f"[{kind} content]"


def _size(data: str) -> str:
    """The decoded size of base64 ``data``, in words."""
    try:
        n = len(base64.b64decode(data, validate=False))
    except (ValueError, TypeError):
        n = len(data) * 3 // 4
    return f"{n} bytes" if n < 1024 else f"{round(n / 1024)} KB"


def _object_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    out = copy.deepcopy(schema) if schema else {}
    out.setdefault("type", "object")
    out.setdefault("properties", {})
    return out


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    """Every tool, across pages (at most 100 of them)."""
    from mcp_types import PaginatedRequestParams

    result = await session.list_tools()
    tools = list(result.tools)
    for _ in range(100):
        if not result.next_cursor:
            break
        result = await session.list_tools(params=PaginatedRequestParams(cursor=result.next_cursor))
        tools.extend(result.tools)
    return tools


def _client_info() -> mcp_types.Implementation:
    from mcp_types import Implementation

    from chatwright import __version__

    return Implementation(name="chatwright", version=__version__)


def _leaf(error: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):
        real = [e for e in error.exceptions if not isinstance(e, asyncio.CancelledError)]
        error = (real or list(error.exceptions))[0]
    return error


def _is_mcp_error(error: BaseException) -> bool:
    from mcp import MCPError

    return isinstance(error, MCPError)


def _is_connection_closed(error: BaseException) -> bool:
    from mcp_types import CONNECTION_CLOSED

    return _is_mcp_error(error) and getattr(error, "code", None) == CONNECTION_CLOSED


def _mcp_missing() -> str | None:
    """Why the ``mcp`` package cannot be imported, or None when it can."""
    try:
        import mcp  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# -- building from settings ----------------------------------------------------------------
def mcp_servers(settings: Settings) -> list[MCPServer]:
    """One (unstarted) :class:`MCPServer` per enabled ``[mcp.<name>]`` section."""
    return [MCPServer(name, s) for name, s in settings.mcp.items() if s.enabled]


def start_all(servers: Iterable[MCPServer], wait: bool = True) -> None:
    """Start the servers concurrently; with ``wait``, until each is connected or has failed
    (each bounded by its own ``timeout_s``, so the whole takes about the slowest one)."""
    servers = list(servers)
    for server in servers:
        server.start(wait=False)
    if wait:
        for server in servers:
            server.wait()


# -- closing at exit -----------------------------------------------------------------------
_OPEN: weakref.WeakSet[MCPServer] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for server in list(_OPEN):
        with contextlib.suppress(Exception):
            server.close()
