"""Collection routing: strategies, the chain and its fallback, profiles from the index."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chatwright.errors import ModelUnavailable
from chatwright.models.embeddings import get_embedder
from chatwright.models.test import ScriptedModel
from chatwright.retrieval.index import SearchIndex
from chatwright.routing import (
    AllRouter,
    ChitChatRouter,
    CollectionProfile,
    KeywordEvidence,
    LlmRouter,
    ProfileCache,
    Route,
    RulesRouter,
    SemanticRouter,
    achain,
    build_profiles,
    chain,
    clauses,
    embed_exemplars,
    evidence_from_hits,
    is_chitchat,
    merge_clauses,
    phrases,
    vocabulary_fit,
    with_evidence,
)
from chatwright.routing.router import PHRASE_TEXTS
from chatwright.store.base import CollectionInfo
from chatwright.store.migrations import m003_search_index as m003_retrieval
from chatwright.store.sqlite_chunks import SQLiteChunks

EMB = get_embedder("test:hash")
TOPICS = {
    "devices": "wifi router printer ink cartridge firmware reset",
    "recipes": "pasta bread cake oven bake recipe flour",
    "hr": "annual leave holiday pension salary sick leave",
}


def vec(text: str) -> np.ndarray:
    return EMB.embed([text])[0]


def profile(name: str, text: str | None, centroid_text: str | None = None) -> CollectionProfile:
    return CollectionProfile(
        name=name,
        namespace=f"collection:{name}",
        description=text or "",
        centroid=None if centroid_text is None else vec(centroid_text),
        chunks=0 if centroid_text is None else 3,
        description_vector=None if text is None else vec(text),
    )


@pytest.fixture
def profiles() -> list[CollectionProfile]:
    return [profile(n, t, t) for n, t in TOPICS.items()]


class Unsure:
    name = "unsure"

    def route(self, query, query_vector, profiles):  # type: ignore[no-untyped-def]
        return None


def test_chain_first_sure_router_wins(profiles: list[CollectionProfile]) -> None:
    rules = RulesRouter({"hr": [r"\bleave\b"]})
    route = chain([Unsure(), rules, AllRouter()], profiles, "how much leave?", None)
    assert route.collections == ["hr"] and route.strategy == "rules" and not route.fallback
    route = chain([AllRouter(), rules], profiles, "how much leave?", None)
    assert route.strategy == "all" and route.collections == list(TOPICS)


def test_chain_all_unsure_falls_back_to_all(profiles: list[CollectionProfile]) -> None:
    route = chain([Unsure(), RulesRouter({"hr": ["pension"]})], profiles, "what now", None)
    assert route.fallback and route.strategy == "fallback"
    assert route.collections == list(TOPICS)
    assert "fallback" in route.describe()


def test_chain_router_error_is_a_note(profiles: list[CollectionProfile]) -> None:
    class Boom:
        name = "boom"

        def route(self, *args):  # type: ignore[no-untyped-def]
            raise RuntimeError("kaput")

    route = chain([Boom()], profiles, "q", None)
    assert route.fallback and any("kaput" in n for n in route.notes)


@pytest.mark.parametrize("text", ["hi", "Hello there!", "thanks so much", "bye", "ok", "lol"])
def test_chitchat_routes_to_none(profiles: list[CollectionProfile], text: str) -> None:
    assert is_chitchat(text)
    route = chain([ChitChatRouter(), AllRouter()], profiles, text, vec(text))
    assert route.collections == [] and route.reason == "chit-chat" and not route.fallback


def test_chitchat_patterns_leave_questions_alone() -> None:
    assert not is_chitchat("how do I reset the router?")
    assert not is_chitchat("thanks, and how do I bake bread?")


def test_chitchat_emoji_and_long_messages() -> None:
    assert is_chitchat("🙂") and is_chitchat("?!") and is_chitchat("   ")
    long = "hi " * 10_000  # never small talk by pattern, and cheap to check
    assert not is_chitchat(long)


def test_semantic_chitchat_by_exemplar(profiles: list[CollectionProfile]) -> None:
    exemplars = EMB.embed(["nice weather today friend"])
    router = SemanticRouter(chitchat=exemplars, chitchat_threshold=0.3)
    route = router.route("nice weather today friend", vec("nice weather today friend"), profiles)
    assert route is not None and route.collections == [] and "small talk" in route.reason
    assert all("small talk" in why for why in route.why.values())
    assert SemanticRouter().route("x", vec("nice weather today"), profiles) != route


def test_semantic_small_talk_needs_to_beat_the_best_chunk(
    profiles: list[CollectionProfile],
) -> None:
    """A question close to a small-talk exemplar but closer still to a chunk is a question."""
    q = "bake bread recipe"
    exemplars = EMB.embed(["bake bread recipe please friend"])
    near = _evidence(profiles, {"recipes": [0.99]}, q)
    loose = SemanticRouter(chitchat=exemplars, chitchat_threshold=0.3, chitchat_margin=-1.0)
    strict = SemanticRouter(chitchat=exemplars, chitchat_threshold=0.3, chitchat_margin=0.0)
    assert loose.route(q, vec(q), near).collections == []  # type: ignore[union-attr]
    assert strict.route(q, vec(q), near).collections == ["recipes"]  # type: ignore[union-attr]


def test_embed_exemplars_cached() -> None:
    assert embed_exemplars(EMB) is embed_exemplars(EMB)


def _evidence(
    profiles: list[CollectionProfile],
    chunks: dict[str, list[float]],
    query: str = "",
    keywords: dict[str, float] | None = None,
) -> list[CollectionProfile]:
    """``profiles`` as if the query's nearest chunks were ``chunks`` (cosines per name)."""
    hits = sorted(
        ((f"collection:{n}", c) for n, cs in chunks.items() for c in cs), key=lambda h: -h[1]
    )
    kw = None if keywords is None else [(f"collection:{n}", s) for n, s in keywords.items()]
    return evidence_from_hits(profiles, hits, len(hits), kw)


