"""The web page's upload shows the ingest job's live progress: files done of total, passages,
passages/s and an ETA (Chromium through Playwright, as in tests/test_web.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")
pytest.importorskip("uvicorn", reason="the browser tests need uvicorn")
pytest.importorskip("fastapi", reason="the browser tests need fastapi")

from chatwright import Chatbot, SQLiteStore  # noqa: E402
from chatwright.config import Settings  # noqa: E402
from web_helpers import CHROMIUM, LiveServer, chromium, watched_page  # noqa: E402

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"the browser tests need Chromium at {CHROMIUM}", allow_module_level=True)

import chatwright.ingest.pipeline as pipeline  # noqa: E402
from chatwright.server.app import create_app  # noqa: E402

expect = sync_api.expect


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    for name in list(os.environ):
        if name.startswith("CHATWRIGHT_"):
            monkeypatch.delenv(name)
    real_embed = pipeline.Ingestor.embed

    def slow_embed(self: Any, prepared: Any) -> int:
        time.sleep(0.5)  # a slow embedder: the job runs long enough to watch
        return real_embed(self, prepared)

    monkeypatch.setattr(pipeline.Ingestor, "embed", slow_embed)
    monkeypatch.setattr(pipeline, "_GROUP_DOCS", 1)  # embed (and report) file by file
    settings = Settings(model="test:echo", embedder="test:hash", data_dir=tmp_path / "data")
    store = SQLiteStore(settings.db_path)
    bot = Chatbot(settings=settings, store=store)
    app = create_app(settings, host="127.0.0.1", store=store, bots={"default": bot})
    try:
        with LiveServer(app) as live:
            yield live
    finally:
        bot.close()
        store.close()


def test_an_upload_shows_files_passages_rate_and_eta_as_it_goes(server, tmp_path: Path) -> None:
    files = []
    for i in range(8):
        path = tmp_path / f"guide{i}.md"
        path.write_text(f"# Guide {i}\n\n" + f"Paragraph about topic {i}. " * 40)
        files.append(str(path))
    with chromium() as browser, watched_page(browser, server.url + "/") as page:
        expect(page.locator("#whoami")).to_contain_text("local")
        page.get_by_role("button", name="Collections").click()
        dialog = page.locator("#collections-dialog")
        dialog.get_by_label("Name").fill("guides")
        dialog.get_by_role("button", name="Create").click()
        expect(dialog.locator("#upload-collection")).to_have_value("guides")
        dialog.locator("#upload-files").set_input_files(files)
        dialog.get_by_role("button", name="Upload").click()
        text = dialog.locator("#upload-text")
        expect(text).to_contain_text(" of 8 files · ", timeout=15_000)
        expect(text).to_contain_text("passages/s", timeout=15_000)
        expect(text).to_contain_text(" left", timeout=15_000)
        live = text.text_content() or ""
        assert "Ingesting" in live and "passages · " in live, live
        progress = dialog.locator("#upload-progress")
        assert progress.get_attribute("max") == "8"
        expect(dialog.locator("#upload-status.done")).to_be_visible(timeout=30_000)
        expect(text).to_contain_text("Done: 8 of 8 files")
