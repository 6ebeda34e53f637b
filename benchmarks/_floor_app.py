"""The floor of ``server_load.py --floor``: an ASGI app that does nothing a chat server must.

It answers ``GET /api/me`` (the readiness probe) and every ``POST`` with the same Server-Sent
Events a turn starts and ends with (``start``, ``done``), after reading and parsing the JSON
body, and nothing else: no routing framework, no auth, no database, no model. Run under the
same uvicorn (uvloop, httptools) as ``chatwright serve``, its burst figures are what this
machine and this HTTP stack cost before any of chatwright's work.
"""

from __future__ import annotations

import json
from typing import Any

_START = b'event: start\ndata: {"thread_id": "t", "user_seq": 1}\n\n'
_DONE = b'event: done\ndata: {"finish_reason": "stop"}\n\n'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "GET":
        payload = b'{"user": "local"}'
        headers = [(b"content-type", b"application/json"), (b"content-length", b"17")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return
    json.loads(body)
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _START, "more_body": True})
    await send({"type": "http.response.body", "body": _DONE})
