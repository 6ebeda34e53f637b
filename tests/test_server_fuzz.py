"""Schemathesis against the server's own OpenAPI spec: no request gets a server error.

Every operation of ``/openapi.json`` (the streaming turn included, with ``stream`` true and
false) is called with generated requests, valid and invalid (``MAX_EXAMPLES`` each,
from a fixed seed: the same requests every run), in process through the ASGI app on a fresh data
directory with the ``test:echo`` model. Each response is checked:

- ``not_a_server_error``: never a 5xx;
- the status, content type, headers and body are the ones the spec declares for it (errors
  included: every error status an operation can answer is declared with the error body);
- invalid requests are refused with a 4xx; a method an operation does not have is a 405 with
  the right ``Allow``.

Not checked: that every schema-valid request is accepted (``positive_data_acceptance``). The
engine refuses some on rules the spec does not express (a blank message, a thread id that is
not printable, a collection name outside its pattern), with a 400 that says why.

The app's lifespan is not run: Schemathesis ends an ASGI app's lifespan after every test,
and this app closes its store at shutdown. Its start-up only preloads the search index, off
here; the store is closed at the end of the module.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from chatwright.config import Settings
from chatwright.server import create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MAX_EXAMPLES = 30  # per operation: about 10 s for the whole file on the 2-core machine
SEED = 20261124  # the same requests every run (Schemathesis seeds each operation from it)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    allow_header_conformance,
    unsupported_method,
]

DATA = Path(tempfile.mkdtemp(prefix="chatwright-fuzz-"))
atexit.register(shutil.rmtree, DATA, ignore_errors=True)  # also when no test here ran
app = create_app(
    Settings(
        model="test:echo",
        embedder="test:hash",
        data_dir=DATA / "data",
        server={"preload": False},
    )
)

LOCAL = "http://localhost"  # the server on loopback answers to local host names only


async def without_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The app, with its lifespan answered here (see the module's docstring)."""
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"].rsplit(".", 1)[-1]  # startup or shutdown
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await app(scope, receive, send)


schema = schemathesis.openapi.from_dict(app.openapi())
schema.app = without_lifespan
schema.config.seed = SEED


@pytest.fixture(scope="module", autouse=True)
def _close_the_store() -> Any:
    yield
    state = app.state.chatwright
    for bot in state.all_bots():
        bot.wait_background()
    state.store.close()
    shutil.rmtree(DATA, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_and_responses_match_the_spec(case: schemathesis.Case) -> None:
    response = case.call(base_url=LOCAL)
    case.validate_response(response, checks=CHECKS)


# -- what the fuzzing found, pinned down -------------------------------------------------------
@pytest.fixture
def client(tmp_path: Path) -> Any:
    settings = Settings(
        model="test:echo",
        embedder="test:hash",
        data_dir=tmp_path / "data",
        server={"preload": False},
    )
    with TestClient(create_app(settings), base_url=LOCAL) as c:
        yield c


def test_numbers_past_sqlite_integers_are_refused_not_a_500(client: Any) -> None:
    big = 2**63  # one past SQLite's largest INTEGER: the store could not even look it up
    for method, url in [
        ("PATCH", f"/api/memory/{big}"),
        ("DELETE", f"/api/memory/{big}"),
        ("DELETE", f"/api/collections/docs/documents/{big}"),
        ("GET", f"/api/threads?offset={big}"),
        ("GET", f"/api/threads/t/messages?after={big}"),
    ]:
        response = client.request(method, url, json={"text": "x"} if method == "PATCH" else None)
        assert response.status_code == 422, (method, url, response.text)
    assert client.patch(f"/api/memory/{big - 1}", json={"text": "x"}).status_code == 404
    client.post("/api/threads/t/messages", json={"text": "hi", "stream": False})
    assert client.get(f"/api/threads/t/trace/{big}").status_code == 404
    assert client.get("/api/threads/t/trace/2").status_code == 200
    assert client.get("/api/threads/t/trace/²").status_code == 422  # "²".isdigit(), not int()


def test_a_method_an_operation_lacks_is_405_with_every_allowed_method(client: Any) -> None:
    response = client.request("OPTIONS", "/api/memory")
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
    # a multipart body to a method the upload path lacks: 405, not "not JSON" (415)
    files = {"files": ("a.txt", b"hello", "text/plain")}
    wrong = client.put("/api/collections/docs/documents", files=files)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert client.put("/api/threads/t/pins", content=b"x").status_code == 415  # routed: 415
