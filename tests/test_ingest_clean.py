"""Clean passages: Markdown and HTML markup out of the text, Unicode in NFKC, and each passage's
heading path carried from the loader to the chunk, the citation and the HTTP API."""

from __future__ import annotations

import logging
import sys
import unicodedata
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

import chatwright.ingest.pipeline as pipeline
from chatwright import Chatbot, SQLiteStore
from chatwright.ingest import Ingestor
from chatwright.ingest.loaders import _KEEP_CANDIDATES, PARSER_VERSION, nfkc, parse
from chatwright.memory.tokens import ESTIMATE
from chatwright.models.embeddings import HashEmbedder
from chatwright.retrieval.index import Hit, SearchIndex
from chatwright.retrieval.rag import passages_from
from chatwright.server import create_app
from chatwright.types import CitationPart, Message, dump_json, load_message
from test_ingest_loaders import pdf_from_objects, texts
from test_server_api import LOCAL, make_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- markdown: inline markup ----------------------------------------------------------------
def test_inline_markup_leaves_only_its_words() -> None:
    doc = parse(
        "a.md",
        b"Get <abbr title='Python Package Index'>PyPI</abbr> **packages**, *fast*, ~~slow~~,\n"
        b"from [the index](https://pypi.org/simple) ![a logo](logo.png) with `pip` &amp; co.",
    )
    assert texts(doc) == ("Get PyPI packages, fast, slow, from the index a logo with pip & co.")


def test_headings_are_clean_and_make_the_heading_path() -> None:
    doc = parse(
        "guide.md",
        b"# *Install*\n\n## Linux `apt`\n\n### [Debian](https://debian.org)\n\nRun it.\n",
    )
    assert doc.title == "Install"
    assert [(s.heading_path, s.text) for s in doc.sections] == [
        (("Install", "Linux apt", "Debian"), "Debian\n\nRun it.")
    ]


def test_html_blocks_keep_their_text_and_drop_scripts_and_comments() -> None:
    doc = parse(
        "a.md",
        b"Before.\n\n<div class='x'>\n<p>Inside <b>a</b> div.</p>\n</div>\n\n"
        b"<script>alert(1)</script>\n\n<!-- a hidden note -->\n\n"
        b"<details><summary>More</summary>\nHidden text.\n</details>\n\nAfter.",
    )
    assert texts(doc) == "Before.\n\nInside a div.\n\nMore\n\nHidden text.\n\nAfter."


def test_lists_tables_and_code_keep_a_plain_structure() -> None:
    doc = parse(
        "a.md",
        b"Steps:\n\n- update\n- install **it**\n  - and pip\n\n1. one\n2. two\n\n"
        b"| OS | Command |\n|----|----|\n| Debian | `apt` |\n\n"
        b"```sh\n# a comment, not a heading\n**not bold**\n```\n",
    )
    assert texts(doc) == (
        "Steps:\n\n- update\n- install it\n   - and pip\n\n1. one\n2. two\n\n"
        "OS | Command\nDebian | apt\n\n```\n# a comment, not a heading\n**not bold**\n```"
    )


# -- markdown: admonitions ------------------------------------------------------------------
ADMONITIONS = b"""# Guide

/// note | Technical details
    type: info

FastAPI stands on Starlette.

///

!!! warning "Data loss"
    Back up first.

    ```bash
    cp a b
    ```

???+ tip
    Folded tip.

:::tip[Hint]
Use a virtual environment.
:::

::: {note} Beware
:class: dropdown
MyST note.
:::

```text
!!! note "inside a fence"
:::
```
"""


def test_admonition_markers_go_their_titles_and_bodies_stay() -> None:
    text = texts(parse("a.md", ADMONITIONS))
    assert text == (
        "Guide\n\nTechnical details\n\nFastAPI stands on Starlette.\n\n"
        "Data loss\n\nBack up first.\n\n```\ncp a b\n```\n\nFolded tip.\n\n"
        "Hint\n\nUse a virtual environment.\n\nBeware\n\nMyST note.\n\n"
        '```\n!!! note "inside a fence"\n:::\n```'
    )


