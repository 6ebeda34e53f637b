"""A small web site for the web tests: routes on a local HTTP server, every request recorded.

:class:`Site` listens on ``host`` (127.0.0.1 by default; 127.0.0.2 also works on Linux, for
tests that need a second, differently allow-listed address) in a background thread. A route is
a :class:`Resp` or a function of the request (:class:`Seen`) that returns one. A body may be a
function returning an iterator of chunks: it is streamed without a length until the client
hangs up (a "2 GB page" costs nothing here).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Resp", "Seen", "Site"]


@dataclass(frozen=True)
class Resp:
    body: bytes | Callable[[], Iterator[bytes]] = b""
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]  # names in lower case
    method: str = "GET"
    body: bytes = b""
    at: float = 0.0  # time.monotonic() when it arrived


Route = Resp | Callable[[Seen], Resp]


class Site:
    def __init__(
        self,
        routes: dict[str, Route] | None = None,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,  # serve HTTPS with this server-side context
    ) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[Seen] = []
        self.streamed = 0  # bytes of streamed bodies sent
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen = Seen(self.path, headers, self.command, body, time.monotonic())
                site.requests.append(seen)
                route = site.routes.get(self.path) or site.routes.get(self.path.split("?")[0])
                if route is None:
                    resp = Resp(b"<h1>Not found</h1>", status=404)
                else:
                    resp = route(seen) if callable(route) else route
                self.send_response(resp.status)
                if resp.content_type:
                    self.send_header("Content-Type", resp.content_type)
                for name, value in resp.headers.items():
                    self.send_header(name, value)
                if callable(resp.body):
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        for chunk in resp.body():
                            self.wfile.write(chunk)
                            site.streamed += len(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                self.wfile.write(resp.body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
