"""WFDB records (.hea + signal files), including PhysioNet/CinC Challenge records whose signal file
is a MATLAB .mat holding ``val``; multi-segment records are assembled in ``wfdb_segments`` from
this module's single-segment path, and ``wfdb_record.read_wfdb`` picks one of the two.

Every value is ``wfdb.rdsamp``'s, rounded once to float32: the same digital samples (every signal
format, byte offsets, skew, several samples per frame averaged to one per frame as rdsamp's default
``smooth_frames=True`` does, so ``fs`` is the frame rate), ``(digital - baseline) / gain`` in
float64, invalid-sample codes as NaN. Decoding is vectorised: each signal file is read with one
``np.fromfile`` (FLAC with one ``soundfile`` read) and decoded with NumPy (``wfdb_decode``).
Challenge .mat files are MATLAB v4 matrices whose data start at the byte offset the header gives
(``16+24``); when the .mat header confirms that layout the file is read the same fast way,
otherwise (MATLAB v5, other offsets) ``ecgbatch.io.matfile`` reads ``val`` (never
``scipy.io.loadmat``: it can crash the process on corrupt files).

The header-only path (``header_only=True``) parses the .hea and checks each signal file's size
against what the header promises (one ``os.stat`` per file), so a manifest catches missing,
truncated and over-long files without decoding a sample.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from ecgbatch.io import wfdb_decode as dec
from ecgbatch.io.confine import check_budget, confined
from ecgbatch.io.errors import (EcgReadError, EmptyFileError, HeaderError, LengthMismatchError,
                                MissingSignalFileError, NotAnEcgError, TooFewLeadsError,
                                TruncatedSignalError, UnknownFormatError, UnreadableError)
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.leads import canonical_leads
from ecgbatch.io.matfile import MAX_BYTES, read_mat
from ecgbatch.io.quality import canonical_units
from ecgbatch.io.record import Record
from ecgbatch.io.wfdb_header import SignalSpec, WfdbHeader, header_meta, read_header_text

_MAT4_TYPES = {30: (16, "<i2"), 20: (32, "<i4")}  # MAT v4 type code -> (WFDB fmt, dtype)


class _File:
    """One signal file of a record and the signals stored in it (interleaved)."""

    def __init__(self, name: str, specs: list[tuple[int, SignalSpec]], path: str):
        self.name, self.specs, self.path = name, specs, path
        fmts = {s.fmt for _, s in specs}
        if not fmts <= dec.SUPPORTED:
            raise UnknownFormatError(f"{path}: WFDB signal format {sorted(fmts - dec.SUPPORTED)} "
                                     f"is not supported (supported: {sorted(dec.SUPPORTED)})", path)
        if len(fmts) != 1:
            raise HeaderError(f"{path}: signals in {name!r} mix formats {sorted(fmts)}", path)
        self.fmt = fmts.pop()
        self.offset = specs[0][1].byte_offset
        self.spf = [s.spf for _, s in specs]
        self.skew = [s.skew for _, s in specs]
        self.frame = sum(self.spf)
        self.rows = [i for i, _ in specs]
        self.flac = self.fmt in dec.FLAC_BITS
        if self.flac and len(set(self.spf)) > 1:
            raise HeaderError(f"{path}: signals in FLAC file {name!r} differ in samples per frame",
                              path)


def _files(h: WfdbHeader, hea_path: str) -> list[_File]:
    groups: dict[str, list[tuple[int, SignalSpec]]] = {}
    for i, s in enumerate(h.signals):
        if s.file_name == "~" or s.fmt == 0:
            raise UnknownFormatError(f"{hea_path}: signal {i} has no signal file (format 0 / '~')",
                                     hea_path)
        groups.setdefault(s.file_name, []).append((i, s))
    return [_File(name, specs, hea_path) for name, specs in groups.items()]


def signal_file_names(hea_path: str) -> list[str]:
    """Files a header refers to (for grouping files into records): the first field of each signal
    line (the segment headers, ``name.hea``, for a multi-segment record), without parsing the rest
    (a scan calls this once per header before reading)."""
    text = read_header_text(hea_path)
    lines = [ln.split("#", 1)[0].split() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise HeaderError(f"{hea_path}: no record line (only comments or blank lines)", hea_path)
    name, _, n_seg = lines[0][0].partition("/")
    try:
        n_lines = int(n_seg) if n_seg else int(lines[0][1]) if len(lines[0]) > 1 else 0
    except ValueError:
        raise HeaderError(f"{hea_path}: malformed record line (line 1)", hea_path) from None
    names = [ln[0] for ln in lines[1:1 + n_lines] if ln[0] != "~"]
    return list(dict.fromkeys(n + ".hea" if n_seg else n for n in names))


def read_single_segment(h: WfdbHeader, hea_path: str, *, header_only: bool = False, check_length: bool = True,
                        max_bytes: int | None = None):
    """A single-segment WFDB record (parsed header ``h``) as a Record (or a RecordHeader). Signal
    files must lie in the header's folder (``confine.confined``); ``max_bytes``: the per-record
    budget of decoded bytes, checked against the header before decoding (None: the default)."""
    n, plans = plan_record(h, hea_path, check_length=check_length, max_bytes=max_bytes)
    files = [f for f, _, _ in plans]
    meta = header_meta(h)
    meta["storage"] = "wfdb " + "/".join(sorted({str(f.fmt) for f in files})) + (
        " in .mat" if any(f.name.lower().endswith(".mat") for f in files) else "")
    rec_units = record_units(h.signals)
    leads = canonical_leads(s.description or f"ch{i + 1}" for i, s in enumerate(h.signals))
    if any(s.spf > 1 for s in h.signals):  # these leads were averaged to the frame rate
        meta["samples_per_frame"] = {lead: s.spf for lead, s in zip(leads, h.signals) if s.spf > 1}
    record_id = os.path.splitext(os.path.basename(hea_path))[0]  # the record line's name may
    # differ (Georgia headers write 'E00271.mat'); the file stem is what identifies it on disk
    fmt_name = "wfdb_mat" if "in .mat" in meta["storage"] else "wfdb"
    if header_only:
        return RecordHeader(record_id, hea_path, fmt_name, h.fs, leads, int(n), rec_units, meta)
    signal, bad = read_signals(h, hea_path, n, plans, max_bytes)
    if rec_units == "mixed":  # bring every lead to mV when the units allow it
        signal, rec_units = to_common_units(signal, [s.units for s in h.signals])
    meta["quality"] = [f"checksum_mismatch:{leads[i]}" for i in bad]
    return Record(signal, float(h.fs), leads, rec_units, record_id, hea_path, meta)


def record_units(specs: list[SignalSpec]) -> str:
    units = {s.units for s in specs}
    return units.pop() if len(units) == 1 else "mixed"


def plan_record(h: WfdbHeader, hea_path: str, *, check_length: bool = True,
                max_bytes: int | None = None):
    """Check a single-segment header against its signal files without decoding: each file lies in
    the header's folder (SignalFileOutsideError), exists, holds the samples the header promises
    (TruncatedSignalError) and no more (LengthMismatchError, when check_length), and the record
    fits the decoded-size budget (RecordTooLargeError). Returns (samples per signal,
    [(file, path, how)])."""
    if h.n_sig == 0:
        raise TooFewLeadsError(f"{hea_path}: header declares no signals", hea_path)
    folder = os.path.dirname(hea_path)
    n = h.n_samples
    plans = []
    for f in _files(h, hea_path):
        fpath = confined(folder, f.name, hea_path)
        if f.flac:
            n = _check_flac(fpath, f, n, hea_path, check_length)
            plans.append((f, fpath, "flac"))
            continue
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
        if check_length and extra > 0 and size > f.offset + dec.padded_bytes(f.fmt, n * f.frame):
            raise LengthMismatchError(
                f"{hea_path}: {f.name} holds {n + extra} samples per signal, the header says {n}",
                hea_path)
        plans.append((f, fpath, "raw"))
    if n == 0:
        raise EmptyFileError(f"{hea_path}: record has 0 samples", hea_path)
    check_budget(record_bytes(h, n), max_bytes, hea_path, "the header")
    return n, plans


def record_bytes(h: WfdbHeader, n: int) -> int:
    """Bytes of the stored samples decoded to 32-bit values (every sample of every frame)."""
    return 4 * n * sum(s.spf for s in h.signals)


def read_signals(h: WfdbHeader, hea_path: str, n: int, plans,
                 max_bytes: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Decode every file of a planned record: physical float32 [signals, n] in the header's units
    (each value wfdb.rdsamp's float64 value rounded to float32) and the signals whose stored
    checksum disagrees with the data."""
    signal = np.empty((h.n_sig, n), np.float32)
    checksums: dict[int, int] = {}
    for f, fpath, how in plans:
        if how == "loadmat":
            frames = _load_loadmat(fpath, f, n, hea_path, max_bytes)
        elif how == "flac":
            frames = _load_flac(fpath, f, n, hea_path)
        else:
            frames = _load_raw(fpath, f, n, hea_path)
        if f.frame == len(f.specs) and not any(f.skew):  # the common case: sums come with
            d, tails, sums = frames.T, [0] * len(f.specs), None  # the conversion, one pass
        else:
            sums = _checksums(frames, f)
            d, tails = _per_signal(frames, f, n)
        block_sums = _physical(d, f, tails, h.signals, signal)
        checksums.update(zip(f.rows, sums if sums is not None else block_sums))
    bad = [i for i, s in enumerate(h.signals)
           if s.checksum is not None and (checksums[i] - s.checksum) % 65536]
    return signal, bad


