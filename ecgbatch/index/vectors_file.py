"""The stored float vectors of an index: one ``vectors.npy`` (float32 [N, D], L2-normalised),
memory-mapped at search time for exact re-ranking and exact subset search.

Written in one streamed pass: a fixed-size .npy header is reserved first and rewritten with the
final row count at the end, so a table larger than memory never has to be held at once.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_HEADER_BYTES = 128  # fits any 2-D float32 shape; .npy v1.0 headers are 64-byte aligned


def _npy_header(rows: int, dim: int) -> bytes:
    body = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim)
    head_len = _HEADER_BYTES - 10  # magic(6) + version(2) + uint16 length(2)
    body = body.ljust(head_len - 1) + "\n"
    if len(body) != head_len:
        raise ValueError(f"shape ({rows}, {dim}) does not fit a {_HEADER_BYTES}-byte npy header")
    return b"\x93NUMPY\x01\x00" + head_len.to_bytes(2, "little") + body.encode("latin1")


class VectorFileWriter:
    """Append float32 rows to ``path`` (a temporary name); ``close()`` finalises the header."""

    def __init__(self, path: str | Path, dim: int):
        self.path = Path(path)
        self.dim = int(dim)
        self.rows = 0
        self._f = open(self.path, "wb")
        self._f.write(_npy_header(0, self.dim))

    def append(self, v: np.ndarray) -> None:
        v = np.ascontiguousarray(v, dtype="<f4")
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"expected rows of dimension {self.dim}, got shape {v.shape!r}")
        self._f.write(v.tobytes())
        self.rows += len(v)

    def append_from(self, src: np.ndarray, chunk_rows: int = 65_536) -> None:
        for i in range(0, len(src), chunk_rows):
            self.append(np.asarray(src[i : i + chunk_rows]))

    def close(self) -> Path:
        self._f.seek(0)
        self._f.write(_npy_header(self.rows, self.dim))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self.path

    def abort(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def open_vectors(path: str | Path) -> np.ndarray:
    """Memory-map a vectors.npy read-only."""
    return np.load(path, mmap_mode="r")
