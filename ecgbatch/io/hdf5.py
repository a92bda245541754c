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
from contextlib import contextmanager
from math import prod

import numpy as np

from ecgbatch.io import sidecar
from ecgbatch.io.confine import check_budget
from ecgbatch.io.errors import (EcgReadError, EmptyFileError, MissingMetadataError, NotAnEcgError,
                                RecordIndexError, TruncatedSignalError, UnreadableError)
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.record import STANDARD_LEADS, Record

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CODE15_FS = 400.0
_NAMES = ("ecg", "tracings", "signal", "signals", "data", "x")


MAX_RATIO = 1100  # deflate cannot expand data more than ~1032x: a larger claim is a lying header

_OPEN: "OrderedDict[str, tuple[tuple[int, int], object]]" = OrderedDict()
_MAX_OPEN = 4  # containers stay open between records: CODE-15 files hold ~20,000 records each


@contextmanager
def _h5(path: str, what: str):
    """h5py raises OSError, RuntimeError ("Link iteration failed"), KeyError, ValueError, TypeError
    ... on corrupt files: any of them while doing ``what`` is a NotAnEcgError naming the file."""
    try:
        yield
    except EcgReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a library error on untrusted bytes
        raise NotAnEcgError(f"{path}: corrupt HDF5 file ({what}: {type(exc).__name__}: "
                            f"{str(exc)[:200]})", path) from None


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
    except Exception as exc:  # noqa: BLE001 - OSError mostly; other types on corrupt superblocks
        raise NotAnEcgError(f"{path}: not a readable HDF5 file ({type(exc).__name__}: {exc})",
                            path) from None
    _OPEN[key] = (stamp, f)
    while len(_OPEN) > _MAX_OPEN:
        _OPEN.popitem(last=False)[1][1].close()
    return f


def close_files() -> None:
    """Close the HDF5 files kept open between records."""
    while _OPEN:
        _OPEN.popitem()[1][1].close()


def _dataset(f, path: str):
    """The ECG dataset, its declared size checked against the bytes the file really holds."""
    import h5py

    with _h5(path, "looking up the ECG dataset"):
        ds = None
        for name in _NAMES:
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3):
                ds = obj
                break
        if ds is None:
            found = [obj for obj in f.values()
                     if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3) and obj.dtype.kind in "iuf"]
            if len(found) != 1:
                raise NotAnEcgError(f"{path}: no readable ECG dataset (looked for {_NAMES} or a single "
                                    f"2-D/3-D numeric dataset; found {sorted(f.keys())[:20]})", path)
            ds = found[0]
        if ds.dtype.kind not in "iuf" or ds.dtype.names or ds.dtype.shape:
            raise NotAnEcgError(f"{path}: dataset {ds.name!r} dtype {ds.dtype} is not numeric", path)
        _check_storage(ds, path, os.path.getsize(path))
    return ds


def _check_storage(ds, path: str, file_size: int) -> None:
    """Refuse a dataset whose shape promises more data than the file stores: a corrupt header
    that claims 10 million records must not be enumerated, nor read as fill values."""
    from h5py import h5d

    if ds.is_virtual or ds.external:
        raise NotAnEcgError(f"{path}: dataset {ds.name!r} stores its data in other files "
                            "(virtual or external dataset); not read", path)
    need = prod(int(n) for n in ds.shape) * ds.dtype.itemsize
    if need == 0:
        raise EmptyFileError(f"{path}: dataset {ds.name!r} has shape {tuple(ds.shape)}", path)
    dcpl = ds.id.get_create_plist()
    layout, stored = dcpl.get_layout(), ds.id.get_storage_size()
    if stored > file_size:
        raise TruncatedSignalError(f"{path}: dataset {ds.name!r} claims {stored} stored bytes, the "
                                   f"file has {file_size}", path)
    if layout == h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        ok = offset is not None and stored >= need and offset + need <= file_size
    elif layout == h5d.CHUNKED:
        ok = need <= stored * (MAX_RATIO if dcpl.get_nfilters() else 1)
    else:  # compact: the data sit in the object header
        ok = need <= file_size
    if not ok:
        raise TruncatedSignalError(
            f"{path}: dataset {ds.name!r} of shape {tuple(ds.shape)} needs {need} bytes, the file "
            f"stores {stored} for it ({file_size} bytes in all)", path)


