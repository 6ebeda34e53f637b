"""Automatic thread titles (``titles.py``, ``POST /api/threads/{id}/title``): keywords for the
embedded model, one short call for a remote one, and a title the user chose is never replaced."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from chatwright.config import Settings
from chatwright.errors import ModelUnavailable
from chatwright.models import ModelRequest
from chatwright.models.test import ScriptedModel
from chatwright.server import create_app
from chatwright.store import SQLiteStore
from chatwright.titles import Exchange, auto_title, is_placeholder, keyword_title, model_title
from chatwright.types import Message

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CORS = Exchange("How do I enable CORS on the server?", "Set cors_origins in [server].")


def test_keyword_title_is_the_salient_words_not_the_message_cut_short() -> None:
    assert keyword_title(CORS) == "Enable CORS server"
    assert keyword_title(CORS) == keyword_title(CORS)  # deterministic
    long = Exchange(
        "Could you please explain the difference between BM25 and TF-IDF ranking for search?"
    )
    title = keyword_title(long)
    assert title == "Difference BM25 TF-IDF ranking search"
    assert not is_placeholder(title, long.question)


def test_three_questions_on_one_topic_get_titles_that_tell_them_apart() -> None:
    # The issue: "How do I enable CO…" three times.
    titles = {
        keyword_title(Exchange(q))
        for q in (
            "How do I enable CORS for the web page?",
            "How do I enable CORS with credentials on nginx?",
            "How do I enable CORS preflight caching?",
        )
    }
    assert len(titles) == 3


def test_keyword_title_without_keywords_and_with_markup() -> None:
    assert keyword_title(Exchange("hi")) == "Hi"
    assert keyword_title(Exchange("   ")) == "New conversation"
    assert "<" not in keyword_title(Exchange("<script>alert(1)</script> about XSS"))


def test_placeholder_is_missing_or_the_first_message_cut_short() -> None:
    question = "How do I enable CORS on the server when it runs behind nginx?"
    assert is_placeholder(None, question)
    assert is_placeholder("How do I enable CO…", question)  # the page's and the store's cut
    assert is_placeholder(question, question)
    assert not is_placeholder("My CORS notes", question)


class Failing:
    name = "openai:down"

    async def stream(self, request: ModelRequest) -> AsyncIterator[object]:
        raise ModelUnavailable("connection refused")
        yield  # pragma: no cover


def test_model_title_is_cleaned_and_falls_back_to_keywords() -> None:
    model = ScriptedModel(['Title: "Enabling CORS Behind Nginx."\nmore text'])
    assert asyncio.run(model_title(model, CORS)) == "Enabling CORS Behind Nginx"
    assert asyncio.run(model_title(Failing(), CORS)) == "Enable CORS server"  # type: ignore[arg-type]
    assert asyncio.run(model_title(ScriptedModel(["  "]), CORS)) == "Enable CORS server"


def test_model_title_request_is_short_and_holds_the_exchange() -> None:
    seen: list[ModelRequest] = []

    class Recording(ScriptedModel):
        def stream(self, request: ModelRequest):  # type: ignore[no-untyped-def]
            seen.append(request)
            return super().stream(request)

    asyncio.run(model_title(Recording(["CORS setup"]), CORS))
    (request,) = seen
    assert request.settings.max_tokens and request.settings.max_tokens <= 32
    assert "enable CORS" in request.messages[-1].text
    assert "cors_origins" in request.messages[-1].text


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "t.db")
    yield s
    s.close()


def start(store: SQLiteStore, thread_id: str = "t") -> None:
    store.append(
        "ann", thread_id, [Message.user(CORS.question), Message.assistant(CORS.answer)], create=True
    )


def test_auto_title_replaces_the_placeholder_once(store: SQLiteStore) -> None:
    start(store)
    assert store.get_thread("ann", "t").title == CORS.question  # the store's placeholder
    model = ScriptedModel(["ignored"], name="local:x")  # embedded: keywords, no call
    renamed = asyncio.run(auto_title(store, model, "ann", "t"))
    assert renamed is not None and renamed.title == "Enable CORS server"
    assert asyncio.run(auto_title(store, model, "ann", "t")) is None  # nothing left to do


def test_auto_title_asks_a_remote_model(store: SQLiteStore) -> None:
    start(store)
    model = ScriptedModel(["CORS behind nginx"], name="openai:gpt-test")
    renamed = asyncio.run(auto_title(store, model, "ann", "t"))
    assert renamed is not None and renamed.title == "CORS behind nginx"
    model.assert_complete()


def test_auto_title_keeps_a_title_the_user_chose(store: SQLiteStore) -> None:
    start(store)
    store.rename_thread("ann", "t", "My notes")
    model = ScriptedModel(["never asked"], name="openai:gpt-test")
    assert asyncio.run(auto_title(store, model, "ann", "t")) is None
    assert store.get_thread("ann", "t").title == "My notes"


def test_title_endpoint(tmp_path: Path) -> None:
    settings = Settings(
        model="test:echo", embedder="test:hash", data_dir=tmp_path / "d", server={"preload": False}
    )
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        client.post(
            "/api/threads/t1/messages", json={"text": "How do I enable CORS on the server?"}
        )
        first = client.post("/api/threads/t1/title")
        assert first.status_code == 200, first.text
        assert first.json()["changed"] is True
        assert first.json()["thread"]["title"] == "Enable CORS server"
        client.patch("/api/threads/t1", json={"title": "<b>mine</b>"})
        again = client.post("/api/threads/t1/title").json()
        assert again == {"thread": again["thread"], "changed": False}
        assert again["thread"]["title"] == "<b>mine</b>"  # stored as text; the page escapes it
        assert client.post("/api/threads/nope/title").status_code == 404


def test_cli_chat_titles_a_new_thread(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env |= {"CHATWRIGHT_DATA_DIR": str(tmp_path), "CHATWRIGHT_MODEL": "test:echo"}
    run = [sys.executable, "-m", "chatwright"]
    chat = subprocess.run(
        [*run, "chat", "--thread", "c1"],
        input="How do I enable CORS on the server?\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert chat.returncode == 0, chat.stderr
    listed = subprocess.run(
        [*run, "threads", "list", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert [t["title"] for t in json.loads(listed.stdout)] == ["Enable CORS server"]


def test_welcome_endpoint_without_collections(tmp_path: Path) -> None:
    settings = Settings(
        model="test:echo", embedder="test:hash", data_dir=tmp_path / "d", server={"preload": False}
    )
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        body = client.get("/api/welcome").json()
        assert body["bot"]["name"] == "default" and body["bot"]["model"] == "test:echo"
        assert body["collections"] == []
        assert 1 <= len(body["prompts"]) <= 4
        assert client.get("/api/welcome", params={"bot": "nope"}).status_code == 404
