"""NumPy arrays: .npy (2-D one record, 1-D one lead, 3-D [records, ., .]) and .npz (the array
under ``signal``/``ecg``/``x``/``data``/``arr_0`` or the only array, optional ``fs`` and ``leads``
entries).

The lead axis is chosen by ``sidecar.lead_axis`` (explicit layout, else the axis matching the
number of lead names, else the only axis short enough to be leads). fs, leads and units come from
the options, ``<name>.json``, ``ecgbatch.json`` (see ``sidecar``); fs is required, units default to
"unknown" (an array does not say whether it holds mV), and 12 unnamed channels are taken to be the
standard 12 leads in standard order (``meta["leads_assumed"] = True``).
"""
from __future__ import annotations

import os
import zipfile
from math import prod

import numpy as np

from ecgbatch.io import sidecar
from ecgbatch.io.confine import DEFAULT_RECORD_BYTES, check_budget
from ecgbatch.io.errors import (EcgReadError, EmptyFileError, MissingMetadataError, NotAnEcgError,
                                RecordIndexError, TruncatedSignalError, UnreadableError)
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.record import STANDARD_LEADS, Record

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_NPZ_KEYS = ("signal", "ecg", "x", "data", "arr_0")
_SETTINGS = ("fs", "leads", "units")
MAX_ARRAY_BYTES = 1 << 32      # 4 GiB: an .npz member or a 2-D record larger than this is refused
MAX_SETTING_BYTES = 1 << 16    # fs / leads / units entries of an .npz
ZIP_MAX_RATIO = 1100           # deflate cannot expand more than ~1032x: more is a lying header


def _check(path: str) -> tuple[bytes, int]:
    """(first 8 bytes, file size)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot read ({exc.strerror})", path) from None
    if not head:
        raise EmptyFileError(f"{path}: file is empty", path)
    return head, size


def _npy_header(fh, path: str, what: str, kinds: str = "iuf") -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran order) of the .npy stream ``fh``, positioned at its data; the header
    is untrusted text, so any failure to parse it is a NotAnEcgError. ``kinds``: dtype kinds
    accepted (numbers; strings too for the settings entries of an .npz)."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except EcgReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - ValueError, SyntaxError, TokenError, ... on bad text
        raise NotAnEcgError(f"{path}: unreadable {what} header ({type(exc).__name__}: {exc})",
                            path) from None
    if dtype.hasobject or dtype.kind not in kinds or dtype.shape or dtype.names:
        raise NotAnEcgError(f"{path}: {what} dtype {dtype} is not a plain numeric type", path)
    return tuple(int(n) for n in shape), dtype, bool(fortran)


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return prod(shape) * dtype.itemsize


def _load_npy(path: str, size: int, header_only: bool, max_bytes: int | None):
    with open(path, "rb") as fh:
        shape, dtype, _ = _npy_header(fh, path, ".npy")
        offset = fh.tell()
    # one record of a 3-D container is decoded (to float32, or the stored type when wider)
    record = shape[1:] if len(shape) == 3 else shape
    check_budget(prod(record) * max(dtype.itemsize, 4), max_bytes, path, f".npy shape {shape}")
    need = _nbytes(shape, dtype)
    if offset + need > size:
        raise TruncatedSignalError(f"{path}: .npy header declares shape {shape} of {dtype} "
                                   f"({need} bytes), the file holds {size - offset}", path)
    try:  # a memory map for headers and for containers (one record of many is read)
        return np.load(path, mmap_mode="r" if header_only or len(shape) == 3 else None,
                       allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise NotAnEcgError(f"{path}: unreadable .npy ({exc})", path) from None


def _load_npz(path: str, max_bytes: int | None):
    """(signal array, settings stored inside the file), every member's size (the zip header's,
    then the .npy header's) checked against the budget before it is inflated."""
    budget = DEFAULT_RECORD_BYTES if max_bytes is None else max_bytes
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            names = sorted(infos)
            key = next((k for k in _NPZ_KEYS if k in infos), None)
            arrays = [k for k in names if k not in _SETTINGS]
            if key is None and len(arrays) == 1:
                key = arrays[0]
            if key is None:
                raise NotAnEcgError(f"{path}: .npz without a signal array (entries: {names[:20]})", path)
            inner = {k: _member(z, infos[k], path, MAX_SETTING_BYTES, numeric=False)
                     for k in _SETTINGS if k in infos}
            arr = _member(z, infos[key], path, min(MAX_ARRAY_BYTES, budget))
    except EcgReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile/zlib raise many types on corrupt archives
        raise NotAnEcgError(f"{path}: unreadable .npz ({type(exc).__name__}: {exc})", path) from None
    return arr, {k: (v.tolist() if v.ndim else v.item()) for k, v in inner.items()}


