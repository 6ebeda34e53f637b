"""The web page: ``GET /`` is ``static/index.html``, ``/static/...`` the files beside it.

The page is plain files (no build step, no CDN); the Content-Security-Policy that every
response carries (``middleware.py``) lets it load only its own scripts and styles and talk
only to this server. ``GET /docs`` is Swagger UI, vendored too (``static/vendor/swagger-ui``),
so the API docs work offline. Without the files (a trimmed install), ``/`` says so in a small page
instead of failing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "mount_web_page"]

STATIC_DIR = Path(__file__).parent / "static"

_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chatwright</title></head>
<body><h1>chatwright</h1>
<p>The web page is not installed (no <code>chatwright/server/static/index.html</code>).</p>
<p>The HTTP API works: see <a href="/docs">/docs</a>. The OpenAI-compatible endpoint is
<code>/v1</code>.</p></body></html>
"""


def mount_web_page(app: FastAPI, directory: Path = STATIC_DIR) -> None:
    """Serve the page from ``directory`` (see the module's docstring)."""

    @app.get("/", include_in_schema=False, response_model=None)
    def index() -> Response:
        page = directory / "index.html"
        if not page.is_file():
            return HTMLResponse(_MISSING)
        return FileResponse(page, media_type="text/html; charset=utf-8")

    @app.get("/docs", include_in_schema=False, response_model=None)
    def api_docs() -> Response:
        """The API docs: Swagger UI served from ``static/vendor`` (works offline)."""
        page = directory / "docs.html"
        if not page.is_file():
            return HTMLResponse(_MISSING)
        return FileResponse(page, media_type="text/html; charset=utf-8")

    if directory.is_dir():  # else /static/... is an ordinary 404
        app.mount("/static", StaticFiles(directory=directory), name="static")
