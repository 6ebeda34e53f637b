"""Just enough of the ONNX protobuf format to write a model file, without the ``onnx`` package.

A model is a tree of protobuf messages (``onnx.proto``: ModelProto > GraphProto > NodeProto,
TensorProto, ValueInfoProto). Each message here is the bytes of its fields, each field a key
(field number and wire type) then a varint, a fixed 32-bit value or length-prefixed bytes.
Only the fields that :mod:`chatwright.models._minilm_onnx` uses are written; ONNX Runtime
checks the result when it loads it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["attribute", "model", "node", "tensor", "value_info"]

_VARINT, _BYTES, _FIXED32 = 0, 2, 5
_ELEM_TYPES = {np.dtype(np.float32): 1, np.dtype(np.int8): 3, np.dtype(np.int32): 6}
_ELEM_NAMES = {"float": 1, "int32": 6}
_ATTR_FLOAT, _ATTR_INT = 1, 2
IR_VERSION = 8  # ONNX 1.10+, read by every ONNX Runtime since 1.10


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten-byte two's complement
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _key(field, _BYTES) + _varint(len(raw)) + raw


def _all(field: int, messages: Iterable[bytes]) -> bytes:
    return b"".join(_bytes(field, m) for m in messages)


def attribute(name: str, value: int | float) -> bytes:
    """AttributeProto: an int (``INT``) or a float (``FLOAT``) node attribute."""
    if isinstance(value, int):
        return _bytes(1, name) + _int(3, value) + _int(20, _ATTR_INT)
    return _bytes(1, name) + _key(2, _FIXED32) + struct.pack("<f", value) + _int(20, _ATTR_FLOAT)


def node(
    op_type: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    *,
    domain: str = "",
    **attributes: int | float,
) -> bytes:
    """NodeProto: one operator; ``""`` in ``inputs`` leaves an optional input out."""
    fields = [_all(1, (i.encode() for i in inputs)), _all(2, (o.encode() for o in outputs))]
    fields += [_bytes(3, outputs[0]), _bytes(4, op_type)]
    fields.append(_all(5, (attribute(k, v) for k, v in attributes.items())))
    if domain:
        fields.append(_bytes(7, domain))
    return b"".join(fields)


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: an initializer, its values as little-endian raw data."""
    array = np.ascontiguousarray(array)
    dims = b"".join(_int(1, d) for d in array.shape)
    raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return dims + _int(2, _ELEM_TYPES[array.dtype]) + _bytes(8, name) + _bytes(9, raw)


def value_info(name: str, elem_type: str, shape: Sequence[int | str]) -> bytes:
    """ValueInfoProto: a graph input or output; str dimensions are symbolic (``"batch"``)."""
    dims = (_int(1, d) if isinstance(d, int) else _bytes(2, d) for d in shape)
    tensor_type = _int(1, _ELEM_NAMES[elem_type]) + _bytes(2, _all(1, dims))
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(
    nodes: Sequence[bytes],
    initializers: Sequence[bytes],
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    opsets: dict[str, int],
    name: str = "graph",
) -> bytes:
    """ModelProto: the graph, and the operator sets it uses (``""`` is the standard one)."""
    graph = _all(1, nodes) + _bytes(2, name) + _all(5, initializers)
    graph += _all(11, inputs) + _all(12, outputs)
    opset_ids = (
        (_bytes(1, domain) if domain else b"") + _int(2, version)
        for domain, version in opsets.items()
    )
    return _int(1, IR_VERSION) + _bytes(2, "chatwright") + _bytes(7, graph) + _all(8, opset_ids)