def _attrs(path: str, *objs) -> dict:
    out = {}
    with _h5(path, "reading attributes"):
        for obj in objs:
            for k, v in obj.attrs.items():
                if isinstance(v, bytes):
                    v = v.decode("utf-8", "replace")
                elif isinstance(v, np.ndarray):
                    v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v.tolist()]
                elif isinstance(v, np.generic):
                    v = v.item()
                out[str(k)] = v
    return out


def count_records(path: str) -> int | None:
    f = _open(path)
    ds = _dataset(f, path)
    return int(ds.shape[0]) if ds.ndim == 3 else None


def _record_id(f, ds, name: str, index: int, path: str) -> str:
    with _h5(path, "reading exam_id"):
        ids = f.get("exam_id")
        ok = ids is not None and hasattr(ids, "ndim") and ids.ndim == 1 and len(ids) == ds.shape[0]
        rid = ids[index] if ok else index
    rid = rid.decode("utf-8", "replace") if isinstance(rid, bytes) else (
        rid.item() if isinstance(rid, np.generic) else rid)
    return f"{name}#{str(rid)[:64]}"


def check_decoded_size(ds, path: str, max_bytes: int | None) -> None:
    """The bytes reading one record inflates, from the dataset's shape and chunking alone (before
    any chunk is read): the record itself (as float32, or the stored type when wider) and, for a
    chunked (possibly compressed) dataset, every chunk that record touches, decoded whole."""
    item = max(ds.dtype.itemsize, 4)
    record = tuple(int(n) for n in (ds.shape[1:] if ds.ndim == 3 else ds.shape))
    check_budget(prod(record) * item, max_bytes, path, f"dataset {ds.name!r} of shape {tuple(ds.shape)}")
    if ds.chunks:
        touched = [1 if ds.ndim == 3 and axis == 0 else -(-int(n) // int(c))
                   for axis, (n, c) in enumerate(zip(ds.shape, ds.chunks))]
        check_budget(prod(touched) * prod(ds.chunks) * ds.dtype.itemsize, max_bytes, path,
                     f"dataset {ds.name!r} in chunks of {tuple(ds.chunks)}")


def read_hdf5(path: str, *, header_only: bool = False, index: int | None = None, fs=None,
              leads=None, units=None, layout: str | None = None, max_bytes: int | None = None):
    name = os.path.basename(path)
    f = _open(path)
    ds = _dataset(f, path)
    with _h5(path, "reading the dataset's layout"):
        check_decoded_size(ds, path, max_bytes)
    meta: dict = {"storage": f"hdf5 {ds.name} {ds.dtype} {tuple(ds.shape)}"}
    if ds.ndim == 3:
        if index is None:
            raise RecordIndexError(f"{path} holds {ds.shape[0]} records (dataset {ds.name}); pass "
                                   "index=", path)
        if not 0 <= index < ds.shape[0]:
            raise RecordIndexError(f"{path}: index must be in [0, {ds.shape[0]}), got {index!r}", path)
        shape = tuple(ds.shape[1:])
        record_id = _record_id(f, ds, name, index, path)
    else:
        if index not in (None, 0):
            raise RecordIndexError(f"{path} holds one record; got index={index!r}", path)
        shape, record_id = tuple(ds.shape), os.path.splitext(name)[0]
    cfg = sidecar.settings(path, _attrs(path, f, ds), fs=fs, leads=leads, units=units, layout=layout)
    names = list(cfg["leads"]) if cfg.get("leads") is not None else None
    axis = sidecar.lead_axis(shape, cfg.get("layout"), len(names) if names else None, path)
    n_leads, n_samples = (shape[0], shape[1]) if axis == 0 else (shape[1], shape[0])
    code15 = ds.ndim == 3 and str(ds.name or "").strip("/") == "tracings"
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
    with _h5(path, "reading the signal"):
        data = ds[index] if ds.ndim == 3 else ds[()]
    sig = np.asarray(data if axis == 0 else data.T, dtype=np.float32)
    return Record(np.ascontiguousarray(sig), rate, tuple(names), rec_units, record_id,
                  path if index is None else f"{path}#{index}", meta)
