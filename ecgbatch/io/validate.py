"""The door every record passes on its way out of ``read_record`` / ``read_header``.

Two guarantees that hold for every format, whatever the reader below does:

1. Invariants (``check_record`` / ``check_header``): a returned record has at least one lead and
   one sample, samples that are finite or NaN (NaN = missing, as WFDB's invalid code; never
   +-inf), and a sampling rate that is a finite number in [``MIN_FS``, ``MAX_FS``]. A record that
   breaks one raises a typed error instead of reaching a model.
2. Typed errors only (``typed_errors``): an exception a reader did not foresee (from NumPy, h5py,
   zlib, the XML parser, MemoryError, RecursionError, ...) becomes ``ReaderCrashError`` (kind
   ``reader_crash``) naming the original exception type and the file, so a scan or a pipeline
   records the file as a failure and goes on. ``ReadOptionError`` (the caller's bad argument)
   passes through unchanged.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from ecgbatch.io.errors import (BadSignalError, EcgReadError, EmptyFileError, HeaderError,
                                ReaderCrashError, ReadOptionError)

# Plausible sampling rates of an ECG waveform. Outside this range the number is a corrupt field, and
# resampling it would allocate absurd arrays (500 Hz from 1e-9 Hz) or none at all (from 1e12 Hz).
MIN_FS = 1.0
MAX_FS = 1e6


def check_rate(fs, path: str, what: str = "sampling rate") -> float:
    """``fs`` as a float in [MIN_FS, MAX_FS], else HeaderError (also for non-numbers)."""
    try:
        rate = float(fs)
    except (TypeError, ValueError, OverflowError):
        raise HeaderError(f"{path}: {what} is not a number, got {str(fs)[:40]!r}", path) from None
    if not math.isfinite(rate) or not MIN_FS <= rate <= MAX_FS:
        raise HeaderError(f"{path}: {what} {rate!r} Hz is not a plausible ECG sampling rate "
                          f"(expected {MIN_FS:g} to {MAX_FS:g} Hz)", path)
    return rate


def check_record(rec, path: str):
    """Raise a typed error unless ``rec`` (a Record) satisfies the invariants; returns it."""
    sig = rec.signal
    if not isinstance(sig, np.ndarray) or sig.ndim != 2:
        raise BadSignalError(f"{path}: signal must be a 2-D [leads, samples] array", path)
    if sig.shape[0] < 1 or sig.shape[1] < 1:
        raise EmptyFileError(f"{path}: record holds no samples (signal shape {sig.shape})", path)
    if sig.dtype.kind != "f":
        raise BadSignalError(f"{path}: signal dtype {sig.dtype} is not floating point", path)
    if np.isinf(sig).any():
        leads = [rec.leads[i] for i in np.flatnonzero(np.isinf(sig).any(axis=1))]
        raise BadSignalError(f"{path}: signal holds infinite values in lead(s) {leads} (a zero or "
                             "tiny gain, a huge baseline, or values beyond float32)", path)
    rec.fs = check_rate(rec.fs, path)
    return rec


def check_header(h, path: str):
    """The header-only counterpart of ``check_record`` (rate, at least one lead and one sample)."""
    if len(h.leads) < 1:
        raise EmptyFileError(f"{path}: record declares no leads", path)
    if not isinstance(h.n_samples, (int, np.integer)) or h.n_samples < 1:
        raise EmptyFileError(f"{path}: record declares {h.n_samples!r} samples", path)
    h.fs = check_rate(h.fs, path)
    return h


@contextmanager
def typed_errors(path: str) -> Iterator[None]:
    """Turn any unforeseen exception raised inside the block into ReaderCrashError."""
    try:
        yield
    except (EcgReadError, ReadOptionError):
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - MemoryError, RecursionError, library errors
        raise ReaderCrashError(
            f"{path}: the reader failed unexpectedly on this file ({type(exc).__name__}: "
            f"{str(exc)[:300]})", path) from exc


__all__ = ["check_rate", "check_record", "check_header", "typed_errors", "MIN_FS", "MAX_FS"]
