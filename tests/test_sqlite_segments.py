"""Persisted search segments of the SQLite backend: a restarted process maps them, not rebuilds.

Every test compares against a search that loads the namespace from its rows alone
(``persist_min_chunks=None``): the results must be identical, score for score.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chatwright.errors import UserError
from chatwright.models.embeddings import get_embedder
from chatwright.retrieval import SearchIndex
from chatwright.store import sqlite_chunks
from chatwright.store.base import IndexedChunk
from chatwright.store.migrations import m003_search_index, migrate
from chatwright.store.segment_files import SegmentFiles
from chatwright.store.sqlite_chunks import SQLiteChunks

NS = "collection:1"
SMALL = 50  # persist_min_chunks in these tests
EMB = get_embedder("test:hash")
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "sigma", "omega"]
QUERIES = ["alpha beta", "gamma omega kappa", "sigma", "delta epsilon theta"]
FILTERS: list[dict[str, Any] | None] = [
    None,
    {"shard": [1]},
    {"lang": ["en", None], "shard": [0, 2]},  # as check_filters gives them
]


def chunks(start: int, n: int, version: str = "") -> list[IndexedChunk]:
    """Chunks ``c<start>``... with texts drawn from WORDS, metadata and hash-embedder vectors."""
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) + version
        metadata = {"shard": i % 3} | ({"lang": "en"} if i % 4 else {})
        out.append(IndexedChunk(f"c{i:05d}", text, metadata, EMB.embed([text])[0]))
    return out


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    return db


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "chatwright.db"


@pytest.fixture
def db(path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(path)
    migrate(conn)
    yield conn
    conn.close()


def segment_files(path: Path) -> list[Path]:
    folder = Path(str(path) + ".segments")
    return sorted(folder.glob("*.seg")) if folder.is_dir() else []


def results(index: SQLiteChunks, namespaces: list[str] | None = None) -> list[Any]:
    """Keyword and vector rankings, with and without filters, plus fused hybrid searches."""
    namespaces = namespaces or [NS]
    out: list[Any] = []
    for filters in FILTERS:
        for query in QUERIES:
            out.append(index.keyword(query, namespaces, filters, 20))
            out.append(index.vector(EMB.embed([query])[0], namespaces, filters, 20))
            hits = SearchIndex(index, EMB).search(query, namespaces, 10, filters=filters)
            out.append([(h.key, h.score, h.ranks) for h in hits])
    return out


def rebuilt(db: sqlite3.Connection, namespaces: list[str] | None = None) -> list[Any]:
    """The results of a process that loads from the rows alone."""
    return results(SQLiteChunks(db, persist_min_chunks=None), namespaces)


@pytest.fixture
def analyzed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many stored rows were tokenized into a segment (what persisting saves)."""
    count = [0]
    real = sqlite_chunks._Segment.add

    def add(self: Any, pks: Any, texts: Any, metadatas: Any, vectors: Any) -> None:
        count[0] += len(texts)
        real(self, pks, texts, metadatas, vectors)

    monkeypatch.setattr(sqlite_chunks._Segment, "add", add)
    return count


def test_a_fresh_process_uses_the_file_and_finds_the_same(
    db: sqlite3.Connection, path: Path, analyzed: list[int]
) -> None:
    first = SQLiteChunks(db, persist_min_chunks=SMALL)
    first.write(NS, chunks(0, 120))
    first.write("thread:7", chunks(500, 10))  # below the threshold: never persisted
    before = results(first, [NS, "thread:7"])  # loads both from their rows, persists NS
    assert len(segment_files(path)) == 1
    assert analyzed[0] == 130

    analyzed[0] = 0
    restarted = SQLiteChunks(db, persist_min_chunks=SMALL)
    assert results(restarted, [NS, "thread:7"]) == before
    assert analyzed[0] == 10  # only the small namespace's rows
    assert rebuilt(db, [NS, "thread:7"]) == before


def test_preload_uses_the_file(db: sqlite3.Connection, analyzed: list[int]) -> None:
    SQLiteChunks(db, persist_min_chunks=SMALL).write(NS, chunks(0, 80))
    SQLiteChunks(db, persist_min_chunks=SMALL).preload([NS])
    analyzed[0] = 0
    cold = SQLiteChunks(db, persist_min_chunks=SMALL)
    cold.preload([NS])
    assert analyzed[0] == 0
    assert results(cold) == rebuilt(db)


