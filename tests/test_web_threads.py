"""The web page's threads and first impression, in Chromium (issue 15): automatic titles,
rename (HTML stays text), search, import, the welcome state, cited passages rendered clean
with their heading path, the finish reason as a sentence, offline API docs, phone size.

Same set-up as ``test_web.py``: a live server on loopback, Debian's Chromium through
Playwright, and a test fails on any console error (a CSP violation included).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")
pytest.importorskip("uvicorn", reason="the browser tests need uvicorn")

from chatwright import Chatbot, SQLiteStore  # noqa: E402
from chatwright.config import Settings  # noqa: E402
from chatwright.models.base import ModelEvent, ModelRequest  # noqa: E402
from chatwright.types import Done, Message, TextDelta  # noqa: E402
from web_helpers import CHROMIUM, LiveServer, chromium, watched_page  # noqa: E402

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"the browser tests need Chromium at {CHROMIUM}", allow_module_level=True)

from chatwright.server.app import create_app  # noqa: E402

Page = sync_api.Page
expect = sync_api.expect
XSS_TITLE = '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'


class LengthModel:
    """Answers a few words, then stops at the output limit (finish reason "length")."""

    name = "test:length"

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        yield TextDelta(text="This answer is cut at the")
        yield Done(reason="length")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, SQLiteStore]]:
    data = tmp_path_factory.mktemp("web-threads")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("CHATWRIGHT_"):
                mp.delenv(name)
        settings = Settings(model="test:echo", embedder="test:hash", data_dir=data)
        store = SQLiteStore(settings.db_path)
        bots = {
            "default": Chatbot(settings=settings, store=store),
            "terse": Chatbot(LengthModel(), settings=settings, store=store),
        }
        app = create_app(settings, host="127.0.0.1", store=store, bots=bots)
        try:
            with LiveServer(app) as live:
                yield live, store
        finally:
            for bot in bots.values():
                bot.close()
            store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@contextmanager
def watched(browser: Any, url: str, expected: str = "", **context_args: Any) -> Iterator[Page]:
    """A fresh page on ``url``; fails on console errors (but ``expected`` ones) and exceptions."""

    def allowed(page: Page, text: str) -> bool:
        return bool(expected and re.search(expected, text))

    with watched_page(browser, url, allowed=allowed, **context_args) as page:
        yield page


@pytest.fixture
def page(browser: Any, server: tuple[LiveServer, SQLiteStore]) -> Iterator[Page]:
    with watched(browser, server[0].url + "/", expected=r"status of 4\d\d") as pg:
        expect(pg.locator("#whoami")).to_contain_text("local")
        yield pg


def send(page: Page, text: str) -> None:
    page.locator("#composer-input").fill(text)
    page.locator("#composer-input").press("Enter")


def answered(page: Page, count: int) -> Any:
    expect(page.locator("#messages .msg.assistant[data-seq]")).to_have_count(count, timeout=20_000)
    return page.locator("#messages .msg.assistant").last


def new_thread(page: Page) -> str:
    before = page.url
    page.get_by_role("button", name="+ New thread").click()
    page.wait_for_function(
        "(before) => location.href !== before && /#thread=/.test(location.hash)", arg=before
    )
    return page.url.split("#thread=", 1)[1]


def sidebar_item(page: Page, thread_id: str) -> Any:
    return page.locator(f'#thread-list .thread-item[data-thread-id="{thread_id}"]')


# -- tests ------------------------------------------------------------------------------------
def test_the_first_answer_gives_the_thread_a_keyword_title(page: Page) -> None:
    thread_id = new_thread(page)
    send(page, "How do I enable CORS on the server?")
    answered(page, 1)
    item = sidebar_item(page, thread_id)
    expect(item.locator(".thread-open")).to_have_text("Enable CORS server")
    expect(page.locator("#thread-title")).to_have_text("Enable CORS server")
    page.reload()
    expect(sidebar_item(page, thread_id).locator(".thread-open")).to_have_text("Enable CORS server")


def test_a_renamed_title_with_html_stays_text_and_is_kept(page: Page) -> None:
    thread_id = new_thread(page)
    send(page, "Tell me about kayaks")
    answered(page, 1)
    item = sidebar_item(page, thread_id)
    expect(item.locator(".thread-open")).to_have_text("Kayaks")
    item.hover()
    item.get_by_role("button", name="Rename Kayaks").click()
    page.locator("#prompt-input").fill(XSS_TITLE)
    page.locator("#confirm-ok").click()
    expect(item.locator(".thread-open")).to_have_text(XSS_TITLE)
    expect(page.locator("#thread-title")).to_have_text(XSS_TITLE)
    send(page, "and canoes?")
    answered(page, 2)
    page.reload()
    expect(sidebar_item(page, thread_id).locator(".thread-open")).to_have_text(XSS_TITLE)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("#sidebar img, #sidebar script, .topbar img").count() == 0


def test_search_finds_titles_and_message_text_of_this_user_only(
    page: Page, server: tuple[LiveServer, SQLiteStore]
) -> None:
    store = server[1]
    store.append("eve", "hers", [Message.user("axolotl secrets of eve")], create=True)
    thread_id = new_thread(page)
    send(
        page,
        "Where do axolotls live in the wild, what do they eat, how big do they grow in captivity?",
    )
    answered(page, 1)
    box = page.get_by_label("Search threads")
    box.fill("captivity")  # in the message, not in the title
    results = page.locator("#search-results")
    expect(results).to_be_visible()
    expect(page.locator("#thread-list")).to_be_hidden()
    hits = results.locator(".search-hit")
    expect(hits).to_have_count(1)  # not eve's
    expect(hits.first).to_have_attribute("data-thread-id", thread_id)
    expect(hits.first.locator(".hit-snippet")).to_contain_text("grow in captivity")
    box.fill("axolotl")  # in the title, and in eve's thread
    expect(hits).to_have_count(1)
    expect(hits.first.locator(".hit-title")).to_have_text("Axolotls live wild eat big")
    box.fill("zzzyzzx")
    expect(results).to_contain_text("No thread matches")
    box.fill("")
    expect(page.locator("#thread-list")).to_be_visible()
    expect(results).to_be_hidden()
    # open a hit
    other = new_thread(page)
    assert other != thread_id
    box.fill("captivity")
    hits.first.locator(".thread-open").click()
    page.wait_for_function("(id) => location.hash === '#thread=' + id", arg=thread_id)
    expect(page.locator("#messages")).to_contain_text("Where do axolotls live")
    expect(page.locator("#messages .search-match")).to_contain_text("grow in captivity")


def chatgpt_export(title: str, question: str, answer: str) -> list[dict[str, Any]]:
    def node(role: str, text: str, parent: str | None, children: list[str]) -> dict[str, Any]:
        content = {"content_type": "text", "parts": [text]}
        return {
            "message": {"author": {"role": role}, "content": content},
            "parent": parent,
            "children": children,
        }

    return [
        {
            "title": title,
            "current_node": "a",
            "mapping": {
                "u": node("user", question, None, ["a"]),
                "a": node("assistant", answer, "u", []),
            },
        }
    ]


def test_import_an_export_and_a_chatgpt_file(page: Page, tmp_path: Path) -> None:
    gpt = tmp_path / "conversations.json"
    gpt.write_text(
        json.dumps(chatgpt_export("Kite surfing", "Best wind for kites?", "12 to 20 knots.")),
        encoding="utf-8",
    )
    page.locator("#import-files").set_input_files(str(gpt))
    expect(page.locator("#thread-title")).to_have_text("Kite surfing")
    expect(page.locator("#messages")).to_contain_text("12 to 20 knots.")
    imported_id = page.url.split("#thread=", 1)[1]

    # export it through the API, as the export button or curl would, and import that
    exported = page.request.get(page.url.split("#")[0] + f"api/threads/{imported_id}/export")
    assert exported.ok
    again = tmp_path / "thread.json"
    again.write_bytes(exported.body())
    page.locator("#import-files").set_input_files(str(again))
    page.wait_for_function("(id) => !location.hash.endsWith(id)", arg=imported_id)
    expect(page.locator("#thread-title")).to_have_text("Kite surfing")
    expect(page.locator("#messages")).to_contain_text("Best wind for kites?")
    expect(page.locator("#thread-list .thread-item", has_text="Kite surfing")).to_have_count(2)


def test_a_malformed_import_is_refused_and_stores_nothing(page: Page, tmp_path: Path) -> None:
    def threads() -> int:
        listed = page.request.get(page.url.split("#")[0] + "api/threads?limit=500")
        return len(listed.json()["threads"])

    before = threads()
    bad = tmp_path / "broken.json"
    bad.write_text('{"thread": {"title": "x"}, "messages": [{"role": "wizard"}]}', "utf-8")
    page.locator("#import-files").set_input_files(str(bad))
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("not an export chatwright can import")
    expect(banner).to_contain_text("chatwright threads export")
    assert threads() == before


def upload(page: Page, collection: str, name: str, text: str) -> None:
    base = page.url.split("#")[0]
    made = page.request.post(base + "api/collections", data={"name": collection})
    assert made.ok or made.status == 409, made.text()
    job = page.request.post(
        base + f"api/collections/{collection}/documents",
        multipart={"files": {"name": name, "mimeType": "text/markdown", "buffer": text.encode()}},
    )
    assert job.ok, job.text()
    job_id = job.json()["job_id"]
    for _ in range(200):
        state = page.request.get(base + f"api/jobs/{job_id}").json()
        if state["status"] in ("done", "failed"):
            assert state["status"] == "done", state
            return
        page.wait_for_timeout(100)
    raise AssertionError("the upload did not finish")


GUIDE = """# Zorp guide

