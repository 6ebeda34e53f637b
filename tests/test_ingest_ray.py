"""``chatwright ingest --engine ray``: the Ray Data pipeline on a local Ray of one node gives
what the local engine gives (same documents, chunks, keys and vectors), re-ingests nothing
unchanged, and without Ray says how to install it."""

from __future__ import annotations

import sys

import pytest

from chatwright import SQLiteStore
from chatwright.errors import UserError
from chatwright.ingest import Ingestor
from chatwright.ingest.ray_engine import RayEngine, import_ray
from chatwright.models.embeddings import get_embedder
from chatwright.retrieval.index import SearchIndex
from test_ingest import OWNER, assert_consistent, make_cli, rows, write_docs


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="the Ray engine's tests need ray[data]")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def cli(data_dir):  # the ingest tests' CLI runner
    return make_cli(data_dir)


def ingestor(store: SQLiteStore) -> Ingestor:
    index = SearchIndex(store, get_embedder("test:hash"))
    return Ingestor(store, index, OWNER, chunk_tokens=60, overlap=10)


def table(store: SQLiteStore) -> dict[str, tuple]:
    docs = {
        d.source: (d.title, d.content_hash, d.chunks, d.metadata)
        for d in store.list_documents(OWNER, "kb")
    }
    return {"docs": docs, "chunks": rows(store)}


def test_the_ray_engine_ingests_what_the_local_engine_does(tmp_path, ray_local):
    docs = write_docs(tmp_path)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    local_store = SQLiteStore(tmp_path / "local.db")
    ray_store = SQLiteStore(tmp_path / "ray.db")
    try:
        local = ingestor(local_store).ingest([docs], "kb")
        events = []
        remote = RayEngine().ingest(ingestor(ray_store), [docs], "kb", progress=events.append)
        assert (remote.added, remote.files, remote.chunks_added) == (5, 6, local.chunks_added)
        assert remote.embedded == local.embedded > 0
        assert [s.reason[:11] for s in remote.skipped] == ["corrupt PDF"]
        assert [e.done for e in events] == [1, 2, 3, 4, 5, 6]
        assert table(ray_store) == table(local_store)  # same documents, keys, texts, vectors
        assert_consistent(ray_store)

        again = RayEngine().ingest(ingestor(ray_store), [docs], "kb")
        assert (again.unchanged, again.added, again.updated, again.embedded) == (5, 0, 0, 0)
        assert table(ray_store) == table(local_store)

        (docs / "notes.txt").write_text("Notes\n\nAll new notes.")
        (docs / "page.html").unlink()
        changed = RayEngine().ingest(ingestor(ray_store), [docs], "kb", sync=True)
        assert (changed.updated, changed.unchanged, changed.removed) == (1, 3, 1)
        ingestor(local_store).ingest([docs], "kb", sync=True)
        assert table(ray_store) == table(local_store)
    finally:
        local_store.close()
        ray_store.close()


def test_the_ingest_command_runs_on_ray(tmp_path, cli, ray_local):
    docs = write_docs(tmp_path)
    args = ("ingest", str(docs), "-C", "kb", "--embedder", "test:hash", "--engine", "ray")
    assert "added" in cli(*args).stdout
    assert "unchanged" in cli(*args).stdout
    wrong = cli("ingest", str(docs), "-C", "kb", "--engine", "spark", code=2)
    assert "--engine local or --engine ray" in wrong.stderr


def test_without_ray_the_error_says_how_to_install_it(tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(UserError) as e:
        import_ray()
    assert 'pip install "chatwright[ray]"' in (e.value.hint or "")
    docs = write_docs(tmp_path)
    result = cli("ingest", str(docs), "-C", "kb", "--engine", "ray", code=2)
    assert "needs Ray Data" in result.stderr and "chatwright[ray]" in result.stderr