def test_semantic_picks_best(profiles: list[CollectionProfile]) -> None:
    q = "my router firmware needs a reset"
    route = SemanticRouter().route(q, vec(q), _evidence(profiles, {"devices": [0.7, 0.6]}))
    assert route is not None and route.collections == ["devices"] and not route.unsure
    assert set(route.scores) == set(TOPICS) and route.scores["devices"] > route.scores["hr"]
    assert route.why["devices"].startswith("best") and route.why["hr"].startswith("left out")


def test_semantic_adds_a_close_runner_up_with_votes(profiles: list[CollectionProfile]) -> None:
    """Rule 4: a second collection only when its score is close to the best one's."""
    q = "printer ink cartridge and sick leave pension"
    seen = _evidence(profiles, {"devices": [0.62, 0.6], "hr": [0.61, 0.6]})
    route = SemanticRouter(margin=0.1, clauses=False).route(q, vec(q), seen)
    assert route is not None and sorted(route.collections) == ["devices", "hr"]
    assert "within" in route.why[route.collections[1]]
    narrow = SemanticRouter(margin=0.0).route(q, vec(q), seen)
    assert narrow is not None and len(narrow.collections) == 1
    assert "left out" in narrow.why[route.collections[1]]


def test_semantic_close_runner_up_without_votes_is_left_out(
    profiles: list[CollectionProfile],
) -> None:
    """Rule 4: close in score but holding few of the nearest chunks: not added."""
    q = "printer ink"
    seen = _evidence(profiles, {"devices": [0.6] * 9, "hr": [0.58]})
    wide = SemanticRouter(margin=1.0, min_share=0.0, keyword_share=2.0)
    picky = SemanticRouter(margin=1.0, min_share=0.3, keyword_share=2.0)
    assert "hr" in wide.route(q, vec(q), seen).collections  # type: ignore[union-attr]
    route = picky.route(q, vec(q), seen)
    assert route is not None and route.collections == ["devices"]
    assert "of the nearest chunks" in route.why["hr"]


def test_semantic_runner_up_named_by_keywords(profiles: list[CollectionProfile]) -> None:
    """Rule 4: a runner-up that the keyword matches name is added within keyword_margin."""
    q = "printer ink"
    seen = _evidence(profiles, {"devices": [0.6] * 9}, keywords={"devices": 1.0, "hr": 1.0})
    route = SemanticRouter(margin=0.0, keyword_share=0.4, keyword_margin=1.0).route(q, vec(q), seen)
    assert route is not None and route.collections[1:] == ["hr"]
    assert "keyword matches" in route.why["hr"]
    off = SemanticRouter(margin=0.0, keyword_share=0.6, keyword_margin=1.0).route(q, vec(q), seen)
    assert off is not None and off.collections == ["devices"]


def test_semantic_keywords_single_out_a_collection(profiles: list[CollectionProfile]) -> None:
    """Rule 3: the collection holding the best keyword match, by keyword_lead x any other's,
    is taken instead of the best when its score is within keyword_lead_margin."""
    q = "Gold Plus account"
    seen = _evidence(
        profiles, {"devices": [0.62], "hr": [0.6]}, keywords={"hr": 20.0, "devices": 9.0}
    )
    options = {"margin": 0.0, "chunk_weight": 1.0, "size_penalty": 0.0, "clauses": False}
    route = SemanticRouter(keyword_lead=1.8, keyword_lead_margin=0.1, **options).route(
        q, vec(q), seen
    )
    assert route is not None and route.collections == ["hr"]
    assert route.why["hr"].startswith("taken") and "keyword match" in route.why["hr"]
    assert "keywords single out hr" in route.why["devices"]
    assert "singled out by the keywords" in route.reason
    off = SemanticRouter(keyword_lead=0.0, **options).route(q, vec(q), seen)
    assert off is not None and off.collections == ["devices"]