def test_rows_added_since_the_file_are_read(
    db: sqlite3.Connection, path: Path, analyzed: list[int]
) -> None:
    SQLiteChunks(db, persist_min_chunks=SMALL).write(NS, chunks(0, 100))
    SQLiteChunks(db, persist_min_chunks=SMALL).preload([NS])
    written = segment_files(path)[0].stat().st_mtime_ns
    SQLiteChunks(db, persist_min_chunks=SMALL).write(NS, chunks(100, 3))

    analyzed[0] = 0
    cold = SQLiteChunks(db, persist_min_chunks=SMALL)
    assert results(cold) == rebuilt(db)
    assert analyzed[0] == 3 + 103  # the 3 new rows, then the rebuild for comparison
    assert segment_files(path)[0].stat().st_mtime_ns == written  # 3 < SMALL // 10: kept

    SQLiteChunks(db, persist_min_chunks=SMALL).write(NS, chunks(103, 7))
    analyzed[0] = 0
    SQLiteChunks(db, persist_min_chunks=SMALL).preload([NS])  # 10 rows since: rewritten
    assert analyzed[0] == 10
    analyzed[0] = 0
    cold = SQLiteChunks(db, persist_min_chunks=SMALL)
    cold.preload([NS])
    assert analyzed[0] == 0
    assert results(cold) == rebuilt(db)


@pytest.mark.parametrize("change", ["delete", "update", "replace", "clear"])
def test_a_delete_or_update_invalidates_the_file(
    db: sqlite3.Connection, path: Path, analyzed: list[int], change: str
) -> None:
    SQLiteChunks(db, persist_min_chunks=SMALL).write(NS, chunks(0, 100))
    SQLiteChunks(db, persist_min_chunks=SMALL).preload([NS])
    other = SQLiteChunks(db, persist_min_chunks=SMALL)
    if change == "delete":
        other.delete(NS, ["c00003", "c00099"])
    elif change == "update":  # in place, as another program might: same pk, new text
        db.execute("UPDATE chunks SET text = 'omega omega omega' WHERE key = 'c00010'")
    elif change == "replace":
        other.write(NS, chunks(10, 1, version=" sigma sigma"))
    else:
        other.clear(NS)
        other.write(NS, chunks(200, 60))

    analyzed[0] = 0
    cold = SQLiteChunks(db, persist_min_chunks=SMALL)
    assert results(cold) == rebuilt(db)
    assert analyzed[0] > 90  # rebuilt from the rows, not patched
    analyzed[0] = 0
    SQLiteChunks(db, persist_min_chunks=SMALL).preload([NS])  # the rebuild rewrote the file
    assert analyzed[0] == 0


def test_a_write_from_another_connection_is_seen(db: sqlite3.Connection, path: Path) -> None:
    index = SQLiteChunks(db, persist_min_chunks=SMALL)
    index.write(NS, chunks(0, 100))
    index.preload([NS])
    other_db = connect(path)
    other = SQLiteChunks(other_db, persist_min_chunks=SMALL)
    assert results(other) == results(index)  # the other process starts from the file

    other.write(NS, chunks(100, 5))
    other.delete(NS, ["c00001"])
    assert results(index) == results(other) == rebuilt(db)
    found = index.fetch([pk for pk, _ in index.keyword(" ".join(WORDS), [NS], None, 1000)])
    keys = {record.key for record in found.values()}
    assert "c00101" in keys and "c00001" not in keys and len(keys) == 104
    other_db.close()


