"""all-MiniLM-L6-v2 on ONNX Runtime: the default engine of ``local:all-minilm-l6-v2``.

The graph is built from the packaged safetensors (no torch, no ``onnx`` package: see
:mod:`chatwright.models._onnx_proto`) with ONNX Runtime's fused BERT operators
(``EmbedLayerNormalization``, ``Attention``, ``SkipLayerNormalization``, ``BiasGelu``), in
two precisions:

* ``int8`` (the default of ``local:all-minilm-l6-v2``): the four matrix products of each
  layer in 8-bit integers (ONNX Runtime's dynamic quantization, weights per output column),
  1.5x the texts per CPU-second of float32 on AVX2; vectors at cosine >= 0.97 of float32's
  (0.984 on prose, mean 0.992); SciFact nDCG@10 hybrid 0.735 against 0.732, vector 0.642
  against 0.645. Activations are scaled per batch, so a text's vector moves a little with the
  texts batched with it.
* ``fp32``: float32 throughout, the numpy encoder's vectors to float rounding.

Why this engine, and the variants measured: benchmarks/README.md, ``embeddings.py``.

Each graph is written once into the cache folder (``~/.cache/chatwright/models``, 90 MB in
float32, 59 MB in int8; a file per precision) with a sidecar ``.json`` that holds its sha256
and the weights file it was built from. A missing,
corrupt or stale file is rebuilt (1-2 s), with a warning for a corrupt one; where the
folder cannot be written, the graph is built in memory for each process instead.

One forward pass runs at a time in a process, on ``threads`` threads (the caller's and
``threads - 1`` of ONNX Runtime's), so two threads embedding at once never use more.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from chatwright.errors import ModelUnavailable
from chatwright.models import _onnx_proto as proto
from chatwright.models._minilm import INSTALL_HINT, Encoder, _weights, log

__all__ = ["MODEL_FILE", "OnnxMiniLM", "build_model", "cached_model"]

FORMAT = 1  # bump when the graph changes: files of an older format are then rebuilt
PRECISIONS = ("int8", "fp32")
MODEL_FILES = {
    "fp32": f"all-minilm-l6-v2.v{FORMAT}.onnx",
    "int8": f"all-minilm-l6-v2.int8.v{FORMAT}.onnx",
}
MODEL_FILE = MODEL_FILES["fp32"]
# The matrix products that the int8 graph runs in 8-bit: "qkv" (the attention's input
# projection), "out" (its output), "up" and "down" (the feed-forward block's two).
INT8_PRODUCTS = frozenset({"qkv", "out", "up", "down"})
_MS = "com.microsoft"  # ONNX Runtime's own operators


class OnnxMiniLM(Encoder):
    """The encoder as one ONNX Runtime session on ``threads`` threads."""

    engine = "onnxruntime"
    id_dtype = np.int32  # EmbedLayerNormalization takes int32 ids

    def __init__(
        self, path: Path, threads: int, cache_dir: Path | None = None, precision: str = "fp32"
    ) -> None:
        super().__init__(path)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.threads = threads
        self.precision = precision
        if cache_dir is None:
            from chatwright.models.local import default_cache_dir

            cache_dir = default_cache_dir()
        self.model: Path | bytes = cached_model(path, self.config, cache_dir, precision)
        self._session = _session(self.model, threads)
        self._run_lock = threading.Lock()

    def _hidden(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._run_lock:  # one pass at a time: never more than self.threads threads
            hidden: np.ndarray = self._session.run(None, {"input_ids": tokens, "mask": mask})[0]
        return hidden


# -- the file in the cache ----------------------------------------------------------------
def cached_model(
    source: Path, config: dict[str, Any], cache_dir: Path, precision: str = "fp32"
) -> Path | bytes:
    """The ONNX model built from the model folder ``source``: its file in ``cache_dir``,
    (re)built there when missing, corrupt or stale; its bytes if the folder is not writable."""
    target = cache_dir / MODEL_FILES[precision]
    stamp = _stamp(source)
    problem = _problem(target, stamp)
    if problem is None:
        return target
    if problem == "missing":
        log.info(
            "building the ONNX model of all-MiniLM-L6-v2 (%s) into %s (once)", precision, target
        )
    else:
        log.warning("the ONNX model %s %s: rebuilding it", target, problem)
    data = build_model(source, config, precision)
    try:
        _write(target, data, {**stamp, "sha256": hashlib.sha256(data).hexdigest()})
    except OSError as e:
        log.warning("cannot write %s (%s): the ONNX model is built in memory instead", target, e)
        return data
    return target


def _stamp(source: Path) -> dict[str, Any]:
    """What the cached file was built from: the graph's format and the weights, by their
    size and a digest of their first and last MiB (where a safetensors file keeps its header
    and its last tensors) rather than their path or time: two environments with the same
    weights (a second venv, a CI checkout) share the file instead of rebuilding it in turn."""
    weights = source / "model.safetensors"
    try:
        size = weights.stat().st_size
        digest = hashlib.sha256()
        with weights.open("rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(size - (1 << 20), 0))
            digest.update(f.read(1 << 20))
    except OSError as e:
        raise ModelUnavailable(f"cannot read {weights}: {e}", hint=INSTALL_HINT) from None
    return {"format": FORMAT, "weights_size": size, "weights_sample": digest.hexdigest()}


def _problem(target: Path, stamp: dict[str, Any]) -> str | None:
    """Why the cached file cannot be used as it is (None: it can)."""
    if not target.is_file():
        return "missing"
    try:
        record = json.loads(_sidecar(target).read_text(encoding="utf-8"))
        with target.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except (OSError, ValueError):
        return "has no readable record of its checksum"
    if not isinstance(record, dict) or record.get("sha256") != digest:
        return "does not match its checksum (corrupt)"
    if {k: record.get(k) for k in stamp} != stamp:
        return "was built from other weights or by another version"
    return None


def _sidecar(target: Path) -> Path:
    return target.with_suffix(".json")


def _write(target: Path, data: bytes, record: dict[str, Any]) -> None:
    """The model, then its record, each written whole to a temporary name then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for path, content in ((target, data), (_sidecar(target), json.dumps(record).encode())):
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}-{threading.get_ident()}")
        try:
            partial.write_bytes(content)
            os.replace(partial, path)  # atomic: never a half-written file under the real name
        finally:
            partial.unlink(missing_ok=True)