def test_semantic_keyword_lead_needs_a_lead_and_a_close_score(
    profiles: list[CollectionProfile],
) -> None:
    """Rule 3 does not fire when the keyword lead is small or the score is far behind."""
    q = "Gold Plus account"
    options = {"margin": 0.0, "chunk_weight": 1.0, "size_penalty": 0.0, "clauses": False}
    router = SemanticRouter(keyword_lead=1.8, keyword_lead_margin=0.1, **options)
    small = _evidence(
        profiles, {"devices": [0.62], "hr": [0.6]}, keywords={"hr": 12.0, "devices": 9.0}
    )
    assert router.route(q, vec(q), small).collections == ["devices"]  # type: ignore[union-attr]
    far = _evidence(
        profiles, {"devices": [0.8], "hr": [0.6]}, keywords={"hr": 20.0, "devices": 9.0}
    )
    assert router.route(q, vec(q), far).collections == ["devices"]  # type: ignore[union-attr]
    alone = _evidence(profiles, {"devices": [0.62], "hr": [0.6]}, keywords={"hr": 5.0})
    route = router.route(q, vec(q), alone)  # no other collection matched any keyword
    assert route is not None and route.collections == ["hr"]


def test_keyword_search_only_when_a_rival_is_close(profiles: list[CollectionProfile]) -> None:
    """The keyword search is made only when the lead rule could change the decision (another
    collection within keyword_lead_margin of the best); else it is skipped."""
    q = "Gold Plus account"
    calls: list[int] = []

    def search() -> list[tuple[str, float]]:
        calls.append(1)
        return [("collection:hr", 20.0), ("collection:devices", 9.0)]

    options = {"margin": 0.0, "chunk_weight": 1.0, "size_penalty": 0.0, "clauses": False}
    router = SemanticRouter(keyword_lead=1.8, keyword_lead_margin=0.1, **options)
    hits = [("collection:devices", 0.9), ("collection:hr", 0.5)]
    clear = evidence_from_hits(profiles, hits, 2, KeywordEvidence(search, 2))
    route = router.route(q, vec(q), clear)
    assert route is not None and route.collections == ["devices"] and calls == []
    assert "keywords" not in route.why["devices"]  # no search made, none claimed
    close = evidence_from_hits(
        profiles,
        [("collection:devices", 0.62), ("collection:hr", 0.6)],
        2,
        KeywordEvidence(search, 2),
    )
    route = router.route(q, vec(q), close)
    assert route is not None and route.collections == ["hr"] and calls == [1]


def test_evidence_keeps_each_collections_best_keyword_match(
    profiles: list[CollectionProfile],
) -> None:
    seen = _evidence(profiles, {"devices": [0.6, 0.5]}, keywords={"hr": 7.5, "devices": 3.0})
    best = {p.name: p.keyword_best for p in seen}
    assert best == {"devices": 3.0, "hr": 7.5, "recipes": 0.0}
    assert all(p.keyword_best is None for p in _evidence(profiles, {"devices": [0.6]}))


def test_phrases_are_neighbouring_index_terms() -> None:
    """Stopwords dropped and words stemmed as keyword search does, so the same phrase is
    found in a query and a chunk however either is worded."""
    assert phrases("Can you explain parent or guardian requirements?") == [
        ("explain", "parent"),
        ("parent", "guardian"),
        ("guardian", "requir"),
    ]
    assert phrases("the Gold Plus account, gold plus") == [
        ("gold", "plus"),
        ("plus", "account"),
        ("account", "gold"),
    ]
    assert phrases("hello") == [] and phrases("") == []


def _phrase_evidence(
    profiles: list[CollectionProfile], texts: dict[str, list[str]], query: str
) -> list[CollectionProfile]:
    """``profiles`` whose nearest chunks put devices just ahead of hr, with keyword matches
    of ``texts`` (per name, BM25 10 each) for ``query``."""
    hits = [("collection:devices", 0.62), ("collection:hr", 0.6)]
    kw = [(f"collection:{n}", 10.0, t) for n, ts in texts.items() for t in ts]
    return evidence_from_hits(profiles, hits, 40, kw, query=query)


_PLAIN = {"margin": 0.0, "chunk_weight": 1.0, "size_penalty": 0.0, "clauses": False}


def test_semantic_phrases_single_out_a_collection(profiles: list[CollectionProfile]) -> None:
    """Rule 3: the only collection whose keyword matches hold the query's phrases (at least
    phrase_lead of them) is taken instead of the best when within phrase_margin; the words
    alone (BM25 about even) would not single it out."""
    q = "Sky Blue card free period"
    seen = _phrase_evidence(
        profiles,
        {
            "hr": ["The Sky Blue card has a free period of 30 days."],
            "devices": ["blue sky firmware: a free card reader, for a trial period"],
        },
        q,
    )
    held = {p.name: p.keyword_phrases for p in seen}
    assert held["hr"] == ("blue card", "card free", "free period", "sky blue")
    assert held["devices"] == () and held["recipes"] == ()
    route = SemanticRouter(phrase_lead=2, phrase_margin=0.1, **_PLAIN).route(q, vec(q), seen)
    assert route is not None and route.collections == ["hr"]
    assert route.why["hr"].startswith("taken") and "'sky blue'" in route.why["hr"]
    assert "phrases single out hr" in route.why["devices"]
    assert "singled out by the phrases" in route.reason
    off = SemanticRouter(phrase_lead=0, **_PLAIN).route(q, vec(q), seen)
    assert off is not None and off.collections == ["devices"]
    far = SemanticRouter(phrase_lead=2, phrase_margin=0.01, **_PLAIN).route(q, vec(q), seen)
    assert far is not None and far.collections == ["devices"]  # score too far behind


