"""The hybrid search engine: schema, text analysis, BM25, fusion, SearchIndex."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from chatwright.errors import UserError
from chatwright.models.embeddings import get_embedder
from chatwright.retrieval import (
    Chunk,
    SearchIndex,
    convex_fusion,
    default_weights,
    reciprocal_rank_fusion,
)
from chatwright.search.bm25 import MAX_BLOCKS, Postings, score_bm25
from chatwright.search.fusion import rrf_score
from chatwright.search.text import analyze, fts5_query
from chatwright.store.migrations import m003_search_index as m003_retrieval
from chatwright.store.migrations import migrate
from chatwright.store.sqlite_chunks import SQLiteChunks

DIM = get_embedder("test:hash").dim


class CountingEmbedder:
    """The ``test:hash`` embedder, recording the size of each batch it is asked for."""

    def __init__(self) -> None:
        self.inner = get_embedder("test:hash")
        self.name, self.dim = self.inner.name, self.inner.dim
        self.batches: list[int] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return self.inner.embed(texts)


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    return db


def make(db: sqlite3.Connection, embedder: object = None, **options: object) -> SearchIndex:
    """A search index over the SQLite backend's chunks in ``db``."""
    return SearchIndex(SQLiteChunks(db, **options), embedder)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(tmp_path / "index.db")
    m003_retrieval(conn)
    yield conn
    conn.close()


