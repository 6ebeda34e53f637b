"""The web page in a real browser: streaming, reload, documents and citations, XSS, phones.

A live server (uvicorn, in a thread, on a free loopback port) serves the page with its
Content-Security-Policy; Chromium (Debian's, at /usr/bin/chromium) drives it through
Playwright. Every test fails on a console error or an uncaught exception in the page, which
is how a CSP violation (an inline style, a blocked load) shows up.

Skipped where Playwright, uvicorn or /usr/bin/chromium is missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")
pytest.importorskip("uvicorn", reason="the browser tests need uvicorn")
pytest.importorskip("fastapi", reason="the browser tests need fastapi")
pytest.importorskip("sse_starlette", reason="the browser tests need sse-starlette")

from chatwright import Chatbot, SQLiteStore  # noqa: E402
from chatwright.config import KnowledgeSettings, Settings, ToolsSettings  # noqa: E402
from chatwright.tools import tool  # noqa: E402
from web_helpers import (  # noqa: E402
    CHROMIUM,
    WATCH_STREAM_JS,
    LiveServer,
    NoteTakingModel,
    StreamCutter,
    chromium,
    fulfill_cut_short,
    watched_page,
)

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"the browser tests need Chromium at {CHROMIUM}", allow_module_level=True)

from chatwright.server.app import create_app  # noqa: E402

Page = sync_api.Page
expect = sync_api.expect

XSS_HTML = '<img src=x onerror="window.__xss=1"> <script>window.__xss=1</script>'
XSS_LINK = "[x](javascript:window.__xss=1)"
NOTES: list[str] = []


@tool(side_effects=True)
def save_note(text: str) -> str:
    """Save a note for the user.

    Args:
        text: what to write down.
    """
    NOTES.append(text)
    return f"saved {text!r}"


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return f"found {q}"


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("web-data")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("CHATWRIGHT_"):
                mp.delenv(name)
        settings = Settings(model="test:slow", embedder="test:hash", data_dir=data)
        store = SQLiteStore(settings.db_path)
        bots = {
            "default": Chatbot(settings=settings, store=store),
            "notes": Chatbot(NoteTakingModel(), settings=settings, store=store, tools=[save_note]),
            "quotes": Chatbot(
                settings=settings.model_copy(
                    update={"knowledge": KnowledgeSettings(answer_mode="extract")}
                ),
                store=store,
            ),
            "budget": Chatbot(
                "test:tools",
                settings=settings.model_copy(update={"tools": ToolsSettings(token_budget=1)}),
                store=store,
                tools=[lookup],
            ),
        }
        app = create_app(settings, host="127.0.0.1", store=store, bots=bots)
        try:
            with LiveServer(StreamCutter(app)) as live:
                yield live
        finally:
            for bot in bots.values():
                bot.close()
            store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


# Console errors a test expects (an HTTP error it provokes), by page.
EXPECTED: dict[int, list[re.Pattern[str]]] = {}


def expect_console_error(page: Page, pattern: str) -> None:
    EXPECTED.setdefault(id(page), []).append(re.compile(pattern))


def _expected(page: Page, text: str) -> bool:
    return any(p.search(text) for p in EXPECTED.get(id(page), []))


@contextmanager
def _watched_page(browser: Any, server: LiveServer, **context_args: Any) -> Iterator[Page]:
    """A fresh browser context on the page (see ``watched_page``), once it has started."""
    with watched_page(browser, server.url + "/", allowed=_expected, **context_args) as page:
        try:
            expect(page.locator("#whoami")).to_contain_text("local")  # the page has started
            yield page
        finally:
            EXPECTED.pop(id(page), None)


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Page]:
    with _watched_page(browser, server) as pg:
        yield pg


@pytest.fixture
def phone(browser: Any, server: LiveServer) -> Iterator[Page]:
    viewport = {"width": 375, "height": 667}
    with _watched_page(browser, server, viewport=viewport, is_mobile=True, has_touch=True) as pg:
        yield pg


# -- helpers ----------------------------------------------------------------------------------
def send(page: Page, text: str) -> None:
    box = page.locator("#composer-input")
    box.fill(text)
    box.press("Enter")


def last_answer(page: Page) -> Any:
    return page.locator("#messages .msg.assistant").last


def wait_answered(page: Page, count: int) -> Any:
    """Wait until ``count`` answers are finished (they have a seq once the turn is done)."""
    expect(page.locator("#messages .msg.assistant[data-seq]")).to_have_count(count, timeout=20_000)
    return last_answer(page)


def new_thread(page: Page) -> str:
    before = page.url
    page.get_by_role("button", name="+ New thread").click()
    page.wait_for_function(
        "(before) => location.href !== before && /#thread=/.test(location.hash)", arg=before
    )
    return page.url.split("#thread=", 1)[1]


def upload_and_pin(page: Page, collection: str, document: Path) -> None:
    """From the Collections dialog: create ``collection``, upload ``document``, pin it."""
    page.get_by_role("button", name="Collections").click()
    dialog = page.locator("#collections-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Name").fill(collection)
    dialog.get_by_role("button", name="Create").click()
    item = dialog.locator(f'.collection-item[data-collection="{collection}"]')
    expect(item).to_be_visible()
    expect(dialog.locator("#upload-collection")).to_have_value(collection)
    dialog.locator("#upload-files").set_input_files(str(document))
    dialog.get_by_role("button", name="Upload").click()
    status = dialog.locator("#upload-text")
    expect(dialog.locator("#upload-status.done")).to_be_visible(timeout=30_000)
    expect(status).to_contain_text("Done: 1 of 1 files")
    expect(item).to_contain_text("1 document")
    with page.expect_response(re.compile(r"/api/threads/[^/]+/pins$")) as pinned:
        item.get_by_label(f"Pin {collection} to this thread").check()
    assert pinned.value.ok
    expect(page.locator("#pins-bar")).to_contain_text(collection)
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()


def assert_no_xss(page: Page) -> None:
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("#messages img, #messages script, #messages iframe").count() == 0
    assert page.locator('#messages a[href^="javascript" i]').count() == 0


# -- tests ------------------------------------------------------------------------------------
def test_answer_streams_and_the_thread_survives_a_reload(page: Page) -> None:
    expect(page.locator("#composer-input")).to_be_visible()
    page.evaluate(WATCH_STREAM_JS)
    text = "please repeat these words one by one so that the stream is seen growing"
    send(page, text)
    expect(page.locator("#stop-button")).to_be_visible()
    answer = wait_answered(page, 1)
    expect(answer).to_contain_text(f"echo: {text}")
    expect(page.locator("#send-button")).to_be_visible()
    lengths = [n for n in page.evaluate("window.__lengths") if n > 0]
    final = len(f"echo: {text}")
    growing = sorted({n for n in lengths if n < final})
    assert len(growing) >= 2, f"the answer did not stream: lengths seen {lengths}"

    thread_id = page.url.split("#thread=", 1)[1]
    assert thread_id
    # The first answer titled the thread (key words: titles.py); it is listed and current.
    active = page.locator(".thread-item.active")
    expect(active).to_contain_text("Repeat words stream seen growing")

    page.reload()
    expect(page.locator("#messages .msg.user")).to_have_text(re.compile(re.escape(text)))
    expect(last_answer(page)).to_contain_text(f"echo: {text}")
    expect(page.locator(".thread-item.active")).to_contain_text("Repeat words stream seen growing")
    assert page.url.endswith(f"#thread={thread_id}")

    # The trace of the answer, on demand.
    last_answer(page).get_by_role("button", name="Trace").click()
    trace = page.locator("#trace-dialog")
    expect(trace).to_be_visible()
    expect(trace.locator("tbody tr").first).to_be_visible()
    expect(trace).to_contain_text("generate")
    trace.get_by_role("button", name="Close").click()

    # Rename, then delete, from the sidebar.
    page.get_by_role("button", name=re.compile("^Rename Repeat words")).click()
    page.locator("#prompt-input").fill("Renamed thread")
    page.locator("#confirm-ok").click()
    expect(page.locator(".thread-item.active")).to_contain_text("Renamed thread")
    expect(page.locator("#thread-title")).to_have_text("Renamed thread")
    page.get_by_role("button", name="Delete Renamed thread").click()
    page.locator("#confirm-ok").click()
    expect(page.locator(f'.thread-item[data-thread-id="{thread_id}"]')).to_have_count(0)
    expect(page.locator("#messages .msg")).to_have_count(0)


def test_an_uploaded_document_is_cited(page: Page, tmp_path: Path) -> None:
    doc = tmp_path / "zorblax.md"
    doc.write_text(
        "# Zorblax handbook\n\n"
        "The Zorblax gadget has a refund window of 45 days from the day of purchase.\n\n"
        "## Care\n\nKeep the Zorblax gadget dry and away from magnets.\n",
        encoding="utf-8",
    )
    new_thread(page)
    upload_and_pin(page, "handbook", doc)

    send(page, "What is the refund window of the Zorblax gadget? [1]")
    answer = wait_answered(page, 1)
    sources = answer.locator(".citations")
    expect(sources).to_be_visible()
    first = sources.locator("details.citation").first
    expect(first.locator("summary")).to_contain_text("Zorblax handbook")
    passage = first.locator(".citation-passage")
    expect(passage).to_be_hidden()
    first.locator("summary").click()
    expect(passage).to_be_visible()
    expect(passage).to_contain_text("refund window of 45 days")
    expect(first.locator(".citation-source")).to_contain_text("zorblax.md")
    first.locator("summary").click()  # closed again
    expect(passage).to_be_hidden()

    # The [1] in the answer links to the source.
    marker = answer.locator("button.cite-ref", has_text="[1]")
    expect(marker).to_be_visible()
    marker.click()
    expect(answer.locator('details.citation[data-index="1"] .citation-passage')).to_be_visible()

    # After a reload, the stored answer still carries its citations.
    page.reload()
    stored = wait_answered(page, 1)
    expect(stored.locator("details.citation").first.locator("summary")).to_contain_text(
        "Zorblax handbook"
    )


def test_with_several_collections_an_upload_asks_where_it_goes(page: Page, tmp_path: Path) -> None:
    doc = tmp_path / "where.md"
    doc.write_text("# Where\n\nThis file must land where the user said.\n", encoding="utf-8")
    page.get_by_role("button", name="Collections").click()
    dialog = page.locator("#collections-dialog")
    for name in ("alpha-docs", "beta-docs"):
        dialog.get_by_label("Name").fill(name)
        dialog.get_by_role("button", name="Create").click()
        expect(dialog.locator(f'.collection-item[data-collection="{name}"]')).to_be_visible()
    select = dialog.locator("#upload-collection")
    expect(select).to_have_value("beta-docs")  # the collection just made
    page.reload()  # a new visit: nothing chosen yet, and there are several
    page.get_by_role("button", name="Collections").click()
    expect(select).to_have_value("")
    expect(select.locator("option").first).to_have_text("Choose a collection…")
    dialog.locator("#upload-files").set_input_files(str(doc))
    dialog.get_by_role("button", name="Upload").click()
    assert select.evaluate("el => !el.validity.valid")  # the form was not sent
    expect(dialog.locator("#upload-status")).to_be_hidden()
    select.select_option("alpha-docs")
    dialog.get_by_role("button", name="Upload").click()
    expect(dialog.locator("#upload-status.done")).to_be_visible(timeout=30_000)
    expect(dialog.locator('.collection-item[data-collection="alpha-docs"]')).to_contain_text(
        "1 document"
    )
    expect(dialog.locator('.collection-item[data-collection="beta-docs"]')).not_to_contain_text(
        "1 document"
    )
    dialog.get_by_role("button", name="Close").click()


def test_an_answer_in_extract_mode_quotes_and_cites(page: Page, tmp_path: Path) -> None:
    doc = tmp_path / "quux.md"
    doc.write_text(
        "# Quux manual\n\n"
        "The Quux kettle boils a litre of water in ninety seconds. "
        "Its base must be wiped dry after every use.\n",
        encoding="utf-8",
    )
    page.locator("#bot-select").select_option("quotes")
    new_thread(page)
    upload_and_pin(page, "quux", doc)
    send(page, "How fast does the Quux kettle boil a litre of water?")
    answer = wait_answered(page, 1)
    body = answer.locator(".markdown").last
    expect(body).to_contain_text("From your documents:")
    expect(body.locator("blockquote").first).to_contain_text("ninety seconds")
    expect(answer.locator("button.cite-ref", has_text="[1]").first).to_be_visible()
    expect(answer.locator("details.citation").first.locator("summary")).to_contain_text(
        "Quux manual"
    )


def test_html_and_script_payloads_stay_text(page: Page, tmp_path: Path) -> None:
    doc = tmp_path / "evil.md"
    doc.write_text(
        f"# Quux {XSS_HTML} guide\n\n"
        f"The quux widget costs 7 dollars. {XSS_HTML} See {XSS_LINK} for quux prices.\n",
        encoding="utf-8",
    )
    new_thread(page)
    upload_and_pin(page, "evil", doc)

    question = f"How much is the quux widget? {XSS_HTML} {XSS_LINK} [1]"
    send(page, question)
    answer = wait_answered(page, 1)

    # The user's message is shown as typed.
    expect(page.locator("#messages .msg.user .body")).to_have_text(question)
    # The model's answer (an echo of it) shows the HTML as text; the link is not a link.
    markdown = answer.locator(".markdown")
    expect(markdown).to_contain_text('<img src=x onerror="window.__xss=1">')
    expect(markdown).to_contain_text("<script>window.__xss=1</script>")
    link = markdown.locator("a", has_text="x")
    expect(link).to_have_count(1)
    assert link.get_attribute("href") is None
    link.click()
    # The cited passage of the document: ingest keeps the text of inline HTML, not its tags,
    # and the page renders the passage as sanitized Markdown (the link has no href).
    citation = answer.locator("details.citation").first
    expect(citation.locator("summary")).to_contain_text("Quux")
    citation.locator("summary").click()
    passage = citation.locator(".citation-passage")
    expect(passage).to_contain_text("The quux widget costs 7 dollars.")
    expect(passage.locator("img, script, a[href]")).to_have_count(0)
    for marker in answer.locator("button.cite-ref").all():
        marker.click()
    page.wait_for_timeout(200)
    assert_no_xss(page)

    # Rendered again from the store, after a reload: still text.
    page.reload()
    stored = wait_answered(page, 1)
    expect(stored.locator(".markdown")).to_contain_text("<script>window.__xss=1</script>")
    stored.locator("details.citation summary").first.click()
    page.wait_for_timeout(200)
    assert_no_xss(page)


def test_markdown_is_sanitized(page: Page) -> None:
    """The renderer alone, on what a model could send: no markup, handlers or bad links."""
    html, attributes = page.evaluate(
        """() => {
            const md = [
              '**bold** and <b onclick="window.__xss=1">raw</b>',
              '<div><iframe src="javascript:window.__xss=1"></iframe></div>',
              '[a](javascript:window.__xss=1) [b](data:text/html,x) [c](https://example.com/)',
              '![img](x" onerror="window.__xss=1)',
              '<style>body{display:none}</style>',
            ].join('\\n\\n');
            const box = document.createElement('div');
            box.append(window.chatwright.markdownFragment(md));
            const attributes = [...box.querySelectorAll('*')]
              .flatMap((el) => [...el.attributes].map((a) => a.name));
            return [box.innerHTML, attributes];
        }"""
    )
    assert "<strong>bold</strong>" in html
    assert "&lt;b onclick" in html and "<b " not in html  # raw HTML is text
    assert "&lt;iframe" in html and "&lt;style&gt;" in html
    for tag in ("<iframe", "<img", "<style", "<script", "<div"):
        assert tag not in html
    assert '<a href="https://example.com/" target="_blank" rel="noopener noreferrer">c</a>' in html
    assert 'href="javascript' not in html and 'href="data:' not in html
    assert re.search(r"<a [^>]*class=\"unsafe-link\"[^>]*>a</a>", html)
    assert set(attributes) <= {"href", "target", "rel", "class", "title"}, attributes
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_phone_layout(phone: Page) -> None:
    page = phone
    box = page.locator("#composer-input")
    send_button = page.locator("#send-button")
    expect(box).to_be_visible()
    expect(send_button).to_be_visible()
    for element in (box, send_button):
        rect = element.bounding_box()
        assert rect is not None
        assert rect["x"] >= 0 and rect["x"] + rect["width"] <= 375
        assert rect["y"] >= 0 and rect["y"] + rect["height"] <= 667
    assert rect["width"] >= 44 or rect["height"] >= 36
    # The thread list is behind a toggle.
    new = page.get_by_role("button", name="+ New thread")
    expect(new).to_be_hidden()
    toggle = page.get_by_role("button", name="Show threads")
    toggle.click()
    expect(new).to_be_visible()
    expect(page.get_by_role("button", name="Hide threads")).to_have_attribute(
        "aria-expanded", "true"
    )
    page.keyboard.press("Escape")
    expect(new).to_be_hidden()
    # The page does not scroll sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375

    box.fill("hello from a phone")
    send_button.tap()
    answer = wait_answered(page, 1)
    expect(answer).to_contain_text("echo: hello from a phone")
    expect(box).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_a_tool_with_side_effects_waits_for_approval(page: Page) -> None:
    picker = page.locator("#bot-select")
    expect(picker).to_be_visible()
    picker.select_option("notes")
    new_thread(page)
    send(page, "note that I need to buy milk")
    approve = page.get_by_role("button", name="Approve")
    expect(approve).to_be_visible()
    tool = page.locator("details.tool").last
    expect(tool.locator("summary")).to_contain_text("save_note")
    expect(tool).not_to_have_attribute("open", "")
    assert NOTES == []
    approve.click()
    answer = wait_answered(page, 1)
    expect(answer.locator(".markdown").last).to_contain_text("The tool said: saved 'buy milk'")
    assert NOTES == ["buy milk"]
    expect(tool.locator(".tool-state")).to_have_text("done")
    tool.locator("summary").click()
    expect(tool.locator(".tool-result pre")).to_have_text("saved 'buy milk'")
    expect(tool).to_contain_text('"text": "buy milk"')

    # A reload while a call waits: the page finds the pending approval and follows the turn.
    send(page, "note it again")
    expect(page.get_by_role("button", name="Approve")).to_be_visible()
    page.reload()
    expect(page.locator("#messages .msg.user")).to_have_count(2)
    waiting = last_answer(page)
    expect(waiting.locator(".msg-note")).to_contain_text("still answering")
    deny = waiting.get_by_role("button", name="Deny")
    expect(deny).to_be_visible()
    deny.click()
    answer = wait_answered(page, 2)
    expect(answer.locator(".markdown").last).to_contain_text("The tool said: not run")
    expect(answer.locator(".tool.error .tool-state")).to_have_text("error")
    assert NOTES == ["buy milk"]


def test_errors_show_in_a_dismissible_banner(page: Page) -> None:
    page.get_by_role("button", name="Collections").click()
    dialog = page.locator("#collections-dialog")
    name = dialog.get_by_label("Name")
    name.fill("dupe")
    dialog.get_by_role("button", name="Create").click()
    expect(dialog.locator('.collection-item[data-collection="dupe"]')).to_be_visible()
    name.fill("dupe")
    expect_console_error(page, r"status of 409")
    dialog.get_by_role("button", name="Create").click()
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("dupe")
    expect(dialog.locator(".dialog-error")).to_contain_text("dupe")  # not hidden by the modal
    dialog.get_by_role("button", name="Close").click()
    banner.get_by_role("button", name="Dismiss").click()
    expect(banner).to_be_hidden()


def test_stop_ends_the_stream_in_the_page(page: Page) -> None:
    words = " ".join(f"word{i}" for i in range(60))  # three seconds of test:slow
    send(page, words)
    answer = last_answer(page)
    expect(answer.locator(".markdown")).to_contain_text("echo:")
    stop = page.get_by_role("button", name="Stop")
    stop.click()
    expect(answer.locator(".msg-note")).to_contain_text("stopped")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    shown = answer.locator(".markdown").inner_text()
    page.wait_for_timeout(300)
    assert answer.locator(".markdown").inner_text() == shown  # nothing more arrives
    assert "word59" not in shown
    # The turn stopped on the server too: after a reload the stored answer is the cut one.
    page.wait_for_timeout(300)
    page.reload()
    stored = wait_answered(page, 1)
    expect(stored.locator(".markdown")).to_contain_text("echo:")
    assert "word59" not in stored.locator(".markdown").inner_text()


def test_an_api_key_from_settings_is_sent(page: Page) -> None:
    page.get_by_role("button", name="Settings").click()
    dialog = page.locator("#settings-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("API key").fill("cw-test-key")
    with page.expect_request(re.compile(r"/api/me$")) as request:
        dialog.get_by_role("button", name="Save").click()
    assert request.value.headers.get("authorization") == "Bearer cw-test-key"
    assert page.evaluate("localStorage.getItem('chatwright.apiKey')") == "cw-test-key"
    page.reload()
    with page.expect_request(re.compile(r"/api/threads")) as request:
        page.get_by_role("button", name="+ New thread").click()
    assert request.value.headers.get("authorization") == "Bearer cw-test-key"
    page.get_by_role("button", name="Settings").click()
    with page.expect_request(re.compile(r"/api/me$")) as request:
        dialog.get_by_role("button", name="Forget key").click()
    assert "authorization" not in request.value.headers


def test_the_page_runs_under_its_content_security_policy(page: Page, server: LiveServer) -> None:
    response = page.request.get(server.url + "/")
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "default-src 'none'" in policy
    html = response.text()
    # Nothing inline that the policy would block: no inline scripts, styles or handlers.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html, re.IGNORECASE)
    for script in re.findall(r'<script[^>]*\bsrc="([^"]+)"', html):
        assert not script.startswith(("http:", "https:", "//")), script  # no CDN
        assert page.request.get(f"{server.url}/{script}").ok, script
    assert page.evaluate("typeof marked.Marked") == "function"
    assert page.evaluate("typeof DOMPurify.sanitize") == "function"


def test_a_turn_stopped_by_a_bound_says_so(page: Page) -> None:
    page.locator("#bot-select").select_option("budget")
    new_thread(page)
    send(page, 'call lookup {"q": "x"}')
    answer = wait_answered(page, 1)
    expect(answer.locator(".msg-note")).to_contain_text("stopped: token budget")
    page.reload()
    expect(wait_answered(page, 1).locator(".msg-note")).to_contain_text("stopped: token budget")


def cut_the_first_turn(page: Page, events: int) -> list[str]:
    """Cut the page's next turn stream after ``events`` events (mid-event); the list gets
    the id of the last whole event."""
    cut: list[str] = []

    def handle(route: Any) -> None:
        if route.request.method != "POST" or cut:
            route.fallback()
        else:
            cut.append(fulfill_cut_short(route, events))

    page.route("**/api/threads/*/messages", handle)
    return cut


def test_a_broken_stream_resumes_where_it_stopped(page: Page) -> None:
    words = " ".join(f"word{i}" for i in range(80))  # four seconds of test:slow
    cut = cut_the_first_turn(page, 6)
    resumes: list[str | None] = []

    def resume(route: Any) -> None:
        resumes.append(route.request.headers.get("last-event-id"))
        if len(resumes) == 1:
            route.abort("connectionreset")  # the first try fails too: it tries again
        else:
            route.fallback()

    page.route("**/api/threads/*/stream", resume)
    expect_console_error(page, r"ERR_CONNECTION_RESET")
    page.evaluate(WATCH_STREAM_JS)
    send(page, words)
    answer = last_answer(page)
    expect(answer.locator(".msg-status")).to_have_text("reconnecting…")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()
    expect(answer.locator(".msg-status")).to_be_hidden()
    assert answer.get_attribute("data-seq") is None  # resumed while the turn still runs
    answer = wait_answered(page, 1)
    text = answer.locator(".content").inner_text().strip()
    assert text == f"echo: {words}"  # every word once: none lost, none twice
    expect(answer.locator(".msg-note")).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert re.fullmatch(r"st_\w+:6", cut[0]), cut
    assert resumes == [cut[0], cut[0]]
    lengths = page.evaluate("window.__lengths")
    after_cut = sorted({n for n in lengths if len("echo: word0 word1 word2 word3") < n < len(text)})
    assert len(after_cut) >= 2, f"the resumed answer did not stream: lengths seen {lengths}"


def test_a_dropped_connection_resumes(page: Page, server: LiveServer) -> None:
    """The server side of the cut: the connection drops mid-body (a network error)."""
    words = " ".join(f"word{i}" for i in range(60))
    server.app.arm(8)
    expect_console_error(page, r"ERR_INCOMPLETE_CHUNKED_ENCODING|network error")
    send(page, words)
    answer = last_answer(page)
    expect(answer.locator(".msg-status")).to_have_text("reconnecting…")
    answer = wait_answered(page, 1)
    assert answer.locator(".content").inner_text().strip() == f"echo: {words}"
    expect(page.locator("#banner")).to_be_hidden()


def test_a_stream_that_cannot_be_resumed_shows_the_error(page: Page) -> None:
    words = " ".join(f"word{i}" for i in range(30))
    cut_the_first_turn(page, 4)
    refusal = '{"error": {"message": "invalid Last-Event-ID", "hint": "send an id"}}'
    page.route(
        "**/api/threads/*/stream",
        lambda route: route.fulfill(status=400, content_type="application/json", body=refusal),
    )
    expect_console_error(page, r"status of 400")
    send(page, words)
    answer = last_answer(page)
    note = answer.locator(".msg-note.error")
    expect(note).to_contain_text("invalid Last-Event-ID")
    expect(page.locator("#banner")).to_contain_text("invalid Last-Event-ID")
    expect(answer).to_contain_text("echo: word0")  # what arrived is kept
    expect(page.locator("#messages .msg.user")).to_have_count(1)  # the thread, as stored
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    # The turn went on at the server: reopened (the stream still refused, so the page polls
    # the thread), the thread shows the whole answer as stored.
    page.reload()
    stored = wait_answered(page, 1)
    assert stored.locator(".content").inner_text().strip() == f"echo: {words}"


def test_stop_while_reconnecting_does_not_resume(page: Page) -> None:
    words = " ".join(f"word{i}" for i in range(60))
    cut_the_first_turn(page, 4)
    resumes: list[str | None] = []

    def refuse(route: Any) -> None:
        resumes.append(route.request.headers.get("last-event-id"))
        route.abort("connectionreset")

    page.route("**/api/threads/*/stream", refuse)
    expect_console_error(page, r"ERR_CONNECTION_RESET")
    send(page, words)
    answer = last_answer(page)
    expect(answer.locator(".msg-status")).to_have_text("reconnecting…")
    page.get_by_role("button", name="Stop").click()
    expect(answer.locator(".msg-note")).to_contain_text("stopped")
    expect(answer.locator(".msg-status")).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    tries = len(resumes)
    page.wait_for_timeout(1500)  # longer than the next retry would wait
    assert len(resumes) == tries


def test_a_reload_mid_answer_keeps_streaming(page: Page) -> None:
    words = " ".join(f"word{i}" for i in range(80))  # four seconds of test:slow
    send(page, words)
    expect(last_answer(page).locator(".markdown")).to_contain_text("word5")
    page.reload()
    page.evaluate(WATCH_STREAM_JS)
    expect(page.locator("#messages .msg.user")).to_have_count(1)
    live = last_answer(page)
    expect(live.locator(".msg-note")).to_contain_text("still answering")
    expect(page.get_by_role("button", name="Stop")).to_be_visible()  # it is the running turn
    answer = wait_answered(page, 1)
    text = answer.locator(".content").inner_text().strip()
    assert text == f"echo: {words}"
    expect(page.locator("#messages .msg.assistant")).to_have_count(1)
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    lengths = page.evaluate("window.__lengths")
    growing = sorted({n for n in lengths if 0 < n < len(text)})
    assert len(growing) >= 2, f"the answer did not stream after the reload: lengths {lengths}"
