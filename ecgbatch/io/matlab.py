"""MATLAB files without a WFDB header: the original CPSC2018 release (``ECG`` struct with ``data``
[12, N] in mV, ``sex``, ``age``; 500 Hz, standard lead order, per the CPSC2018 description).

A Challenge-style .mat (``val`` matrix) whose .hea is missing cannot be scaled to physical units
and raises MissingHeaderError; any other .mat raises NotAnEcgError.
"""
from __future__ import annotations

import os

import numpy as np

from ecgbatch.io.errors import MissingHeaderError, NotAnEcgError
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.matfile import MAX_BYTES, read_mat
from ecgbatch.io.record import STANDARD_LEADS, Record
from ecgbatch.io.wfdb_header import parse_age, parse_sex

CPSC_FS = 500.0  # CPSC2018: "sampled at 500 Hz"; the files do not store it


def read_cpsc_mat(path: str, *, header_only: bool = False, fs: float | None = None,
                  max_bytes: int | None = None):
    """Read a CPSC2018 .mat (``ECG`` struct) with the package's own MAT reader (``matfile``):
    SciPy's compiled reader can crash the process on a corrupt file. ``max_bytes`` bounds the
    file, every zlib-compressed element and every matrix before it is inflated or decoded."""
    m = read_mat(path, variables=("ECG",),
                 max_bytes=MAX_BYTES if max_bytes is None else min(max_bytes, MAX_BYTES))
    stem = os.path.splitext(os.path.basename(path))[0]
    ecg = m.get("ECG")
    if ecg is None:
        if "val" in m.names:
            raise MissingHeaderError(
                f"{path}: Challenge-style 'val' matrix without its .hea (gains unknown)", path)
        raise NotAnEcgError(f"{path}: no 'ECG' struct (variables: {sorted(m.names)[:20]})", path)
    if not isinstance(ecg, dict):
        raise NotAnEcgError(f"{path}: 'ECG' is not a 1x1 struct", path)
    data = ecg.get("data")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.size == 0 or data.dtype.kind not in "iuf":
        shape = getattr(data, "shape", None)
        raise NotAnEcgError(f"{path}: ECG.data is not a numeric 2-D array (shape {shape})", path)
    if data.shape[0] != len(STANDARD_LEADS) and data.shape[1] == len(STANDARD_LEADS):
        data = data.T
    meta = {"storage": "CPSC2018 .mat (ECG struct)"}
    for field, parse in (("age", parse_age), ("sex", parse_sex)):
        value = _first(ecg.get(field))
        if value is not None:
            meta[field] = parse(value)
    leads = STANDARD_LEADS if data.shape[0] == len(STANDARD_LEADS) else tuple(
        f"ch{i + 1}" for i in range(data.shape[0]))
    rate = float(fs) if fs else CPSC_FS
    if header_only:
        return RecordHeader(stem, path, "cpsc_mat", rate, leads, int(data.shape[1]), "mV", meta)
    return Record(data.astype(np.float32), rate, leads, "mV", stem, path, meta)


def _first(value):
    """The first element of a MATLAB field (a str as is; None when absent or empty)."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.size:
        return value.ravel()[0]
    return None