## Install

### Linux

The **zorp** tool installs with <abbr title="Advanced Package Tool">APT</abbr>: run
`apt install zorp`. Zorp needs 2 GB of disk.

/// note | Careful
Zorp overwrites /etc/zorp.conf.
///
"""


def test_welcome_state_then_a_clean_citation_with_its_heading_path(page: Page) -> None:
    upload(page, "guides", "zorp.md", GUIDE)
    page.reload()
    welcome = page.locator("#welcome")
    expect(welcome.locator(".welcome-title")).to_have_text("Hi, I'm default")
    expect(welcome.locator(".welcome-model")).to_contain_text("test:echo")
    expect(welcome.locator(".welcome-collections")).to_contain_text("guides (1 document)")
    prompt = welcome.get_by_role("button", name="What does “Zorp guide” say?")
    expect(prompt).to_be_visible()
    prompt.click()
    answer = answered(page, 1)
    expect(page.locator("#empty-state")).to_be_hidden()
    expect(answer).to_contain_text("echo: What does “Zorp guide” say?")
    citation = answer.locator("details.citation").first
    expect(citation.locator("summary")).to_contain_text("Zorp guide")
    expect(citation.locator(".citation-heading")).to_contain_text("Install \u203a Linux")
    citation.locator("summary").click()
    passage = citation.locator(".citation-passage")
    expect(passage).to_contain_text("installs with APT")
    text = passage.inner_text()
    assert "<abbr" not in text and "///" not in text and "**" not in text, text


def test_a_passage_renders_as_sanitized_markdown(page: Page) -> None:
    # Whatever ingest leaves in a passage: inline HTML shows as its text, admonition markers
    # go, Markdown renders, and nothing runs.
    html = page.evaluate(
        """(text) => {
            const box = document.createElement("div");
            box.append(window.chatwright.passageFragment(text));
            return box.innerHTML;
        }""",
        '**bold** and <abbr title="x">HTML</abbr>\n\n/// note | Careful\nbody\n///\n\n'
        '<img src=x onerror="window.__xss=1"> [a](javascript:window.__xss=1)',
    )
    assert "<strong>bold</strong>" in html
    assert "HTML" in html and "&lt;abbr" not in html and "<abbr" not in html
    assert "<strong>Careful</strong>" in html and "///" not in html
    assert "<img" not in html and "javascript:" not in html
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_the_finish_reason_is_a_sentence(page: Page) -> None:
    page.locator("#bot-picker select").select_option("terse")
    expect(page.locator(".welcome-title")).to_have_text("Hi, I'm terse")
    new_thread(page)
    send(page, "Say a lot")
    answer = answered(page, 1)
    expect(answer.locator(".msg-note")).to_have_text("stopped: answer length limit")
    page.reload()
    expect(answered(page, 1).locator(".msg-note")).to_have_text("stopped: answer length limit")


def test_phone_size_search_and_welcome(
    browser: Any, server: tuple[LiveServer, SQLiteStore]
) -> None:
    server[1].append(
        "local",
        "phone",
        [Message.user("axolotls on a phone"), Message.assistant("they fit")],
        create=True,
    )
    viewport = {"width": 375, "height": 667}
    url = server[0].url + "/"
    with watched(browser, url, viewport=viewport, is_mobile=True, has_touch=True) as page:
        expect(page.locator("#whoami")).to_contain_text("local", timeout=15_000)
        expect(page.locator(".welcome-title")).to_be_visible()
        for chip in page.locator(".prompt-chip").all():
            box = chip.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.get_by_role("button", name="Show threads").click()
        search = page.get_by_label("Search threads")
        expect(search).to_be_visible()
        search.fill("axolotls")
        expect(page.locator("#search-results .search-hit").first).to_be_visible()
        page.locator("#search-results .search-hit .thread-open").first.tap()
        expect(page.locator("#messages")).to_contain_text("axolotls")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_api_docs_work_offline(browser: Any, server: tuple[LiveServer, SQLiteStore]) -> None:
    url = server[0].url
    context = browser.new_context()
    page = context.new_page()
    outside: list[str] = []
    page.route(
        re.compile(r"^https?://(?!127\.0\.0\.1).*"),
        lambda route: (outside.append(route.request.url), route.abort()),
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(url + "/docs")
        expect(page.locator(".swagger-ui .title").first).to_contain_text("chatwright")
        expect(page.locator(".opblock-summary-path", has_text="/api/search").first).to_be_visible()
    finally:
        context.close()
    assert outside == [] and errors == []