def test_semantic_phrases_need_enough_and_no_rival(profiles: list[CollectionProfile]) -> None:
    """Rule 3 does not fire on one phrase only, nor when another collection holds one too."""
    q = "Sky Blue card free period"
    router = SemanticRouter(phrase_lead=2, phrase_margin=0.1, **_PLAIN)
    one = _phrase_evidence(profiles, {"hr": ["a sky blue wall"], "devices": ["card"]}, q)
    assert router.route(q, vec(q), one).collections == ["devices"]  # type: ignore[union-attr]
    shared = _phrase_evidence(
        profiles,
        {"hr": ["the Sky Blue card has a free period"], "devices": ["the free period ends"]},
        q,
    )
    assert router.route(q, vec(q), shared).collections == ["devices"]  # type: ignore[union-attr]
    no_text = evidence_from_hits(
        profiles,
        [("collection:devices", 0.62), ("collection:hr", 0.6)],
        2,
        [("collection:hr", 10.0)],
        query=q,
    )
    assert all(p.keyword_phrases is None for p in no_text)  # matches without text: not known


def test_phrases_read_each_collections_best_matches_only() -> None:
    """The cost stays bounded: only each collection's best PHRASE_TEXTS matches are read."""
    q = "Sky Blue card"
    deep = [("collection:hr", 9.0, "nothing here")] * PHRASE_TEXTS
    hits = [*deep, ("collection:hr", 8.0, "Sky Blue card"), ("collection:devices", 7.0, "sky blue")]
    held = KeywordEvidence.of(hits, 40, q).phrases_found()
    assert held == {"collection:hr": (), "collection:devices": ("sky blue",)}
    assert KeywordEvidence.of(hits, 40).phrases_found() is None  # no query: not known


def test_phrases_found_by_the_routes_keyword_search(index: SearchIndex) -> None:
    """with_evidence's keyword search keeps the matched chunks' text, so the lazy evidence
    knows which of the query's phrases each collection holds, searched once on demand."""
    index.add("collection:1", [{"key": "a", "text": "The Gold Plus account pays interest"}])
    index.add("collection:2", [{"key": "b", "text": "gold medals; a plus sign; account names"}])
    profiles = build_profiles(index, [info("bank", 1), info("misc", 2)], EMB, cache=ProfileCache())
    q = "gold plus account interest"
    seen = with_evidence(index, profiles, q, vec(q))
    search = seen[0].keyword_search
    assert search is not None and not search.searched
    held = search.phrases_found()
    assert held == {
        "collection:1": ("gold plus", "plus account"),
        "collection:2": (),
    }
    assert search.searched


def test_vocabulary_fit_prefers_the_collection_whose_chunks_hold_the_words() -> None:
    counts = {
        "space": (100, (30, 5)),  # 30% of its chunks say "moxie", 5% "oxygen"
        "health": (100, (0, 20)),
        "unknown": None,  # an external source or an empty collection: the prior
    }
    fit = vocabulary_fit(counts, smoothing=2.0)
    assert fit["space"] == 0.0 and fit["health"] < fit["unknown"] < 0.0
    # a collection without counts sits at the mean of the others: neither favoured nor hurt
    assert abs(fit["unknown"] - (fit["space"] + fit["health"]) / 2) < 1e-9
    # a keyword no chunk holds says nothing: the same fits with it, whatever the sizes
    held_nowhere = {"space": (100, (30, 5, 0)), "health": (100, (0, 20, 0)), "unknown": None}
    assert vocabulary_fit(held_nowhere) == fit
    assert vocabulary_fit({"big": (5000, (0,)), "small": (20, (0,))}) == {}
    # heavier smoothing pulls every collection toward the prior: smaller differences
    assert vocabulary_fit(counts, smoothing=50.0)["health"] > fit["health"]
    # a tiny collection's one lucky chunk counts less than a big one's steady share
    lucky = vocabulary_fit({"tiny": (2, (1,)), "big": (1000, (300,)), "other": (1000, (0,))})
    assert lucky["big"] == 0.0 and lucky["other"] < lucky["tiny"] < 0.0
    assert vocabulary_fit({}) == {} and vocabulary_fit({"a": None}) == {}
    assert vocabulary_fit({"a": (5, ()), "b": (5, ())}) == {}  # no keywords
    assert vocabulary_fit({"a": (5, (1,)), "b": (5, (1, 2))}) == {}  # not the same keywords


