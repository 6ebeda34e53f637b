"""The ingest pipeline and its commands: idempotence, atomicity, sync, bad input, isolation."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from chatwright import SQLiteStore
from chatwright.errors import UserError
from chatwright.ingest import Ingestor, Progress
from chatwright.ingest.command import register
from chatwright.models.embeddings import HashEmbedder
from chatwright.retrieval.index import SearchIndex
from test_ingest_loaders import docx_bomb, encrypt_pdf, make_docx, make_pdf

OWNER = "ada"


class CountingEmbedder:
    """test:hash, recording every batch it is asked to embed."""

    def __init__(self, dim: int = 64) -> None:
        self.inner = HashEmbedder(dim=dim)
        self.name = "test:counting"
        self.dim = dim
        self.batches: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return self.inner.embed(texts)

    @property
    def texts(self) -> list[str]:
        return [t for batch in self.batches for t in batch]

    def reset(self) -> None:
        self.batches.clear()


@pytest.fixture
def embedder() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
def index(store: SQLiteStore, embedder: CountingEmbedder) -> SearchIndex:
    return SearchIndex(store, embedder)


@pytest.fixture
def ingestor(store: SQLiteStore, index: SearchIndex) -> Ingestor:
    return Ingestor(store, index, OWNER, chunk_tokens=60, overlap=10)


def paragraphs(topic: str, n: int) -> str:
    return "\n\n".join(
        f"{topic} paragraph {i} explains the {topic} setting number {i} in some detail, "
        f"with words enough to make it about twenty tokens long."
        for i in range(n)
    )


def write_docs(root: Path) -> Path:
    docs = root / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / "guide" / "install.md").write_text(
        "# Install\n\nIntro.\n\n## Linux\n\n" + paragraphs("linux", 6) + "\n\n## Mac\n\nUse brew.\n"
    )
    (docs / "notes.txt").write_text("Notes\n\n" + paragraphs("notes", 3))
    (docs / "page.html").write_text(
        "<title>Shop</title><script>evil()</script><h1>Returns</h1><p>Within 30 days.</p>"
    )
    (docs / "manual.pdf").write_bytes(make_pdf(["Page one text.", "Page two text."], "Manual"))
    (docs / "policy.docx").write_bytes(
        make_docx([("Heading 1", "Leave"), ("Normal", "You get 25 days of leave.")])
    )
    return docs


def rows(store: SQLiteStore, collection: str = "kb", owner: str = OWNER) -> dict[str, tuple]:
    """key -> (text, metadata, vector) of every chunk of the collection."""
    info = store.get_collection(owner, collection)
    found = store.connection.execute(
        "SELECT key, text, metadata, vector FROM chunks WHERE namespace = ?", (info.namespace,)
    ).fetchall()
    return {key: (text, meta, vector) for key, text, meta, vector in found}


def assert_consistent(store: SQLiteStore, collection: str = "kb") -> None:
    """Every chunk belongs to a document, and each document's count matches its chunks."""
    docs = store.list_documents(OWNER, collection)
    chunks = rows(store, collection)
    by_doc: dict[int, int] = {}
    for key in chunks:
        by_doc[int(key.split(":")[0])] = by_doc.get(int(key.split(":")[0]), 0) + 1
    assert by_doc == {d.id: d.chunks for d in docs if d.chunks}


# -- formats and structure ------------------------------------------------------------------
def test_every_format_is_ingested_with_its_structure(tmp_path, store, ingestor):
    docs = write_docs(tmp_path)
    report = ingestor.ingest([docs], "kb")
    assert report.skipped == []
    assert (report.added, report.files) == (5, 5)
    sources = {d.source: d for d in store.list_documents(OWNER, "kb")}
    assert set(sources) == {
        "docs/guide/install.md",
        "docs/notes.txt",
        "docs/page.html",
        "docs/manual.pdf",
        "docs/policy.docx",
    }
    assert sources["docs/manual.pdf"].title == "Manual"
    assert sources["docs/manual.pdf"].metadata["pages"] == 2
    assert sources["docs/page.html"].title == "Shop"
    import json

    metas = [json.loads(meta) for _, meta, _ in rows(store).values()]
    pages = {m["page"] for m in metas if m["source"] == "docs/manual.pdf"}
    assert pages == {1, 2}
    linux = [m for m in metas if m["heading_path"] == "Install > Linux"]
    assert len(linux) > 1  # the long section was cut into several chunks
    doc = sources["docs/guide/install.md"]
    assert all(m["document_id"] == doc.id and m["title"] == "Install" for m in linux)
    assert sorted(m["chunk_index"] for m in metas if m["document_id"] == doc.id) == list(
        range(doc.chunks)
    )
    assert {m["heading_path"] for m in metas if m["source"] == "docs/policy.docx"} == {"Leave"}
    assert not any("evil" in text for text, _, _ in rows(store).values())
    assert_consistent(store)


