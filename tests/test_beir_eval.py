"""Retrieval metrics and the BEIR evaluator, on hand-computed examples and a tiny BEIR dir."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from chatwright.errors import UserError
from chatwright.evals import beir
from chatwright.evals.metrics import mean_metric, mrr_at, ndcg_at, recall_at
from chatwright.models.embeddings import get_embedder


class BagOfWords:
    """The ``test:hash`` embedder, counting its calls."""

    def __init__(self) -> None:
        self.inner = get_embedder("test:hash")
        self.name, self.dim = self.inner.name, self.inner.dim
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return self.inner.embed(texts)


# -- metrics --------------------------------------------------------------------------------
def test_ndcg_by_hand() -> None:
    qrels = {"a": 2, "b": 1, "z": 0}
    # ranking: x (0), a (2), b (1): DCG = 2/log2(3) + 1/log2(4); IDCG = 2/1 + 1/log2(3)
    expected = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
    assert ndcg_at(["x", "a", "b"], qrels, 10) == pytest.approx(expected)
    assert ndcg_at(["a", "b"], qrels, 10) == pytest.approx(1.0)
    assert ndcg_at(["x", "a"], qrels, 1) == 0.0
    assert ndcg_at(["a"], {}, 10) == 0.0


def test_recall_and_mrr_by_hand() -> None:
    qrels = {"a": 1, "b": 1, "c": 0}
    assert recall_at(["x", "a", "c"], qrels, 100) == 0.5
    assert recall_at(["x", "a", "b"], qrels, 2) == 0.5
    assert recall_at(["a"], {"c": 0}, 100) == 0.0
    assert mrr_at(["x", "c", "b", "a"], qrels, 10) == pytest.approx(1 / 3)
    assert mrr_at(["x", "b"], qrels, 1) == 0.0


def test_mean_metric_counts_unanswered_queries_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    assert mean_metric(mrr_at, {"q1": ["a"]}, qrels, 10) == pytest.approx(0.5)
    assert mean_metric(mrr_at, {}, {}, 10) == 0.0


# -- a tiny BEIR directory ------------------------------------------------------------------
CORPUS = [
    ("d1", "Vitamin D", "Vitamin D supplementation reduces fractures in elderly patients."),
    ("d2", "Smoking", "Smoking causes lung cancer and heart disease."),
    ("d3", "Exercise", "Regular exercise lowers blood pressure in adults."),
    ("d4", "", "Coffee consumption and sleep quality in students."),
    ("q1", "Vitamin D fractures elderly", "Vitamin D fractures elderly."),  # id = a query's
]
QUERIES = {
    "q1": "vitamin D and fractures in the elderly",
    "q2": "does smoking cause lung cancer",
    "q3": "exercise and blood pressure",
    "q4": "an unjudged query",
}
QRELS = {"test": [("q1", "d1", 1), ("q2", "d2", 2)], "train": [("q3", "d3", 1)]}


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as f:
        for doc_id, title, text in CORPUS:
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for qid, text in QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    for split, rows in QRELS.items():
        lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in rows)]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tiny")


def test_load_reads_corpus_queries_and_qrels(beir_dir: Path) -> None:
    data = beir.load(beir_dir, "test")
    assert data.doc_ids == ["d1", "d2", "d3", "d4", "q1"]
    assert data.doc_texts[0] == f"Vitamin D\n{CORPUS[0][2]}"  # title + text
    assert data.doc_texts[3] == "Coffee consumption and sleep quality in students."
    assert set(data.queries) == {"q1", "q2"}  # judged queries only
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    with pytest.raises(UserError):
        beir.load(beir_dir, "dev")
    with pytest.raises(UserError):
        beir.load(beir_dir.parent / "missing", "test")


def test_evaluate_scores_every_mode(beir_dir: Path, tmp_path: Path) -> None:
    result = beir.evaluate(beir_dir, "test", embedder=BagOfWords(), cache_dir=tmp_path / "c")
    assert result["queries"] == 2 and result["documents"] == 5
    assert set(result["modes"]) == {"keyword", "vector", "hybrid"}
    for mode, metrics in result["modes"].items():
        # the decoy "q1" matches query q1 best but is ignored, as BEIR does
        assert metrics["ndcg@10"] == pytest.approx(1.0), mode
        assert metrics["recall@100"] == 1.0 and metrics["mrr@10"] == 1.0


def test_evaluate_keyword_needs_no_embedder(beir_dir: Path) -> None:
    result = beir.evaluate(beir_dir, modes=["keyword"], embedder=None, keyword_backend="fts5")
    assert result["embedder"] is None and result["modes"]["keyword"]["mrr@10"] == 1.0
    with pytest.raises(UserError):
        beir.evaluate(beir_dir, modes=["vector"], embedder=None)
    with pytest.raises(UserError):
        beir.evaluate(beir_dir, modes=["fuzzy"], embedder=None)


def test_corpus_vectors_are_cached_by_corpus_and_embedder(beir_dir: Path, tmp_path: Path) -> None:
    data = beir.load(beir_dir, "test")
    embedder = BagOfWords()
    cache = tmp_path / "cache"
    first = beir.embed_corpus(data, embedder, cache)
    assert embedder.calls == 1 and len(list(cache.glob("*.npy"))) == 1
    again = beir.embed_corpus(data, embedder, cache)
    assert embedder.calls == 1  # read back, not embedded again
    np.testing.assert_array_equal(first, again)
    with (beir_dir / "corpus.jsonl").open("a") as f:
        f.write(json.dumps({"_id": "d5", "title": "", "text": "new"}) + "\n")
    beir.embed_corpus(beir.load(beir_dir, "test"), embedder, cache)
    assert embedder.calls == 2 and len(list(cache.glob("*.npy"))) == 2  # new corpus, new key
    beir.embed_corpus(data, embedder, None)
    assert embedder.calls == 3 and len(list(cache.glob("*.npy"))) == 2  # no cache: none written


def test_tune_searches_the_grids_on_the_given_split(beir_dir: Path, tmp_path: Path) -> None:
    result = beir.tune(
        beir_dir,
        "train",
        embedder=BagOfWords(),
        cache_dir=tmp_path / "c",
        k1_grid=(0.9, 1.2),
        b_grid=(0.75,),
        vector_weight_grid=(0.5, 1.0),
        rrf_k_grid=(10.0, 60.0),
        keyword_share_grid=(0.2, 0.5),
    )
    assert result["split"] == "train" and result["queries"] == 1
    assert len(result["bm25_grid"]) == 2 and len(result["fusion_grid"]) == 6
    assert result["bm25"]["k1"] in (0.9, 1.2) and result["bm25"]["ndcg@10"] == pytest.approx(1.0)
    assert set(result["fusion_best"]) == {"rrf", "convex"}
    assert result["fusion_best"]["convex"]["weights"]["keyword"] in (0.2, 0.5)
    assert result["fusion"]["ndcg@10"] == max(r["ndcg@10"] for r in result["fusion_grid"])


def test_main_prints_json(beir_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = beir_dir / "result.json"
    assert beir.main([str(beir_dir), "--modes", "keyword", "--embedder", "none",
                      "--out", str(out)]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["modes"]["keyword"]["ndcg@10"] == pytest.approx(1.0)
    assert json.loads(out.read_text()) == printed


def test_corpus_vectors_of_another_precision_are_another_cache_entry(
    beir_dir: Path, tmp_path: Path
) -> None:
    """The int8 default embedder keeps float32's plain name: its cached vectors must not be
    read back for it (nor its for float32)."""
    data = beir.load(beir_dir, "test")
    cache = tmp_path / "cache"
    plain = BagOfWords()
    beir.embed_corpus(data, plain, cache)
    quantized = BagOfWords()
    quantized.precision = "int8"  # same name, other vectors
    beir.embed_corpus(data, quantized, cache)
    assert quantized.calls == 1 and len(list(cache.glob("*.npy"))) == 2
    beir.embed_corpus(data, quantized, cache)
    assert quantized.calls == 1  # its own entry, read back
