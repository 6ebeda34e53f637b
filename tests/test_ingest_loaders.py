"""Loaders: each format's text and structure, and each kind of bad file refused with a reason.

Also holds the helpers the other ingest tests import: ``make_pdf`` writes a real PDF by hand
(text in Helvetica, one content stream per page) and ``make_docx`` one with python-docx.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest

from chatwright.ingest.loaders import (
    DOCX_MAX_UNPACKED,
    LoadedDocument,
    Section,
    Skipped,
    UnreadableFile,
    format_of,
    load,
    parse,
)


# -- helpers (imported by test_ingest.py) -------------------------------------------------
def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A valid PDF whose page i shows the lines of ``pages[i]``."""
    n = len(pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}]"
        f" /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources"
            f" << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        ops = ["BT /F1 12 Tf 14 TL 72 720 Td"]
        ops += [f"({_pdf_string(line)}) Tj T*" for line in text.split("\n")]
        stream = ("\n".join([*ops, "ET"])).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    info = None
    if title:
        objects.append(f"<< /Title ({_pdf_string(title)}) >>".encode("latin-1"))
        info = len(objects)
    return pdf_from_objects(objects, info)


def pdf_from_objects(objects: list[bytes], info: int | None = None) -> bytes:
    """A PDF file of ``objects`` (numbered from 1, the catalog first), with its cross-reference
    table; ``info``: the number of the document-information object."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    trailer = f"<< /Size {len(objects) + 1} /Root 1 0 R" + (f" /Info {info} 0 R" if info else "")
    out += f"trailer\n{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypt_pdf(data: bytes, user_password: str, owner_password: str = "owner") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, owner_password, algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def make_docx(blocks: list[tuple[str, str]], title: str | None = None) -> bytes:
    """A DOCX of (style, text) paragraphs; style "table" makes a table of "a|b;c|d"."""
    import docx

    document = docx.Document()
    if title:
        document.core_properties.title = title
    for style, text in blocks:
        if style == "table":
            rows = [row.split("|") for row in text.split(";")]
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for r, row in enumerate(rows):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
        else:
            document.add_paragraph(text, style=style)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def docx_bomb(unpacked: int = DOCX_MAX_UNPACKED + 1024 * 1024) -> bytes:
    """A zip shaped like a DOCX with one member of ``unpacked`` zeros (compresses ~1000:1)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w", force_zip64=True) as member:
            block = b"\0" * (1024 * 1024)
            for _ in range(unpacked // len(block)):
                member.write(block)
    return buffer.getvalue()


def texts(doc: LoadedDocument) -> str:
    return "\n\n".join(s.text for s in doc.sections)


# -- text -----------------------------------------------------------------------------------
def test_text_is_one_section_titled_by_its_first_line():
    doc = parse("notes.txt", b"Release notes\r\n\r\nVersion 2 adds search.\r\n")
    assert doc.title == "Release notes"
    assert doc.format == "text"
    assert doc.sections == [Section("Release notes\n\nVersion 2 adds search.\n")]


def test_utf16_text_with_a_bom_is_decoded_not_taken_for_binary():
    doc = parse("notes.txt", "Grüße aus Köln".encode("utf-16"))
    assert doc.sections[0].text == "Grüße aus Köln"


def test_a_few_invalid_bytes_are_replaced_but_mostly_invalid_is_binary():
    good = "plain words " * 100
    assert "\ufffd" in parse("a.txt", good.encode() + b"\xff").sections[0].text
    with pytest.raises(UnreadableFile, match="not UTF-8"):
        parse("a.txt", bytes(range(128, 256)) * 4)


def test_nul_bytes_mean_binary():
    with pytest.raises(UnreadableFile, match="binary content"):
        parse("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")


def test_empty_and_blank_files_are_refused():
    with pytest.raises(UnreadableFile, match="empty file"):
        parse("a.md", b"")
    with pytest.raises(UnreadableFile, match="no text"):
        parse("a.md", b"  \n\n\t\n")


def test_unknown_suffix_is_refused():
    assert format_of("x.png") is None
    with pytest.raises(UnreadableFile, match=re.escape("unsupported file type '.png'")):
        parse("x.png", b"data")


# -- markdown -------------------------------------------------------------------------------
MARKDOWN = b"""---
title: "The Handbook"
tags: [a]
---
Intro before any heading.

# Install

Get it.

## Linux

Use apt.

```sh
# not a heading
apt install it
```

## macOS ##

Use brew.

Windows
-------

Use the installer.

# Use

Run it.
"""


def test_markdown_sections_follow_headings_with_their_path():
    doc = parse("guide.md", MARKDOWN)
    assert doc.title == "The Handbook"  # from the front matter
    paths = [s.heading_path for s in doc.sections]
    assert paths == [
        (),
        ("Install",),
        ("Install", "Linux"),
        ("Install", "macOS"),
        ("Install", "Windows"),  # a setext heading (level 2)
        ("Use",),
    ]
    linux = doc.sections[2].text
    assert linux.startswith("Linux\n\nUse apt.")
    assert "# not a heading" in linux  # inside a code fence
    assert "tags:" not in texts(doc)


def test_markdown_heading_without_text_of_its_own_makes_no_section():
    doc = parse("g.md", b"# Guide\n\n## Setup\n\nDo this.\n")
    assert [(s.heading_path, s.text) for s in doc.sections] == [
        (("Guide", "Setup"), "Setup\n\nDo this.")
    ]


def test_markdown_title_falls_back_to_first_h1_then_file_name():
    assert parse("g.md", b"text\n\n# **Real** title\n\nbody").title == "Real title"
    assert parse("my-notes.md", b"just text").title == "my-notes"


# -- html -----------------------------------------------------------------------------------
HTML = b"""<!doctype html><html><head><title>Shop &amp; Co</title>
<style>body { color: red }</style><script>var secret = 1;</script></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<h1>Returns</h1><p>Send items back within <b>30</b>&nbsp;days.</p>
<h2>Refunds</h2><ul><li>Card: 5 days</li><li>Cash: at once</li></ul>
<noscript>enable js</noscript><h2>Exchanges</h2><div><p>In store only.</p></div>
<pre>keep   this
  spacing</pre></body></html>"""


def test_html_keeps_headings_and_drops_script_style_nav():
    doc = parse("page.html", HTML)
    assert doc.title == "Shop & Co"
    all_text = texts(doc)
    for dropped in ("color: red", "secret", "Home", "About", "enable js"):
        assert dropped not in all_text
    assert [s.heading_path for s in doc.sections] == [
        ("Returns",),
        ("Returns", "Refunds"),
        ("Returns", "Exchanges"),
    ]
    assert doc.sections[0].text == "Returns\n\nSend items back within 30 days."
    assert "Card: 5 days\nCash: at once" in doc.sections[1].text
    assert "keep   this\n  spacing" in doc.sections[2].text


def test_html_with_an_unclosed_head_and_heading_only_sections():
    page = b"<html><head><title>T</title><body><h1>A</h1><h2>B</h2><p>text</p>"
    doc = parse("p.html", page)
    assert [(s.heading_path, s.text) for s in doc.sections] == [(("A", "B"), "B\n\ntext")]


def test_html_in_a_declared_legacy_charset():
    page = '<meta charset="iso-8859-1"><p>caf\xe9 cr\xe8me br\xfbl\xe9e</p>'.encode("latin-1")
    assert "café crème brûlée" in texts(parse("p.htm", page))


# -- pdf ------------------------------------------------------------------------------------
def test_pdf_gives_one_section_per_page_with_its_number():
    pytest.importorskip("pypdf")
    data = make_pdf(["First page text.", "", "Third page (with parens)."], title="Manual")
    doc = parse("manual.pdf", data)
    assert doc.title == "Manual"
    assert doc.pages == 3
    assert [(s.page, s.text.strip()) for s in doc.sections] == [
        (1, "First page text."),
        (3, "Third page (with parens)."),  # the empty page gives no section
    ]


def test_pdf_without_text_is_refused_as_scanned():
    pytest.importorskip("pypdf")
    with pytest.raises(UnreadableFile, match=re.escape("no text found (a scanned PDF")):
        parse("scan.pdf", make_pdf([""]))


def test_corrupt_pdf_is_refused_with_a_reason():
    pytest.importorskip("pypdf")
    with pytest.raises(UnreadableFile, match="corrupt PDF"):
        parse("bad.pdf", b"%PDF-1.4\nthis is not a pdf at all")
    truncated = make_pdf(["Some text here."])[:60]
    with pytest.raises(UnreadableFile, match="corrupt PDF"):
        parse("cut.pdf", truncated)


def test_password_protected_pdf_is_refused_but_owner_only_protection_is_read():
    pytest.importorskip("pypdf")
    data = make_pdf(["Secret plans."])
    with pytest.raises(UnreadableFile, match=re.escape("encrypted PDF (needs a password)")):
        parse("locked.pdf", encrypt_pdf(data, "user-secret"))
    # an empty user password only restricts printing/copying: anyone can read it
    assert "Secret plans." in texts(parse("restricted.pdf", encrypt_pdf(data, "")))


# -- docx -----------------------------------------------------------------------------------
def test_docx_headings_come_from_paragraph_styles():
    pytest.importorskip("docx")
    data = make_docx(
        [
            ("Title", "Employee Guide"),
            ("Normal", "Welcome aboard."),
            ("Heading 1", "Leave"),
            ("Normal", "You get 25 days."),
            ("Heading 2", "Sick leave"),
            ("Normal", "Tell your manager."),
            ("table", "Days|Kind;25|annual"),
            ("Heading 1", "Pay"),
            ("Normal", "Monthly."),
        ]
    )
    doc = parse("guide.docx", data)
    assert doc.title == "Employee Guide"
    assert [(s.heading_path, s.text) for s in doc.sections] == [
        ((), "Welcome aboard."),
        (("Leave",), "Leave\n\nYou get 25 days."),
        (("Leave", "Sick leave"), "Sick leave\n\nTell your manager.\n\nDays | Kind\n25 | annual"),
        (("Pay",), "Pay\n\nMonthly."),
    ]


def test_docx_title_from_core_properties():
    pytest.importorskip("docx")
    doc = parse("x.docx", make_docx([("Normal", "text")], title="Props Title"))
    assert doc.title == "Props Title"


def test_docx_decompression_bomb_is_refused_before_opening(monkeypatch):
    import chatwright.ingest.loaders as loaders

    opened = []
    monkeypatch.setattr(loaders, "_import", lambda *a: opened.append(a))
    bomb = docx_bomb()
    assert len(bomb) < 2 * 1024 * 1024  # small on disk, 257 MB unpacked
    with pytest.raises(UnreadableFile, match="decompression bomb"):
        parse("bomb.docx", bomb)
    assert opened == []  # python-docx never saw it


def test_docx_member_with_a_huge_compression_ratio_is_refused(monkeypatch):
    monkeypatch.setattr("chatwright.ingest.loaders.DOCX_MAX_UNPACKED", 10**12)
    with pytest.raises(UnreadableFile, match=r"compressed \d+:1"):
        parse("bomb.docx", docx_bomb(8 * 1024 * 1024))


def test_corrupt_docx_is_refused():
    pytest.importorskip("docx")
    with pytest.raises(UnreadableFile, match="not a valid zip"):
        parse("bad.docx", b"PK\x03\x04 not really a zip")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("hello.txt", "a zip, but not a DOCX")
    with pytest.raises(UnreadableFile, match="corrupt DOCX"):
        parse("wrong.docx", buffer.getvalue())


# -- load() ---------------------------------------------------------------------------------
def test_load_turns_every_problem_into_a_skip(tmp_path: Path):
    big = tmp_path / "big.txt"
    big.write_text("word " * 100)
    assert load(big, max_bytes=100) == Skipped(str(big), "larger than the size limit (100 bytes)")
    empty = tmp_path / "empty.md"
    empty.write_bytes(b"")
    assert load(empty) == Skipped(str(empty), "empty file")
    assert load(tmp_path / "missing.txt").reason.startswith("cannot read")
    ok = load(big)
    assert isinstance(ok, LoadedDocument) and ok.sections[0].text.startswith("word word")
