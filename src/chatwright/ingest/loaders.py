"""Files into text that keeps its structure: sections with a heading path and a page.

=========================  =================================  ===============================
suffix                     parser                             structure kept
=========================  =================================  ===============================
``.txt .text .rst``        none (UTF-8, UTF-16 with a BOM)    paragraphs
``.md .markdown``          ``markdown-it-py`` (with rich)     headings, paragraphs, lists,
                                                              tables, code; markup dropped
``.html .htm``             stdlib ``html.parser``             h1-h6, blocks; script, style,
                                                              nav, noscript... dropped
``.pdf``                   ``pypdf`` (``chatwright[ingest]``) one section per page
``.docx``                  ``python-docx`` (``[ingest]``)     "Heading N" styles, tables
=========================  =================================  ===============================

Every document comes out clean: no markup in its text (Markdown's emphasis, links, inline HTML
and admonition markers go, their words stay), and its title, headings and text in Unicode NFKC
(:func:`nfkc`: PDF ligatures ``ﬀ`` → ``ff``, full-width forms, no-break spaces) except
superscripts, subscripts and fractions, whose meaning NFKC would change (``x²`` → ``x2``).
:data:`PARSER_VERSION` says when that output changed, so an ingest re-reads unchanged files.

A file that cannot be used raises :class:`UnreadableFile` from :func:`parse` with a reason a
user can act on (binary content, empty, encrypted or corrupt PDF, a DOCX that would decompress
past the limits); :func:`load` turns it into a :class:`Skipped`. Parsing never writes anything.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import re
import unicodedata
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from chatwright.errors import UserError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FORMATS",
    "PARSER_VERSION",
    "LoadedDocument",
    "Section",
    "Skipped",
    "UnreadableFile",
    "format_of",
    "load",
    "parse",
]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Raised when the loaders' output changes for the same bytes: the ingest then re-reads files
# it would skip as unchanged (their unchanged chunks keep their vectors). 2: Markdown through
# markdown-it-py, Unicode NFKC.
PARSER_VERSION = 2
# DOCX is a zip: refuse one that would unpack past these (a "decompression bomb").
DOCX_MAX_UNPACKED = 256 * 1024 * 1024
DOCX_MAX_RATIO = 200  # uncompressed / compressed, per member larger than 1 MiB
DOCX_MAX_MEMBERS = 10_000
_RATIO_FLOOR = 1024 * 1024
# Text that is not UTF-8 beyond this share of its characters is taken for binary.
MAX_INVALID_SHARE = 0.01
_INSTALL_HINT = 'install the [ingest] extra: pip install "chatwright[ingest]"'


@dataclass(frozen=True, slots=True)
class Section:
    """A run of text under one heading path, on one page (PDF) or none."""

    text: str
    heading_path: tuple[str, ...] = ()
    page: int | None = None


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    title: str
    sections: list[Section]
    format: str
    pages: int | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file left out of an ingest, and why."""

    path: str
    reason: str


class UnreadableFile(UserError):
    """A file that cannot be ingested; ``message`` says why."""


@dataclass(frozen=True, slots=True)
class _Format:
    name: str
    parse: Callable[[bytes, str], LoadedDocument] = field(repr=False)


