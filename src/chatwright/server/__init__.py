"""The HTTP server: the API, the OpenAI-compatible endpoint, the web page (``chatwright serve``).

Needs the ``server`` extra (``pip install "chatwright[server]"``). Importing this package
does not import FastAPI: :func:`create_app` does, on first use, so the CLI starts without it.

Design, module by module:

- ``app.py``: :func:`create_app` puts the pieces together; ``state.py`` holds what handlers
  share (one :class:`~chatwright.Chatbot` per configured bot, all on one store).
- ``api_*.py``: the JSON API under ``/api``; every query names the requesting user as owner,
  so another user's thread, collection, memory or job is simply "not found".
- ``turns.py``: a turn runs in its own task, independent of the HTTP connection; ``events.py``
  turns its events into Server-Sent Events (the format: docs/api.md).
- ``openai_compat.py``: ``/v1/models``, ``/v1/chat/completions`` and ``/v1/embeddings`` for
  OpenAI clients (``openai_request.py``, ``openai_embeddings.py``).
- ``jobs.py``: uploads are queued in the database and ingested by a worker thread of any
  replica; the loop never waits for it.
- ``auth.py``: API keys (stored hashed) or, on loopback without keys, the local user.
- ``middleware.py``: body limits (413/415) and security headers; ``errors.py``: JSON errors.
- ``command.py``: ``chatwright serve``, ``users`` and ``keys``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatwright.server.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from chatwright.server.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