@pytest.fixture(params=["memory", "fts5"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def index(db: sqlite3.Connection, backend: str) -> SearchIndex:
    return make(db, keyword_backend=backend)


def unit(*values: float) -> list[float]:
    v = np.asarray(values, dtype=np.float32)
    return list(v / np.linalg.norm(v))


DOCS = [
    ("cats", "Cats are small domesticated carnivorous mammals that purr."),
    ("dogs", "Dogs were domesticated from wolves and love to fetch sticks."),
    ("rust", "Rust is a systems programming language focused on memory safety."),
    ("python", "Python is a programming language with dynamic typing and garbage collection."),
    ("study", "This study examines vitamin D supplementation in elderly patients."),
]


def fill(index: SearchIndex, namespace: str = "collection:1") -> None:
    index.add(namespace, [Chunk(key, text, {"topic": key}) for key, text in DOCS])


# -- schema ---------------------------------------------------------------------------------
def test_migration_runs_inside_the_callers_transaction(tmp_path: Path) -> None:
    conn = connect(tmp_path / "m.db")
    conn.execute("BEGIN IMMEDIATE")
    m003_retrieval(conn)
    conn.execute("ROLLBACK")  # executescript() would have committed: the tables would remain
    tables = conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'chunk%'").fetchall()
    assert tables == []
    m003_retrieval(conn)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master").fetchall()}
    assert {"chunks", "chunks_fts", "chunk_namespaces"} <= names


def test_triggers_keep_fts_and_namespace_counts_in_step(db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO chunks (namespace, key, text) VALUES ('n', 'a', 'alpha beta')")
    db.execute("UPDATE chunks SET text = 'gamma' WHERE key = 'a'")
    match = "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?"
    assert db.execute(match, ("alpha",)).fetchone()[0] == 0
    assert db.execute(match, ("gamma",)).fetchone()[0] == 1
    version, count = db.execute("SELECT version, chunks FROM chunk_namespaces").fetchone()
    assert count == 1
    db.execute("DELETE FROM chunks")
    assert db.execute(match, ("gamma",)).fetchone()[0] == 0
    assert db.execute("SELECT version, chunks FROM chunk_namespaces").fetchone() == (
        version + 1,
        0,
    )


# -- text analysis --------------------------------------------------------------------------
def test_analyze_folds_case_and_accents_drops_stopwords_and_stems() -> None:
    assert analyze("The Studies of Café CELLS, and running!") == ["studi", "cafe", "cell", "run"]
    assert analyze("") == [] and analyze("the of and") == []


@pytest.mark.parametrize(
    "query",
    ['"', 'say "hi', "cats AND dogs", "NOT cats", "cat*", "title:cats", "(cats", "cats)",
     "NEAR(cats dogs, 2)", "^cats", "cats + dogs", "-", "", "   ", "über naïve 日本語 😀",
     "a OR", "{text}: cats", "cats\x00dogs", "' ; DROP TABLE chunks; --"],
)  # fmt: skip
def test_keyword_search_never_errors_on_fts5_syntax(index: SearchIndex, query: str) -> None:
    fill(index)
    hits = index.search(query, ["collection:1"], mode="keyword")
    assert isinstance(hits, list)
    expr = fts5_query(query)
    assert all(t.startswith('"') and t.endswith('"') for t in expr.split(" OR ") if expr)


def test_fts5_query_is_an_or_of_quoted_words() -> None:
    assert fts5_query('Do cats AND "dogs" purr?') == '"cats" OR "dogs" OR "purr"'
    assert fts5_query("the of") == ""


# -- BM25 -----------------------------------------------------------------------------------
def test_bm25_matches_the_formula_by_hand() -> None:
    postings = Postings()
    postings.add([["a", "b"], ["a", "a", "c", "d"], ["c"]])
    k1, b = 1.2, 0.75
    (scores,) = score_bm25([(postings, None)], ["a"], k1=k1, b=b)
    n, df, avgdl = 3, 2, 7 / 3
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))

    def expected(tf: float, dl: float) -> float:
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

    assert scores == pytest.approx([expected(1, 2), expected(2, 4), 0.0], rel=1e-5)
    (masked,) = score_bm25([(postings, np.array([False, True, True]))], ["a"])
    assert masked[0] == 0 and masked[1] > 0


def test_postings_blocks_merge_without_changing_scores() -> None:
    rng = np.random.default_rng(1)
    docs = [[f"w{x}" for x in rng.integers(0, 30, size=rng.integers(1, 12))] for _ in range(40)]
    one = Postings()
    one.add(docs)
    many = Postings()
    for doc in docs:  # one block per doc: merges happen every MAX_BLOCKS + 1 adds
        many.add([doc])
    assert len(many._blocks) <= MAX_BLOCKS
    terms = ["w1", "w2", "w7", "w29"]
    (a,) = score_bm25([(one, None)], terms)
    (b,) = score_bm25([(many, None)], terms)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert one.df("w7") == many.df("w7") > 0


# -- fusion ---------------------------------------------------------------------------------
def test_rrf_by_hand() -> None:
    fused = reciprocal_rank_fusion({"kw": ["x", "y", "z"], "vec": ["z", "x"]}, k=60)
    scores = {f.item: f.score for f in fused}
    assert scores["x"] == pytest.approx(1 / 61 + 1 / 62)
    assert scores["z"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["y"] == pytest.approx(1 / 62)
    assert [f.item for f in fused] == ["x", "z", "y"]
    assert fused[0].ranks == {"kw": 1, "vec": 2}


def test_rrf_weights_k_ties_and_limit() -> None:
    rankings = {"kw": ["x", "y"], "vec": ["y", "x"]}
    assert [f.item for f in reciprocal_rank_fusion(rankings)] == ["x", "y"]  # tie: first seen
    weighted = reciprocal_rank_fusion(rankings, weights={"vec": 2.0}, k=0)
    assert [f.item for f in weighted] == ["y", "x"]
    assert weighted[0].score == pytest.approx(1 / 2 + 2 / 1)
    muted = reciprocal_rank_fusion({"kw": ["x"], "vec": ["y"]}, weights={"kw": 0.0})
    assert [f.item for f in muted] == ["y", "x"] and muted[1].score == 0
    assert len(reciprocal_rank_fusion(rankings, limit=1)) == 1
    assert rrf_score({"a": 1, "b": 3}, {"b": 0.5}, 10) == pytest.approx(1 / 11 + 0.5 / 13)
    with pytest.raises(ValueError):
        reciprocal_rank_fusion(rankings, k=-1)


def test_convex_fusion_by_hand() -> None:
    scored = {"kw": [("x", 10.0), ("y", 5.0)], "vec": [("y", 0.5), ("z", 0.0)]}
    fused = convex_fusion(scored, weights={"kw": 0.25, "vec": 0.75}, floors={"vec": -1.0})
    scores = {f.item: f.score for f in fused}
    # kw scaled between floor 0 and 10: x 1, y 0.5; vec between -1 and 0.5: y 1, z 2/3
    assert scores["x"] == pytest.approx(0.25 * 1 + 0.75 * (2 / 3))  # missing: list's lowest
    assert scores["y"] == pytest.approx(0.25 * 0.5 + 0.75 * 1)
    assert scores["z"] == pytest.approx(0.25 * 0.5 + 0.75 * (2 / 3))
    assert [f.item for f in fused] == ["y", "x", "z"]
    assert fused[0].ranks == {"kw": 2, "vec": 1}
    equal = convex_fusion({"kw": [("a", 3.0), ("b", 3.0)]})
    assert [f.score for f in equal] == [1.0, 1.0]
    assert convex_fusion({"kw": [], "vec": [("a", -2.0)]}, floors={"vec": -1.0})[0].score == 1
    assert len(convex_fusion(scored, limit=2)) == 2


def test_default_weights() -> None:
    assert default_weights("rrf") == {"keyword": 1.0, "vector": 1.0}
    weights = default_weights("convex")
    assert weights["vector"] > weights["keyword"] > 0
    with pytest.raises(UserError):
        default_weights("sum")  # type: ignore[arg-type]


# -- keyword search -------------------------------------------------------------------------
def test_keyword_search_finds_exact_and_stemmed_terms(index: SearchIndex) -> None:
    fill(index)
    assert index.search("garbage collection", ["collection:1"], mode="keyword")[0].key == "python"
    hit = index.search("studies on vitamins", ["collection:1"], mode="keyword")[0]
    assert hit.key == "study"
    assert hit.ranks == {"keyword": 1} and hit.score > 0 and hit.metadata == {"topic": "study"}
    assert index.search("zebra", ["collection:1"], mode="keyword") == []


def test_keyword_ranks_more_matching_terms_higher(index: SearchIndex) -> None:
    fill(index)
    keys = [h.key for h in index.search("programming memory safety", ["collection:1"], k=5)]
    assert keys[:2] == ["rust", "python"]


def test_namespaces_isolate_results(index: SearchIndex) -> None:
    fill(index, "collection:1")
    index.add("thread:7", [Chunk("m1", "my cat is named Tom")])
    assert [h.key for h in index.search("cat", ["thread:7"])] == ["m1"]
    assert {h.namespace for h in index.search("cats", ["collection:1"])} == {"collection:1"}
    both = index.search("cat", ["collection:1", "thread:7"], mode="keyword")
    assert {h.key for h in both} == {"cats", "m1"}
    assert index.search("cat", ["thread:unknown"]) == []
    assert index.search("cat", []) == []


def test_metadata_filters(index: SearchIndex) -> None:
    index.add(
        "c",
        [
            Chunk("a", "apple pie recipe", {"lang": "en", "year": 2020, "draft": True}),
            Chunk("b", "apple tart recipe", {"lang": "fr", "year": 2021}),
            Chunk("c", "apple cake recipe", {"lang": "en", "year": 2021, "draft": None}),
            Chunk("d", "apple crumble recipe", {"draft": 1, "year": [2021]}),
        ],
    )

    def keys(**filters: object) -> set[str]:
        return {h.key for h in index.search("apple recipe", ["c"], mode="keyword", filters=filters)}

    assert keys(lang="en") == {"a", "c"}
    assert keys(lang="en", year=2021) == {"c"}
    assert keys(year=[2020, 2021]) == {"a", "b", "c"}
    assert keys(year=2021.0) == {"b", "c"}
    assert keys(year="2021") == set()  # equality is typed, as in JSON
    assert keys(draft=True) == {"a"}  # true is not 1
    assert keys(draft=1) == {"d"}
    assert keys(draft=None) == {"b", "c"}  # missing or null
    assert keys(draft=[None, True]) == {"a", "b", "c"}
    assert keys(lang="de") == set()
    assert keys(lang=[]) == set()
    with pytest.raises(UserError):
        keys(**{'bad"key': 1})


def test_remove_clear_and_re_add_stay_consistent(index: SearchIndex) -> None:
    fill(index)
    assert index.count("collection:1") == 5
    assert index.search("cats", ["collection:1"])[0].key == "cats"  # segment now cached
    assert index.remove("collection:1", ["cats", "missing"]) == 1
    assert [h.key for h in index.search("cats purr", ["collection:1"])] == []
    index.add("collection:1", [Chunk("cats", "Cats purr loudly.")])
    assert [h.text for h in index.search("purr", ["collection:1"])] == ["Cats purr loudly."]
    index.add("collection:1", [Chunk("cats", "Felines nap all day.")])  # replace by key
    assert index.search("purr", ["collection:1"]) == []
    assert index.search("felines", ["collection:1"])[0].key == "cats"
    assert index.count("collection:1") == 5
    assert index.clear("collection:1") == 5
    assert index.search("felines programming", ["collection:1"]) == []
    assert index.count("collection:1") == 0
    fill(index)
    assert index.search("wolves", ["collection:1"])[0].key == "dogs"


def test_appends_to_a_cached_namespace_match_a_fresh_load(db: sqlite3.Connection) -> None:
    index = make(db)
    index.add("t", [Chunk("0", "seed text about rivers")])
    index.search("rivers", ["t"])  # load the segment, then extend it in place
    segment = index.chunks._segments["t"]
    for i in range(1, 30):
        index.add("t", [Chunk(str(i), f"note {i} about rivers and {'lakes ' * (i % 4)}")])
    assert index.chunks._segments["t"] is segment  # extended, not reloaded
    fresh = make(db)
    for query in ["rivers lakes", "note 17", "lakes"]:
        got = [(h.key, round(h.score, 5)) for h in index.search(query, ["t"], k=30)]
        assert got == [(h.key, round(h.score, 5)) for h in fresh.search(query, ["t"], k=30)]


def test_writes_from_another_connection_are_seen(tmp_path: Path) -> None:
    first = connect(tmp_path / "shared.db")
    m003_retrieval(first)
    reader = make(first)
    reader.add("n", [Chunk("a", "original words")])
    assert [h.key for h in reader.search("original", ["n"])] == ["a"]
    second = connect(tmp_path / "shared.db")
    writer = make(second)
    writer.add("n", [Chunk("b", "brand new words")])
    writer.remove("n", ["a"])
    assert [h.key for h in reader.search("words", ["n"])] == ["b"]
    first.close()
    second.close()


def test_invalid_input_is_a_user_error(index: SearchIndex) -> None:
    with pytest.raises(UserError):
        index.add("", [Chunk("a", "x")])
    with pytest.raises(UserError):
        index.add("n", [Chunk("", "x")])
    with pytest.raises(UserError):
        index.add("n", [42])  # type: ignore[list-item]
    with pytest.raises(UserError):
        index.search("x", ["n"], mode="fuzzy")  # type: ignore[arg-type]
    assert index.add("n", []) == 0


def test_mappings_are_accepted_as_items(index: SearchIndex) -> None:
    index.add("n", [{"key": "a", "text": "mapping item", "metadata": {"x": 1}}])
    assert index.search("mapping", ["n"], mode="keyword")[0].metadata == {"x": 1}


def test_writes_inside_a_callers_transaction_use_a_savepoint(db: sqlite3.Connection) -> None:
    index = make(db)
    db.execute("BEGIN IMMEDIATE")
    index.add("n", [Chunk("a", "inside the outer transaction")])
    db.execute("ROLLBACK")
    assert index.search("outer transaction", ["n"]) == []


# -- vectors and hybrid ---------------------------------------------------------------------
def test_vector_mode_ranks_the_nearest_first(db: sqlite3.Connection) -> None:
    index = make(db)
    index.add(
        "v",
        [
            Chunk("east", "one", {"side": "e"}, vector=unit(1, 0, 0)),
            Chunk("north", "two", {"side": "n"}, vector=unit(0, 1, 0)),
            Chunk("northeast", "three", {"side": "n"}, vector=unit(1, 1, 0)),
            Chunk("novector", "four"),
        ],
    )
    hits = index.search("", ["v"], mode="vector", query_vector=[0.9, 0.3, 0])
    assert [h.key for h in hits] == ["east", "northeast", "north"]
    assert hits[0].scores["vector"] == pytest.approx(0.9 / math.hypot(0.9, 0.3), rel=1e-5)
    assert hits[0].ranks == {"vector": 1}
    filtered = index.search("", ["v"], mode="vector", query_vector=[1, 0, 0], filters={"side": "n"})
    assert [h.key for h in filtered] == ["northeast", "north"]
    with pytest.raises(UserError):
        index.search("x", ["v"], mode="vector", query_vector=[1, 0])  # wrong dimension
    with pytest.raises(UserError):
        index.search("x", ["v"], mode="vector")  # no embedder, no query vector


def test_vectors_of_another_size_are_refused(db: sqlite3.Connection) -> None:
    index = make(db)
    index.add("v", [Chunk("a", "x", vector=[1.0, 0.0])])
    with pytest.raises(UserError):
        index.add("v", [Chunk("b", "y", vector=[1.0, 0.0, 0.0])])
    assert index.count("v") == 1


def test_embedder_fills_missing_vectors_in_batches(db: sqlite3.Connection) -> None:
    embedder = CountingEmbedder()
    index = make(db, embedder)
    index.add("n", [Chunk(str(i), f"text number {i}") for i in range(150)])
    assert embedder.batches == [64, 64, 22]
    assert db.execute("SELECT count(*) FROM chunks WHERE vector IS NULL").fetchone()[0] == 0
    index.add("n", [Chunk("given", "explicit", vector=np.ones(DIM))])
    assert embedder.batches == [64, 64, 22]  # a given vector is not re-embedded
    hits = index.search("", ["n"], mode="vector", query_vector=np.ones(DIM))
    assert hits[0].key == "given"


def test_hybrid_combines_keyword_and_vector_hits(db: sqlite3.Connection) -> None:
    embedder = get_embedder("test:hash")
    index = make(db, embedder)
    index.add(
        "h",
        [
            Chunk("both", "solar panels convert sunlight"),
            Chunk("keyword-only", "panels of experts", vector=unit(*([0.0] * (DIM - 1)), 1.0)),
            Chunk("vector-only", "zzz", vector=embedder.embed(["sunlight energy"])[0]),
            Chunk("neither", "unrelated chatter", vector=-np.ones(DIM)),
        ],
    )
    hits = index.search("solar sunlight energy panels", ["h"], k=10)
    by_key = {h.key: h for h in hits}
    assert hits[0].key == "both"
    assert set(by_key["both"].ranks) == {"keyword", "vector"}
    assert by_key["keyword-only"].ranks.get("keyword") is not None
    assert "keyword" not in by_key["vector-only"].ranks and "vector" in by_key["vector-only"].ranks
    keyword_only = index.search("solar sunlight energy panels", ["h"], mode="keyword")
    assert "vector-only" not in {h.key for h in keyword_only}
    for fusion in ("convex", "rrf"):
        muted = index.search(
            "solar panels", ["h"], fusion=fusion, weights={"keyword": 1.0, "vector": 0.0}
        )
        assert [h.key for h in muted][:2] == ["both", "keyword-only"], fusion
        rrf = index.search("solar sunlight energy panels", ["h"], fusion=fusion)
        assert rrf[0].key == "both" and {h.key for h in rrf} == set(by_key), fusion


def test_hybrid_without_embedder_is_keyword_search(db: sqlite3.Connection) -> None:
    index = make(db)
    fill(index)
    hybrid = index.search("wolves", ["collection:1"])
    assert [h.key for h in hybrid] == ["dogs"] and hybrid[0].ranks == {"keyword": 1}


def test_least_recently_searched_segments_are_evicted(db: sqlite3.Connection) -> None:
    index = make(db, max_cached_chunks=3)
    for name in ("a", "b", "c"):
        index.add(name, [Chunk("1", f"{name} words"), Chunk("2", f"more {name} words")])
    index.search("words", ["a"])
    index.search("words", ["b"])  # 4 chunks cached > 3: "a" goes
    assert list(index.chunks._segments) == ["b"]
    assert [h.namespace for h in index.search("words", ["a", "c"], k=1)] == ["a"]
    assert set(index.chunks._segments) == {"a", "c"}  # a search's own segments are kept


def test_fts5_keyword_search_loads_nothing_in_memory(db: sqlite3.Connection) -> None:
    index = make(db, keyword_backend="fts5")
    fill(index)
    assert index.search("wolves", ["collection:1"], mode="keyword")[0].key == "dogs"
    assert index.chunks._segments == {}


def test_the_fts5_index_is_made_only_where_the_fts5_backend_searches(tmp_path: Path) -> None:
    db = connect(tmp_path / "full.db")
    migrate(db)  # schema 12: no FTS5 index to keep up for the default backend
    fts = "SELECT count(*) FROM sqlite_master WHERE name LIKE 'chunks_fts%'"
    assert db.execute(fts).fetchone()[0] == 0
    memory = make(db)
    fill(memory)
    assert memory.search("wolves", ["collection:1"], mode="keyword")[0].key == "dogs"
    assert db.execute(fts).fetchone()[0] == 0
    count = db.execute("SELECT chunks FROM chunk_namespaces").fetchone()[0]
    assert count == len(DOCS)  # the counters' triggers still count
    index = make(db, keyword_backend="fts5")
    assert index.search("wolves", ["collection:1"], mode="keyword")[0].key == "dogs"  # rebuilt
    assert db.execute(fts).fetchone()[0] > 0
    memory.add("collection:1", [Chunk("bees", "Bees make honey from nectar.")])  # either one
    memory.remove("collection:1", ["cats"])  # writes: the FTS5 index keeps up
    assert index.search("honey", ["collection:1"], mode="keyword")[0].key == "bees"
    assert index.search("purr", ["collection:1"], mode="keyword") == []
    assert index.chunks.matching("nectar honey", "collection:1") == 1
    assert db.execute("SELECT chunks FROM chunk_namespaces").fetchone()[0] == len(DOCS)
    db.close()


def test_the_migration_drops_an_fts5_index_and_keeps_the_counts(db: sqlite3.Connection) -> None:
    from chatwright.store.migrations import m012_fts_on_demand

    fill(make(db))  # schema 3's triggers: FTS5 and the counters
    db.execute("BEGIN")
    m012_fts_on_demand(db)
    db.execute("COMMIT")
    fts = db.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'chunks_fts%'")
    assert fts.fetchone()[0] == 0
    db.execute("INSERT INTO chunks (namespace, key, text) VALUES ('collection:1', 'z', 'zeta')")
    db.execute("DELETE FROM chunks WHERE key = 'cats'")
    assert db.execute("SELECT chunks FROM chunk_namespaces").fetchone()[0] == len(DOCS)
    assert make(db, keyword_backend="fts5").search("zeta", ["collection:1"])[0].key == "z"


def test_keyword_mode_does_not_embed_the_query(db: sqlite3.Connection) -> None:
    embedder = CountingEmbedder()
    index = make(db, embedder)
    index.add("n", [Chunk("a", "alpha", vector=np.ones(DIM))])
    assert index.search("alpha", ["n"], mode="keyword")[0].key == "a"
    assert embedder.batches == []
    index.search("alpha", ["n"])
    assert embedder.batches == [1]


def test_preload_loads_namespaces_ahead_of_search(db: sqlite3.Connection) -> None:
    index = make(db)
    fill(index)
    assert index.chunks._segments == {}
    index.preload(["collection:1", "absent"])
    assert set(index.chunks._segments) == {"collection:1"}
    assert index.chunks._segments["collection:1"].pks.size == len(DOCS)


def test_query_embeddings_are_memoized_across_searches() -> None:
    import sqlite3 as _sqlite3

    import numpy as _np

    from chatwright.models.embeddings import get_embedder

    class Counting:
        name, dim = "counting", 256

        def __init__(self) -> None:
            self.inner, self.calls = get_embedder("test:hash"), []

        def embed(self, texts):
            self.calls.append(list(texts))
            return self.inner.embed(texts)

    conn = _sqlite3.connect(":memory:", isolation_level=None)
    m003_retrieval(conn)
    embedder = Counting()
    index = make(conn, embedder)
    index.add("ns", [Chunk("a", "cats purr"), Chunk("b", "dogs bark")])
    embedder.calls.clear()
    first = index.embed_query("why do cats purr")
    index.search("why do cats purr", ["ns"], k=1)
    index.search("why do cats purr", ["ns"], k=1)
    assert embedder.calls == [["why do cats purr"]]  # one embedding for all three
    _np.testing.assert_array_equal(first, index.embed_query("why do cats purr"))
    index.search("dogs", ["ns"], k=1)
    assert embedder.calls[-1] == ["dogs"]


# -- cost that does not grow with the namespace (issue 14 item 3) ---------------------------
def test_adding_a_few_documents_never_merges_the_large_old_block() -> None:
    rng = np.random.default_rng(3)
    docs = [[f"w{x}" for x in rng.integers(0, 50, size=8)] for _ in range(600)]
    postings = Postings()
    postings.add(docs[:500])
    old = postings._blocks[0]
    for doc in docs[500:]:  # one document a turn, as recall indexes a thread
        postings.add([doc])
        assert postings._blocks[0] is old  # merged with blocks of its size only
    assert len(postings._blocks) <= 1 + math.ceil(math.log2(100)) <= MAX_BLOCKS
    whole = Postings()
    whole.add(docs)
    terms = ["w1", "w7", "w49"]
    np.testing.assert_array_equal(
        score_bm25([(postings, None)], terms)[0], score_bm25([(whole, None)], terms)[0]
    )


def test_matching_counts_what_keyword_search_would_rank(index: SearchIndex) -> None:
    fill(index)
    fill(index, "collection:2")
    chunks = index.chunks
    for query in ["cats", "Cat dogs", "vitamin study elderly", "the", "zebra", "", "Ada's"]:
        ranked = chunks.keyword(query, ["collection:1"], None, 1000)
        assert chunks.matching(query, "collection:1") == len(ranked), query  # type: ignore[attr-defined]
        for at_least in (1, len(ranked), len(ranked) + 1):
            assert index.matching(query, "collection:1", at_least) == (len(ranked) >= at_least)
    assert chunks.matching("cats", "collection:9") == 0  # type: ignore[attr-defined]


def test_matching_falls_back_to_a_keyword_search_where_the_backend_cannot_count(
    db: sqlite3.Connection,
) -> None:
    class Plain:  # a ChunkIndex without ``matching`` (as PostgreSQL's)
        def __init__(self, inner: SQLiteChunks) -> None:
            self.inner, self.depths = inner, []

        def keyword(self, query, namespaces, filters, depth):  # type: ignore[no-untyped-def]
            self.depths.append(depth)
            return self.inner.keyword(query, namespaces, filters, depth)

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            if name == "matching":
                raise AttributeError(name)
            return getattr(self.inner, name)

    inner = SQLiteChunks(db)
    fill(SearchIndex(inner))
    plain = Plain(inner)
    index = SearchIndex(plain)  # type: ignore[arg-type]
    assert index.matching("cats", "collection:1", 1)
    assert not index.matching("cats", "collection:1", 100)
    assert plain.depths == [1, 100]


class GatedEmbedder:
    """``test:hash`` whose next query embedding blocks until released; records batches."""

    def __init__(self) -> None:
        import threading

        self.inner = get_embedder("test:hash")
        self.name, self.dim = "gated", self.inner.dim
        self.calls: list[list[str]] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if list(texts) == ["the query"]:
            self.entered.set()
            assert self.release.wait(5)
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def test_background_embedding_waits_for_a_query_and_goes_in_short_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    import time

    import chatwright.retrieval.index as index_module

    monkeypatch.setattr(index_module, "_QUIET_S", 0.05)
    monkeypatch.setattr(index_module, "_QUIET_MAX_S", 10.0)  # a slow machine: still waiting
    embedder = GatedEmbedder()
    index = SearchIndex(SQLiteChunks(sqlite3.connect(":memory:")), embedder)  # type: ignore[arg-type]
    query = threading.Thread(target=index.embed_query, args=("the query",))
    query.start()
    assert embedder.entered.wait(5)
    texts = [f"old turn {i} " + "x" * 300 for i in range(20)]
    out: list[np.ndarray] = []
    background = threading.Thread(target=lambda: out.append(index.embed_background(texts)))
    background.start()
    time.sleep(0.2)
    assert embedder.calls == []  # nothing embedded while the turn's query is
    released = time.monotonic()
    embedder.release.set()
    query.join(5)
    background.join(5)
    assert embedder.calls[0] == ["the query"]
    passes = embedder.calls[1:]
    assert [t for p in passes for t in p] == texts  # all of them, in order
    assert max(len(p) for p in passes) <= index_module._PASS_TEXTS
    assert all(sum(len(t) for t in p) <= index_module._PASS_CHARS for p in passes)
    assert time.monotonic() - released >= 0.05  # a quiet moment after the query first
    np.testing.assert_allclose(out[0], embedder.inner.embed(texts), rtol=1e-6)


def test_background_embedding_still_progresses_under_a_stream_of_queries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import chatwright.retrieval.index as index_module

    monkeypatch.setattr(index_module, "_QUIET_S", 10.0)  # never quiet...
    monkeypatch.setattr(index_module, "_QUIET_FACTOR", 1e9)
    monkeypatch.setattr(index_module, "_QUIET_MAX_S", 0.05)  # ...but each pass waits this long
    embedder = CountingEmbedder()
    index = SearchIndex(SQLiteChunks(sqlite3.connect(":memory:")), embedder)  # type: ignore[arg-type]
    index.embed_query("a question")
    start = time.monotonic()
    vectors = index.embed_background(["one", "two", "three"])
    assert vectors.shape == (3, embedder.dim)
    assert 0.05 <= time.monotonic() - start < 5


def test_an_embedder_that_costs_nothing_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import chatwright.retrieval.index as index_module

    monkeypatch.setattr(index_module, "_QUIET_S", 5.0)  # what a slow query would be given
    index = SearchIndex(SQLiteChunks(sqlite3.connect(":memory:")), CountingEmbedder())  # type: ignore[arg-type]
    index.embed_query("a question")  # test:hash: microseconds
    start = time.monotonic()
    index.embed_background(["one", "two"])
    assert time.monotonic() - start < 0.9  # not 5 s, nor the 1 s cap


def test_a_remote_embedder_gets_its_usual_batches_and_no_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Short passes spare this machine's cores; a server's embedder would only get 8x the
    requests (and each pass a wait)."""
    import time

    import chatwright.retrieval.index as index_module
    from chatwright.models._remote import RemoteModel

    class RemoteCounting(RemoteModel, CountingEmbedder):
        provider = "openai"

        def __init__(self) -> None:
            CountingEmbedder.__init__(self)

    monkeypatch.setattr(index_module, "_QUIET_S", 10.0)
    monkeypatch.setattr(index_module, "_QUIET_FACTOR", 1e9)
    embedder = RemoteCounting()
    index = SearchIndex(SQLiteChunks(sqlite3.connect(":memory:")), embedder)  # type: ignore[arg-type]
    index.embed_query("a question")
    start = time.monotonic()
    vectors = index.embed_background([f"old turn {i}" for i in range(100)])
    assert vectors.shape == (100, embedder.dim)
    assert embedder.batches[1:] == [64, 36]
    assert time.monotonic() - start < 0.9  # no pass waited for a quiet moment
