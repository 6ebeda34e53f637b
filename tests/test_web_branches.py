"""The web page's conversation controls in a real browser: regenerate, edit and resend, the
branch switcher "< 2/3 >", copy buttons (answers, code blocks) and the time of each message.

As ``test_web.py``: a live server on a free loopback port, Debian's Chromium driven by
Playwright, and a test fails on any console error or uncaught exception in the page.
Skipped where Playwright, uvicorn or /usr/bin/chromium is missing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")
pytest.importorskip("uvicorn", reason="the browser tests need uvicorn")
pytest.importorskip("sse_starlette", reason="the browser tests need sse-starlette")

from chatwright import Chatbot, SQLiteStore  # noqa: E402
from chatwright.config import Settings  # noqa: E402
from web_helpers import CHROMIUM, LiveServer, chromium, watched_page  # noqa: E402

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"the browser tests need Chromium at {CHROMIUM}", allow_module_level=True)

from chatwright.server.app import create_app  # noqa: E402

Page = sync_api.Page
expect = sync_api.expect


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, SQLiteStore]]:
    data = tmp_path_factory.mktemp("web-branches")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("CHATWRIGHT_"):
                mp.delenv(name)
        settings = Settings(model="test:echo", embedder="test:hash", data_dir=data)
        store = SQLiteStore(settings.db_path)
        bot = Chatbot(settings=settings, store=store)
        app = create_app(settings, host="127.0.0.1", store=store, bots={"default": bot})
        try:
            with LiveServer(app) as live:
                yield live, store
        finally:
            bot.close()
            store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any, server: tuple[LiveServer, SQLiteStore]) -> Iterator[Page]:
    with _opened(browser, server[0]) as pg:
        yield pg


@pytest.fixture
def phone(browser: Any, server: tuple[LiveServer, SQLiteStore]) -> Iterator[Page]:
    size = {"width": 375, "height": 667}
    with _opened(browser, server[0], viewport=size, is_mobile=True, has_touch=True) as pg:
        yield pg


@contextmanager
def _opened(browser: Any, live: LiveServer, **options: Any) -> Iterator[Page]:
    """The page in a fresh context (clipboard allowed); fails on console or page errors."""
    permissions = ["clipboard-read", "clipboard-write"]
    with watched_page(browser, live.url + "/", permissions=permissions, **options) as pg:
        expect(pg.locator("#whoami")).to_contain_text("local")
        yield pg


def send(page: Page, text: str) -> None:
    box = page.locator("#composer-input")
    box.fill(text)
    box.press("Enter")


def thread_of(page: Page) -> str:
    page.wait_for_function("/#thread=/.test(location.hash)")
    return str(page.evaluate("decodeURIComponent(location.hash.split('=')[1])"))


def clipboard(page: Page) -> str:
    return str(page.evaluate("navigator.clipboard.readText()"))


def test_regenerate_edit_and_switch_branches(
    page: Page, server: tuple[LiveServer, SQLiteStore]
) -> None:
    _, store = server
    messages = page.locator("#messages")
    send(page, "hello")
    answer = messages.locator(".msg.assistant[data-seq]")
    expect(answer).to_have_count(1)
    expect(answer.locator(".markdown")).to_have_text("echo: hello")
    expect(answer.locator("time.msg-time")).to_have_count(1)  # the time of the answer
    expect(messages.locator(".msg.user time.msg-time")).to_have_count(1)
    thread = thread_of(page)

    # regenerate: a second version of the answer, "2/2", the old one a click away
    answer.get_by_role("button", name="Regenerate").click()
    switch = messages.locator(".msg.assistant .branch-switch")
    expect(switch.locator(".branch-count")).to_have_text("2/2")
    expect(messages.locator(".msg.assistant")).to_have_attribute("data-seq", "3")
    switch.get_by_role("button", name="Previous version").click()
    expect(switch.locator(".branch-count")).to_have_text("1/2")
    expect(messages.locator(".msg.assistant")).to_have_attribute("data-seq", "2")
    switch.get_by_role("button", name="Next version").click()
    expect(messages.locator(".msg.assistant")).to_have_attribute("data-seq", "3")

    # edit the message and resend: a branch before it; the old message is kept
    user = messages.locator(".msg.user")
    user.get_by_role("button", name="Edit").click()
    user.get_by_label("Edit your message").fill("hi again")
    user.get_by_role("button", name="Send").click()
    expect(messages.locator(".msg.assistant .markdown")).to_have_text("echo: hi again")
    expect(user.locator(".body")).to_have_text("hi again")
    expect(user.locator(".branch-count")).to_have_text("2/2")
    user.get_by_role("button", name="Previous version").click()
    expect(user.locator(".body")).to_have_text("hello")
    expect(messages.locator(".msg.assistant .branch-count")).to_have_text("2/2")  # as left
    every = [m.message.text for m in store.messages("local", thread, all_branches=True)]
    assert every == ["hello", "echo: hello", "echo: hello", "hi again", "echo: hi again"]

    # reloaded, the page shows the branch the thread is on
    page.reload()
    expect(messages.locator(".msg.user .body")).to_have_text("hello")
    expect(messages.locator(".msg.user .branch-count")).to_have_text("1/2")
    expect(messages.locator(".msg.assistant")).to_have_attribute("data-seq", "3")


def test_a_new_user_branches_twice_switches_searches_exports_and_imports(
    page: Page, tmp_path: Path
) -> None:
    """The issue's whole journey, as a new user clicks it: two branches, a switch, a search,
    the Export button, and Import of the downloaded file (its branches kept)."""
    messages = page.locator("#messages")
    send(page, "Tell me about quokkas on Rottnest")
    answer = messages.locator(".msg.assistant[data-seq]")
    expect(answer).to_have_count(1)
    thread = thread_of(page)
    answer.get_by_role("button", name="Regenerate").click()  # branch 1
    expect(messages.locator(".msg.assistant .branch-count")).to_have_text("2/2")
    user = messages.locator(".msg.user")
    user.get_by_role("button", name="Edit").click()  # branch 2
    user.get_by_label("Edit your message").fill("Tell me about quokkas and their smiles")
    user.get_by_role("button", name="Send").click()
    expect(messages.locator(".msg.assistant .markdown")).to_have_text(
        "echo: Tell me about quokkas and their smiles"
    )
    user.get_by_role("button", name="Previous version").click()  # switched back
    expect(user.locator(".body")).to_have_text("Tell me about quokkas on Rottnest")

    search = page.get_by_label("Search threads")
    search.fill("smiles")  # only in the other branch's message: every branch is searched
    hit = page.locator("#search-results .search-hit")
    expect(hit).to_have_count(1)
    expect(hit.first).to_have_attribute("data-thread-id", thread)
    search.fill("")

    page.locator("#export-menu summary").click()
    with page.expect_download() as markdown:
        page.get_by_role("button", name="Markdown").click()
    text = Path(markdown.value.path()).read_text("utf-8")
    assert "Tell me about quokkas on Rottnest" in text
    assert markdown.value.suggested_filename.endswith(".md")
    page.locator("#export-menu summary").click()
    with page.expect_download() as exported:
        page.get_by_role("button", name="JSON (all versions)").click()
    saved = tmp_path / exported.value.suggested_filename
    exported.value.save_as(saved)
    data = json.loads(saved.read_text("utf-8"))
    assert len(data["branches"]) == 3

    page.locator("#import-files").set_input_files(str(saved))
    page.wait_for_function("(id) => !location.hash.endsWith(id)", arg=thread)
    copy = thread_of(page)
    assert copy != thread
    expect(messages.locator(".msg.user .body")).to_have_text("Tell me about quokkas on Rottnest")
    expect(messages.locator(".msg.user .branch-count")).to_have_text("1/2")
    messages.locator(".msg.user").get_by_role("button", name="Next version").click()
    expect(messages.locator(".msg.assistant .markdown")).to_have_text(
        "echo: Tell me about quokkas and their smiles"
    )


def test_copy_buttons_copy_answers_and_code_blocks(page: Page) -> None:
    send(page, "see this\n```\nprint('hi')\n```")
    answer = page.locator("#messages .msg.assistant[data-seq]")
    expect(answer).to_have_count(1)
    code = answer.locator("pre.has-copy")
    expect(code).to_have_count(1)
    code.get_by_role("button", name="Copy code").click()
    expect(code.get_by_role("button", name="Copy code")).to_have_text("Copied")
    assert clipboard(page) == "print('hi')\n"
    answer.get_by_role("button", name="Copy answer").click()
    assert clipboard(page) == "echo: see this\n```\nprint('hi')\n```"
    page.locator("#messages .msg.user").get_by_role("button", name="Copy message").click()
    assert clipboard(page) == "see this\n```\nprint('hi')\n```"


def test_the_controls_fit_a_phone(phone: Page) -> None:
    send(phone, "hello from a phone")
    answer = phone.locator("#messages .msg.assistant[data-seq]")
    expect(answer).to_have_count(1)
    answer.get_by_role("button", name="Regenerate").click()
    switch = phone.locator("#messages .msg.assistant .branch-switch")
    expect(switch.locator(".branch-count")).to_have_text("2/2")
    for control in (
        switch.get_by_role("button", name="Previous version"),
        answer.get_by_role("button", name="Copy answer"),
        answer.get_by_role("button", name="Regenerate"),
        phone.locator("#messages .msg.user").get_by_role("button", name="Edit"),
    ):
        expect(control).to_be_visible()
        box = control.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375
