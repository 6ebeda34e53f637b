"""Persisted search segments of the SQLite backend: one file per namespace, memory-mapped.

A file is a magic number, the length of a JSON header, the header (whatever the caller keeps
in it, plus the layout of the arrays), then the arrays, each at a 64-byte aligned offset.
Reading maps the file and returns views into it (no copy); writing goes to a temporary file,
is synced, then renamed over the old one, so readers never see a half-written file. What the
arrays mean, and when a file is still valid, is ``sqlite_chunks.py``'s business.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "SegmentFiles"]

_MAGIC = b"CWSEG\x00\x00\x01"
FORMAT = 1  # of the files: a file of another format is rebuilt
_ALIGN = 64
_STALE_TEMP_SECONDS = 3600


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


class SegmentFiles:
    """The persisted segments of one database: ``<directory>/<hash of namespace>.seg``.

    Files are memory-mapped, not read: a search touches only the pages it needs, and every
    process serving the same database shares one copy in the page cache. They are replaced,
    never changed in place, so a mapped file stays valid while another process rewrites it.
    """

    def __init__(self, directory: Path, database_id: str) -> None:
        self.directory = directory
        self.database_id = database_id

    def path(self, namespace: str) -> Path:
        digest = hashlib.sha256(namespace.encode("utf-8", "surrogatepass")).hexdigest()
        return self.directory / f"{digest[:32]}.seg"

    def read(self, namespace: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """(header, arrays) of the namespace's file, None if it has none; ValueError (or
        another exception) if the file is damaged."""
        try:
            with open(self.path(namespace), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            return None
        if data[:8] != _MAGIC:
            raise ValueError("not a segment file of this format")
        length = int.from_bytes(data[8:16], "little")
        header = json.loads(bytes(data[16 : 16 + length]))
        start = _aligned(16 + length)
        arrays = {
            name: _array(data, size, start + offset, np.dtype(dtype), tuple(shape))
            for name, (dtype, shape, offset) in header["arrays"].items()
        }
        return header, arrays

    def write(self, namespace: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Replace the namespace's file, atomically: written aside, synced, then renamed."""
        layout, end = {}, 0
        for name, array in arrays.items():
            layout[name] = [array.dtype.str, list(array.shape), _aligned(end)]
            end = _aligned(end) + array.nbytes
        blob = json.dumps({**header, "arrays": layout}).encode()
        path = self.path(namespace)
        self.directory.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(temp, "wb") as f:
                f.write(_MAGIC + len(blob).to_bytes(8, "little") + blob)
                f.write(bytes(_aligned(16 + len(blob)) - 16 - len(blob)))
                written = 0
                for name, array in arrays.items():
                    f.write(bytes(layout[name][2] - written))
                    f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
                    written = layout[name][2] + array.nbytes
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def sweep(self, namespaces: Iterable[str]) -> None:
        """Delete the files of namespaces other than ``namespaces`` (deleted, or too small to
        persist now), and temporary files that a crashed writer left an hour ago or more."""
        keep = {self.path(n).name for n in namespaces}
        now = time.time()
        for entry in os.scandir(self.directory):
            stale_temp = entry.name.endswith(".tmp") and (
                now - entry.stat().st_mtime > _STALE_TEMP_SECONDS
            )
            if stale_temp or (entry.name.endswith(".seg") and entry.name not in keep):
                Path(entry.path).unlink(missing_ok=True)


def _array(data: Any, size: int, start: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The array stored at ``start`` of the mapped file ``data`` (a view, not a copy)."""
    count = math.prod(shape)
    if dtype.hasobject or start + count * dtype.itemsize > size:
        raise ValueError("the segment file is truncated or names an invalid array")
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)