def _checksums(frames: np.ndarray, f: _File) -> list[int]:
    """Per signal: the 16-bit sum of all its stored samples (every sample of every frame)."""
    cols = frames.sum(axis=0, dtype=np.int64)
    if f.frame != len(f.specs):
        cols = np.add.reduceat(cols, np.cumsum([0] + f.spf[:-1]))
    return [int(c) % 65536 for c in cols]


def _per_signal(frames: np.ndarray, f: _File, n: int) -> tuple[np.ndarray, list[int]]:
    """Digital frames [n, samples per frame] -> one row per signal [signals in file, n], and per
    signal how many trailing samples its skew leaves unknown.

    Several samples per frame: one value per frame, the integer mean truncated toward zero, as
    wfdb.rdsamp (smooth_frames=True, its default) and the WFDB library's getvec compute it; the
    Record's rate is then the frame rate, as wfdb.rdsamp's ``fs``. Skew (in frames, as
    wfdb.rdsamp applies it): signal i at frame t is the sample stored in frame t + skew_i; the last
    skew_i samples lie beyond the record and are NaN."""
    if f.frame == len(f.specs):
        d = frames.T
    else:
        d = np.empty((len(f.specs), n), np.int64)
        starts = np.cumsum([0] + f.spf)
        for col in range(len(f.specs)):
            total = frames[:, starts[col]:starts[col + 1]].sum(axis=1, dtype=np.int64)
            d[col] = np.trunc(total / f.spf[col])
    tails = [min(k, n) for k in f.skew]
    if any(tails):
        shifted = np.zeros(d.shape, d.dtype)
        for i, k in enumerate(tails):
            shifted[i, :n - k] = d[i, k:]
        d = shifted
    return d, tails