def format_of(path: str | Path) -> str | None:
    """The format name for ``path``'s suffix, or None if it is not one we read."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    return fmt.name if fmt else None


def load(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedDocument | Skipped:
    """Read and parse one file; a :class:`Skipped` (never an exception) when it cannot be."""
    path = Path(path)
    try:
        data = read_limited(path, max_bytes)
        return parse(path.name, data)
    except UnreadableFile as e:
        return Skipped(str(path), e.message)


def read_limited(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; :class:`UnreadableFile` if it is missing, too large or empty."""
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except IsADirectoryError:
        raise UnreadableFile("is a directory") from None
    except OSError as e:
        raise UnreadableFile(f"cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise UnreadableFile(f"larger than the size limit ({_size(max_bytes)})")
    if not data:
        raise UnreadableFile("empty file")
    return data


def parse(name: str, data: bytes) -> LoadedDocument:
    """Parse ``data``, the content of a file called ``name`` (its suffix picks the format)."""
    suffix = Path(name).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise UnreadableFile(f"unsupported file type {suffix or '(no suffix)'!r}")
    if not data:
        raise UnreadableFile("empty file")
    doc = clean_unicode(fmt.parse(data, Path(name).stem))
    if not any(s.text.strip() for s in doc.sections):
        raise UnreadableFile(
            "no text found" + (" (a scanned PDF? run OCR on it first)" if fmt.name == "pdf" else "")
        )
    return doc


# Kept as they are by NFKC below: x² must not become x2, nor H₂O H2O, nor ½ 1/2. The
# ranges hold every character whose compatibility mapping is <super>, <sub> or <fraction>
# (Unicode 14-15; tests/test_ingest_clean.py checks them against this Python's unicodedata).
_KEEP_CANDIDATES = re.compile(
    "[\u00aa-\u00be\u02b0-\u02b8\u02e0-\u02e4\u10fc\u1d2c-\u1d6a\u1d78\u1d9b-\u1dbf"
    "\u2070-\u209c\u2120-\u2122\u2150-\u215f\u2189\u2c7c\u2c7d\u2d6f\u3192-\u319f"
    "\ua69c\ua69d\ua770\ua7f2-\ua7f9\uab5c-\uab5f\uab69\U00010781-\U000107ba"
    "\U0001f16a-\U0001f16c]"
)
_KEEP_TAGS = ("<super>", "<sub>", "<fraction>")
# invisible characters that split words: soft hyphen, zero-width space, word joiner, BOM
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u2060\ufeff"))


def nfkc(text: str) -> str:
    """``text`` in Unicode NFKC (ligatures ``ﬀ`` → ``ff``, full-width letters and digits, no-break
    spaces → spaces), except superscripts, subscripts and fractions; invisible word-splitting
    characters dropped."""
    if text.isascii():
        return text
    text = text.translate(_INVISIBLE)
    out: list[str] = []
    start = 0
    for m in _KEEP_CANDIDATES.finditer(text):
        if unicodedata.decomposition(m.group()).startswith(_KEEP_TAGS):
            out.append(unicodedata.normalize("NFKC", text[start : m.start()]))
            out.append(m.group())
            start = m.end()
    out.append(unicodedata.normalize("NFKC", text[start:]))
    return "".join(out)


def clean_unicode(doc: LoadedDocument) -> LoadedDocument:
    """``doc`` with its title, texts and headings through :func:`nfkc`."""
    sections = [
        Section(nfkc(s.text), tuple(nfkc(h) for h in s.heading_path), s.page) for s in doc.sections
    ]
    return replace(doc, title=nfkc(doc.title), sections=sections)


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def _add_section(sections: list[Section], text: str, path: list[tuple[int, str]]) -> None:
    """Add the text under ``path`` unless it is empty or only the heading itself (a heading
    directly followed by a sub-heading: the sub-sections carry it in their paths)."""
    if text.strip() and not (path and text.strip() == path[-1][1]):
        sections.append(Section(text, tuple(heading for _, heading in path)))


# -- text ---------------------------------------------------------------------------------
def decode_text(data: bytes) -> str:
    """UTF-8 (or UTF-16 with a BOM) text; :class:`UnreadableFile` for binary content."""
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError:
                raise UnreadableFile("not valid UTF-16 text despite its byte-order mark") from None
    if b"\x00" in data:
        raise UnreadableFile("binary content (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8-sig", errors="replace")
    bad = text.count("\ufffd")
    if bad > MAX_INVALID_SHARE * len(text):
        raise UnreadableFile(
            f"binary or not UTF-8 ({bad / len(text):.0%} of it is not valid UTF-8)"
        )
    return text


def _normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_text(data: bytes, stem: str) -> LoadedDocument:
    text = _normalize(decode_text(data))
    first = next((line.strip() for line in text.split("\n") if line.strip()), "")
    title = first[:120] if 0 < len(first) <= 120 else stem
    return LoadedDocument(title=title, sections=[Section(text)], format="text")


# -- markdown -----------------------------------------------------------------------------
def parse_markdown(data: bytes, stem: str) -> LoadedDocument:
    from chatwright.ingest.markdown import markdown_sections

    text = _normalize(decode_text(data))
    parsed = markdown_sections(text, html_text)
    if parsed is None:  # markdown-it-py missing (it logged how to install it)
        return LoadedDocument(stem, [Section(text.strip("\n"))], "markdown")
    title, found = parsed
    sections = [Section(body, path) for path, body in found]
    return LoadedDocument(title=title or stem, sections=sections, format="markdown")


# -- html ---------------------------------------------------------------------------------
# <head> is not dropped whole: pages often leave it unclosed; what it holds is dropped anyway
_DROP = frozenset({"script", "style", "nav", "noscript", "template", "svg", "iframe"})
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption",
        "figure", "footer", "form", "header", "hr", "li", "main", "ol", "p", "pre", "section",
        "table", "tbody", "thead", "tfoot", "tr", "ul", "br", "caption", "details", "summary",
    }
)  # fmt: skip
_LINES = frozenset({"br", "li", "tr", "dt", "dd"})  # a new line, not a new paragraph
_HEADINGS = {f"h{i}": i for i in range(1, 7)}


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.parts: list[str] = []
        self.heading: list[str] | None = None
        self.heading_level = 0
        self.drop = 0
        self.pre = 0
        self.in_title = False
        self.title_parts: list[str] = []
        self.first_h1: str | None = None
        self.breaks = 0  # newlines owed before the next text (1: a line, 2: a paragraph)

    def _break(self, n: int) -> None:
        self.breaks = max(self.breaks, n)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in _DROP:
            self.drop += 1
        elif self.drop:
            return
        elif tag in _HEADINGS:
            self._flush()
            self.heading, self.heading_level = [], _HEADINGS[tag]
        elif tag == "pre":
            self.pre += 1
            self._break(2)
        elif tag in ("td", "th"):
            self.parts.append(" | ")
        elif tag in _BLOCK:
            self._break(1 if tag in _LINES else 2)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK and not self.drop:
            self._break(1)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in _DROP:
            self.drop = max(0, self.drop - 1)
        elif self.drop:
            return
        elif tag in _HEADINGS and self.heading is not None:
            text = " ".join("".join(self.heading).split())
            level, self.heading = self.heading_level, None
            if text:
                while self.path and self.path[-1][0] >= level:
                    self.path.pop()
                self.path.append((level, text))
                self.parts.append(text)
                self._break(2)
                if level == 1 and self.first_h1 is None:
                    self.first_h1 = text
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            self._break(2)
        elif tag in _BLOCK and tag not in _VOID:
            self._break(1 if tag in _LINES else 2)

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title_parts.append(data)
        elif self.drop:
            return
        elif self.heading is not None:
            self.heading.append(data)
        else:
            text = data if self.pre else re.sub(r"\s+", " ", data)
            if self.breaks and not text.strip():
                return
            if self.breaks:
                self.parts.append("\n" * self.breaks)
                self.breaks = 0
            self.parts.append(text)

    def _flush(self) -> None:
        self.breaks = 0
        raw = "".join(self.parts)
        self.parts.clear()
        paragraphs = [p.strip(" ") for p in re.split(r"\n\s*\n", raw)]
        _add_section(self.sections, "\n\n".join(p for p in map(_tidy, paragraphs) if p), self.path)

    def close(self) -> None:
        super().close()
        self._flush()