def test_chunks_are_searchable_with_citations(tmp_path, store, index, ingestor):
    ingestor.ingest([write_docs(tmp_path)], "kb")
    info = store.get_collection(OWNER, "kb")
    hit = index.search("leave days", info.namespace, k=1)[0]
    assert hit.metadata["source"] == "docs/policy.docx"
    assert hit.metadata["heading_path"] == "Leave"
    assert hit.scores.keys() == {"keyword", "vector"}


def test_a_path_through_dotdot_is_read_as_the_shell_means_it(tmp_path, store, ingestor):
    write_docs(tmp_path)
    (tmp_path / "work").mkdir()
    os.chdir(tmp_path / "work")
    report = ingestor.ingest(["../docs/guide", "../docs/*.txt"], "kb")
    assert not report.skipped and report.added == 2
    assert {d.source for d in store.list_documents(OWNER, "kb")} == {
        "guide/install.md",
        "docs/notes.txt",
    }
    # a glob before the '..' has nothing to resolve against; uploaded names never go up
    report = ingestor.ingest(["../*/../docs/notes.txt"], "kb")
    assert [s.reason for s in report.skipped] == [
        "the path has a '..' component; give the directory itself instead"
    ]
    report = ingestor.ingest(["../docs/notes.txt"], "kb", literal=True)
    assert report.skipped and report.added == 0


def test_the_same_file_gets_the_same_source_however_it_is_named(tmp_path, store, ingestor):
    docs = write_docs(tmp_path)
    ingestor.ingest([docs / "notes.txt"], "kb")
    os.chdir(docs)
    report = ingestor.ingest([".", str(tmp_path / "docs" / "*.html")], "kb")
    assert report.unchanged == 1  # notes.txt: already in as docs/notes.txt
    assert {d.source for d in store.list_documents(OWNER, "kb")} >= {
        "docs/notes.txt",
        "docs/page.html",
    }


# -- idempotence ----------------------------------------------------------------------------
def test_a_second_run_changes_nothing_and_embeds_nothing(tmp_path, store, ingestor, embedder):
    docs = write_docs(tmp_path)
    first = ingestor.ingest([docs], "kb")
    assert first.embedded == first.chunks_added > 0
    before = rows(store)
    embedder.reset()
    second = ingestor.ingest([docs], "kb")
    assert (second.unchanged, second.added, second.updated) == (5, 0, 0)
    assert embedder.batches == []
    assert second.chunks_written == 0
    assert rows(store) == before


def test_unchanged_files_are_not_parsed(tmp_path, ingestor, monkeypatch):
    docs = write_docs(tmp_path)
    ingestor.ingest([docs], "kb")
    import chatwright.ingest.pipeline as pipeline

    monkeypatch.setattr(pipeline, "parse", lambda *a: pytest.fail("parsed an unchanged file"))
    assert ingestor.ingest([docs], "kb").unchanged == 5


def test_a_changed_file_re_embeds_only_its_changed_chunks(tmp_path, store, ingestor, embedder):
    docs = write_docs(tmp_path)
    ingestor.ingest([docs], "kb")
    install = docs / "guide" / "install.md"
    old_text = install.read_text()
    assert "linux paragraph 3 explains" in old_text
    install.write_text(
        old_text.replace("linux paragraph 3 explains", "linux paragraph 3 now describes")
    )
    before = rows(store)
    embedder.reset()
    report = ingestor.ingest([docs], "kb")
    assert (report.updated, report.unchanged) == (1, 4)
    assert 1 <= report.embedded <= 2  # the chunk with the change (and one overlapping it)
    assert all("now describes" in t for t in embedder.texts)
    assert report.chunks_reused > report.embedded
    after = rows(store)
    gone = set(before) - set(after)
    assert gone and all("linux paragraph 3 explains" in before[k][0] for k in gone)
    assert report.chunks_removed == len(gone)
    kept = set(before) & set(after)
    assert all(after[k][2] == before[k][2] for k in kept)  # vectors reused as they were
    assert_consistent(store)


