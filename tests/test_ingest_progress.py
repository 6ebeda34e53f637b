"""The ingest command's progress bar: files done of total, chunks/s and an ETA."""

from __future__ import annotations

import io
import time

from rich.console import Console
from rich.progress import Progress as Bar

from chatwright.ingest.command import _columns


def test_the_bar_shows_chunks_per_second_and_an_eta():
    console = Console(file=io.StringIO(), force_terminal=True, width=200, color_system=None)
    with Bar(*_columns("files"), console=console, auto_refresh=False) as bar:
        task = bar.add_task("ingesting into kb", total=10, chunks=0)
        for done in (1, 2, 3):
            time.sleep(0.2)
            bar.update(task, completed=done, chunks=done * 40)
            bar.refresh()
    last = console.file.getvalue().rsplit("\r", 1)[-1].rsplit("\x1b[2K", 1)[-1]
    assert " 3/10 files" in last
    assert "120 chunks" in last and "chunks/s" in last
    eta = last.split(" eta ", 1)[1].split()[0]
    assert eta != "-:--:--" and eta.count(":") == 2  # an estimate, from the pace so far