def test_an_indented_admonition_body_is_not_taken_for_code() -> None:
    doc = parse("a.md", b'!!! note ""\n    Body with **bold**.\n\nAfter it.\n')
    assert texts(doc) == "Body with bold.\n\nAfter it."
    glued = parse(
        "b.md", b'Intro text\n!!! tip "Quick tip"\n\tTabbed body.\n///\n    not: an option\n'
    )
    assert texts(glued) == "Intro text\n\nQuick tip\n\nTabbed body. not: an option"


# -- markdown: fallback ---------------------------------------------------------------------
def test_without_markdown_it_markdown_is_read_as_text_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "markdown_it", None)  # import fails
    with caplog.at_level(logging.WARNING):
        doc = parse("notes.md", b"# Title\n\nSome **bold** text.\n")
    assert doc.title == "notes" and texts(doc) == "# Title\n\nSome **bold** text."
    assert "pip install markdown-it-py" in caplog.text


# -- Unicode --------------------------------------------------------------------------------
def test_nfkc_folds_ligatures_and_width_but_keeps_superscripts_and_fractions() -> None:
    assert nfkc("hausdorﬀsch ﬁnal \uff21\uff22\uff23\uff11\uff12\uff13 ｶﾀｶﾅ a\u00a0b µm") == (
        "hausdorffsch final ABC123 カタカナ a b μm"
    )
    assert nfkc("x² + H₂O = ½ ™ ª") == "x² + H₂O = ½ ™ ª"
    assert nfkc("ﬁ² ﬁ") == "fi² fi"  # around a kept character too
    assert nfkc("hyphen\u00adated zero\u200bwidth") == "hyphenated zerowidth"
    assert nfkc("e\u0301") == "é"  # composed


def test_the_kept_ranges_cover_every_superscript_subscript_and_fraction() -> None:
    kept = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.decomposition(chr(c)).startswith(("<super>", "<sub>", "<fraction>"))
    ]
    assert kept and all(_KEEP_CANDIDATES.fullmatch(ch) for ch in kept)


@given(st.text())
def test_nfkc_is_idempotent_and_leaves_no_ligature(text: str) -> None:
    once = nfkc(text)
    assert nfkc(once) == once
    assert not any("\ufb00" <= ch <= "\ufb06" for ch in once)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.txt", "Hausdorﬀ spaces\n\nare ﬁne.".encode()),
        ("a.md", "# Hausdorﬀ spaces\n\nare ﬁne.".encode()),
        (
            "a.html",
            "<title>Hausdorﬀ spaces</title><h1>Hausdorﬀ spaces</h1><p>are ﬁne.</p>".encode(),
        ),
    ],
)
def test_every_format_is_normalised_title_headings_and_text(name: str, data: bytes) -> None:
    doc = parse(name, data)
    assert doc.title == "Hausdorff spaces"
    assert "Hausdorff spaces" in texts(doc) and "are fine." in texts(doc)
    assert all("ﬀ" not in h for s in doc.sections for h in s.heading_path)


def pdf_with_ligatures(text: bytes) -> bytes:
    """A PDF whose font maps code 1 to U+FB00 (ﬀ) and 2 to U+FB01 (ﬁ), as typeset PDFs do."""
    cmap = (
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /L def "
        b"/CMapType 2 def 1 begincodespacerange <00> <FF> endcodespacerange "
        b"2 beginbfchar <01> <FB00> <02> <FB01> endbfchar "
        b"1 beginbfrange <20> <7E> <0020> endbfrange endcmap "
        b"CMapName currentdict /CMap defineresource pop end end"
    )
    content = b"BT /F1 12 Tf 72 720 Td (" + text + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /ToUnicode 6 0 R >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 3 0 R >> >> /Contents 5 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(cmap), cmap),
    ]
    return pdf_from_objects(objects)


def test_pdf_ligatures_become_letters() -> None:
    pytest.importorskip("pypdf")
    doc = parse("paper.pdf", pdf_with_ligatures(b"hausdor\x01sch \x02nal"))
    assert texts(doc) == "hausdorffsch final"


