"""all-MiniLM-L6-v2 on ONNX Runtime: the default engine of ``local:all-minilm-l6-v2``.

The graph is built from the packaged safetensors (no torch, no ``onnx`` package: see
:mod:`chatwright.models._onnx_proto`) with ONNX Runtime's fused BERT operators
(``EmbedLayerNormalization``, ``Attention``, ``SkipLayerNormalization``, ``BiasGelu``), in
float32 throughout, so its vectors are the numpy encoder's to float rounding. Why this engine
and not llama.cpp or int8 weights: benchmarks/README.md, ``embeddings.py``.

The graph is written once into the cache folder (``~/.cache/chatwright/models``, 90 MB) with a
sidecar ``.json`` that holds its sha256 and the weights file it was built from. A missing,
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
MODEL_FILE = f"all-minilm-l6-v2.v{FORMAT}.onnx"
_MS = "com.microsoft"  # ONNX Runtime's own operators


class OnnxMiniLM(Encoder):
    """The encoder as one ONNX Runtime session on ``threads`` threads."""

    engine = "onnxruntime"
    id_dtype = np.int32  # EmbedLayerNormalization takes int32 ids

    def __init__(self, path: Path, threads: int, cache_dir: Path | None = None) -> None:
        super().__init__(path)
        self.threads = threads
        if cache_dir is None:
            from chatwright.models.local import default_cache_dir

            cache_dir = default_cache_dir()
        self.model: Path | bytes = cached_model(path, self.config, cache_dir)
        self._session = _session(self.model, threads)
        self._run_lock = threading.Lock()

    def _hidden(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._run_lock:  # one pass at a time: never more than self.threads threads
            hidden: np.ndarray = self._session.run(None, {"input_ids": tokens, "mask": mask})[0]
        return hidden


# -- the file in the cache ----------------------------------------------------------------
def cached_model(source: Path, config: dict[str, Any], cache_dir: Path) -> Path | bytes:
    """The ONNX model built from the model folder ``source``: its file in ``cache_dir``,
    (re)built there when missing, corrupt or stale; its bytes if the folder is not writable."""
    target = cache_dir / MODEL_FILE
    stamp = _stamp(source)
    problem = _problem(target, stamp)
    if problem is None:
        return target
    if problem == "missing":
        log.info("building the ONNX model of all-MiniLM-L6-v2 into %s (once)", target)
    else:
        log.warning("the ONNX model %s %s: rebuilding it", target, problem)
    data = build_model(source, config)
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
def build_model(source: Path, config: dict[str, Any]) -> bytes:
    """The ONNX model of the BERT encoder in the model folder ``source``.

    Inputs ``input_ids`` and ``mask`` (int32, batch x seq, padding on the right); output
    ``hidden`` (float32, batch x seq x hidden), the last hidden states before pooling.
    """
    w = _weights(source / "model.safetensors")
    eps = float(config["layer_norm_eps"])
    graph = _Graph()
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
    attended = graph.node(
        "Attention",
        [x, graph.weight(f"qkv_w{i}", qkv_w.T), graph.weight(f"qkv_b{i}", qkv_b), "mask_index"],
        [f"attended{i}"],
        num_heads=heads,
    )
    x1 = graph.dense_norm(attended, x, w, p + "attention.output.", f"norm1_{i}", eps)
    inner = graph.node(
        "BiasGelu",
        [
            graph.matmul(x1, f"up_w{i}", w[p + "intermediate.dense.weight"]),
            graph.weight(f"up_b{i}", w[p + "intermediate.dense.bias"]),
        ],
        [f"inner{i}"],
    )
    return graph.dense_norm(inner, x1, w, p + "output.", f"norm2_{i}", eps)


class _Graph:
    """Nodes and initializers, added in order; names are the graph's edges."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.initializers: list[bytes] = []

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(proto.tensor(name, np.asarray(array, dtype=np.float32)))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attributes: Any) -> str:
        domain = "" if op == "MatMul" else _MS
        self.nodes.append(proto.node(op, inputs, outputs, domain=domain, **attributes))
        return outputs[0]

    def matmul(self, x: str, name: str, torch_weight: np.ndarray) -> str:
        """``x @ W.T`` for a torch ``Linear`` weight ``W`` (out, in)."""
        return self.node("MatMul", [x, self.weight(name, torch_weight.T)], [f"{name}_out"])

    def dense_norm(
        self, x: str, residual: str, w: dict[str, np.ndarray], p: str, name: str, eps: float
    ) -> str:
        """LayerNorm(x @ dense + bias + residual), BERT's "output" block under prefix ``p``."""
        return self.node(
            "SkipLayerNormalization",
            [
                self.matmul(x, f"{name}_dense_w", w[p + "dense.weight"]),
                residual,
                self.weight(f"{name}_w", w[p + "LayerNorm.weight"]),
                self.weight(f"{name}_b", w[p + "LayerNorm.bias"]),
                self.weight(f"{name}_dense_b", w[p + "dense.bias"]),
            ],
            [name],
            epsilon=eps,
        )
