"""read_record / read_header: one entry point for every format."""
from __future__ import annotations

import inspect
import os
import re
from typing import Any

import numpy as np

from ecgbatch.io.confine import check_budget
from ecgbatch.io.detect import FORMATS, detect_format, split_index
from ecgbatch.io.errors import ReadOptionError, UnknownFormatError
from ecgbatch.io.hdf5 import read_hdf5
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.matlab import read_cpsc_mat
from ecgbatch.io.numpy_reader import read_numpy
from ecgbatch.io.quality import finalize
from ecgbatch.io.record import Record
from ecgbatch.io.sidecar import LAYOUTS
from ecgbatch.io.validate import check_header, check_record, typed_errors
from ecgbatch.io.wfdb_record import read_wfdb

_IDENTIFIER = re.compile(
    r"(^|_)(name|patient|pid|mrn|ssn|dob|birth|address|phone|email)(_|$)|^patient|^id$",
    re.IGNORECASE)


def read_record(path, *, format: str | None = None, index: int | None = None, fs: float | None = None,
                leads=None, layout: str | None = None, units: str | None = None,
                target_units: str | None = "mV", strict: bool = False, min_leads: int = 1,
                check_length: bool = True, max_bytes: int | None = None, **reader_options) -> Record:
    """Read one ECG record from ``path``, whatever its format, as a ``Record``.

    path: a file (``x.hea``, ``x.dat``, ``x.mat``, ``x.npy``, ``x.h5``, ``x.xml``), a WFDB record
      name without extension, or ``container.h5#<position>`` for one record of a multi-record file.
    format: force a format (``detect.FORMATS``) instead of detecting it.
    index: position of the record inside a multi-record HDF5 / 3-D .npy file.
    fs, leads, layout ("auto" | "leads_first" | "samples_first"), units: what the file itself does
      not say (arrays); ``leads`` also renames the channels of any format.
    target_units: "mV" (default) converts voltage units to mV; None keeps the source's units.
    strict: raise typed errors (BadSignalError, TooFewLeadsError, UnknownLeadError) instead of
      recording quality flags in ``meta["quality"]``. min_leads: fewer leads -> TooFewLeadsError.
    check_length: a WFDB signal file longer than its header says -> LengthMismatchError.
    max_bytes: the budget of decoded bytes for this record (None: ``confine.DEFAULT_RECORD_BYTES``);
      every reader compares what the file declares with it BEFORE decoding (RecordTooLargeError).
    Files a record names (WFDB signal files, segment headers, sidecars) must lie in its own folder,
    links followed (SignalFileOutsideError; ``confine.confined``).
    Other keyword options go to the XML readers that accept them (e.g. MUSE ``waveform=``).

    Whatever the file holds, the result satisfies ``validate.check_record`` (finite-or-NaN samples,
    a plausible rate, at least one sample) and every problem is an ``EcgReadError`` with a
    ``kind``; only a bad argument raises something else (ValueError / ReadOptionError).
    """
    fmt, p, index = _resolve(path, format, index, layout)
    with typed_errors(p):
        rec = _read(fmt, p, False, index, fs, leads, layout, units, check_length, max_bytes,
                    reader_options)
        if units is not None and fmt not in ("numpy", "hdf5"):
            rec.units = units  # the caller knows better than the file
        rec.meta = scrub_identifiers(rec.meta)
        rec = finalize(rec, target_units=target_units, strict=strict, min_leads=min_leads, leads=leads)
        return check_record(rec, p)


def _read(fmt: str, p: str, header_only: bool, index, fs, leads, layout, units, check_length,
          max_bytes, reader_options) -> Record | RecordHeader:
    """The one table of readers behind read_record and read_header (the XML readers load on
    first use: they are optional)."""
    if fmt in ("wfdb", "wfdb_mat"):
        return read_wfdb(p, header_only=header_only, check_length=check_length, max_bytes=max_bytes)
    if fmt == "cpsc_mat":
        return read_cpsc_mat(p, header_only=header_only, fs=fs, max_bytes=max_bytes)
    if fmt in ("numpy", "hdf5"):
        reader = read_numpy if fmt == "numpy" else read_hdf5
        return reader(p, header_only=header_only, index=index, fs=fs, leads=leads, units=units,
                      layout=layout, max_bytes=max_bytes)
    check_budget(_file_size(p), max_bytes, p, "the XML file")  # its samples are no larger than its text
    rec = _read_xml(fmt, p, reader_options)
    if header_only:
        return RecordHeader(rec.record_id, rec.source, fmt, rec.fs, rec.leads, rec.n_samples,
                            rec.units, rec.meta)
    return rec


def read_header(path, *, format: str | None = None, index: int | None = None, fs: float | None = None,
                leads=None, layout: str | None = None, units: str | None = None,
                target_units: str | None = "mV", check_length: bool = True,
                max_bytes: int | None = None, **reader_options) -> RecordHeader:
    """Header-only metadata (record id, fs, leads, n_samples, units, meta) without decoding the
    signal where the format allows it (WFDB, NumPy, HDF5); XML and CPSC .mat are read whole.
    For WFDB the signal files are still checked to exist and to have the length the header says.
    Same guarantees as ``read_record`` (``validate.check_header``, typed errors only)."""
    fmt, p, index = _resolve(path, format, index, layout)
    with typed_errors(p):
        h = _read(fmt, p, True, index, fs, leads, layout, units, check_length, max_bytes,
                  reader_options)
        if units is not None and fmt not in ("numpy", "hdf5"):
            h.units = units
        h.meta = scrub_identifiers(h.meta)
        return check_header(h.finalize(target_units=target_units, leads=leads), p)


def scrub_identifiers(meta: dict[str, Any]) -> dict[str, Any]:
    """Drop keys that name patient identifiers (name, patient id, MRN, birth date, ...)."""
    return {k: v for k, v in meta.items() if not _IDENTIFIER.search(str(k))}


def _resolve(path, format, index, layout=None):
    """(format, path for the reader, index); the caller's arguments are checked here, before any
    file is opened, so that a bad argument is never mistaken for a bad file."""
    if layout is not None and layout not in LAYOUTS:
        raise ReadOptionError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if index is not None and (isinstance(index, bool) or not isinstance(index, (int, np.integer))
                              or index < 0):
        raise ReadOptionError(f"index must be a non-negative integer, got {index!r}")
    p, idx = split_index(os.fspath(path))
    if index is None:
        index = idx
    if format is None:
        fmt, p = detect_format(p)
        return fmt, p, index
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format in ("wfdb", "wfdb_mat") and not p.lower().endswith(".hea"):
        p = os.path.splitext(p)[0] + ".hea" if os.path.splitext(p)[1] else p + ".hea"
    return format, p, index


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # the reader reports the missing or unreadable file itself


def _read_xml(fmt: str, path: str, options: dict) -> Record:
    try:
        if fmt == "muse":
            from ecgbatch.io.muse import read_muse as reader
        else:
            from ecgbatch.io.hl7aecg import read_hl7_aecg as reader
    except ImportError as exc:
        raise UnknownFormatError(f"{path}: the {fmt} reader is not available ({exc})", path) from None
    params = inspect.signature(reader).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return reader(path, **{k: v for k, v in options.items() if takes_any or k in params})
