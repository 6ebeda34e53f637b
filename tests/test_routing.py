"""Collection routing: strategies, the chain and its fallback, profiles from the index."""

from __future__ import annotations

import asyncio
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
    LlmRouter,
    ProfileCache,
    RulesRouter,
    SemanticRouter,
    achain,
    build_profiles,
    chain,
    embed_exemplars,
    is_chitchat,
)
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


def test_semantic_chitchat_by_exemplar(profiles: list[CollectionProfile]) -> None:
    exemplars = EMB.embed(["nice weather today friend"])
    router = SemanticRouter(threshold=0.05, chitchat=exemplars, chitchat_threshold=0.3)
    route = router.route("nice weather today friend", vec("nice weather today friend"), profiles)
    assert route is not None and route.collections == [] and "chit-chat" in route.reason
    assert SemanticRouter(threshold=-1).route("x", vec("nice weather today"), profiles) != route


def test_embed_exemplars_cached() -> None:
    assert embed_exemplars(EMB) is embed_exemplars(EMB)


def test_semantic_picks_best(profiles: list[CollectionProfile]) -> None:
    q = "my router firmware needs a reset"
    route = SemanticRouter(threshold=0.1, margin=0.0).route(q, vec(q), profiles)
    assert route is not None and route.collections == ["devices"]
    assert set(route.scores) == set(TOPICS) and route.scores["devices"] > route.scores["hr"]


def test_semantic_selects_several_within_margin(profiles: list[CollectionProfile]) -> None:
    q = "printer ink cartridge and sick leave pension"
    route = SemanticRouter(threshold=0.1, margin=0.15).route(q, vec(q), profiles)
    assert route is not None and route.collections == ["devices", "hr"]
    narrow = SemanticRouter(threshold=0.1, margin=0.0).route(q, vec(q), profiles)
    assert narrow is not None and len(narrow.collections) == 1


def test_semantic_also_threshold_adds_strong_runner_up(profiles: list[CollectionProfile]) -> None:
    q = "printer ink cartridge and sick leave pension"
    scores = SemanticRouter().scores(vec(q), profiles)
    second = sorted(scores.values())[-2]
    route = SemanticRouter(threshold=0.1, margin=0.0, also=second - 0.01).route(q, vec(q), profiles)
    assert route is not None and len(route.collections) == 2


def test_semantic_low_confidence_falls_back_to_all(profiles: list[CollectionProfile]) -> None:
    q = "quantum chromodynamics lecture notes"
    assert SemanticRouter(threshold=0.3).route(q, vec(q), profiles) is None
    route = chain([SemanticRouter(threshold=0.3)], profiles, q, vec(q))
    assert route.fallback and route.collections == list(TOPICS)


def test_semantic_mix_uses_description_and_centroid() -> None:
    p = profile("a", "bake bread", "router firmware")
    only_desc = SemanticRouter(mix=1.0).vector(p)
    only_centroid = SemanticRouter(mix=0.0).vector(p)
    assert only_desc is not None and only_centroid is not None
    assert np.allclose(only_desc, vec("bake bread"), atol=1e-5)
    assert np.allclose(only_centroid, vec("router firmware"), atol=1e-5)
    half = SemanticRouter(mix=0.5).vector(p)
    assert half is not None and 0 < float(half @ only_desc) < 1


def test_semantic_profile_with_nothing_is_skipped() -> None:
    ps = [profile("empty", None), profile("recipes", TOPICS["recipes"])]
    route = SemanticRouter(threshold=0.1).route("bake bread", vec("bake bread"), ps)
    assert route is not None and route.collections == ["recipes"]
    assert "empty" not in route.scores


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
    route = chain([SemanticRouter(threshold=0.1)], [empty, nodesc], "bake bread", vec("bake"))
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
