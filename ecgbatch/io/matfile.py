"""A small pure-NumPy reader for the MATLAB files ECG archives use (MAT v4 and v5).

Why not ``scipy.io.loadmat``: SciPy does not promise to be safe on untrusted files, and corrupt
MAT v5 files crash the process inside its compiled reader (segfault), which ends a whole scan.
This reader is plain Python over a ``memoryview``: every length a file declares (element sizes,
dimensions, name lengths, zlib-compressed elements) is checked against the bytes that are really
there, or against ``MAX_BYTES``, before anything is allocated or decompressed, and every problem
is a typed error (``NotAnEcgError``, ``TruncatedSignalError``, ``UnknownFormatError``).

What it reads, which covers the PhysioNet/CinC Challenge ``val`` matrix (v4 or v5) and the
CPSC2018 ``ECG`` struct (``data``, ``sex``, ``age``):

- numeric matrices (double, single, int8 ... uint64, logical) of any rank, in MATLAB's column-major
  order, returned as NumPy arrays of the class's dtype (a double matrix stored as int16 to save
  space is returned as float64, as MATLAB would load it);
- char arrays (returned as ``str`` for one row, a list of rows otherwise);
- structs (a ``dict`` for a 1x1 struct, a list of dicts otherwise) and cells (a list);
- MAT v5 compressed elements (``miCOMPRESSED``), decompressed with a bound.

Complex, sparse, object and function-handle arrays raise ``UnknownFormatError`` when asked for
(other variables are skipped without decoding). MAT v7.3 files (HDF5) are refused.
"""
from __future__ import annotations

import os
import zlib
from math import prod

import numpy as np

from ecgbatch.io.errors import (EmptyFileError, NotAnEcgError, RecordTooLargeError,
                                TruncatedSignalError, UnknownFormatError, UnreadableError)

MAX_BYTES = 1 << 28      # 256 MiB: far above any ECG matrix, far below what would hurt a worker
MAX_DEPTH = 8            # struct/cell nesting (a 12-lead record uses 2)
ZLIB_MAX_RATIO = 1100    # zlib cannot expand data more than ~1032x: more means a lying header
V5_HEADER = 128

# MAT v5 data types (miXXX) -> NumPy dtype (without byte order)
_MI = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8",
       13: "u8", 16: "u1", 17: "u2", 18: "u4"}
MI_MATRIX, MI_COMPRESSED = 14, 15
# MAT v5 array classes (mxXXX_CLASS) -> NumPy dtype of the values MATLAB holds
_MX_NUMERIC = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4",
               14: "i8", 15: "u8"}
MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE = 1, 2, 3, 4, 5
_MX_NAMES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse", 16: "function handle",
             17: "opaque"}
# MAT v4 precision digit P of the type code MOPT -> dtype
_V4_PRECISION = {0: "f8", 1: "f4", 2: "i4", 3: "i2", 4: "u2", 5: "u1"}


