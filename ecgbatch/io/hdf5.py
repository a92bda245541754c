"""HDF5 ECG files.

- One record per file (as in SPH, the Shandong Provincial Hospital database): a 2-D dataset
  (``ecg``, or the only numeric 2-D/3-D dataset) of [12, N] or [N, 12].
- Many records per file (as in CODE-15%): a 3-D dataset ``tracings`` [records, samples, leads],
  optionally with a 1-D ``exam_id`` dataset; record ids are ``<file name>#<exam_id>`` (or
  ``#<position>`` without exam ids); ``index=`` is always the position.

fs / leads / units / layout come from attributes on the file or the dataset (``fs``,
``sampling_rate``, ``leads``, ``units``, ...), then ``ecgbatch.json`` / ``<name>.json``, then the
options. Assumption, documented in ``meta["assumed"]``: a ``tracings`` dataset without a stated
rate follows the CODE-15% convention of 400 Hz, and its 12 leads are the standard order
(CODE-15% stores DI, DII, DIII, AVR, AVL, AVF, V1-V6). Pass ``fs=`` to override.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from ecgbatch.io import sidecar
from ecgbatch.io.entries import RecordHeader
from ecgbatch.io.errors import (EmptyFileError, MissingMetadataError, NotAnEcgError,
                                UnreadableError)
from ecgbatch.io.record import STANDARD_LEADS, Record

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CODE15_FS = 400.0
_NAMES = ("ecg", "tracings", "signal", "signals", "data", "x")


_OPEN: "OrderedDict[str, tuple[tuple[int, int], object]]" = OrderedDict()
_MAX_OPEN = 4  # containers stay open between records: CODE-15 files hold ~20,000 records each


def _open(path: str):
    """An open h5py.File, reused while the file is unchanged (size, mtime): reading a container
    record by record must not reopen and re-parse the file for every record."""
    import h5py

    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot stat ({exc.strerror})", path) from None
    if st.st_size == 0:
        raise EmptyFileError(f"{path}: file is empty", path)
    key = os.path.abspath(path)
    stamp = (st.st_size, st.st_mtime_ns)
    hit = _OPEN.get(key)
    if hit is not None and hit[0] == stamp and hit[1].id.valid:
        _OPEN.move_to_end(key)
        return hit[1]
    if hit is not None:
        _OPEN.pop(key)[1].close()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise NotAnEcgError(f"{path}: not a readable HDF5 file ({exc})", path) from None
    _OPEN[key] = (stamp, f)
    while len(_OPEN) > _MAX_OPEN:
        _OPEN.popitem(last=False)[1][1].close()
    return f


def close_files() -> None:
    """Close the HDF5 files kept open between records."""
    while _OPEN:
        _OPEN.popitem()[1][1].close()


def _dataset(f, path: str):
    import h5py

    for name in _NAMES:
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3):
            return obj
    found = [obj for obj in f.values()
             if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3) and obj.dtype.kind in "iuf"]
    if len(found) == 1:
        return found[0]
    raise NotAnEcgError(f"{path}: no ECG dataset (looked for {_NAMES} or a single 2-D/3-D numeric "
                        f"dataset; found {sorted(f.keys())})", path)


def _attrs(*objs) -> dict:
    out = {}
    for obj in objs:
        for k, v in obj.attrs.items():
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, np.ndarray):
                v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v.tolist()]
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
    return out


def count_records(path: str) -> int | None:
    f = _open(path)
    ds = _dataset(f, path)
    return int(ds.shape[0]) if ds.ndim == 3 else None


def read_hdf5(path: str, *, header_only: bool = False, index: int | None = None, fs=None,
              leads=None, units=None, layout: str | None = None):
    name = os.path.basename(path)
    f = _open(path)
    ds = _dataset(f, path)
    if ds.dtype.kind not in "iuf":
        raise NotAnEcgError(f"{path}: dataset {ds.name!r} dtype {ds.dtype} is not numeric", path)
    meta: dict = {"storage": f"hdf5 {ds.name} {ds.dtype} {tuple(ds.shape)}"}
    if ds.ndim == 3:
        if index is None:
            raise ValueError(f"{path} holds {ds.shape[0]} records (dataset {ds.name}); pass index=")
        if not 0 <= index < ds.shape[0]:
            raise ValueError(f"index must be in [0, {ds.shape[0]}), got {index!r}")
        shape = tuple(ds.shape[1:])
        ids = f.get("exam_id")
        rid = ids[index] if ids is not None and ids.ndim == 1 and len(ids) == ds.shape[0] else index
        rid = rid.decode() if isinstance(rid, bytes) else rid.item() if isinstance(rid, np.generic) else rid
        record_id = f"{name}#{rid}"
    else:
        if index not in (None, 0):
            raise ValueError(f"{path} holds one record; got index={index!r}")
        shape, record_id = tuple(ds.shape), os.path.splitext(name)[0]
    cfg = sidecar.settings(path, _attrs(f, ds), fs=fs, leads=leads, units=units, layout=layout)
    names = list(cfg["leads"]) if cfg.get("leads") is not None else None
    axis = sidecar.lead_axis(shape, cfg.get("layout"), len(names) if names else None, path)
    n_leads, n_samples = (shape[0], shape[1]) if axis == 0 else (shape[1], shape[0])
    code15 = ds.ndim == 3 and ds.name.strip("/") == "tracings"
    assumed = []
    if not cfg.get("fs") and code15:
        cfg["fs"] = CODE15_FS
        assumed.append("fs=400 (CODE-15% convention)")
    if names is None:
        if n_leads == len(STANDARD_LEADS):
            names = list(STANDARD_LEADS)
            assumed.append("standard 12-lead order")
        else:
            names = [f"ch{i + 1}" for i in range(n_leads)]
    if assumed:
        meta["assumed"] = "; ".join(assumed)
    if not cfg.get("fs"):
        raise MissingMetadataError(
            f"{path}: no sampling rate in attributes, sidecar or options (pass fs=)", path)
    rate, rec_units = float(cfg["fs"]), str(cfg.get("units") or "unknown")
    meta.update(cfg.get("meta") or {})
    if header_only:
        return RecordHeader(record_id, path if index is None else f"{path}#{index}", "hdf5",
                            rate, tuple(names), int(n_samples), rec_units, meta)
    data = ds[index] if ds.ndim == 3 else ds[()]
    sig = np.asarray(data if axis == 0 else data.T, dtype=np.float32)
    return Record(np.ascontiguousarray(sig), rate, tuple(names), rec_units, record_id,
                  path if index is None else f"{path}#{index}", meta)