def test_changed_settings_re_chunk_even_an_unchanged_file(tmp_path, store, index, ingestor):
    docs = write_docs(tmp_path)
    ingestor.ingest([docs], "kb")
    bigger = Ingestor(store, index, OWNER, chunk_tokens=200, overlap=10)
    report = bigger.ingest([docs], "kb")
    assert report.unchanged == 0 and report.updated == 5
    assert_consistent(store)


def test_keyword_only_documents_get_vectors_once_there_is_an_embedder(tmp_path, store, ingestor):
    docs = write_docs(tmp_path)
    plain = Ingestor(store, SearchIndex(store, None), OWNER)
    plain.ingest([docs], "kb")
    assert all(vector is None for _, _, vector in rows(store).values())
    assert ingestor.ingest([docs], "kb").updated == 5
    assert all(vector is not None for _, _, vector in rows(store).values())


def test_embeddings_are_batched_and_repeated_texts_embedded_once(tmp_path, store, index, embedder):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(40):
        (root / f"f{i:02}.md").write_text(
            f"# File {i}\n\nShared boilerplate text.\n\n# End\n\nBye."
        )
    report = Ingestor(store, index, OWNER, embed_batch=16).ingest([root], "kb")
    assert report.added == 40
    assert max(len(b) for b in embedder.batches) == 16
    assert len(embedder.texts) == len(set(embedder.texts)) == 41  # "File i" x40, "End" once
    assert report.chunks_written == 80


