"""`chatwright eval memory`: recall of evidence turns on LoCoMo-format conversations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chatwright.config import Settings
from chatwright.evals.memory import evaluate, load, parse_when, render

SAMPLE = {
    "sample_id": "made-up-1",
    "conversation": {
        "speaker_a": "Ana",
        "speaker_b": "Ben",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Ana", "dia_id": "D1:1", "text": "Hi Ben! How are you?"},
            {"speaker": "Ben", "dia_id": "D1:2", "text": "Great! I adopted a puppy named Biscuit."},
            {"speaker": "Ana", "dia_id": "D1:3", "text": "I started violin lessons last week."},
            {
                "speaker": "Ben",
                "dia_id": "D1:4",
                "text": "Look at this!",
                "blip_caption": "a photo of a lighthouse",
            },
        ],
        "session_2_date_time": "7:10 pm on 20 June, 2023",
        "session_2": [
            {"speaker": "Ben", "dia_id": "D2:1", "text": "Ana, Biscuit chewed my running shoes."},
            {"speaker": "Ana", "dia_id": "D2:2", "text": "Oh no! My violin recital is on Friday."},
            {"speaker": "Ben", "dia_id": "D2:3", "text": "Good luck with the recital!"},
        ],
    },
    "qa": [
        {"question": "What is the name of Ben's puppy?", "evidence": ["D1:2"], "category": 4},
        {"question": "When did Ana start violin lessons?", "evidence": ["D1:3"], "category": 2},
        {
            "question": "What did Biscuit chew, and which lessons did Ana start?",
            "evidence": ["D2:1; D1:3"],  # two ids in one string, as LoCoMo sometimes has
            "category": 1,
        },
        {"question": "Would Ben like the sea?", "evidence": ["D:1:4"], "category": 3},
        {"question": "What is Ben's password?", "evidence": [], "category": 5},
        {"question": "Unknown turn", "evidence": ["D9:9"], "category": 4},
    ],
    "session_summary": {"session_1": "never read: written by an LLM"},
}


@pytest.fixture
def locomo(tmp_path):
    path = tmp_path / "locomo.json"
    path.write_text(json.dumps([SAMPLE]))
    return path


def test_a_locomo_file_loads_as_timed_turns_and_scored_questions(locomo):
    (conversation,) = load(locomo)
    assert conversation.speaker_a == "Ana" and len(conversation.turns) == 7
    assert conversation.turns[3].text == "Look at this! [shares a photo of a lighthouse]"
    assert conversation.turns[0].when == parse_when("1:56 pm on 8 May, 2023") == 1683554160.0
    assert conversation.turns[4].when == parse_when("7:10 pm on 20 June, 2023")
    assert [(q.category, q.evidence) for q in conversation.questions] == [
        (4, ("D1:2",)),
        (2, ("D1:3",)),
        (1, ("D2:1", "D1:3")),
        (3, ("D1:4",)),
    ]  # category 5 and evidence that names no turn are left out
    assert parse_when("sometime in spring") is None


def test_the_evaluation_scores_evidence_per_category_at_k_and_recall_k(locomo):
    result = evaluate(load(locomo), Settings(embedder="test:hash"), ks=(1, 5))
    assert result["questions"] == {
        "multi-hop": 1,
        "temporal": 1,
        "open-domain": 1,
        "single-hop": 1,
        "all": 4,
    }
    assert result["evidence"] == 5 and result["recall_k"] == 3
    assert set(result["recall"]) == {"@1", "@3", "@5"}
    at5 = result["recall"]["@5"]
    assert at5["single-hop"] == at5["temporal"] == at5["multi-hop"] == 1.0
    assert result["recall"]["@1"]["multi-hop"] == 0.5  # one unit holds one of its two turns
    assert result["ms"]["p50"] is not None and result["ms"]["p50"] > 0
    lines = render(result)
    assert lines[1].split() == ["category", "questions", "recall@1", "recall@3", "recall@5"]
    assert lines[-1].startswith("recall per question at k=3")


def test_without_an_embedder_it_measures_keyword_recall(locomo):
    result = evaluate(load(locomo), Settings(embedder=None), ks=(5,))
    assert result["embedder"] is None and result["recall"]["@5"]["single-hop"] == 1.0


def test_chatwright_eval_memory_prints_the_figures(locomo, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATWRIGHT_")}
    env["CHATWRIGHT_DATA_DIR"] = str(tmp_path / "data")
    args = ["eval", "memory", str(locomo), "--embedder", "test:hash", "-k", "2", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "chatwright", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["recall"]) == {"@2", "@3"} and result["conversations"] == 1