def _physical(d: np.ndarray, f: _File, tails: list[int], specs: list[SignalSpec],
              out: np.ndarray) -> list[int]:
    """Digital [signals in file, n] -> physical rows of ``out``: (d - baseline) / gain as
    wfdb.rdsamp computes it in float64, rounded to float32; invalid-sample codes and skew tails ->
    NaN. Returns each row's digital sum mod 2**16 (the WFDB checksum, when d holds every sample).

    When the digital values, the baselines and the gains are all exact in float32 and the
    differences stay below 2**24 (every format up to 24 bits with the gains real headers carry),
    the arithmetic runs in float32: the subtraction is exact and a float32 division is the
    correctly rounded quotient, which equals the float64 quotient rounded to float32 (double
    rounding is harmless for division when 53 >= 2 * 24 + 2). Otherwise it runs in float64."""
    rows = f.rows
    base = np.array([specs[i].baseline for i in rows], np.float64)[:, None]
    gain = np.array([specs[i].gain for i in rows], np.float64)[:, None]
    lo, hi = (int(d.min()), int(d.max())) if d.size else (0, 0)
    exact32 = (max(-lo, hi) + np.abs(base).max() < 1 << 24
               and np.array_equal(gain.astype(np.float32), gain))
    block = np.empty(d.shape, np.float32 if exact32 else np.float64)
    block[...] = d
    sums = block.sum(axis=1, dtype=np.float64) if exact32 else d.sum(axis=1, dtype=np.int64)
    invalid = dec.INVALID.get(f.fmt)
    # invalid codes are each format's most negative value: test the minimum before building a mask
    mask = block == invalid if invalid is not None and lo <= invalid else None
    block -= base.astype(block.dtype)
    block /= gain.astype(block.dtype)
    if mask is not None:
        block[mask] = np.nan
    for i, k in enumerate(tails):
        if k:
            block[i, block.shape[1] - k:] = np.nan
    if rows == list(range(rows[0], rows[0] + len(rows))):
        out[rows[0]:rows[0] + len(rows)] = block
    else:
        out[rows] = block
    return [int(x) % 65536 for x in sums]


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
    """Digital samples [n, samples per frame] as integers, in the file's frame order."""
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
    if f.fmt in dec.OFFSET:
        frames = frames.astype(np.int32) - dec.OFFSET[f.fmt]
    if f.fmt == 8:
        init = np.array([s.init_value or 0 for _, s in f.specs], np.int32)
        frames = dec.undiff(frames, init, f.spf)
    return frames