def _tidy(paragraph: str) -> str:
    # collapsed whitespace leaves at most one leading space; more is a <pre> indent: kept
    lines = [
        line[1:] if line.startswith(" ") and not line.startswith("  ") else line
        for line in paragraph.split("\n")
    ]
    return "\n".join(line.rstrip() for line in lines if line.strip())


_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_-]+)""", re.IGNORECASE)


def _decode_html(data: bytes) -> str:
    try:
        return decode_text(data)
    except UnreadableFile:
        declared = _CHARSET.search(data[:4096])
        if declared is None or b"\x00" in data:
            raise
        try:
            return data.decode(declared.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            raise UnreadableFile(
                f"not valid {declared.group(1).decode('ascii', 'replace')} text"
            ) from None


def html_text(fragment: str) -> str:
    """The text of a piece of HTML (an HTML block in Markdown), headings as paragraphs."""
    parser = _HTMLText()
    parser.feed(fragment)
    parser.close()
    return "\n\n".join(s.text for s in parser.sections)


def parse_html(data: bytes, stem: str) -> LoadedDocument:
    parser = _HTMLText()
    parser.feed(_normalize(_decode_html(data)))
    parser.close()
    title = " ".join("".join(parser.title_parts).split()) or parser.first_h1 or stem
    return LoadedDocument(title=title, sections=parser.sections, format="html")


# -- pdf ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a library's warnings about malformed files: the skip reason says enough."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _import(module: str, what: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UnreadableFile(
            f"reading {what} needs the {module} package; {_INSTALL_HINT}"
        ) from None


def parse_pdf(data: bytes, stem: str) -> LoadedDocument:
    pypdf = _import("pypdf", "PDF")
    with _quiet("pypdf"):
        try:
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                _decrypt(reader, pypdf)
            pages = [_page_text(page) for page in reader.pages]
            meta = reader.metadata
            title = str(meta.title).strip() if meta is not None and meta.title else ""
        except UnreadableFile:
            raise
        except pypdf.errors.FileNotDecryptedError:
            raise UnreadableFile("encrypted PDF (needs a password)") from None
        except Exception as e:  # pypdf raises many kinds on malformed files
            raise UnreadableFile(f"corrupt PDF ({_short(e)})") from None
    sections = [Section(text, (), i) for i, text in enumerate(pages, 1) if text.strip()]
    return LoadedDocument(title=title or stem, sections=sections, format="pdf", pages=len(pages))


def _decrypt(reader: Any, pypdf: Any) -> None:
    """Open a PDF encrypted with an empty user password (only copying/printing restricted)."""
    try:
        ok = reader.decrypt("")
    except pypdf.errors.DependencyError:
        raise UnreadableFile(
            "encrypted PDF (AES; decrypting needs the cryptography package)"
        ) from None
    except Exception:
        ok = 0
    if not ok:
        raise UnreadableFile("encrypted PDF (needs a password)")


def _page_text(page: Any) -> str:
    # pypdf marks lines, not paragraphs: a long page is cut at sentences by the chunker.
    return _normalize(page.extract_text() or "").replace("\x00", "")


def _short(e: Exception) -> str:
    text = str(e).strip().split("\n")[0] or type(e).__name__
    return text if len(text) <= 120 else text[:119] + "…"


# -- docx ---------------------------------------------------------------------------------
def check_zip(data: bytes, what: str = "DOCX") -> None:
    """Refuse a zip that is not one, or that would unpack past the limits, before opening it.

    Sizes are the ones the zip declares; Python's zipfile never reads past a member's
    declared size, so a member that lies about it cannot unpack further.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise UnreadableFile(f"corrupt {what} (not a valid zip file)") from None
    if len(members) > DOCX_MAX_MEMBERS:
        raise UnreadableFile(
            f"{what} has {len(members)} parts: a zip bomb? (limit {DOCX_MAX_MEMBERS})"
        )
    total = sum(m.file_size for m in members)
    if total > DOCX_MAX_UNPACKED:
        raise UnreadableFile(
            f"{what} would unpack to {_size(total)}: a decompression bomb? "
            f"(limit {_size(DOCX_MAX_UNPACKED)})"
        )
    for m in members:
        ratio = m.file_size / max(m.compress_size, 1)
        if m.file_size > _RATIO_FLOOR and ratio > DOCX_MAX_RATIO:
            raise UnreadableFile(
                f"{what} part {m.filename!r} is compressed {ratio:.0f}:1: a decompression bomb? "
                f"(limit {DOCX_MAX_RATIO}:1)"
            )