def test_semantic_vocabulary_decides_a_near_tie(profiles: list[CollectionProfile]) -> None:
    """The vocabulary term: devices' best chunk is a little nearer, but the query's words are
    common in hr's chunks and rare in devices': hr is taken, and the trace shows why."""
    q = "pension salary"
    hits = [("collection:devices", 0.62), ("collection:hr", 0.61), ("collection:recipes", 0.1)]
    counts = {
        "collection:devices": (100, (1, 0)),
        "collection:hr": (100, (40, 35)),
        "collection:recipes": (100, (0, 0)),
    }
    seen = evidence_from_hits(profiles, hits, 40, term_counts=counts)
    assert {p.name: p.term_counts for p in seen}["hr"] == (100, (40, 35))
    options = {**_PLAIN, "keyword_lead": 0.0, "phrase_lead": 0}
    route = SemanticRouter(vocabulary_weight=0.06, **options).route(q, vec(q), seen)
    assert route is not None and route.collections == ["hr"]
    assert "vocabulary +0.00" in route.why["hr"] and "vocabulary -" in route.why["devices"]
    off = SemanticRouter(vocabulary_weight=0.0, **options).route(q, vec(q), seen)
    assert off is not None and off.collections == ["devices"]
    unknown = evidence_from_hits(profiles, hits, 40)  # no counts: the term is left out
    plain = SemanticRouter(vocabulary_weight=0.06, **options).route(q, vec(q), unknown)
    assert plain is not None and plain.collections == ["devices"]
    assert "vocabulary" not in plain.why["devices"]
    with pytest.raises(ValueError, match="vocabulary"):
        SemanticRouter(vocabulary_smoothing=0.0)
    with pytest.raises(ValueError, match="vocabulary"):
        SemanticRouter(vocabulary_weight=-1.0)


def test_with_evidence_counts_the_querys_words(tmp_path: Path) -> None:
    """with_evidence reads each collection's keyword counts from the index, only when asked;
    a query without keywords has none."""
    db = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    m003_retrieval(db)
    index = SearchIndex(SQLiteChunks(db), EMB)
    index.add(
        "collection:1", [{"key": "a", "text": "pension and salary"}, {"key": "b", "text": "salary"}]
    )
    index.add("collection:2", [{"key": "c", "text": "printer"}])
    profiles = build_profiles(index, [info("hr", 1), info("devices", 2)], EMB, cache=ProfileCache())
    q = "pension salary"
    seen = {p.name: p.term_counts for p in with_evidence(index, profiles, q, vec(q))}
    assert seen["hr"] is not None and seen["devices"] is not None
    assert seen["hr"][0] == 2 and sorted(seen["hr"][1]) == [1, 2]
    assert seen["devices"] == (1, (0, 0))
    off = with_evidence(index, profiles, q, vec(q), vocabulary=False)
    assert all(p.term_counts is None for p in off)
    alone = with_evidence(index, profiles[:1], q, vec(q))  # one collection: nothing to rank
    assert alone[0].term_counts is None
    none = with_evidence(index, profiles, "the and", vec("the and"))
    assert all(p.term_counts is None for p in none)
    db.close()


def test_routing_goes_without_counts_where_the_index_has_none(tmp_path: Path) -> None:
    """The fts5 keyword backend counts no words (a MATCH per word, on every turn, would cost
    more than the route), nor does a chunk index without ``term_counts``: the route is made
    without the vocabulary term, never an error."""
    db = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
    m003_retrieval(db)

    class Plain:  # a ChunkIndex without term_counts
        def __init__(self, inner: SQLiteChunks) -> None:
            self.inner = inner

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            if name == "term_counts":
                raise AttributeError(name)
            return getattr(self.inner, name)

    fts5 = SQLiteChunks(db, keyword_backend="fts5")
    for chunks in (fts5, Plain(fts5)):
        index = SearchIndex(chunks, EMB)  # type: ignore[arg-type]
        index.add("collection:1", [{"key": "a", "text": "pension and salary"}])
        index.add("collection:2", [{"key": "c", "text": "printer"}])
        assert index.term_counts("pension salary", ["collection:1", "collection:2"]) == {}
        profiles = build_profiles(index, [info("hr", 1), info("d", 2)], EMB, cache=ProfileCache())
        q = "pension salary"
        seen = with_evidence(index, profiles, q, vec(q))
        assert all(p.term_counts is None for p in seen)
        route = SemanticRouter().route(q, vec(q), seen)
        assert route is not None and route.collections == ["hr"]
        assert not any("vocabulary" in why for why in route.why.values())
    db.close()


def test_semantic_size_penalty_stops_a_big_collection_winning_by_chance(
    profiles: list[CollectionProfile],
) -> None:
    """The best of 5,000 chunks beats the best of 50 by chance; the penalty evens that out."""
    sized = [
        dataclasses.replace(p, chunks={"devices": 5000, "hr": 50}.get(p.name, 50)) for p in profiles
    ]
    q = "printer ink"
    seen = _evidence(sized, {"devices": [0.52], "hr": [0.5], "recipes": [0.1]})
    options = {"margin": 0.0, "chunk_weight": 1.0, "vote_weight": 0.0}
    assert SemanticRouter(size_penalty=0.0, **options).route(q, vec(q), seen).collections == [
        "devices"
    ]  # type: ignore[union-attr]
    fair = SemanticRouter(size_penalty=0.01, **options).route(q, vec(q), seen)
    assert fair is not None and fair.collections == ["hr"]


