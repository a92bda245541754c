"""WFDB records (.hea + signal files), including PhysioNet/CinC Challenge records whose signal file
is a MATLAB .mat holding ``val``.

Decoding is vectorised: each signal file is read with one ``np.fromfile`` and decoded with NumPy
(``wfdb_decode``); physical values are ``(digital - baseline) / gain`` per lead, invalid-sample
codes become NaN, exactly as ``wfdb.rdsamp`` computes them. Challenge .mat files are MATLAB v4
matrices whose data start at the byte offset the header gives (``16+24``); when the .mat header
confirms that layout the file is read the same fast way, otherwise (MATLAB v5, other offsets)
``ecgbatch.io.matfile`` reads ``val`` and the header's gains are applied to it.

The header-only path (``header_only=True``) parses the .hea and checks each signal file's size
against what the header promises (one ``os.stat`` per file), so a manifest catches missing,
truncated and over-long files without decoding a sample.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from ecgbatch.io import wfdb_decode as dec
from ecgbatch.io.entries import RecordHeader
from ecgbatch.io.errors import (EmptyFileError, HeaderError, LengthMismatchError,
                                MissingSignalFileError, NotAnEcgError, TooFewLeadsError,
                                TruncatedSignalError, UnknownFormatError, UnreadableError)
from ecgbatch.io.leads import canonical_leads
from ecgbatch.io.record import Record
from ecgbatch.io.wfdb_header import SignalSpec, WfdbHeader, header_meta, parse_header, read_header_text

_MAT4_TYPES = {30: (16, "<i2"), 20: (32, "<i4")}  # MAT v4 type code -> (WFDB fmt, dtype)


class _File:
    """One signal file of a record and the signals stored in it (interleaved)."""

    def __init__(self, name: str, specs: list[tuple[int, SignalSpec]], path: str):
        self.name, self.specs, self.path = name, specs, path
        fmts = {s.fmt for _, s in specs}
        if len(fmts) != 1:
            raise HeaderError(f"{path}: signals in {name!r} mix formats {sorted(fmts)}", path)
        self.fmt = fmts.pop()
        self.offset = specs[0][1].byte_offset
        self.spf = [s.spf for _, s in specs]
        self.frame = sum(self.spf)
        if self.fmt not in dec.SUPPORTED:
            raise UnknownFormatError(f"{path}: WFDB signal format {self.fmt} is not supported "
                                     f"(supported: {sorted(dec.SUPPORTED)})", path)
        if any(s.skew for _, s in specs):
            raise UnknownFormatError(f"{path}: WFDB skew is not supported", path)


def _files(h: WfdbHeader, hea_path: str) -> list[_File]:
    groups: dict[str, list[tuple[int, SignalSpec]]] = {}
    for i, s in enumerate(h.signals):
        if s.file_name == "~" or s.fmt == 0:
            raise UnknownFormatError(f"{hea_path}: signal {i} has no signal file (format 0 / '~')",
                                     hea_path)
        groups.setdefault(s.file_name, []).append((i, s))
    return [_File(name, specs, hea_path) for name, specs in groups.items()]


def signal_file_names(hea_path: str) -> list[str]:
    """Signal files a header refers to (for grouping files into records): the first field of each
    signal line, without parsing the rest (a scan calls this once per header before reading)."""
    text = read_header_text(hea_path)
    lines = [ln.split("#", 1)[0].split() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise HeaderError(f"{hea_path}: no record line (only comments or blank lines)", hea_path)
    try:
        n_sig = int(lines[0][1]) if len(lines[0]) > 1 else 0
    except ValueError:
        raise HeaderError(f"{hea_path}: malformed record line {' '.join(lines[0])!r}", hea_path) from None
    return list(dict.fromkeys(ln[0] for ln in lines[1:1 + n_sig] if ln[0] != "~"))


def read_wfdb(hea_path: str, *, header_only: bool = False, check_length: bool = True):
    """Read a WFDB record from its .hea path; returns a Record (or a RecordHeader)."""
    h = parse_header(read_header_text(hea_path), hea_path)
    if h.n_sig == 0:
        raise TooFewLeadsError(f"{hea_path}: header declares no signals", hea_path)
    folder = os.path.dirname(hea_path)
    files = _files(h, hea_path)
    n = h.n_samples
    plans = []
    for f in files:
        fpath = os.path.join(folder, f.name)
        mat = _mat_layout(fpath, f, hea_path) if f.name.lower().endswith(".mat") else None
        size = _size(fpath, hea_path)
        if n is None:  # record line without a length: the first file decides
            n = dec.samples_in(f.fmt, max(size - f.offset, 0)) // f.frame
        if mat == "loadmat":
            plans.append((f, fpath, "loadmat"))
            continue
        need = f.offset + dec.n_bytes(f.fmt, n * f.frame)
        if size < need:
            raise TruncatedSignalError(
                f"{hea_path}: {f.name} holds {size} bytes, the header needs {need} "
                f"({n} samples x {f.frame} per frame, format {f.fmt}, offset {f.offset})", hea_path)
        extra = dec.samples_in(f.fmt, size - f.offset) // f.frame - n
        if check_length and extra > 0:
            raise LengthMismatchError(
                f"{hea_path}: {f.name} holds {n + extra} samples per signal, the header says {n}",
                hea_path)
        plans.append((f, fpath, "raw"))
    if n == 0:
        raise EmptyFileError(f"{hea_path}: record has 0 samples", hea_path)

    meta = header_meta(h)
    meta["storage"] = "wfdb " + "/".join(sorted({str(f.fmt) for f in files})) + (
        " in .mat" if any(f.name.lower().endswith(".mat") for f in files) else "")
    units = {s.units for s in h.signals}
    rec_units = units.pop() if len(units) == 1 else "mixed"
    leads = canonical_leads(s.description or f"ch{i + 1}" for i, s in enumerate(h.signals))
    record_id = os.path.splitext(os.path.basename(hea_path))[0]  # the record line's name may
    # differ (Georgia headers write 'E00271.mat'); the file stem is what identifies it on disk
    fmt_name = "wfdb_mat" if "in .mat" in meta["storage"] else "wfdb"
    if header_only:
        return RecordHeader(record_id, hea_path, fmt_name, h.fs, leads, int(n), rec_units, meta)

    signal = np.empty((h.n_sig, n), np.float32)
    checksums = np.full(h.n_sig, np.nan)
    for f, fpath, how in plans:
        rows = [i for i, _ in f.specs]
        if how == "loadmat":
            d = _load_loadmat(fpath, f, n, hea_path)
        else:
            d = _load_raw(fpath, f, n, hea_path)
        _physical(d, f, rows, h.signals, signal, checksums)
    bad = [i for i, s in enumerate(h.signals)
           if s.checksum is not None and not np.isnan(checksums[i])
           and (int(checksums[i]) - s.checksum) % 65536]
    if rec_units == "mixed":  # bring every lead to mV when the units allow it
        signal, rec_units = _to_common_units(signal, [s.units for s in h.signals], hea_path)
    meta["quality"] = [f"checksum_mismatch:{leads[i]}" for i in bad]
    return Record(signal, float(h.fs), leads, rec_units, record_id, hea_path, meta)


def _physical(d: np.ndarray, f: "_File", rows: list[int], specs: list[SignalSpec],
              out: np.ndarray, checksums: np.ndarray) -> None:
    """Digital [signals in file, n] (integer, maybe a transposed view) -> physical float32 rows of
    ``out``: (d - baseline) / gain, invalid codes -> NaN; also the per-lead checksums (exact: the
    float32 buffer holds the integers exactly below 2**24, sums run in float64)."""
    block = np.empty(d.shape, np.float32)
    block[...] = d
    offset = dec.OFFSET.get(f.fmt)
    if offset:
        block -= offset
    if f.frame != len(f.specs):
        checksums[rows] = np.nan  # averaged frames: the stored checksum covers the raw samples
    elif d.dtype.itemsize <= 2 or f.fmt in (212, 310, 311, 24):
        checksums[rows] = block.sum(axis=1, dtype=np.float64)
    else:
        checksums[rows] = np.ascontiguousarray(d).sum(axis=1, dtype=np.int64) % 65536
    invalid = dec.INVALID.get(f.fmt)
    # invalid codes are each format's most negative value: test the minimum before building a mask
    mask = block == invalid if invalid is not None and block.min() <= invalid else None
    base = np.array([specs[i].baseline for i in rows], np.float32)[:, None]
    gain = np.array([specs[i].gain for i in rows], np.float32)[:, None]
    block -= base
    block /= gain
    if mask is not None:
        block[mask] = np.nan
    if rows == list(range(rows[0], rows[0] + len(rows))):
        out[rows[0]:rows[0] + len(rows)] = block
    else:
        out[rows] = block


def _size(fpath: str, hea_path: str) -> int:
    try:
        st = os.stat(fpath)
    except FileNotFoundError:
        raise MissingSignalFileError(
            f"{hea_path}: signal file {os.path.basename(fpath)!r} is missing", hea_path) from None
    except OSError as exc:
        raise UnreadableError(f"{fpath}: cannot stat ({exc.strerror})", hea_path) from None
    if st.st_size == 0:
        raise EmptyFileError(f"{hea_path}: signal file {os.path.basename(fpath)!r} is empty", hea_path)
    return st.st_size


def _load_raw(fpath: str, f: _File, n: int, hea_path: str) -> np.ndarray:
    """Digital samples [signals in file, n] as integers (a transposed view when possible)."""
    total = n * f.frame
    try:
        if f.fmt in dec.ALIGNED_DTYPE:
            raw = np.fromfile(fpath, dtype=dec.ALIGNED_DTYPE[f.fmt], count=total, offset=f.offset)
        else:
            raw = np.fromfile(fpath, dtype=np.uint8, count=dec.n_bytes(f.fmt, total), offset=f.offset)
    except OSError as exc:
        raise UnreadableError(f"{fpath}: cannot read ({exc})", hea_path) from None
    d = dec.decode(raw, f.fmt, total)
    if d.size < total:
        raise TruncatedSignalError(f"{hea_path}: {f.name} ended early", hea_path)
    frames = d.reshape(n, f.frame)
    if f.fmt == 8:
        init = np.array([s.init_value or 0 for _, s in f.specs for _ in range(s.spf)], np.int32)
        frames = dec.undiff(frames, init)
    if f.frame == len(f.specs):
        return frames.T
    # several samples per frame: one value per frame, the integer mean truncated toward zero, as
    # the WFDB library's getvec and wfdb.rdsamp(smooth_frames=True) compute it
    out = np.empty((len(f.specs), n), np.int64)
    starts = np.cumsum([0] + f.spf)
    for col in range(len(f.specs)):
        total = frames[:, starts[col]:starts[col + 1]].sum(axis=1, dtype=np.int64)
        out[col] = np.trunc(total / f.spf[col])
    return out


def _mat_layout(fpath: str, f: _File, hea_path: str) -> str | None:
    """'raw' when the .mat is a MATLAB v4 int matrix whose data start at the header's byte offset
    in WFDB's interleaved order; 'loadmat' otherwise."""
    try:
        with open(fpath, "rb") as fh:
            head = fh.read(64)
    except FileNotFoundError:
        raise MissingSignalFileError(
            f"{hea_path}: signal file {os.path.basename(fpath)!r} is missing", hea_path) from None
    except OSError as exc:
        raise UnreadableError(f"{fpath}: cannot read ({exc.strerror})", hea_path) from None
    if len(head) < 20:
        return "loadmat"
    mtype, mrows, _ncols, imagf, namlen = struct.unpack("<5i", head[:20])
    if (mtype in _MAT4_TYPES and _MAT4_TYPES[mtype][0] == f.fmt and imagf == 0
            and mrows == f.frame and 20 + namlen == f.offset):
        return "raw"
    return "loadmat"