_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def parse_docx(data: bytes, stem: str) -> LoadedDocument:
    check_zip(data)
    docx = _import("docx", "DOCX")
    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(_docx_blocks(document))
        title = (document.core_properties.title or "").strip()
    except UnreadableFile:
        raise
    except Exception as e:  # python-docx/lxml raise many kinds on malformed parts
        raise UnreadableFile(f"corrupt DOCX ({_short(e)})") from None
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    body: list[str] = []
    first_heading = ""

    def flush() -> None:
        _add_section(sections, "\n\n".join(body), path)
        body.clear()

    for level, text in blocks:
        if level == 0:  # the "Title" style
            title = title or text
            continue
        if level is None:
            body.append(text)
            continue
        flush()
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, text))
        first_heading = first_heading or text
        body.append(text)
    flush()
    return LoadedDocument(title=title or first_heading or stem, sections=sections, format="docx")


def _docx_blocks(document: Any) -> Iterator[tuple[int | None, str]]:
    """(heading level or None, text) for each paragraph and table, in reading order."""
    for block in document.iter_inner_content():
        if hasattr(block, "rows"):  # a table: one line per row, cells joined
            rows = [" | ".join(c.text.strip() for c in row.cells) for row in block.rows]
            text = "\n".join(r for r in rows if r.strip(" |"))
            if text:
                yield None, text
            continue
        text = block.text.strip()
        if not text:
            continue
        name = (block.style.name if block.style is not None else "") or ""
        heading = _HEADING_STYLE.match(name)
        if heading:
            yield max(1, int(heading.group(1))), text
        elif name.lower() == "title":
            yield 0, text
        else:
            yield None, text


FORMATS: dict[str, _Format] = {
    ".txt": _Format("text", parse_text),
    ".text": _Format("text", parse_text),
    ".rst": _Format("text", parse_text),
    ".md": _Format("markdown", parse_markdown),
    ".markdown": _Format("markdown", parse_markdown),
    ".html": _Format("html", parse_html),
    ".htm": _Format("html", parse_html),
    ".pdf": _Format("pdf", parse_pdf),
    ".docx": _Format("docx", parse_docx),
}
