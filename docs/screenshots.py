"""Screenshots of the web page's main states, for the README: ``docs/screenshots/*.png``.

Runs a real server (test models, so answers are deterministic and nothing leaves the machine)
on a free loopback port with a throw-away data directory, fills it as a new user would (a
collection with one document, a few conversations, an imported ChatGPT export), and drives
Debian's Chromium through Playwright, as the browser tests do::

    .venv/bin/python docs/screenshots.py            # writes docs/screenshots/*.png
    .venv/bin/python docs/screenshots.py --out /tmp/shots
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from chatwright import Chatbot, SQLiteStore
from chatwright.config import Settings
from chatwright.server.app import create_app

CHROMIUM = "/usr/bin/chromium"
HERE = Path(__file__).parent
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 780}

GUIDE = """# Zorp guide

## Install

### Linux

The **zorp** tool installs with <abbr title="Advanced Package Tool">APT</abbr>: run
`apt install zorp`. It needs 2 GB of disk and Python 3.11 or newer.

### macOS

Install it with Homebrew: `brew install zorp`.

## Configure

Zorp reads `/etc/zorp.conf`; set `workers = 4` on a laptop.
"""

CHATGPT = [
    {
        "title": "Sourdough that rises",
        "current_node": "a",
        "mapping": {
            "u": {
                "message": {
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": ["Why does my bread not rise?"]},
                },
                "parent": None,
                "children": ["a"],
            },
            "a": {
                "message": {
                    "author": {"role": "assistant"},
                    "content": {"content_type": "text", "parts": ["Your starter may be weak."]},
                },
                "parent": "u",
                "children": [],
            },
        },
    }
]


@contextmanager
def live_server(data: Path) -> Iterator[str]:
    settings = Settings(model="test:echo", embedder="test:hash", data_dir=data)
    store = SQLiteStore(settings.db_path)
    bots = {"assistant": Chatbot(settings=settings, store=store)}
    app = create_app(settings, host="127.0.0.1", store=store, bots=bots)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        bots["assistant"].close()
        store.close()


def seed(page: Page, base: str, tmp: Path) -> None:
    """A collection with a document, and an imported ChatGPT conversation."""
    page.request.post(base + "/api/collections", data={"name": "guides"})
    job = page.request.post(
        base + "/api/collections/guides/documents",
        multipart={
            "files": {"name": "zorp.md", "mimeType": "text/markdown", "buffer": GUIDE.encode()}
        },
    ).json()
    for _ in range(300):
        if page.request.get(base + f"/api/jobs/{job['job_id']}").json()["status"] == "done":
            break
        time.sleep(0.1)
    export = tmp / "conversations.json"
    export.write_text(json.dumps(CHATGPT), encoding="utf-8")
    page.request.post(
        base + "/api/import",
        multipart={
            "files": {
                "name": export.name,
                "mimeType": "application/json",
                "buffer": export.read_bytes(),
            }
        },
    )


def ask(page: Page, text: str, answers: int) -> Any:
    page.locator("#composer-input").fill(text)
    page.locator("#composer-input").press("Enter")
    done = page.locator("#messages .msg.assistant[data-seq]")
    expect(done).to_have_count(answers, timeout=20_000)
    return done.last


def shoot(page: Page, out: Path, name: str) -> None:
    page.wait_for_timeout(250)  # let transitions settle
    page.screenshot(path=str(out / name))
    print("wrote", out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "screenshots")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        live_server(Path(tmp) / "data") as base,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            take_all(browser, base, Path(tmp), out)
        finally:
            browser.close()


def take_all(browser: Any, base: str, tmp: Path, out: Path) -> None:
    page = browser.new_page(viewport=DESKTOP)
    page.goto(base + "/")
    seed(page, base, tmp)
    page.reload()
    expect(page.locator(".prompt-chip").first).to_be_visible()
    shoot(page, out, "welcome.png")

    page.locator(".prompt-chip").first.click()
    answer = page.locator("#messages .msg.assistant[data-seq]").last
    expect(answer).to_be_visible(timeout=20_000)
    answer.locator("details.citation summary").first.click()
    expect(page.locator("#thread-list .thread-open").first).not_to_contain_text("What does")
    shoot(page, out, "answer-with-sources.png")

    ask(page, "And which **workers** setting suits a laptop?", 2)
    page.get_by_label("Search threads").fill("starter")
    expect(page.locator("#search-results .search-hit").first).to_be_visible()
    shoot(page, out, "search.png")

    page.get_by_label("Search threads").fill("")
    last = page.locator("#messages .msg.assistant[data-seq]").last
    last.get_by_role("button", name="Regenerate").click()  # a second version: "2/2"
    expect(last.locator(".branch-count")).to_have_text("2/2", timeout=20_000)
    expect(page.locator("#messages .msg.assistant[data-seq]")).to_have_count(2, timeout=20_000)
    shoot(page, out, "branches.png")

    dark = browser.new_page(viewport=DESKTOP, color_scheme="dark")
    dark.goto(page.url)
    expect(dark.locator("#messages .msg.assistant[data-seq]")).to_have_count(2)
    shoot(dark, out, "dark.png")

    phone = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    phone.goto(base + "/")
    expect(phone.locator(".prompt-chip").first).to_be_visible()
    shoot(phone, out, "phone.png")

    docs = browser.new_page(viewport=DESKTOP)
    docs.goto(base + "/docs")
    expect(docs.locator(".opblock-summary-path").first).to_be_visible()
    shoot(docs, out, "api-docs.png")


if __name__ == "__main__":
    main()