def _load_loadmat(fpath: str, f: _File, n: int, hea_path: str) -> np.ndarray:
    from ecgbatch.io.errors import EcgReadError
    from ecgbatch.io.matfile import read_mat  # not scipy.io.loadmat: it can crash on corrupt files

    try:
        val = read_mat(fpath, variables=("val",)).get("val")
    except EcgReadError as exc:
        raise type(exc)(str(exc), hea_path) from None
    if not isinstance(val, np.ndarray) or val.ndim != 2 or not np.issubdtype(val.dtype, np.number):
        raise NotAnEcgError(f"{fpath}: no numeric 2-D 'val' matrix", hea_path)
    if val.shape[0] != len(f.specs) and val.shape[1] == len(f.specs):
        val = val.T
    if val.shape[0] != len(f.specs):
        raise LengthMismatchError(
            f"{hea_path}: 'val' has shape {val.shape}, header expects {len(f.specs)} signals", hea_path)
    if val.shape[1] < n:
        raise TruncatedSignalError(
            f"{hea_path}: 'val' holds {val.shape[1]} samples, the header says {n}", hea_path)
    if val.shape[1] > n:
        raise LengthMismatchError(
            f"{hea_path}: 'val' holds {val.shape[1]} samples, the header says {n}", hea_path)
    if not np.issubdtype(val.dtype, np.integer):
        if not np.array_equal(val, np.round(val)):
            raise NotAnEcgError(f"{fpath}: 'val' holds non-integer values; WFDB gains do not apply",
                                hea_path)
        val = val.astype(np.int64)
    return val


def _to_common_units(signal: np.ndarray, units: list[str], path: str):
    from ecgbatch.io.quality import canonical_units

    scales = [canonical_units(u)[1] for u in units]
    if any(s is None for s in scales):
        return signal, "mixed"
    return signal * np.array(scales, np.float32)[:, None], "mV"