def test_semantic_unsure_searches_several(profiles: list[CollectionProfile]) -> None:
    """Rule 6: weak evidence everywhere: the unsure_k best are searched, and it says so."""
    q = "quantum chromodynamics lecture notes"
    seen = _evidence(profiles, {"devices": [0.1], "hr": [0.09]})
    route = SemanticRouter(floor=0.3, unsure_k=2).route(q, vec(q), seen)
    assert route is not None and route.unsure and len(route.collections) == 2
    assert route.reason.startswith("unsure") and "unsure" in route.describe()
    sure = SemanticRouter(floor=0.05, margin=0.0).route(q, vec(q), seen)
    assert sure is not None and not sure.unsure and len(sure.collections) == 1


def test_semantic_without_evidence_falls_back_to_all() -> None:
    """Rule 2: nothing known of any collection's content: unsure, the chain searches all."""
    ps = [profile("a", None), profile("b", None)]
    assert SemanticRouter().route("q", vec("q"), ps) is None
    route = chain([SemanticRouter()], ps, "q", vec("q"))
    assert route.fallback and route.collections == ["a", "b"]


def test_semantic_mix_uses_description_and_centroid() -> None:
    p = profile("a", "bake bread", "router firmware")
    only_desc = SemanticRouter(mix=1.0).vector(p)
    only_centroid = SemanticRouter(mix=0.0).vector(p)
    assert only_desc is not None and only_centroid is not None
    assert np.allclose(only_desc, vec("bake bread"), atol=1e-5)
    assert np.allclose(only_centroid, vec("router firmware"), atol=1e-5)
    half = SemanticRouter(mix=0.5).vector(p)
    assert half is not None and 0 < float(half @ only_desc) < 1


def test_semantic_score_weights_chunks_votes_and_profile(
    profiles: list[CollectionProfile],
) -> None:
    q = "bake bread"
    seen = _evidence(profiles, {"recipes": [0.8, 0.7], "hr": [0.5]})
    router = SemanticRouter(chunk_weight=0.5, vote_weight=0.3, size_penalty=0.0)
    e = router.evidence(vec(q), seen)["recipes"]
    assert e.best == pytest.approx(0.8) and e.votes is not None and e.profile is not None
    assert e.score == pytest.approx(0.5 * e.best + 0.3 * e.votes + 0.2 * e.profile, abs=1e-3)
    assert e.votes > 0.9  # temperature 0.05: the far chunk barely votes
    with pytest.raises(ValueError):
        SemanticRouter(chunk_weight=0.8, vote_weight=0.5)


def test_semantic_profile_with_nothing_is_skipped() -> None:
    ps = [profile("empty", None), profile("recipes", TOPICS["recipes"])]
    route = SemanticRouter().route("bake bread", vec("bake bread"), ps)
    assert route is not None and route.collections == ["recipes"]
    assert "empty" not in route.scores


def test_evidence_from_hits_bounds_and_votes(profiles: list[CollectionProfile]) -> None:
    hits = [("collection:devices", 0.9), ("collection:devices", 0.8), ("collection:hr", 0.4)]
    seen = {p.name: p for p in evidence_from_hits(profiles, hits, 3)}
    assert seen["devices"].best_chunk == 0.9 and seen["devices"].top_chunks == (0.9, 0.8)
    assert seen["recipes"].best_chunk == 0.4  # none in the top 3: at most the 3rd cosine
    assert seen["recipes"].top_chunks == () and seen["hr"].top_best == 0.9
    short = {p.name: p for p in evidence_from_hits(profiles, hits, 5)}
    assert short["recipes"].best_chunk is None  # fewer than k hits: it has no vectors


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("How do I grow basil and how do I cook it in a salad?", 2),
        ("Can I expense a router, and what is the leave policy?", 2),
        ("How do I reset it? What is the pension age?", 2),
        ("What are stocks and bonds?", 0),
        ("hi and bye", 0),
        ("x and how " * 100, 0),
    ],
)
def test_clauses(text: str, parts: int) -> None:
    assert len(clauses(text)) == parts


def test_merge_clauses_adds_a_confident_clause(profiles: list[CollectionProfile]) -> None:
    """Rule 5: a message asking two things gets each clause's best collection."""
    whole = Route(["recipes"], "semantic", reason="best recipes", why={"recipes": "best"})
    garden = Route(["hr"], "semantic", {"hr": 0.6}, why={"hr": "best score 0.60"})
    weak = Route(["devices"], "semantic", {"devices": 0.1})
    unsure = Route(["devices"], "semantic", {"devices": 0.9}, unsure=True)
    talk = Route([], "semantic")
    parts = [("a b c", garden), ("d e f", weak), ("g h i", unsure), ("j k l", talk)]
    merged = merge_clauses(whole, parts, min_score=0.3)
    assert merged.collections == ["recipes", "hr"] and "clause" in merged.why["hr"]
    assert "not sure" in merged.why["devices"]
    rules = Route(["recipes"], "rules")
    assert merge_clauses(rules, parts).collections == ["recipes"]


def test_rules_multi_and_unknown_names(profiles: list[CollectionProfile]) -> None:
    rules = RulesRouter({"hr": [r"\bleave\b"], "devices": ["printer"], "ghost": ["."]})
    route = rules.route("printer broke, can I take leave?", None, profiles)
    assert route is not None and route.collections == ["devices", "hr"]
    assert rules.route("bake a cake", None, profiles) is None