def _session(model: Path | bytes, threads: int) -> Any:
    ort = importlib.import_module("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the caller's thread counts as one
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # Idle threads sleep instead of spinning: on 2 shared cores, spinning takes CPU from the
    # chat model and the server for no gain in throughput.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    where = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(where, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
        raise ModelUnavailable(
            f"ONNX Runtime cannot load the embedding model: {e}",
            hint="delete the file to rebuild it, or upgrade: pip install -U onnxruntime",
        ) from None


# -- the graph ----------------------------------------------------------------------------
def build_model(source: Path, config: dict[str, Any], precision: str = "fp32") -> bytes:
    """The ONNX model of the BERT encoder in the model folder ``source``.

    Inputs ``input_ids`` and ``mask`` (int32, batch x seq, padding on the right); output
    ``hidden`` (float32, batch x seq x hidden), the last hidden states before pooling.

    ``precision="int8"``: the matrix products of :data:`INT8_PRODUCTS` in 8-bit integers, as
    ONNX Runtime's dynamic quantization (``onnxruntime.quantization.quantize_dynamic``,
    per-channel) writes them: weights int8 per output column (symmetric, scale max|w|/127),
    activations uint8 per tensor, quantized as each product runs (``DynamicQuantizeMatMul``,
    ``DynamicQuantizeLinear`` + ``QAttention``). Everything else stays float32.
    """
    w = _weights(source / "model.safetensors")
    eps = float(config["layer_norm_eps"])
    graph = _Graph(INT8_PRODUCTS if precision == "int8" else frozenset())
    e = "embeddings."
    token_type = w[e + "token_type_embeddings.weight"][0]  # every token is of type 0
    graph.node(
        "EmbedLayerNormalization",
        [
            "input_ids",
            "",
            graph.weight("word", w[e + "word_embeddings.weight"]),
            graph.weight("position", w[e + "position_embeddings.weight"] + token_type),
            "",
            graph.weight("embed_norm_w", w[e + "LayerNorm.weight"]),
            graph.weight("embed_norm_b", w[e + "LayerNorm.bias"]),
            "mask",
        ],
        ["x0", "mask_index"],
        epsilon=eps,
    )
    x = "x0"
    for i in range(config["num_hidden_layers"]):
        x = _layer(graph, w, i, x, config["num_attention_heads"], eps)
    return proto.model(
        graph.nodes,
        graph.initializers,
        inputs=[
            proto.value_info("input_ids", "int32", ["batch", "seq"]),
            proto.value_info("mask", "int32", ["batch", "seq"]),
        ],
        outputs=[proto.value_info(x, "float", ["batch", "seq", config["hidden_size"]])],
        opsets={"": 17, _MS: 1},
        name="all-MiniLM-L6-v2",
    )


def _layer(graph: _Graph, w: dict[str, np.ndarray], i: int, x: str, heads: int, eps: float) -> str:
    """Encoder layer ``i`` on ``x``; returns the name of its output."""
    p = f"encoder.layer.{i}."
    att = p + "attention.self."
    qkv_w = np.concatenate([w[att + n + ".weight"] for n in ("query", "key", "value")])
    qkv_b = np.concatenate([w[att + n + ".bias"] for n in ("query", "key", "value")])
    if "qkv" in graph.int8:
        quantized = graph.node("DynamicQuantizeLinear", [x], [f"{x}_q", f"{x}_scale", f"{x}_zero"])
        q_w, q_scale, q_zero = graph.int8_weight(f"qkv_w{i}", qkv_w.T)
        qkv_bias = graph.weight(f"qkv_b{i}", qkv_b)
        attended = graph.node(
            "QAttention",
            [quantized, q_w, qkv_bias, f"{x}_scale", q_scale, "mask_index", f"{x}_zero", q_zero],
            [f"attended{i}"],
            num_heads=heads,
        )
    else:
        weights = [graph.weight(f"qkv_w{i}", qkv_w.T), graph.weight(f"qkv_b{i}", qkv_b)]
        attended = graph.node(
            "Attention",
            [x, *weights, "mask_index"],
            [f"attended{i}"],
            num_heads=heads,
        )
    x1 = graph.dense_norm(attended, x, w, p + "attention.output.", f"norm1_{i}", eps, "out")
    inner = graph.node(
        "BiasGelu",
        [
            graph.matmul(x1, f"up_w{i}", w[p + "intermediate.dense.weight"], "up"),
            graph.weight(f"up_b{i}", w[p + "intermediate.dense.bias"]),
        ],
        [f"inner{i}"],
    )
    return graph.dense_norm(inner, x1, w, p + "output.", f"norm2_{i}", eps, "down")


class _Graph:
    """Nodes and initializers, added in order; names are the graph's edges."""

    def __init__(self, int8: frozenset[str] = frozenset()) -> None:
        self.nodes: list[bytes] = []
        self.initializers: list[bytes] = []
        self.int8 = int8  # which products run in 8-bit (see INT8_PRODUCTS)

    def weight(self, name: str, array: np.ndarray, dtype: type = np.float32) -> str:
        self.initializers.append(proto.tensor(name, np.asarray(array, dtype=dtype)))
        return name

    def int8_weight(self, name: str, matrix: np.ndarray) -> tuple[str, str, str]:
        """``matrix`` (in, out) as int8, symmetric per output column: its name, its scales'
        and its zero points' (all 0)."""
        scale = (np.abs(matrix).max(axis=0) / 127).astype(np.float32)
        scale[scale == 0] = 1  # a column of zeros
        quantized = np.clip(np.rint(matrix / scale), -127, 127)
        return (
            self.weight(f"{name}_q", quantized, np.int8),
            self.weight(f"{name}_scale", scale),
            self.weight(f"{name}_zero", np.zeros(scale.shape), np.int8),
        )

    def node(self, op: str, inputs: list[str], outputs: list[str], **attributes: Any) -> str:
        domain = "" if op in ("MatMul", "DynamicQuantizeLinear") else _MS
        self.nodes.append(proto.node(op, inputs, outputs, domain=domain, **attributes))
        return outputs[0]

    def matmul(self, x: str, name: str, torch_weight: np.ndarray, product: str) -> str:
        """``x @ W.T`` for a torch ``Linear`` weight ``W`` (out, in); in 8-bit if ``product``
        is one of the graph's int8 products."""
        if product in self.int8:
            quantized = self.int8_weight(name, torch_weight.T)
            return self.node("DynamicQuantizeMatMul", [x, *quantized], [f"{name}_out"])
        return self.node("MatMul", [x, self.weight(name, torch_weight.T)], [f"{name}_out"])

    def dense_norm(
        self,
        x: str,
        residual: str,
        w: dict[str, np.ndarray],
        p: str,
        name: str,
        eps: float,
        product: str,
    ) -> str:
        """LayerNorm(x @ dense + bias + residual), BERT's "output" block under prefix ``p``."""
        return self.node(
            "SkipLayerNormalization",
            [
                self.matmul(x, f"{name}_dense_w", w[p + "dense.weight"], product),
                residual,
                self.weight(f"{name}_w", w[p + "LayerNorm.weight"]),
                self.weight(f"{name}_b", w[p + "LayerNorm.bias"]),
                self.weight(f"{name}_dense_b", w[p + "dense.bias"]),
            ],
            [name],
            epsilon=eps,
        )
