"""MATLAB files without a WFDB header: the original CPSC2018 release (``ECG`` struct with ``data``
[12, N] in mV, ``sex``, ``age``; 500 Hz, standard lead order, per the CPSC2018 description).

A Challenge-style .mat (``val`` matrix) whose .hea is missing cannot be scaled to physical units
and raises MissingHeaderError; any other .mat raises NotAnEcgError.
"""
from __future__ import annotations

import os

import numpy as np

from ecgbatch.io.entries import RecordHeader
from ecgbatch.io.errors import EmptyFileError, MissingHeaderError, NotAnEcgError, UnreadableError
from ecgbatch.io.record import STANDARD_LEADS, Record
from ecgbatch.io.wfdb_header import parse_age, parse_sex

CPSC_FS = 500.0  # CPSC2018: "sampled at 500 Hz"; the files do not store it


def read_cpsc_mat(path: str, *, header_only: bool = False, fs: float | None = None):
    import scipy.io

    try:
        if os.path.getsize(path) == 0:
            raise EmptyFileError(f"{path}: file is empty", path)
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot stat ({exc.strerror})", path) from None
    try:
        m = scipy.io.loadmat(path, squeeze_me=False)
    except Exception as exc:  # MatReadError / ValueError / TypeError on non-MATLAB bytes
        raise NotAnEcgError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})",
                            path) from None
    stem = os.path.splitext(os.path.basename(path))[0]
    if "ECG" not in m:
        if "val" in m:
            raise MissingHeaderError(
                f"{path}: Challenge-style 'val' matrix without its .hea (gains unknown)", path)
        keys = sorted(k for k in m if not k.startswith("__"))
        raise NotAnEcgError(f"{path}: no 'ECG' struct (variables: {keys})", path)
    ecg = m["ECG"]
    try:
        data = np.asarray(ecg["data"][0, 0])
    except (ValueError, IndexError, KeyError):
        raise NotAnEcgError(f"{path}: 'ECG' has no 'data' field", path) from None
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.number) or data.size == 0:
        raise NotAnEcgError(f"{path}: ECG.data is not a numeric 2-D array (shape {data.shape})", path)
    if data.shape[0] != len(STANDARD_LEADS) and data.shape[1] == len(STANDARD_LEADS):
        data = data.T
    meta = {"storage": "CPSC2018 .mat (ECG struct)"}
    for field, parse in (("age", parse_age), ("sex", parse_sex)):
        if field in (ecg.dtype.names or ()):
            value = np.asarray(ecg[field][0, 0]).ravel()
            if value.size:
                meta[field] = parse(value[0])
    leads = STANDARD_LEADS if data.shape[0] == len(STANDARD_LEADS) else tuple(
        f"ch{i + 1}" for i in range(data.shape[0]))
    rate = float(fs) if fs else CPSC_FS
    if header_only:
        return RecordHeader(stem, path, "cpsc_mat", rate, leads, int(data.shape[1]), "mV", meta)
    return Record(data.astype(np.float32), rate, leads, "mV", stem, path, meta)