class MatContents(dict):
    """The variables that were asked for (name -> value); ``names`` lists every variable the
    file holds, in file order."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []


def read_mat(path: str, variables=None, *, max_bytes: int = MAX_BYTES) -> MatContents:
    """Read the variables ``variables`` (an iterable of names; None = all) from a MAT v4 or v5 file."""
    data = _read_file(path, max_bytes)
    wanted = None if variables is None else frozenset(variables)
    if len(data) >= 4 and 0 in data[:4]:  # v4 starts with a binary type code; v5 with text
        return _read_v4(memoryview(data), wanted, path)
    if len(data) < V5_HEADER:
        raise NotAnEcgError(f"{path}: not a MATLAB file ({len(data)} bytes, no MAT v5 header)", path)
    endian = bytes(data[126:128])
    if endian not in (b"IM", b"MI"):
        raise NotAnEcgError(f"{path}: not a MATLAB file (no MAT v4/v5 signature)", path)
    order = "<" if endian == b"IM" else ">"
    version = int.from_bytes(data[124:126], "little" if order == "<" else "big")
    if version == 0x0200:
        raise UnknownFormatError(f"{path}: MATLAB v7.3 (HDF5-based) .mat files are not supported", path)
    if version != 0x0100:
        raise NotAnEcgError(f"{path}: not a MATLAB file (MAT v5 version field {version:#06x})", path)
    return _V5(memoryview(data), order, path, max_bytes).read_top(wanted)


def _read_file(path: str, max_bytes: int) -> bytes:
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise EmptyFileError(f"{path}: file is empty", path)
        if size > max_bytes:
            raise RecordTooLargeError(f"{path}: {size} bytes is more than the {max_bytes}-byte "
                                      "limit for a MATLAB ECG file", path)
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot read ({exc.strerror or exc})", path) from None


# ---- MAT v4 ------------------------------------------------------------------------------------

def _read_v4(buf: memoryview, wanted, path: str) -> MatContents:
    out, pos = MatContents(), 0
    while pos < len(buf):
        if len(buf) - pos < 20:
            raise TruncatedSignalError(f"{path}: MAT v4 header cut short at byte {pos}", path)
        order, (mopt, mrows, ncols, imagf, namlen) = _v4_header(buf[pos:pos + 20], path)
        precision, kind = (mopt // 10) % 10, mopt % 10
        itemsize = int(_V4_PRECISION[precision][1])
        count = mrows * ncols
        nbytes = count * itemsize * (2 if imagf else 1)
        start = pos + 20 + namlen
        if start + nbytes > len(buf):
            raise TruncatedSignalError(
                f"{path}: MAT v4 matrix of {mrows}x{ncols} needs {nbytes} bytes at offset {start}, "
                f"the file has {len(buf) - start}", path)
        name = _name(bytes(buf[pos + 20:start]).split(b"\0", 1)[0], path)
        out.names.append(name)
        if wanted is None or name in wanted:
            if imagf:
                raise UnknownFormatError(f"{path}: complex MAT v4 matrix {name!r} is not supported", path)
            if kind == 2:
                raise UnknownFormatError(f"{path}: sparse MAT v4 matrix {name!r} is not supported", path)
            dtype = np.dtype(_V4_PRECISION[precision]).newbyteorder(order)
            arr = np.frombuffer(buf, dtype, count, start).reshape((mrows, ncols), order="F")
            native = dtype.newbyteorder("=")
            out[name] = _chars(arr.astype(np.uint32), path) if kind == 1 else arr.astype(native)
        pos = start + nbytes
    return out


def _v4_header(head: memoryview, path: str):
    """(byte order, (mopt, mrows, ncols, imagf, namlen)) of a MAT v4 matrix header."""
    for order in ("<", ">"):
        fields = tuple(int(v) for v in np.frombuffer(head, np.dtype("i4").newbyteorder(order), 5))
        mopt, mrows, ncols, imagf, namlen = fields
        m, o, p, t = mopt // 1000, (mopt // 100) % 10, (mopt // 10) % 10, mopt % 10
        if 0 <= mopt < 5000 and m == (0 if order == "<" else 1) and o == 0 and p in _V4_PRECISION \
                and t in (0, 1, 2):
            if mrows < 0 or ncols < 0 or imagf not in (0, 1) or not 1 <= namlen <= 4096:
                raise NotAnEcgError(f"{path}: corrupt MAT v4 header (rows {mrows}, columns {ncols}, "
                                    f"imagf {imagf}, name length {namlen})", path)
            return order, fields
    raise NotAnEcgError(f"{path}: not a MATLAB file (MAT v4 type code unreadable)", path)


def _name(raw: bytes, path: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise NotAnEcgError(f"{path}: MATLAB variable name is not ASCII ({raw[:32]!r})", path) from None


def _chars(codes: np.ndarray, path: str):
    """A 2-D array of character codes -> one str per row (a str when there is one row)."""
    try:
        rows = ["".join(map(chr, r)) for r in codes.tolist()]
    except (ValueError, OverflowError):
        raise NotAnEcgError(f"{path}: MATLAB char array holds invalid character codes", path) from None
    return rows[0] if len(rows) == 1 else rows


# ---- MAT v5 ------------------------------------------------------------------------------------

class _V5:
    """A MAT v5 parser over one buffer (the file, or a decompressed element)."""

    def __init__(self, buf: memoryview, order: str, path: str, max_bytes: int):
        self.buf, self.order, self.path, self.max_bytes = buf, order, path, max_bytes

    def _u32(self, buf: memoryview, pos: int) -> int:
        return int.from_bytes(buf[pos:pos + 4], "little" if self.order == "<" else "big")

    def _bad(self, what: str) -> NotAnEcgError:
        return NotAnEcgError(f"{self.path}: corrupt MAT v5 file: {what}", self.path)

    def tag(self, buf: memoryview, pos: int, end: int) -> tuple[int, int, int, int]:
        """(data type, data bytes, data start, next element start) of the element at ``pos``."""
        if end - pos < 8:
            raise TruncatedSignalError(f"{self.path}: MAT v5 element tag cut short at byte {pos}",
                                       self.path)
        first = self._u32(buf, pos)
        if first >> 16:  # small data element: 2-byte size, 2-byte type, data in the next 4 bytes
            mtype, nbytes = first & 0xFFFF, first >> 16
            if nbytes > 4:
                raise self._bad(f"small element of {nbytes} bytes at byte {pos}")
            return mtype, nbytes, pos + 4, pos + 8
        mtype, nbytes = first, self._u32(buf, pos + 4)
        start = pos + 8
        if nbytes > end - start:
            raise TruncatedSignalError(
                f"{self.path}: MAT v5 element at byte {pos} declares {nbytes} bytes, "
                f"{end - start} remain", self.path)
        padded = nbytes if mtype == MI_COMPRESSED else nbytes + (-nbytes) % 8
        return mtype, nbytes, start, min(start + padded, end)

    def read_top(self, wanted) -> MatContents:
        out, pos, end = MatContents(), V5_HEADER, len(self.buf)
        while end - pos >= 8:
            mtype, nbytes, start, nxt = self.tag(self.buf, pos, end)
            if mtype == MI_COMPRESSED:
                inner = self._inflate(self.buf[start:start + nbytes], pos)
                self._top_element(inner, 0, len(inner), wanted, out)
            elif mtype == MI_MATRIX:
                self._top_element(self.buf, pos, end, wanted, out)
            else:
                raise self._bad(f"top-level element of type {mtype} at byte {pos}")
            pos = nxt
        return out

    def _top_element(self, buf: memoryview, pos: int, end: int, wanted, out: MatContents) -> None:
        mtype, nbytes, start, _ = self.tag(buf, pos, end)
        if mtype != MI_MATRIX:
            raise self._bad(f"expected a matrix element, found type {mtype}")
        name, value = self.matrix(buf, start, start + nbytes, wanted, 0)
        out.names.append(name)
        if wanted is None or name in wanted:
            out[name] = value

    def _inflate(self, data: memoryview, pos: int) -> memoryview:
        """Decompress one miCOMPRESSED element: the inner tag first, its size checked, then exactly
        that many bytes (never more than ``max_bytes`` or ZLIB_MAX_RATIO times the input)."""
        d = zlib.decompressobj()
        try:
            head = d.decompress(bytes(data), 8)
            if len(head) < 8:
                raise self._bad(f"compressed element at byte {pos} is too short")
            first = self._u32(memoryview(head), 0)
            need = 8 + (4 if first >> 16 else self._u32(memoryview(head), 4))
            limit = max(len(data), 64) * ZLIB_MAX_RATIO
            if need > limit:
                raise self._bad(f"compressed element at byte {pos} claims {need} bytes "
                                f"(limit {limit} for {len(data)} compressed bytes)")
            if need > self.max_bytes:
                raise RecordTooLargeError(f"{self.path}: compressed element at byte {pos} declares "
                                          f"{need} bytes, over the budget of {self.max_bytes}; not "
                                          "inflated", self.path)
            rest = d.decompress(d.unconsumed_tail, need - 8) if need > 8 else b""
            if len(rest) < need - 8:
                raise TruncatedSignalError(f"{self.path}: compressed element at byte {pos} ends "
                                           f"early ({8 + len(rest)} of {need} bytes)", self.path)
            # the stream must end here: this also verifies its Adler-32 checksum, the only thing
            # that tells a corrupt stream from garbage that happens to inflate
            tail = d.decompress(d.unconsumed_tail, 64)
        except zlib.error as exc:
            raise self._bad(f"compressed element at byte {pos}: {exc}") from None
        if tail or not d.eof:
            raise self._bad(f"compressed element at byte {pos} does not end where its "
                            f"{need}-byte content does (corrupt stream or checksum not reached)")
        return memoryview(head + rest)

    def matrix(self, buf: memoryview, pos: int, end: int, wanted, depth: int):
        """(name, value) of the miMATRIX whose data span buf[pos:end]; value None when skipped."""
        if depth > MAX_DEPTH:
            raise self._bad(f"struct/cell nesting deeper than {MAX_DEPTH}")
        if pos == end:  # an empty element: MATLAB writes this for [] inside structs and cells
            return "", np.zeros((0, 0))
        mtype, nbytes, start, pos = self.tag(buf, pos, end)
        if mtype != 6 or nbytes != 8:
            raise self._bad("array flags element missing")
        flags = self._u32(buf, start)
        mx_class, complex_ = flags & 0xFF, bool(flags & 0x800)
        dims = self._ints(buf, pos, end, "dimensions")
        pos = self.tag(buf, pos, end)[3]
        mtype, nbytes, start, pos = self.tag(buf, pos, end)
        if mtype not in (1, 2):
            raise self._bad(f"array name element of type {mtype}")
        name = _name(bytes(buf[start:start + nbytes]), self.path)
        if wanted is not None and depth == 0 and name not in wanted:
            return name, None
        if mx_class in _MX_NUMERIC or mx_class == MX_CHAR:
            if complex_:
                raise UnknownFormatError(f"{self.path}: complex MATLAB array {name!r} is not "
                                         "supported", self.path)
            return name, self._numeric(buf, pos, end, dims, mx_class, name)
        if mx_class == MX_STRUCT:
            return name, self._struct(buf, pos, end, dims, depth)
        if mx_class == MX_CELL:
            return name, [self._child(buf, p, end, depth) for p in self._children(buf, pos, end, dims)]
        raise UnknownFormatError(f"{self.path}: MATLAB {_MX_NAMES.get(mx_class, f'class {mx_class}')} "
                                 f"array {name!r} is not supported", self.path)

    def _ints(self, buf: memoryview, pos: int, end: int, what: str) -> list[int]:
        mtype, nbytes, start, _ = self.tag(buf, pos, end)
        if mtype != 5 or nbytes % 4:
            raise self._bad(f"{what} element of type {mtype}, {nbytes} bytes")
        vals = [int(v) for v in np.frombuffer(buf, np.dtype("i4").newbyteorder(self.order),
                                              nbytes // 4, start)]
        if what == "dimensions" and (not vals or len(vals) > 32 or min(vals) < 0):
            raise self._bad(f"array dimensions {vals[:8]}")
        return vals

    def _numeric(self, buf: memoryview, pos: int, end: int, dims: list[int], mx_class: int, name: str):
        count = prod(dims)
        mtype, nbytes, start, _ = self.tag(buf, pos, end)
        if mtype not in _MI:
            raise self._bad(f"{name!r}: data element of type {mtype}")
        stored = np.dtype(_MI[mtype]).newbyteorder(self.order)
        if mx_class == MX_CHAR and mtype == 16:  # UTF-8 text: the byte count is not the char count
            text = bytes(buf[start:start + nbytes]).decode("utf-8", "replace")
            return text if len(dims) == 2 and dims[0] == 1 else [text]
        if count * stored.itemsize != nbytes:
            raise self._bad(f"{name!r}: {dims} elements of {stored.itemsize} bytes do not fill "
                            f"the {nbytes}-byte data element")
        if count * 8 > self.max_bytes:
            raise RecordTooLargeError(f"{self.path}: {name!r} of {dims} elements is over the budget "
                                      f"of {self.max_bytes} bytes", self.path)
        arr = np.frombuffer(buf, stored, count, start).reshape(dims, order="F")
        if mx_class == MX_CHAR:
            return _chars(arr.reshape(dims[0], -1, order="F").astype(np.uint32), self.path)
        return arr.astype(np.dtype(_MX_NUMERIC[mx_class]))

    def _children(self, buf: memoryview, pos: int, end: int, dims: list[int]) -> list[int]:
        """Start offsets of the prod(dims) miMATRIX elements that follow (checked one by one)."""
        starts = []
        for _ in range(prod(dims)):
            if end - pos < 8:
                raise TruncatedSignalError(f"{self.path}: MAT v5 struct/cell holds fewer elements "
                                           f"than its dimensions {dims} say", self.path)
            starts.append(pos)
            pos = self.tag(buf, pos, end)[3]
        return starts

    def _child(self, buf: memoryview, pos: int, end: int, depth: int):
        mtype, nbytes, start, _ = self.tag(buf, pos, end)
        if mtype != MI_MATRIX:
            raise self._bad(f"struct/cell element of type {mtype}")
        return self.matrix(buf, start, start + nbytes, None, depth + 1)[1]

    def _struct(self, buf: memoryview, pos: int, end: int, dims: list[int], depth: int):
        (name_len,) = self._ints(buf, pos, end, "field name length")[:1] or [0]
        pos = self.tag(buf, pos, end)[3]
        mtype, nbytes, start, pos = self.tag(buf, pos, end)
        if mtype != 1 or name_len <= 0 or nbytes % name_len:
            raise self._bad(f"struct field names (length {name_len}, {nbytes} bytes)")
        raw = bytes(buf[start:start + nbytes])
        fields = [_name(raw[i:i + name_len].split(b"\0", 1)[0], self.path)
                  for i in range(0, nbytes, name_len)]
        n = prod(dims)
        if n * max(len(fields), 1) * 8 > end - pos:
            raise TruncatedSignalError(f"{self.path}: MAT v5 struct of {dims} x {len(fields)} "
                                       f"fields cannot fit in {end - pos} bytes", self.path)
        values = [self._child(buf, p, end, depth) for p in self._children(buf, pos, end, [n * len(fields)])]
        items = [dict(zip(fields, values[i * len(fields):(i + 1) * len(fields)])) for i in range(n)]
        return items[0] if n == 1 else items


__all__ = ["MatContents", "read_mat", "MAX_BYTES"]
