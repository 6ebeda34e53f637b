"""Markdown into clean sections, parsed by markdown-it-py (CommonMark, with tables).

What a passage keeps, so that search and the reader see the words and not the markup:

- **text** of emphasis, links (not their URLs), images (their alt text), inline code and
  inline HTML (``<abbr title=…>HTML</abbr>`` → ``HTML``); HTML blocks through the HTML loader
  (``<script>``, ``<style>`` and comments dropped);
- **structure that reads as plain text and renders as Markdown**: headings (each section starts
  with its own), paragraphs, ``- `` and ``1. `` list items, table rows as ``a | b``, code
  blocks in ````` fences (their text verbatim);
- **admonitions unwrapped**: the markers of Python-Markdown (``!!! note "Title"``, ``???``),
  PyMdown blocks (``/// note | Title`` … ``///``) and ``:::`` containers (MyST, Docusaurus)
  are removed, their title kept as a line and their body as ordinary Markdown. Code fences are
  left alone.

YAML front matter is skipped; its ``title:`` is the document's title (else the first h1).
markdown-it-py comes with rich, a core dependency; if it is missing anyway, the file is read
as plain text and a warning says what to install.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["markdown_sections", "unwrap_admonitions"]

log = logging.getLogger(__name__)

Sections = list[tuple[tuple[str, ...], str]]

_FRONT_TITLE = re.compile(r"^title:\s*(.+?)\s*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# !!! note "Title" / ??? note / ???+ note (Python-Markdown admonition, PyMdown details)
_BANG = re.compile(r"""^(\s*)(?:!!!|\?\?\?\+?)[ \t]+[\w-]+(?:[ \t]+[\w-]+)*(?:[ \t]+"(.*)")?\s*$""")
# /// note | Title  …  ///   (PyMdown blocks; option lines like "    type: warning" follow)
_SLASHES = re.compile(r"^\s*/{3,}[ \t]*(?:([\w-]+)[ \t]*(?:\|[ \t]*(.*?))?)?\s*$")
_BLOCK_OPTION = re.compile(r"^\s{4,}[\w-]+:")
# :::note Title / ::: {note} Title / :::tip[Title] … :::   (MyST, Docusaurus, markdown-it)
_COLONS = re.compile(r"^\s*:{3,}[ \t]*(?:\{?([\w-]+)\}?)?(?:\[(.*?)\])?[ \t]*(.*?)\s*$")
_MYST_OPTION = re.compile(r"^\s*:[\w-]+:")


def _indent(line: str) -> int:
    rest = line.lstrip(" \t")
    return len(line[: len(line) - len(rest)].expandtabs(4))


def _dedent(line: str, columns: int) -> str:
    """``line`` less up to ``columns`` columns of its indent (tabs in the indent count 4)."""
    rest = line.lstrip(" \t")
    return " " * max(0, _indent(line) - columns) + rest


def unwrap_admonitions(lines: Sequence[str]) -> list[str]:
    """``lines`` without admonition markers (see the module's docstring); code fences kept."""
    out: list[str] = []
    bodies: list[int] = []  # the indent each open ``!!!`` body needs, innermost last
    fence: str | None = None
    options = False  # right after a /// or ::: marker: its option lines are dropped
    for raw in lines:
        if raw.strip():
            while bodies and _indent(raw) < bodies[-1]:
                bodies.pop()
        line = _dedent(raw, 4 * len(bodies)) if bodies else raw
        if fence is not None:
            out.append(line)
            if line.strip().startswith(fence):
                fence = None
            continue
        if options and (_BLOCK_OPTION.match(line) or _MYST_OPTION.match(line)):
            continue
        options = False
        opened = _FENCE.match(line)
        if opened:
            fence = opened.group(1)[:3]
            out.append(line)
            continue
        title = _marker_title(line)
        if title is None:
            out.append(line)
            continue
        if _BANG.match(line):
            bodies.append(_indent(raw) + 4)
        else:
            options = bool(re.search(r"\w", line))  # an opening marker, not a closing one
        if title:
            out.extend(("", " " * _indent(line) + title, ""))
    return out


def _marker_title(line: str) -> str | None:
    """The title an admonition marker line gives ("" for none), or None: not a marker."""
    bang = _BANG.match(line)
    if bang:
        return (bang.group(2) or "").strip()
    slashes = _SLASHES.match(line)
    if slashes:
        return (slashes.group(2) or "").strip()
    colons = _COLONS.match(line)
    if colons:
        return (colons.group(2) or colons.group(3) or "").strip()
    return None


def _front_matter(lines: list[str]) -> tuple[str | None, list[str]]:
    """(its title, the lines after it) for YAML front matter; (None, lines) without one."""
    if not lines or lines[0].strip() != "---":
        return None, lines
    end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
    if end is None:
        return None, lines
    found = _FRONT_TITLE.search("\n".join(lines[1:end]))
    return (found.group(1).strip("'\"") if found else None), lines[end + 1 :]


def _parser() -> Any | None:
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        log.warning(
            "markdown-it-py is not installed: Markdown is read as plain text, markup and "
            "all; install it with: pip install markdown-it-py"
        )
        return None
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def markdown_sections(
    text: str, html_text: Callable[[str], str]
) -> tuple[str | None, Sections] | None:
    """``(title, [(heading path, text)])`` of a Markdown document, or None when markdown-it-py
    is missing. ``html_text`` turns an HTML block into its text."""
    md = _parser()
    if md is None:
        return None
    title, lines = _front_matter(text.split("\n"))
    walker = _Walker(html_text)
    walker.walk(md.parse("\n".join(unwrap_admonitions(lines))))
    return title or walker.first_h1, walker.sections


def inline_text(children: Sequence[Any]) -> str:
    """The words of an inline token's children, markup dropped."""
    out: list[str] = []
    for child in children:
        kind = child.type
        if kind in ("text", "code_inline", "image"):
            out.append(child.content)
        elif kind == "softbreak":
            out.append(" ")
        elif kind == "hardbreak" or (kind == "html_inline" and _BR.match(child.content)):
            out.append("\n")
    return "".join(out)


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


class _Walker:
    """markdown-it's flat token stream into sections under heading paths."""

    def __init__(self, html_text: Callable[[str], str]) -> None:
        self.html_text = html_text
        self.sections: Sections = []
        self.path: list[tuple[int, str]] = []
        self.blocks: list[str] = []  # the current section's text, separators included
        self.first_h1: str | None = None
        self.lists: list[str] = []  # "-" or "." for each open list, innermost last
        self.item: str | None = None  # the marker owed to the next paragraph of a list item
        self.first_item = False  # the next item is its list's first
        self.rows: list[list[str]] = []  # the open table's cells

    def add(self, text: str, *, tight: bool = False) -> None:
        if not text.strip():
            return
        if self.blocks:
            self.blocks.append("\n" if tight else "\n\n")
        self.blocks.append(text)

    def flush(self) -> None:
        text = "".join(self.blocks).strip("\n")
        self.blocks.clear()
        heading = self.path[-1][1] if self.path else None
        if text.strip() and text.strip() != heading:
            self.sections.append((tuple(h for _, h in self.path), text))

    def walk(self, tokens: Sequence[Any]) -> None:
        for i, token in enumerate(tokens):
            kind = token.type
            if kind == "heading_open":
                self.heading(int(token.tag[1]), _words(tokens[i + 1]))
            elif kind in ("bullet_list_open", "ordered_list_open"):
                self.lists.append("-" if kind == "bullet_list_open" else ".")
                self.first_item = len(self.lists) == 1  # a new list: a blank line before it
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
            elif kind == "list_item_open":
                depth = "   " * (len(self.lists) - 1)
                marker = "-" if self.lists[-1] == "-" else f"{token.info or 1}."
                self.item = f"{depth}{marker} "
            elif kind == "inline" and tokens[i - 1].type == "paragraph_open":
                self.paragraph(inline_text(token.children or []), hidden=tokens[i - 1].hidden)
            elif kind == "table_open":
                self.rows = []
            elif kind == "tr_open":
                self.rows.append([])
            elif kind == "inline" and tokens[i - 1].type in ("th_open", "td_open"):
                self.rows[-1].append(_words(token))
            elif kind == "table_close":
                self.block("\n".join(" | ".join(row) for row in self.rows))
            elif kind in ("fence", "code_block"):
                self.block(f"```\n{token.content.rstrip()}\n```")
            elif kind == "html_block":
                self.block(self.html_text(token.content))
        self.flush()

    def block(self, text: str) -> None:
        self.item = None  # a list item that starts with a table or code: no marker
        self.add(text)

    def heading(self, level: int, text: str) -> None:
        self.flush()
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        if not text:
            return
        self.path.append((level, text))
        if level == 1 and self.first_h1 is None:
            self.first_h1 = text
        self.add(text)  # the heading starts its section's text (helps keyword search)

    def paragraph(self, text: str, *, hidden: bool) -> None:
        text = "\n".join(line.strip() for line in text.strip().split("\n"))
        if self.item is not None:
            tight = hidden and not self.first_item and bool(self.blocks)
            self.add(self.item + text, tight=tight and _is_item(self.blocks[-1]))
            self.item, self.first_item = None, False
        else:
            self.add(text)


def _words(inline: Any) -> str:
    """An inline token's words on one line (a heading, a table cell)."""
    return " ".join(inline_text(inline.children or []).split())


def _is_item(block: str) -> bool:
    return bool(re.match(r"^\s*(-|\d+\.) ", block.rsplit("\n", 1)[-1]))
