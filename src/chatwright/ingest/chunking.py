"""Sections into chunks sized in tokens, following the text's structure.

A chunk never crosses a section (so never a heading or a page boundary). Inside a section,
whole paragraphs are packed together while they fit; a paragraph that does not fit starts the
next chunk, unless the chunk so far is under half full: then it is cut to fill it. Text is cut
at the coarsest boundary that makes pieces fit: paragraphs, then sentences, then lines, then
words, then (a "word" longer than a chunk, such as a base64 blob) characters. Each chunk after
the first of a section starts with up to ``overlap`` tokens from the end of the one before
(less when the paragraph that follows would not fit beside them: it is not cut for overlap).

Sizes are measured with ``count`` (any ``str -> int``; the default is the 4-bytes-a-token
estimate) and every chunk is checked against ``max_tokens`` with it, so the bound holds for
counters whose counts do not add up exactly (BPE tokenizers).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from chatwright.errors import UserError
from chatwright.ingest.loaders import Section
from chatwright.memory.tokens import estimate_tokens

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "DEFAULT_OVERLAP",
    "TextChunk",
    "chunk_sections",
    "split_sentences",
]

DEFAULT_CHUNK_TOKENS = 300
DEFAULT_OVERLAP = 45  # 15%
MIN_CHUNK_TOKENS = 16

Count = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str
    heading_path: tuple[str, ...]
    page: int | None
    index: int  # its place in the document, from 0


@dataclass(slots=True)
class _Piece:
    text: str
    tokens: int
    sep: str  # what joins it to the piece before it
    level: int  # which splitter produced it (index into _SPLITTERS)
    fresh: bool = True  # False: repeated from the previous chunk (overlap)


# . ! ? … and the CJK full stop, exclamation and question marks; then closing quotes/brackets
_SENTENCE_END = re.compile("[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\\]]*(\\s+)")


def split_sentences(text: str) -> list[str]:
    """Sentences: cut after . ! ? (and CJK full stops) followed by whitespace."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start : m.start(1)])
        start = m.end(1)
    out.append(text[start:])
    return [s.strip() for s in out if s.strip()]


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


# (splitter, separator used to join its pieces back), coarsest first
_SPLITTERS: tuple[tuple[Callable[[str], list[str]], str], ...] = (
    (_paragraphs, "\n\n"),
    (split_sentences, " "),
    (_lines, "\n"),
    (str.split, " "),
)
_CHARS = len(_SPLITTERS)  # the level of pieces cut inside a word


def chunk_sections(
    sections: Iterable[Section],
    *,
    max_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    count: Count = estimate_tokens,
) -> list[TextChunk]:
    """Chunks of at most ``max_tokens`` (by ``count``), numbered across all sections."""
    check_sizes(max_tokens, overlap)
    chunks: list[TextChunk] = []
    for section in sections:
        for text in chunk_text(section.text, max_tokens=max_tokens, overlap=overlap, count=count):
            chunks.append(TextChunk(text, section.heading_path, section.page, len(chunks)))
    return chunks


def check_sizes(max_tokens: int, overlap: int) -> None:
    if max_tokens < MIN_CHUNK_TOKENS:
        raise UserError(f"chunks must be at least {MIN_CHUNK_TOKENS} tokens, not {max_tokens}")
    if not 0 <= overlap <= max_tokens // 2:
        raise UserError(
            f"overlap must be between 0 and half the chunk size ({max_tokens // 2}), not {overlap}"
        )


def chunk_text(
    text: str,
    *,
    max_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    count: Count = estimate_tokens,
) -> list[str]:
    """One section's text as chunk texts (see the module's docstring)."""
    check_sizes(max_tokens, overlap)
    return _Packer(max_tokens, overlap, count).pack(text)