# -- the heading path: chunks, citations, the API -------------------------------------------
GUIDE = b"# Setup\n\n## Linux\n\n### Debian\n\nRun apt install widget.\n"


def ingest(store: SQLiteStore, index: SearchIndex, files: dict[str, bytes], tmp_path: Path):
    root = tmp_path / "docs"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return Ingestor(store, index, "local").ingest([root], "manuals")


def test_citations_carry_the_heading_path_and_tell_same_titled_sources_apart(
    store: SQLiteStore, tmp_path: Path
) -> None:
    index = SearchIndex(store, HashEmbedder(dim=32))
    guide2 = b"# Setup\n\n## Windows\n\nRun the widget installer.\n"
    ingest(store, index, {"a/guide.md": GUIDE, "b/guide.md": guide2}, tmp_path)
    namespace = store.find_collection("local", "manuals").namespace
    hits = index.search("widget", [namespace], k=5, mode="keyword")
    cited = {
        (c.citation.title, c.citation.source, c.citation.heading_path)
        for c in passages_from(hits, ESTIMATE)
    }
    assert cited == {
        ("Setup", "docs/a/guide.md", ("Setup", "Linux", "Debian")),
        ("Setup", "docs/b/guide.md", ("Setup", "Windows")),
    }
    linux = next(h for h in hits if h.metadata["source"] == "docs/a/guide.md")
    assert linux.metadata["headings"] == ["Setup", "Linux", "Debian"]
    assert passages_from([linux], ESTIMATE)[0].passage.label == "Setup · Linux > Debian"


def test_chunks_stored_before_the_headings_list_split_their_joined_path() -> None:
    old = Hit("1:x", "ns", "text", {"title": "T", "heading_path": "Install > Linux"}, 1.0)
    assert passages_from([old], ESTIMATE)[0].citation.heading_path == ("Install", "Linux")
    bare = Hit("1:y", "ns", "text", {"title": "T"}, 1.0)
    assert passages_from([bare], ESTIMATE)[0].citation.heading_path == ()


def test_a_citation_with_a_heading_path_round_trips_and_old_ones_still_load() -> None:
    cited = CitationPart(index=1, text="t", heading_path=("A", "B"))
    message = Message(role="assistant", parts=(cited,))
    assert load_message(dump_json(message)) == message
    old = b'{"role":"assistant","parts":[{"kind":"citation","index":1,"text":"t"}]}'
    assert load_message(old).citations[0].heading_path == ()


def test_a_parser_change_re_reads_unchanged_files_and_keeps_their_vectors(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = SearchIndex(store, HashEmbedder(dim=32))
    monkeypatch.setattr(pipeline, "PARSER_VERSION", PARSER_VERSION - 1)
    first = ingest(store, index, {"guide.md": GUIDE}, tmp_path)
    assert first.added == 1
    assert ingest(store, index, {"guide.md": GUIDE}, tmp_path).unchanged == 1
    monkeypatch.setattr(pipeline, "PARSER_VERSION", PARSER_VERSION)
    again = ingest(store, index, {"guide.md": GUIDE}, tmp_path)
    assert again.updated == 1 and again.embedded == 0  # re-read; same chunks, vectors kept
    assert ingest(store, index, {"guide.md": GUIDE}, tmp_path).unchanged == 1


def test_the_api_answer_gives_each_citation_its_heading_path(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = SQLiteStore(settings.db_path)
    bot = Chatbot("test:echo", store=store, settings=settings)
    ingest(store, bot.index, {"guide.md": GUIDE}, tmp_path)
    with TestClient(create_app(settings, bots={"default": bot}), base_url=LOCAL) as client:
        answer = client.post(
            "/api/threads/t/messages",
            json={"text": "@manuals how do I install the widget on Debian?", "stream": False},
        ).json()
        spec = client.get("/openapi.json").json()
    assert [(c["source"], c["heading_path"]) for c in answer["citations"]] == [
        ("docs/guide.md", ["Setup", "Linux", "Debian"])
    ]
    assert "heading_path" in spec["components"]["schemas"]["CitationOut"]["properties"]