# -- sync -----------------------------------------------------------------------------------
def test_sync_removes_documents_whose_files_are_gone(tmp_path, store, ingestor):
    docs = write_docs(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.md").write_text("# Keep\n\nme")
    ingestor.ingest([docs, other], "kb")
    (docs / "notes.txt").unlink()
    assert ingestor.ingest([docs], "kb").removed == 0  # without --sync: kept
    assert store.find_document(OWNER, "kb", "docs/notes.txt") is not None
    report = ingestor.ingest([docs], "kb", sync=True)
    assert report.removed == 1 and report.chunks_removed > 0
    assert store.find_document(OWNER, "kb", "docs/notes.txt") is None
    assert store.find_document(OWNER, "kb", "other/keep.md") is not None  # not under docs/
    assert not any('"docs/notes.txt"' in meta for _, meta, _ in rows(store).values())
    assert_consistent(store)


def test_sync_with_a_glob_only_touches_what_it_matches(tmp_path, store, ingestor):
    docs = write_docs(tmp_path)
    ingestor.ingest([docs], "kb")
    (docs / "guide" / "install.md").unlink()
    os.chdir(tmp_path)
    report = ingestor.ingest(["docs/*.txt"], "kb", sync=True)
    assert report.removed == 0  # install.md is not matched by docs/*.txt
    report = ingestor.ingest(["docs/**/*.md"], "kb", sync=True)
    assert report.removed == 1
    assert len(store.list_documents(OWNER, "kb")) == 4


# -- bad input ------------------------------------------------------------------------------
def test_each_bad_file_is_skipped_with_its_reason_and_the_rest_ingests(tmp_path, store):
    docs = write_docs(tmp_path)
    bad = docs / "bad"
    bad.mkdir()
    (bad / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    (bad / "empty.md").write_bytes(b"")
    (bad / "huge.txt").write_text("big " * 200_000)
    (bad / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj garbage")
    (bad / "locked.pdf").write_bytes(encrypt_pdf(make_pdf(["Secret."]), "pw"))
    (bad / "bomb.docx").write_bytes(docx_bomb())
    (bad / "photo.png").write_bytes(b"\x89PNG")  # not a type we read: passed over silently
    (tmp_path / "secret.md").write_text("# Secret\n\noutside the root")
    (bad / "escape.md").symlink_to(tmp_path / "secret.md")
    (bad / "outside").symlink_to(tmp_path)
    index = SearchIndex(store, None)
    report = Ingestor(store, index, OWNER, max_bytes=600_000).ingest(
        [docs, tmp_path / "nothing-here"], "kb"
    )
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert reasons == {
        "image.txt": "binary content (NUL bytes), not text",
        "empty.md": "empty file",
        "huge.txt": "larger than the size limit (600000 bytes)",
        "broken.pdf": reasons["broken.pdf"],
        "locked.pdf": "encrypted PDF (needs a password)",
        "bomb.docx": reasons["bomb.docx"],
        "escape.md": f"symbolic link leads outside {docs.resolve()}",
        "outside": f"symbolic link leads outside {docs.resolve()}",
        "nothing-here": "no such file or directory",
    }
    assert reasons["broken.pdf"].startswith("corrupt PDF")
    assert "decompression bomb" in reasons["bomb.docx"]
    assert report.added == 5 and report.ignored == 1
    assert {d.source for d in store.list_documents(OWNER, "kb")} == {
        "docs/guide/install.md",
        "docs/notes.txt",
        "docs/page.html",
        "docs/manual.pdf",
        "docs/policy.docx",
    }
    assert not any("outside the root" in t for t, _, _ in rows(store).values())
    assert_consistent(store)


def test_a_symlink_inside_the_root_is_read_once(tmp_path, store, ingestor):
    docs = write_docs(tmp_path)
    (docs / "alias.txt").symlink_to(docs / "notes.txt")
    report = ingestor.ingest([docs], "kb")
    assert report.added == 5
    assert [s.reason for s in report.skipped] == [f"same file as {docs / 'alias.txt'}"] or [
        s.reason for s in report.skipped
    ] == [f"same file as {docs / 'notes.txt'}"]


def test_a_file_that_turns_bad_keeps_its_previous_version(tmp_path, store, ingestor):
    docs = write_docs(tmp_path)
    ingestor.ingest([docs], "kb")
    before = rows(store)
    (docs / "manual.pdf").write_bytes(b"%PDF-1.4 truncated")
    report = ingestor.ingest([docs], "kb", sync=True)
    assert [s.reason[:11] for s in report.skipped] == ["corrupt PDF"]
    assert report.removed == 0
    assert rows(store) == before


# -- atomicity ------------------------------------------------------------------------------
def test_a_crash_mid_document_leaves_the_previous_version_intact(
    tmp_path, store, index, ingestor, monkeypatch
):
    docs = write_docs(tmp_path)
    ingestor.ingest([docs], "kb")
    before_rows = rows(store)
    before_docs = store.list_documents(OWNER, "kb")
    (docs / "guide" / "install.md").write_text("# Install\n\nAll new text.\n")
    (docs / "new.md").write_text("# New\n\nA new file.\n")
    real_add = index.add

    def add_then_crash(namespace, items):
        real_add(namespace, items)  # the chunks are written...
        raise RuntimeError("power cut")  # ...and then the process dies

    monkeypatch.setattr(index, "add", add_then_crash)
    with pytest.raises(RuntimeError, match="power cut"):
        ingestor.ingest([docs], "kb")
    assert rows(store) == before_rows
    assert store.list_documents(OWNER, "kb") == before_docs
    monkeypatch.undo()
    report = ingestor.ingest([docs], "kb")
    assert (report.added, report.updated) == (1, 1)
    assert_consistent(store)


def test_vectors_of_another_size_are_refused_up_front(tmp_path, store, ingestor):
    docs = write_docs(tmp_path)
    ingestor.ingest([docs], "kb")
    other = SearchIndex(store, CountingEmbedder(dim=32))
    with pytest.raises(UserError, match="64-dimensional vectors"):
        Ingestor(store, other, OWNER).ingest([docs], "kb")


# -- owners and progress --------------------------------------------------------------------
def test_collections_are_owned(tmp_path, store, index, ingestor):
    docs = write_docs(tmp_path)
    ingestor.ingest([docs], "kb")
    (docs / "notes.txt").unlink()
    bob = Ingestor(store, index, "bob")
    report = bob.ingest([docs], "kb", sync=True)
    assert report.added == 4 and report.removed == 0
    ada, bobs = store.get_collection(OWNER, "kb"), store.get_collection("bob", "kb")
    assert ada.namespace != bobs.namespace
    assert ada.documents == 5 and bobs.documents == 4
    assert not index.search("notes", bobs.namespace, mode="keyword")
    assert index.search("notes", ada.namespace, mode="keyword")


def test_progress_is_reported_per_file(tmp_path, ingestor):
    docs = write_docs(tmp_path)
    events: list[Progress] = []
    ingestor.ingest([docs], "kb", progress=events.append)
    assert [e.done for e in events] == [1, 2, 3, 4, 5]
    assert {e.total for e in events} == {5}
    assert {e.status for e in events} == {"added"}
    assert events[-1].chunks > 0


# -- the commands ---------------------------------------------------------------------------
def make_cli(data_dir):
    """``invoke(*args, code=0, stdin=None)``: the ingest commands on ``data_dir``."""
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0, stdin: str | None = None):
        result = runner.invoke(app, [*args, "--data-dir", str(data_dir)], input=stdin)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result

    return invoke


@pytest.fixture
def cli(data_dir):
    return make_cli(data_dir)


def test_ingest_command_prints_a_summary_and_the_skipped_files(tmp_path, cli):
    docs = write_docs(tmp_path)
    (docs / "empty.txt").write_bytes(b"")
    result = cli("ingest", str(docs), "-C", "kb", "--embedder", "test:hash", "--description", "D")
    assert "added" in result.stdout and " 5" in result.stdout
    assert "skipped" in result.stderr and "empty.txt: empty file" in result.stderr
    again = cli("ingest", str(docs), "-C", "kb", "--embedder", "test:hash")
    assert "unchanged" in again.stdout
    listed = cli("collections", "list")
    assert "kb" in listed.stdout and "D" in listed.stdout
    shown = cli("collections", "show", "kb", "--json")
    assert len(__import__("json").loads(shown.stdout)) == 5


def test_ingest_command_fails_when_nothing_could_be_read(tmp_path, cli):
    (tmp_path / "empty.md").write_bytes(b"")
    result = cli("ingest", str(tmp_path / "empty.md"), "-C", "kb", "--embedder", "none", code=1)
    assert "no file could be read" in result.stderr
    assert "empty.md: empty file" in result.stderr
    bad_name = cli("ingest", str(tmp_path), "-C", "bad name!", code=2)
    assert "invalid collection name" in bad_name.stderr


def test_a_failed_ingest_leaves_no_new_collection_behind(tmp_path, cli):
    cli("ingest", str(tmp_path / "nonexistent"), "-C", "x", "--embedder", "none", code=1)
    (tmp_path / "empty.md").write_bytes(b"")
    cli("ingest", str(tmp_path / "empty.md"), "-C", "y", "--description", "D", code=1)
    assert "no collections yet" in cli("collections", "list").stderr
    # a collection that was there before the failed ingest stays, with its documents
    docs = write_docs(tmp_path)
    cli("ingest", str(docs), "-C", "x", "--embedder", "none")
    cli("ingest", str(tmp_path / "nonexistent"), "-C", "x", "--embedder", "none", code=1)
    assert "x" in cli("collections", "list").stdout


def test_ingest_falls_back_to_keywords_when_the_embedder_cannot_load(tmp_path, cli, data_dir):
    docs = write_docs(tmp_path)
    result = cli("ingest", str(docs), "-C", "kb", "--embedder", "nosuch:model")
    assert "keyword search only" in result.stderr
    cli("ingest", str(docs), "-C", "vec", "--embedder", "test:hash")
    refused = cli("ingest", str(docs), "-C", "vec", "--embedder", "nosuch:model", code=2)
    assert "has vectors" in refused.stderr


def test_collections_describe_and_delete(tmp_path, cli, data_dir):
    docs = write_docs(tmp_path)
    cli("ingest", str(docs), "-C", "kb", "--embedder", "none")
    cli("collections", "describe", "kb", "Company  handbook")
    assert "Company handbook" in cli("collections", "list").stdout
    cli("collections", "delete", "kb", stdin="n\n", code=1)
    assert "kb" in cli("collections", "list").stdout
    cli("collections", "delete", "kb", "--yes")
    assert "no collections yet" in cli("collections", "list").stderr
    store = SQLiteStore(data_dir / "chatwright.db")
    try:
        assert store.connection.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0
    finally:
        store.close()
    cli("collections", "show", "kb", code=2)


def test_the_database_stays_readable_by_another_connection(tmp_path, store, ingestor):
    ingestor.ingest([write_docs(tmp_path)], "kb")
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("SELECT count(*) FROM documents").fetchone()[0] == 5
    finally:
        other.close()