def test_a_damaged_or_missing_file_is_rebuilt_with_a_warning(
    db: sqlite3.Connection, path: Path, analyzed: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    SQLiteChunks(db, persist_min_chunks=SMALL).write(NS, chunks(0, 100))
    SQLiteChunks(db, persist_min_chunks=SMALL).preload([NS])
    expected = rebuilt(db)
    (file,) = segment_files(path)
    good = file.read_bytes()

    header, arrays = SegmentFiles(file.parent, "").read(NS) or ({}, {})
    docs = arrays["docs0"].copy()
    docs[-1] = 100  # a posting of a document past the last
    SegmentFiles(file.parent, "").write(
        NS, {k: v for k, v in header.items() if k != "arrays"}, {**arrays, "docs0": docs}
    )
    damages = {
        "truncated": good[: len(good) // 2],
        "garbage": b"not a segment",
        "empty": b"",
        "bad header": good[:17] + b"#" + good[18:],
        "bad posting": file.read_bytes(),
    }
    for name, content in damages.items():
        file.write_bytes(content)
        caplog.clear()
        analyzed[0] = 0
        with caplog.at_level(logging.WARNING, logger="chatwright.store.sqlite_chunks"):
            assert results(SQLiteChunks(db, persist_min_chunks=SMALL)) == expected, name
        assert "damaged search segment" in caplog.text, name
        assert analyzed[0] == 100, name  # rebuilt from the rows
        assert file.read_bytes() == good, name  # and rewritten

    file.unlink()
    assert results(SQLiteChunks(db, persist_min_chunks=SMALL)) == expected
    assert segment_files(path) == [file]


def test_a_failure_to_write_never_breaks_search(
    db: sqlite3.Connection, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = Path(str(path) + ".segments")
    blocker.write_text("a file where the folder should be")
    index = SQLiteChunks(db, persist_min_chunks=SMALL)
    index.write(NS, chunks(0, 100))
    with caplog.at_level(logging.WARNING, logger="chatwright.store.sqlite_chunks"):
        assert results(index) == rebuilt(db)
    assert "could not persist" in caplog.text


def test_another_database_at_the_same_path_never_uses_the_files(
    db: sqlite3.Connection, path: Path, analyzed: list[int]
) -> None:
    SQLiteChunks(db, persist_min_chunks=SMALL).write(NS, chunks(0, 100))
    SQLiteChunks(db, persist_min_chunks=SMALL).preload([NS])
    db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    again = connect(path)
    migrate(again)
    SQLiteChunks(again, persist_min_chunks=SMALL).write(NS, chunks(1000, 100))  # same counts
    analyzed[0] = 0
    assert results(SQLiteChunks(again, persist_min_chunks=SMALL)) == rebuilt(again)
    assert analyzed[0] == 200
    again.close()


def test_nothing_is_persisted_without_a_file_or_the_migration(tmp_path: Path) -> None:
    memory = sqlite3.connect(":memory:", isolation_level=None)
    migrate(memory)
    index = SQLiteChunks(memory, persist_min_chunks=1, segments_dir=tmp_path / "segments")
    index.write(NS, chunks(0, 60))
    results(index)
    assert not (tmp_path / "segments").exists()

    old = connect(tmp_path / "old.db")
    m003_search_index(old)  # no m007_database_id: no id to tie files to
    index = SQLiteChunks(old, persist_min_chunks=1)
    index.write(NS, chunks(0, 60))
    results(index)
    assert segment_files(tmp_path / "old.db") == []
    old.close()


def test_a_search_inside_an_open_transaction_persists_nothing(
    db: sqlite3.Connection, path: Path
) -> None:
    index = SQLiteChunks(db, persist_min_chunks=SMALL)
    db.execute("BEGIN")
    index.write(NS, chunks(0, 100))
    assert index.keyword("alpha", [NS], None, 5)  # loaded with rows not yet committed
    db.execute("ROLLBACK")
    assert segment_files(path) == []
    assert SQLiteChunks(db, persist_min_chunks=SMALL).keyword("alpha", [NS], None, 5) == []


def test_files_of_shrunk_namespaces_are_swept(db: sqlite3.Connection, path: Path) -> None:
    index = SQLiteChunks(db, persist_min_chunks=SMALL)
    index.write("collection:a", chunks(0, 60))
    index.preload(["collection:a"])
    index.clear("collection:a")
    index.write("collection:b", chunks(100, 60))
    index.preload(["collection:b"])  # writing b's file sweeps a's
    (file,) = segment_files(path)
    assert file.name == SegmentFiles(file.parent, "").path("collection:b").name


def test_a_namespace_grown_by_appends_in_memory_is_persisted_as_it_grows(
    db: sqlite3.Connection, path: Path, analyzed: list[int]
) -> None:
    live = SQLiteChunks(db, persist_min_chunks=SMALL)
    live.write(NS, chunks(0, 3))
    results(live)  # in memory from now on: every write below extends it in place
    for start in range(3, 200, 3):  # a thread's recall index: a few rows a turn
        live.write(NS, chunks(start, 3))
    assert len(segment_files(path)) == 1  # written as it grew, never loaded again
    before = results(live)
    analyzed[0] = 0
    restarted = SQLiteChunks(db, persist_min_chunks=SMALL)
    assert results(restarted) == before == rebuilt(db)
    assert analyzed[0] - 201 < SMALL // 10 + 3  # rebuilt(db) tokenized 201 rows


# -- how vectors are stored ---------------------------------------------------------------------
def test_vectors_are_stored_in_8_bits_and_read_back_close(db: sqlite3.Connection) -> None:
    index = SQLiteChunks(db, persist_min_chunks=None)
    written = chunks(0, 20)
    index.write(NS, written)
    sizes = {n for (n,) in db.execute("SELECT length(vector) FROM chunks")}
    assert sizes == {EMB.dim + 5}  # 1 byte a dimension and a header: float16 took 2 * dim
    assert index.dimension(NS) == EMB.dim
    back = index.vectors(NS, "")
    for c in written:
        v = back[c.key]
        assert v is not None and v.dtype == np.float32
        assert float(v @ c.vector) > 0.995 and np.max(np.abs(v - c.vector)) < 4e-3
    query = EMB.embed(["alpha beta"])[0]  # the search's cosines are the stored vectors'
    expected = sorted(((float(back[c.key] @ query), c.key) for c in written), reverse=True)
    found = index.vector(query, [NS], None, 5)
    keys = {pk: r.key for pk, r in index.fetch([pk for pk, _ in found]).items()}
    assert [keys[pk] for pk, _ in found] == [k for _, k in expected[:5]]
    assert [s for _, s in found] == pytest.approx([s for s, _ in expected[:5]], abs=1e-5)


def test_a_vector_read_back_and_written_again_is_stored_the_same() -> None:
    from chatwright.retrieval.index import _unit

    rng = np.random.default_rng(3)
    for v in [*EMB.embed(WORDS), *rng.normal(size=(50, 384)).astype(np.float32)]:
        first = sqlite_chunks._blob(_unit(v, "k"))
        back = sqlite_chunks._unblob(first)
        assert back is not None and abs(float(np.linalg.norm(back)) - 1) < 1e-6  # unit
        assert sqlite_chunks._blob(_unit(back, "k")) == first


def test_float16_vectors_written_before_are_read_beside_8_bit_ones(
    db: sqlite3.Connection,
) -> None:
    old = chunks(0, 10)
    index = SQLiteChunks(db, persist_min_chunks=None)
    index.write(NS, old)
    with db:  # as an older version stored them: float16, two bytes a dimension
        for c in old:
            db.execute(
                "UPDATE chunks SET vector = ? WHERE key = ?",
                (c.vector.astype(np.float16).tobytes(), c.key),
            )
    fresh = SQLiteChunks(db, persist_min_chunks=None)
    fresh.write(NS, chunks(10, 10))  # the same dimension, whatever the format: no error
    assert {n for (n,) in db.execute("SELECT length(vector) FROM chunks")} == {
        2 * EMB.dim,
        EMB.dim + 5,
    }
    assert fresh.dimension(NS) == EMB.dim
    back = fresh.vectors(NS, "")
    for c in old + chunks(10, 10):
        assert float(back[c.key] @ c.vector) > 0.995
    centroid, count = fresh.centroid(NS)
    assert count == 20 and centroid is not None
    query = EMB.embed(["gamma omega kappa"])[0]  # each row ranked by its own stored vector
    keys = {pk: r.key for pk, r in fresh.fetch(range(1, 100)).items()}
    top = fresh.vector(query, [NS], None, 20)
    assert len(top) == 20
    assert [s for _, s in top] == pytest.approx([float(back[keys[pk]] @ query) for pk, _ in top])
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)


def test_a_vector_with_nan_or_infinity_is_refused(db: sqlite3.Connection) -> None:
    index = SQLiteChunks(db, persist_min_chunks=None)
    for bad in (np.nan, np.inf):
        v = np.ones(4, dtype=np.float32)
        v[1] = bad
        with pytest.raises(UserError, match="NaN or infinite"):
            index.write(NS, [IndexedChunk("a", "alpha", {}, v)])
    assert index.count(NS) == 0


def test_vectors_of_an_odd_dimension_stay_float16(db: sqlite3.Connection) -> None:
    index = SQLiteChunks(db, persist_min_chunks=None)
    v = np.ones(5, dtype=np.float32) / 5**0.5
    index.write(NS, [IndexedChunk("a", "alpha", {}, v)])
    assert db.execute("SELECT length(vector) FROM chunks").fetchone()[0] == 10
    assert index.dimension(NS) == 5
    back = index.vectors(NS, "")["a"]
    assert back is not None and np.allclose(back, v, atol=1e-3)