class _Packer:
    def __init__(self, max_tokens: int, overlap: int, count: Count) -> None:
        self.max = max_tokens
        self.overlap = overlap
        self.count = count
        self.out: list[str] = []
        self.cur: list[_Piece] = []
        self.queue: deque[_Piece] = deque()

    def pack(self, text: str) -> list[str]:
        self.queue.extend(self._pieces(text, 0, "\n\n"))
        while True:
            while self.queue:
                self._place(self.queue.popleft())
            if not any(p.fresh for p in self.cur):
                return self.out
            self._emit()  # the last chunk (may give pieces back to the queue)
            self._start_with_overlap()

    def _pieces(self, text: str, level: int, sep: str) -> list[_Piece]:
        """``text`` cut with splitter ``level`` into pieces, each within the chunk size."""
        if level == _CHARS:
            return self._cut_chars(text, sep)
        split, joiner = _SPLITTERS[level]
        out: list[_Piece] = []
        for i, part in enumerate(split(text)):
            piece_sep = sep if i == 0 else joiner
            tokens = self.count(part)
            if tokens <= self.max:
                out.append(_Piece(part, tokens, piece_sep, level))
            else:
                out.extend(self._pieces(part, level + 1, piece_sep))
        return out

    def _cut_chars(self, word: str, sep: str) -> list[_Piece]:
        out: list[_Piece] = []
        while word:
            lo, hi = 1, len(word)  # the longest prefix within the size (binary search)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.count(word[:mid]) <= self.max:
                    lo = mid
                else:
                    hi = mid - 1
            out.append(_Piece(word[:lo], self.count(word[:lo]), sep if not out else "", _CHARS))
            word = word[lo:]
        return out

    def _fresh_tokens(self) -> int:
        return sum(p.tokens for p in self.cur if p.fresh)

    def _place(self, piece: _Piece) -> None:
        used = sum(p.tokens for p in self.cur)
        if not self.cur or used + piece.tokens <= self.max:
            self.cur.append(piece)
            return
        fresh = self._fresh_tokens()
        if fresh == 0:  # only overlap so far: give up overlap rather than cut the piece
            while self.cur and sum(p.tokens for p in self.cur) + piece.tokens > self.max:
                self.cur.pop(0)
            self.cur.append(piece)
            return
        if fresh < self.max // 2 and piece.level < _CHARS - 1:  # words are not cut to fill
            parts = self._pieces(piece.text, piece.level + 1, piece.sep)
            if len(parts) > 1:  # cut it to fill this chunk
                self.queue.extendleft(reversed(parts))
                return
        self.queue.appendleft(piece)
        self._emit()
        self._start_with_overlap()

    def _join(self, pieces: Sequence[_Piece]) -> str:
        return "".join(p.sep + p.text if i else p.text for i, p in enumerate(pieces)).strip()

    def _emit(self) -> None:
        text = self._join(self.cur)
        while self.count(text) > self.max:  # the pieces' counts did not add up exactly
            fresh = [i for i, p in enumerate(self.cur) if p.fresh]
            if len(fresh) > 1:
                self.queue.appendleft(self.cur.pop())
            elif not self.cur[0].fresh:
                self.cur.pop(0)
            else:
                break  # one piece, within the size by construction
            text = self._join(self.cur)
        self.out.append(text)

    def _start_with_overlap(self) -> None:
        tail: list[_Piece] = []
        budget = self.overlap
        for piece in reversed(self.cur):
            if piece.tokens <= budget:
                tail.insert(0, _Piece(piece.text, piece.tokens, piece.sep, piece.level, False))
                budget -= piece.tokens
                continue
            if not tail and budget > 0:  # the last piece is longer: its last words
                words = self._last_words(piece.text, budget)
                if words:
                    tail.insert(0, _Piece(words, self.count(words), " ", _CHARS, False))
            break
        self.cur = tail

    def _last_words(self, text: str, budget: int) -> str:
        words = text.split()
        taken: list[str] = []
        for word in reversed(words):
            candidate = " ".join([word, *taken])
            if self.count(candidate) > budget:
                break
            taken.insert(0, word)
        return " ".join(taken)
