"""Chunking: sizes in tokens under several counters, overlap, and structure kept."""

from __future__ import annotations

import itertools
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatwright.errors import UserError
from chatwright.ingest.chunking import chunk_sections, chunk_text, split_sentences
from chatwright.ingest.loaders import Section
from chatwright.memory.tokens import estimate_tokens


def word_counter(text: str) -> int:
    """Tokenizer-like: each word and each punctuation mark is a token (counts do not add up
    the way the estimate's do: joining two pieces never merges their tokens)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def tiktoken_counter():
    try:
        from chatwright.memory.tokens import _tiktoken

        encoding = _tiktoken()
    except Exception:  # the [openai] extra is not installed
        pytest.skip("tiktoken's offline cl100k_base is not installed")
    return lambda text: len(encoding.encode(text))


_VOCABULARY = (
    "the search index keeps chunks of text with their vectors and a keyword index beside "
    "them so that a question finds the passage that answers it even when words differ"
)
WORDS = _VOCABULARY.split()


def prose(rng: random.Random, paragraphs: int) -> str:
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 12)):
            words = rng.choices(WORDS, k=rng.randint(3, 30))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
        out.append(" ".join(sentences))
    return "\n\n".join(out)


def words_of(texts: list[str]) -> list[str]:
    return " ".join(texts).split()


@pytest.mark.parametrize("counter", ["estimate", "words", "tiktoken"])
def test_no_chunk_is_larger_than_the_limit_and_no_text_is_lost(counter):
    count = {
        "estimate": lambda: estimate_tokens,
        "words": lambda: word_counter,
        "tiktoken": tiktoken_counter,
    }[counter]()
    rng = random.Random(7)
    text = prose(rng, 40)
    chunks = chunk_text(text, max_tokens=120, overlap=0, count=count)
    assert len(chunks) > 5
    assert max(count(c) for c in chunks) <= 120
    # most chunks are well filled (paragraphs are packed together)
    assert sum(count(c) for c in chunks) / len(chunks) > 60
    assert words_of(chunks) == text.split()  # without overlap: every word once, in order


def test_chunks_overlap_by_about_the_overlap_tokens():
    text = prose(random.Random(3), 30)
    chunks = chunk_text(text, max_tokens=100, overlap=20, count=word_counter)
    assert len(chunks) > 4
    shared = []
    for before, after in itertools.pairwise(chunks):
        a, b = before.split(), after.split()
        n = max(k for k in range(0, min(len(a), len(b)) + 1) if k == 0 or a[-k:] == b[:k])
        shared.append(word_counter(" ".join(b[:n])))
    assert all(s <= 20 for s in shared), shared
    # it gives way only to a paragraph that fills a chunk on its own
    assert sum(s > 0 for s in shared) >= 0.9 * len(shared), shared
    assert sum(shared) / len(shared) >= 10  # sentences or, failing that, words fill it
    assert max(word_counter(c) for c in chunks) <= 100


def test_no_overlap_when_it_is_zero():
    text = prose(random.Random(5), 20)
    chunks = chunk_text(text, max_tokens=80, overlap=0)
    assert len(words_of(chunks)) == len(text.split())


def test_paragraphs_that_fit_are_kept_whole():
    paragraphs = [f"Paragraph {i}. " + "word " * 30 for i in range(6)]  # ~40 estimated tokens
    chunks = chunk_text("\n\n".join(paragraphs), max_tokens=100, overlap=0)
    for chunk in chunks:
        for part in chunk.split("\n\n"):
            assert part.strip() in [p.strip() for p in paragraphs]


def test_a_long_paragraph_is_cut_at_sentences():
    sentences = [f"Sentence number {i} says something short." for i in range(40)]
    chunks = chunk_text(" ".join(sentences), max_tokens=60, overlap=0)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.endswith("short.")  # never in the middle of a sentence
        assert estimate_tokens(chunk) <= 60


def test_a_long_sentence_is_cut_at_words_and_a_long_word_at_characters():
    sentence = " ".join(f"w{i}" for i in range(400))  # no full stop at all
    chunks = chunk_text(sentence, max_tokens=50, overlap=0)
    assert words_of(chunks) == sentence.split()
    blob = "A" * 5000  # a base64-like blob: 1,250 estimated tokens, one "word"
    cut = chunk_text(f"before {blob} after", max_tokens=100, overlap=0)
    assert all(estimate_tokens(c) <= 100 for c in cut)
    assert "".join(cut).replace(" ", "") == f"before{blob}after"


def test_code_lines_are_cut_at_lines():
    code = "\n".join(f"    call_{i}(argument_{i})" for i in range(200))
    chunks = chunk_text(code, max_tokens=80, overlap=0)
    for chunk in chunks:
        assert all(re.fullmatch(r"\s*call_\d+\(argument_\d+\)", line) for line in chunk.split("\n"))


def test_chunks_never_cross_sections_and_keep_heading_and_page():
    sections = [
        Section("Install\n\n" + prose(random.Random(1), 6), ("Install",)),
        Section("Tiny.", ("Install", "Linux")),
        Section(prose(random.Random(2), 6), (), page=2),
    ]
    chunks = chunk_sections(sections, max_tokens=120, overlap=20)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    by_path = {}
    for c in chunks:
        by_path.setdefault((c.heading_path, c.page), []).append(c.text)
    assert by_path[(("Install", "Linux"), None)] == ["Tiny."]  # not merged with neighbours
    assert len(by_path[(("Install",), None)]) > 1
    assert by_path[(("Install",), None)][0].startswith("Install\n\n")
    assert all(page == 2 for (_, page), _ in by_path.items() if _ == ())
    for section in sections:
        mine = [c.text for c in chunks if c.heading_path == section.heading_path]
        assert set(words_of(mine)) == set(section.text.split())


def test_sentence_splitting():
    assert split_sentences('One. "Two?" Three!  Four… five') == [
        "One.",
        '"Two?"',
        "Three!",
        "Four…",
        "five",
    ]


def test_sizes_are_checked():
    with pytest.raises(UserError, match="at least 16"):
        chunk_text("x", max_tokens=8)
    with pytest.raises(UserError, match="overlap"):
        chunk_text("x", max_tokens=100, overlap=60)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab cd.\n!é語")), min_size=0, max_size=3000),
    max_tokens=st.integers(16, 200),
    overlap_share=st.floats(0, 0.5),
)
def test_any_text_chunks_within_the_limit_without_losing_words(text, max_tokens, overlap_share):
    overlap = int(max_tokens * overlap_share)
    chunks = chunk_text(text, max_tokens=max_tokens, overlap=overlap)
    assert all(0 < estimate_tokens(c) <= max_tokens for c in chunks)
    got = "".join(words_of(chunks))
    for word in text.split():  # every word is in some chunk (cut words: in order)
        assert word in got
    if overlap == 0:
        assert got == "".join(text.split())