def _json(*choices: tuple[str, float]) -> str:
    return json.dumps({"collections": [{"name": n, "confidence": c} for n, c in choices]})


def test_llm_valid_json(profiles: list[CollectionProfile]) -> None:
    model = ScriptedModel([_json(("hr", 0.9), ("recipes", 0.8), ("devices", 0.2))])
    route = LlmRouter(model).route("q", None, profiles)
    assert route is not None and route.collections == ["recipes", "hr"]
    assert route.scores["devices"] == pytest.approx(0.2)
    request = model.requests[0]
    assert request.tools[0].name == "route"
    enum = request.tools[0].parameters["properties"]["collections"]["items"]["properties"]
    assert enum["name"]["enum"] == list(TOPICS)


def test_llm_tool_call_answer(profiles: list[CollectionProfile]) -> None:
    from chatwright.models.test import tool_call
    from chatwright.types import Message

    reply = Message.assistant("", tool_calls=[tool_call("route", {"collections": []})])
    route = LlmRouter(ScriptedModel([reply])).route("hi", None, profiles)
    assert route is not None and route.collections == []


def test_llm_unknown_names_dropped(profiles: list[CollectionProfile]) -> None:
    model = ScriptedModel([_json(("ghost", 0.9), ("hr", 0.9))])
    route = chain([LlmRouter(model)], profiles, "q", None)
    assert route.collections == ["hr"] and any("ghost" in n for n in route.notes)


@pytest.mark.parametrize(
    "reply",
    ["I think HR maybe", _json(("ghost", 0.9)), _json(("hr", 0.1)), ModelUnavailable("down")],
)
def test_llm_nonsense_or_error_falls_back(profiles: list[CollectionProfile], reply) -> None:  # type: ignore[no-untyped-def]
    route = chain([LlmRouter(ScriptedModel([reply]))], profiles, "q", None)
    assert route.fallback and route.collections == list(TOPICS)
    assert any(n.startswith("llm:") for n in route.notes)


class Hanging:
    name = "test:hang"

    async def stream(self, request):  # type: ignore[no-untyped-def]
        await asyncio.sleep(10)
        yield None


async def test_llm_timeout_falls_back(profiles: list[CollectionProfile]) -> None:
    route = await achain([LlmRouter(Hanging(), timeout_s=0.05)], profiles, "q", None)
    assert route.fallback and any("no answer within" in n for n in route.notes)
    assert route.ms < 2000


async def test_sync_llm_inside_event_loop(profiles: list[CollectionProfile]) -> None:
    route = chain([LlmRouter(ScriptedModel([_json(("hr", 1.0))]))], profiles, "q", None)
    assert route.collections == ["hr"]


def test_no_collections() -> None:
    route = chain([AllRouter()], [], "anything", None)
    assert route.collections == [] and not route.fallback


# -- profiles from the index -----------------------------------------------------------------
@pytest.fixture
def index(tmp_path: Path) -> Iterator[SearchIndex]:
    db = sqlite3.connect(tmp_path / "i.db", isolation_level=None)
    m003_retrieval(db)
    yield SearchIndex(SQLiteChunks(db), EMB)
    db.close()


def info(name: str, uid: int, description: str = "") -> CollectionInfo:
    return CollectionInfo(name, "o", description, 0.0, 0.0, uid=uid)


def test_profiles_centroid_and_description(index: SearchIndex) -> None:
    index.add("collection:1", [{"key": "a", "text": "bake bread"}, {"key": "b", "text": "cake"}])
    (p,) = build_profiles(index, [info("recipes", 1, "cooking")], EMB, cache=ProfileCache())
    assert p.chunks == 2 and p.notes == ()
    expected = EMB.embed(["bake bread"])[0] + EMB.embed(["cake"])[0]
    assert p.centroid is not None
    assert np.allclose(p.centroid, expected / np.linalg.norm(expected), atol=1e-2)
    assert p.description_vector is not None and np.allclose(p.description_vector, vec("cooking"))


def test_profiles_update_when_version_changes(index: SearchIndex) -> None:
    cache = ProfileCache()
    cols = [info("c", 1, "d")]
    index.add("collection:1", [{"key": "a", "text": "bake bread"}])
    first = build_profiles(index, cols, EMB, cache=cache)[0]
    again = build_profiles(index, cols, EMB, cache=cache)[0]
    assert index.chunks.centroid_reads == 1 and again.centroid is first.centroid
    index.add("collection:1", [{"key": "b", "text": "router firmware"}])
    changed = build_profiles(index, cols, EMB, cache=cache)[0]
    assert index.chunks.centroid_reads == 2 and changed.chunks == 2
    assert not np.allclose(changed.centroid, first.centroid)  # type: ignore[arg-type]


def test_profiles_default_cache_per_index(index: SearchIndex) -> None:
    index.add("collection:1", [{"key": "a", "text": "bake bread"}])
    a = build_profiles(index, [info("c", 1, "d")], EMB)[0]
    b = build_profiles(index, [info("c", 1, "d")], EMB)[0]
    assert a.centroid is b.centroid


