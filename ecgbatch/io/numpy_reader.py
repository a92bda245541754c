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

import numpy as np

from ecgbatch.io import sidecar
from ecgbatch.io.entries import RecordHeader
from ecgbatch.io.errors import (EmptyFileError, MissingMetadataError, NotAnEcgError,
                                UnreadableError)
from ecgbatch.io.record import STANDARD_LEADS, Record

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_NPZ_KEYS = ("signal", "ecg", "x", "data", "arr_0")


def _check(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot read ({exc.strerror})", path) from None
    if not head:
        raise EmptyFileError(f"{path}: file is empty", path)
    return head


def _load(path: str, header_only: bool):
    """(array, settings stored inside the file)."""
    head = _check(path)
    if head.startswith(NPY_MAGIC):
        try:
            return np.load(path, mmap_mode="r" if header_only else None, allow_pickle=False), {}
        except (ValueError, OSError, EOFError) as exc:
            raise NotAnEcgError(f"{path}: unreadable .npy ({exc})", path) from None
    if head.startswith(ZIP_MAGIC):
        try:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                key = next((k for k in _NPZ_KEYS if k in names), None)
                arrays = [k for k in names if k not in ("fs", "leads", "units")]
                if key is None and len(arrays) == 1:
                    key = arrays[0]
                if key is None:
                    raise NotAnEcgError(f"{path}: .npz without a signal array (entries: {names})", path)
                inner = {k: z[k] for k in ("fs", "leads", "units") if k in names}
                arr = z[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise NotAnEcgError(f"{path}: unreadable .npz ({exc})", path) from None
        inner = {k: (v.tolist() if v.ndim else v.item()) for k, v in inner.items()}
        return arr, inner
    raise NotAnEcgError(f"{path}: not a NumPy file (starts with {head[:6]!r})", path)


def count_records(path: str) -> int | None:
    """Number of records in a 3-D array file, None for an ordinary one-record file."""
    arr, _ = _load(path, header_only=True)
    return int(arr.shape[0]) if arr.ndim == 3 else None


def read_numpy(path: str, *, header_only: bool = False, index: int | None = None, fs=None,
               leads=None, units=None, layout: str | None = None):
    arr, inner = _load(path, header_only)
    if arr.dtype.kind not in "iuf":
        raise NotAnEcgError(f"{path}: array dtype {arr.dtype} is not numeric", path)
    stem = os.path.splitext(os.path.basename(path))[0]
    record_id = stem
    if arr.ndim == 3:
        if index is None:
            raise ValueError(f"{path} holds {arr.shape[0]} records (shape {arr.shape}); pass index=")
        if not 0 <= index < arr.shape[0]:
            raise ValueError(f"index must be in [0, {arr.shape[0]}), got {index!r}")
        arr, record_id = arr[index], f"{stem}#{index}"
    elif index not in (None, 0):
        raise ValueError(f"{path} holds one record; got index={index!r}")
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