def _member(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, limit: int,
            numeric: bool = True) -> np.ndarray:
    """One .npy member of an .npz: declared sizes checked against limits before decompressing."""
    name = info.filename
    check_budget(info.file_size, limit, path, f".npz entry {name!r} (zip header)")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(info.compress_size, 64) * ZIP_MAX_RATIO:
        raise NotAnEcgError(f"{path}: .npz entry {name!r} declares {info.file_size} bytes "
                            f"({info.compress_size} compressed; limit {limit})", path)
    with z.open(info) as fh:
        # fs / leads / units may be strings: plain dtypes only, never pickles
        shape, dtype, fortran = _npy_header(fh, path, f".npz entry {name!r}",
                                            "iuf" if numeric else "iufUS")
        if not numeric and len(shape) > 1:
            raise NotAnEcgError(f"{path}: .npz entry {name!r} has shape {shape}", path)
        need = _nbytes(shape, dtype)
        check_budget(need, limit, path, f".npz entry {name!r} (.npy header)")
        data = fh.read(need)
    if len(data) != need:
        raise TruncatedSignalError(f"{path}: .npz entry {name!r} holds {len(data)} of the {need} "
                                   "bytes its header declares", path)
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _load(path: str, header_only: bool, max_bytes: int | None = None):
    """(array, settings stored inside the file)."""
    head, size = _check(path)
    if head.startswith(NPY_MAGIC):
        return _load_npy(path, size, header_only, max_bytes), {}
    if head.startswith(ZIP_MAGIC):
        return _load_npz(path, max_bytes)
    raise NotAnEcgError(f"{path}: not a NumPy file (starts with {head[:6]!r})", path)


def count_records(path: str) -> int | None:
    """Number of records in a 3-D array file, None for an ordinary one-record file."""
    arr, _ = _load(path, header_only=True)
    return int(arr.shape[0]) if arr.ndim == 3 else None


def read_numpy(path: str, *, header_only: bool = False, index: int | None = None, fs=None,
               leads=None, units=None, layout: str | None = None, max_bytes: int | None = None):
    arr, inner = _load(path, header_only, max_bytes)
    if arr.dtype.kind not in "iuf":
        raise NotAnEcgError(f"{path}: array dtype {arr.dtype} is not numeric", path)
    stem = os.path.splitext(os.path.basename(path))[0]
    record_id = stem
    if arr.ndim == 3:
        if index is None:
            raise RecordIndexError(f"{path} holds {arr.shape[0]} records (shape {arr.shape}); pass index=",
                                   path)
        if not 0 <= index < arr.shape[0]:
            raise RecordIndexError(f"{path}: index must be in [0, {arr.shape[0]}), got {index!r}", path)
        arr, record_id = arr[index], f"{stem}#{index}"
    elif index not in (None, 0):
        raise RecordIndexError(f"{path} holds one record; got index={index!r}", path)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise NotAnEcgError(f"{path}: expected a 2-D [leads, samples] array, got shape {arr.shape}", path)
    cfg = sidecar.settings(path, inner, fs=fs, leads=leads, units=units, layout=layout)
    names = list(cfg["leads"]) if cfg.get("leads") is not None else None
    axis = 0 if arr.shape[0] == 1 else sidecar.lead_axis(
        arr.shape, cfg.get("layout"), len(names) if names else None, path)
    n_leads, n_samples = (arr.shape[0], arr.shape[1]) if axis == 0 else (arr.shape[1], arr.shape[0])
    meta = dict(cfg.get("meta") or {})
    meta["storage"] = f"numpy {arr.dtype} {'leads x samples' if axis == 0 else 'samples x leads'}"
    if names is None:
        names = list(STANDARD_LEADS) if n_leads == len(STANDARD_LEADS) else [
            f"ch{i + 1}" for i in range(n_leads)]
        meta["leads_assumed"] = n_leads == len(STANDARD_LEADS)
    if not cfg.get("fs"):
        raise MissingMetadataError(
            f"{path}: no sampling rate (pass fs=, or add {sidecar.DIR_SIDECAR} / {stem}.json)", path)
    rate = float(cfg["fs"])
    rec_units = str(cfg.get("units") or "unknown")
    if header_only:
        return RecordHeader(record_id, path, "numpy", rate, tuple(names), int(n_samples), rec_units, meta)
    sig = np.asarray(arr if axis == 0 else arr.T, dtype=np.float32)
    return Record(np.ascontiguousarray(sig), rate, tuple(names), rec_units, record_id, path, meta)