def _check_flac(fpath: str, f: _File, n: int | None, hea_path: str, check_length: bool) -> int:
    """Samples per signal a FLAC signal file holds, checked against the header (FLAC byte offsets
    count samples per channel, as wfdb reads them)."""
    _size(fpath, hea_path)
    try:
        held = (dec.flac_frames(fpath) - f.offset) // f.spf[0]
    except Exception as exc:  # soundfile raises its own LibsndfileError / RuntimeError
        raise NotAnEcgError(f"{hea_path}: {f.name} is not a readable FLAC file ({exc})",
                            hea_path) from None
    if n is None:
        return max(held, 0)
    if held < n:
        raise TruncatedSignalError(
            f"{hea_path}: {f.name} holds {max(held, 0)} samples per signal, the header says {n}",
            hea_path)
    if check_length and held > n:
        raise LengthMismatchError(
            f"{hea_path}: {f.name} holds {held} samples per signal, the header says {n}", hea_path)
    return n


def _load_flac(fpath: str, f: _File, n: int, hea_path: str) -> np.ndarray:
    try:
        return dec.read_flac(fpath, f.fmt, len(f.specs), f.spf[0], n, f.offset)
    except ImportError as exc:
        raise UnknownFormatError(f"{hea_path}: FLAC formats need the soundfile package ({exc})",
                                 hea_path) from None
    except Exception as exc:  # soundfile raises its own LibsndfileError / RuntimeError
        raise NotAnEcgError(f"{hea_path}: {f.name} cannot be read as WFDB format {f.fmt} ({exc})",
                            hea_path) from None


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


def _load_loadmat(fpath: str, f: _File, n: int, hea_path: str, max_bytes: int | None) -> np.ndarray:
    try:  # matfile, not scipy.io.loadmat: SciPy can crash the process on a corrupt file
        val = read_mat(fpath, variables=("val",),
                       max_bytes=MAX_BYTES if max_bytes is None else min(max_bytes, MAX_BYTES)).get("val")
    except EcgReadError as exc:
        raise type(exc)(str(exc), hea_path) from None
    if not isinstance(val, np.ndarray) or val.ndim != 2 or not np.issubdtype(val.dtype, np.number):
        raise NotAnEcgError(f"{fpath}: no numeric 2-D 'val' matrix", hea_path)
    if val.shape[0] != f.frame and val.shape[1] == f.frame:
        val = val.T
    if val.shape[0] != f.frame:
        raise LengthMismatchError(
            f"{hea_path}: 'val' has shape {val.shape}, header expects {f.frame} rows", hea_path)
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
    return val.T  # [n, samples per frame], as the raw reader returns


def to_common_units(signal: np.ndarray, units: list[str]):
    scales = [canonical_units(u)[1] for u in units]
    if any(s is None for s in scales):
        return signal, "mixed"
    return signal * np.array(scales, np.float32)[:, None], "mV"
