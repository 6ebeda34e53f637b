"""The ingest pipeline's overlap: parsing runs ahead of embedding in a worker thread, through a
bounded queue; embedding batches are sized by characters; a failing write keeps what was."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import chatwright.ingest.pipeline as pipeline
from chatwright.errors import StoreError
from chatwright.ingest import Ingestor
from chatwright.retrieval.index import SearchIndex
from test_ingest import OWNER, CountingEmbedder, assert_consistent, paragraphs, rows


def corpus(root: Path, n: int, size: int = 3) -> Path:
    root.mkdir(exist_ok=True)
    for i in range(n):
        (root / f"f{i:02}.md").write_text(f"# File {i}\n\n" + paragraphs(f"topic{i}", size))
    return root


class WaitingEmbedder(CountingEmbedder):
    """Its first embed() waits until the last file has been parsed: only a pipeline that
    parses ahead of embedding gets past it."""

    def __init__(self, last_parsed: threading.Event) -> None:
        super().__init__()
        self.last_parsed = last_parsed
        self.saw_overlap = False

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not self.batches:
            self.saw_overlap = self.last_parsed.wait(timeout=10)
        return super().embed(texts)


def test_parsing_runs_ahead_of_embedding(tmp_path, store, monkeypatch):
    root = corpus(tmp_path / "docs", 6)
    last_parsed = threading.Event()
    real_parse = pipeline.parse

    def parse(name, data):
        doc = real_parse(name, data)
        if name == "f05.md":
            last_parsed.set()
        return doc

    monkeypatch.setattr(pipeline, "parse", parse)
    embedder = WaitingEmbedder(last_parsed)
    ingestor = Ingestor(store, SearchIndex(store, embedder), OWNER, chunk_tokens=60, overlap=10)
    monkeypatch.setattr(pipeline, "_GROUP_DOCS", 1)  # embed after each document
    report = ingestor.ingest([root], "kb")
    assert embedder.saw_overlap, "the first embedding did not overlap parsing the later files"
    assert report.added == 6
    assert_consistent(store)


def test_the_reader_stays_a_bounded_number_of_files_ahead(tmp_path, store, monkeypatch):
    root = corpus(tmp_path / "docs", 30, size=1)
    parsed: list[str] = []
    ahead: list[int] = []
    real_parse = pipeline.parse

    def parse(name, data):
        parsed.append(name)
        return real_parse(name, data)

    class Recording(CountingEmbedder):
        def embed(self, texts):
            ahead.append(len(parsed) - len(self.batches))
            return super().embed(texts)

    monkeypatch.setattr(pipeline, "parse", parse)
    monkeypatch.setattr(pipeline, "_GROUP_DOCS", 1)
    embedder = Recording()
    Ingestor(store, SearchIndex(store, embedder), OWNER).ingest([root], "kb")
    assert len(embedder.batches) == 30
    # the queue's files, the one the consumer holds and the one the reader is putting
    assert max(ahead) <= pipeline._AHEAD + 2


def test_embedding_batches_are_sized_by_characters(tmp_path, store):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "short.md").write_text("\n\n".join(f"# S{i}\n\nShort {i}." for i in range(20)))
    (root / "long.md").write_text(
        "\n\n".join(f"# L{i}\n\n" + f"long text {i} " * 100 for i in range(4))
    )
    embedder = CountingEmbedder()
    ingestor = Ingestor(
        store, SearchIndex(store, embedder), OWNER, chunk_tokens=400, embed_chars=1_500
    )
    report = ingestor.ingest([root], "kb")
    assert report.embedded == len(embedder.texts) == 24
    for batch in embedder.batches:
        assert len(batch) == 1 or sum(map(len, batch)) <= 1_500
    sizes = sorted(len(b) for b in embedder.batches)
    assert sizes[-1] > 4 and sizes[0] == 1  # short texts batch up, long ones go alone


def test_a_write_error_keeps_the_collection_as_it_was_before_that_document(
    tmp_path, store, monkeypatch
):
    root = corpus(tmp_path / "docs", 4)
    embedder = CountingEmbedder()
    index = SearchIndex(store, embedder)
    ingestor = Ingestor(store, index, OWNER, chunk_tokens=60, overlap=10)
    ingestor.ingest([root], "kb")
    before = rows(store)
    before_docs = {d.source: d for d in store.list_documents(OWNER, "kb")}
    for i in range(4):
        (root / f"f{i:02}.md").write_text(f"# File {i}\n\n" + paragraphs(f"changed{i}", 2))
    real_put = store.put_document

    def put_document(owner, collection, source, **kw):
        if source.endswith("f02.md"):
            raise sqlite3.OperationalError("database or disk is full")
        return real_put(owner, collection, source, **kw)

    monkeypatch.setattr(pipeline, "_GROUP_DOCS", 1)
    monkeypatch.setattr(store, "put_document", put_document)
    with pytest.raises(StoreError, match="disk is full; nothing was written") as e:
        ingestor.ingest([root], "kb")
    assert "free disk space" in (e.value.hint or "")
    after = {d.source: d for d in store.list_documents(OWNER, "kb")}
    changed = {s for s in after if after[s].content_hash != before_docs[s].content_hash}
    assert sorted(Path(s).name for s in changed) == ["f00.md", "f01.md"]  # committed before
    f02 = next(s for s in after if s.endswith("f02.md"))
    assert after[f02] == before_docs[f02]  # the failing document: as it was
    kept = {k: v for k, v in rows(store).items() if k.startswith(f"{after[f02].id}:")}
    assert kept == {k: v for k, v in before.items() if k.startswith(f"{after[f02].id}:")}
    assert_consistent(store)
    monkeypatch.undo()
    report = ingestor.ingest([root], "kb")  # the re-run resumes by hash
    assert (report.unchanged, report.updated) == (2, 2)
    assert_consistent(store)


def test_an_error_in_the_reader_stops_the_run(tmp_path, store, monkeypatch):
    root = corpus(tmp_path / "docs", 5)
    real_parse = pipeline.parse

    def parse(name, data):
        if name == "f03.md":
            raise MemoryError("out of memory parsing")
        return real_parse(name, data)

    monkeypatch.setattr(pipeline, "parse", parse)
    monkeypatch.setattr(pipeline, "_GROUP_DOCS", 1)
    ingestor = Ingestor(store, SearchIndex(store, CountingEmbedder()), OWNER)
    with pytest.raises(MemoryError, match="out of memory parsing"):
        ingestor.ingest([root], "kb")
    assert len(store.list_documents(OWNER, "kb")) == 3  # those before it are kept
    assert_consistent(store)
