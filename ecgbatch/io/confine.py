"""The one rule for files a record names, and the one budget for what a record may decode to.

Files a record names: a WFDB header names its signal files (a Challenge header its .mat, a
multi-segment header its segment headers), an array file has sidecar JSON beside it. Each such
file must resolve, after following symbolic links, inside the record's own folder: a header (an
archive is untrusted data) must not make a reader open ``../outside.dat``, ``/etc/passwd`` or a
link that leads out of the folder. ``confined`` is the only place this is decided; every reader
opens what a record names through it, and refuses with ``SignalFileOutsideError``
(kind ``signal_file_outside``) whose message names the file only as the record wrote it.

Budget: a file declares how big its record is before anything is decoded (WFDB header lengths,
.npy shapes, zip member sizes, HDF5 dataset shapes, MAT dimensions, FLAC stream info); a
compressed file can declare gigabytes in a few kilobytes. ``check_budget`` compares that
declaration with the caller's per-record budget BEFORE decoding, so a decompression bomb is
refused without being inflated (``RecordTooLargeError``, kind ``record_too_large``).
"""
from __future__ import annotations

import os

from ecgbatch.io.errors import RecordTooLargeError, SignalFileOutsideError

# 2 GiB of float32 = 537 M values: a 24-hour 12-lead Holter at 500 Hz (518 M samples) fits, a
# decompression bomb of tens of GB does not. Callers with tighter needs pass their own budget
# (the server passes its request limits).
DEFAULT_RECORD_BYTES = 2 << 30


def confined(folder: str, name: str, record: str) -> str:
    """The path of ``name`` (as a record wrote it) in ``folder``, after checking that it resolves,
    links followed, inside ``folder`` (itself resolved). ``record`` is the file that named it,
    for the error."""
    root = os.path.realpath(folder or ".")
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root or target == root:
        raise SignalFileOutsideError(
            f"{record}: the file {name!r} it names is outside the record's folder "
            "(a record may only name files in its own folder, links followed)", record)
    return os.path.join(folder, name)


def inside(root: str, path: str) -> bool:
    """Whether ``path`` resolves (links followed) inside the folder ``root`` (or is it)."""
    r, p = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([r, p]) == r


def check_budget(n_bytes: int, budget: int | None, record: str, what: str) -> None:
    """Refuse a record whose declared decoded size ``n_bytes`` is over ``budget`` (None: the
    default budget)."""
    budget = DEFAULT_RECORD_BYTES if budget is None else budget
    if n_bytes > budget:
        raise RecordTooLargeError(f"{record}: {what} declares {n_bytes} decoded bytes, more than the "
                                  f"budget of {budget} bytes per record; not decoded", record)