def test_profiles_empty_collection_and_no_description(index: SearchIndex) -> None:
    index.add("collection:2", [{"key": "a", "text": "bake bread"}])
    cols = [info("empty", 1, "router manuals"), info("nodesc", 2)]
    empty, nodesc = build_profiles(index, cols, EMB, cache=ProfileCache())
    assert empty.centroid is None and empty.chunks == 0 and empty.description_vector is not None
    assert any("no documents" in n for n in empty.notes)
    assert nodesc.description_vector is None and nodesc.centroid is not None
    assert any("no description" in n for n in nodesc.notes)
    route = chain([SemanticRouter()], [empty, nodesc], "bake bread", vec("bake"))
    assert route.collections == ["nodesc"]
    assert any("no documents" in n for n in route.notes)


def test_dataset_shape() -> None:
    root = Path(__file__).resolve().parents[1] / "evals" / "routing"
    rows = [json.loads(x) for x in (root / "questions.jsonl").read_text().splitlines()]
    names = {c["name"] for c in json.loads((root / "collections.json").read_text())}
    assert len(rows) >= 200 and len(names) >= 4
    assert all(set(r["expected"]) <= names and r["split"] in ("train", "test") for r in rows)
    assert sum(not r["expected"] for r in rows) >= 0.12 * len(rows)
    assert sum(len(r["expected"]) > 1 for r in rows) >= 0.08 * len(rows)


def test_evidence_from_hits_takes_each_collections_exact_best(
    profiles: list[CollectionProfile],
) -> None:
    """With the route's per-collection search, a collection none of whose chunks is among the
    ``k`` nearest gets its own best cosine, not the k-th cosine (an upper bound)."""
    hits = [("collection:devices", 0.8), ("collection:devices", 0.7)]
    bounded = evidence_from_hits(profiles, hits, 2)
    exact = evidence_from_hits(profiles, hits, 2, best={"collection:hr": 0.2})
    hr = {p.name: p for p in bounded}["hr"], {p.name: p for p in exact}["hr"]
    assert hr[0].best_chunk == 0.7 and hr[1].best_chunk == 0.2


def test_questions_without_splits_are_halved_stably() -> None:
    """A file without ``split`` fields is halved per expected set, by a hash of the question:
    tuning (train) and reporting (test) never share a question, whatever the file's order."""
    from chatwright.evals.routing import halves

    rows = [{"question": f"q{i}", "expected": [] if i % 3 == 0 else ["a"]} for i in range(30)]
    split = {r["question"]: r["split"] for r in halves(rows)}
    assert split == {r["question"]: r["split"] for r in halves(rows[::-1])}
    for group in ([r for r in rows if r["expected"]], [r for r in rows if not r["expected"]]):
        train = sum(split[r["question"]] == "train" for r in group)
        assert abs(2 * train - len(group)) <= 1


def test_evaluation_tables_report_every_figure() -> None:
    """The table ``chatwright eval routing`` prints: exact set, small talk, over- and
    under-inclusion, fallbacks, unsure, p50/p95, and exact set per expected collection."""
    from chatwright.evals.routing import SUMMARY_COLUMNS, collection_rows, score, summary_rows

    questions = [
        {"question": "a", "expected": ["devices"]},
        {"question": "b", "expected": ["hr"]},
        {"question": "hi", "expected": []},
    ]
    routes = [
        Route(["devices"], "semantic"),
        Route(["hr", "devices"], "semantic"),
        Route([], "chitchat"),
    ]
    results = {"semantic": score(questions, routes, [1.0, 2.0, 3.0]), "_embed": {}}
    [row] = summary_rows(results)
    assert len(row) == len(SUMMARY_COLUMNS)
    assert dict(zip(SUMMARY_COLUMNS, row, strict=True)) == {
        "strategy": "semantic",
        "n": "3",
        "exact set": "66.7%",
        "small talk → none": "100.0%",
        "over": "33.3%",
        "under": "0.0%",
        "fallbacks": "0",
        "unsure": "0",
        "p50 ms": "2.00",
        "p95 ms": "2.00",
    }
    header, rows = collection_rows(results)
    assert header == ["expected", "n", "semantic"]
    assert rows == [
        ["(small talk)", "1", "100.0%"],
        ["devices", "1", "100.0%"],
        ["hr", "1", "0.0%"],
    ]


def test_the_eval_embeds_each_question_alone(tmp_path: Path) -> None:
    """A turn embeds its one message; in a batch, padding and the quantized model's per-batch
    scales move a vector enough to change a close route, so the eval embeds one by one (and
    keeps the vectors for the next run)."""
    from chatwright.evals.routing import _query_vectors

    class Counting:
        name = "counting"

        def __init__(self) -> None:
            self.batches: list[int] = []

        def embed(self, texts: list[str]) -> np.ndarray:
            self.batches.append(len(texts))
            return EMB.embed(texts)

    embedder = Counting()
    texts = ["reset the router", "bake bread", "annual leave"]
    vectors = _query_vectors(embedder, texts, tmp_path)
    assert embedder.batches == [1, 1, 1] and len(vectors) == 3
    assert np.allclose(vectors[1], vec("bake bread"))
    again = _query_vectors(embedder, texts, tmp_path)
    assert embedder.batches == [1, 1, 1] and np.allclose(np.stack(again), np.stack(vectors))
