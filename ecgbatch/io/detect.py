"""Which reader a path needs: by extension first, confirmed or decided by the file's first bytes.

Format names: ``wfdb`` (.hea + signal files; ``wfdb_mat`` is reported for Challenge records whose
signal file is a .mat), ``cpsc_mat`` (.mat without a header), ``numpy`` (.npy/.npz), ``hdf5``,
``muse`` (GE MUSE XML, root ``RestingECG``), ``hl7_aecg`` (HL7 aECG XML, root ``AnnotatedECG``).
"""
from __future__ import annotations

import os
import re

from ecgbatch.io.confine import confined
from ecgbatch.io.errors import (EmptyFileError, MissingHeaderError, NotAnEcgError,
                                UnknownFormatError, UnreadableError)

FORMATS = ("wfdb", "wfdb_mat", "cpsc_mat", "numpy", "hdf5", "muse", "hl7_aecg")
HDF5_EXT = (".h5", ".hdf5", ".hdf", ".he5")
NUMPY_EXT = (".npy", ".npz")
SIGNAL_EXT = (".dat", ".mat")
XML_ROOTS = {"RestingECG": "muse", "AnnotatedECG": "hl7_aecg"}
_MAGIC = ((b"\x89HDF\r\n\x1a\n", "hdf5"), (b"\x93NUMPY", "numpy"), (b"PK\x03\x04", "numpy"),
          (b"MATLAB 5.0", "cpsc_mat"))
_ROOT_TAG = re.compile(rb"<(?![?!])([A-Za-z_][\w.\-]*:)?([A-Za-z_][\w.\-]*)")


def split_index(path: str) -> tuple[str, int | None]:
    """'file.h5#12' -> ('file.h5', 12) when 'file.h5#12' itself is not a file."""
    if "#" in path and not os.path.exists(path):
        base, _, tail = path.rpartition("#")
        if tail.isdigit():
            return base, int(tail)
    return path, None


def detect_format(path: str) -> tuple[str, str]:
    """(format, path to hand to the reader): WFDB records resolve to their .hea."""
    if os.path.isdir(path):
        raise UnreadableError(f"{path}: is a directory, not a record", path)
    root, ext = os.path.splitext(path)
    ext = ext.lower()
    if ext == ".hea":
        return "wfdb", path
    if not os.path.exists(path):
        if os.path.exists(path + ".hea"):  # a WFDB record name without extension
            return "wfdb", path + ".hea"
        raise UnreadableError(f"{path}: no such file", path)
    if ext in SIGNAL_EXT:
        hea = _sibling_header(root, path)
        if hea:
            return "wfdb", hea
        if ext == ".dat":
            raise MissingHeaderError(f"{path}: WFDB signal file without its .hea header", path)
        return "cpsc_mat", path
    if ext in NUMPY_EXT:
        return "numpy", path
    if ext in HDF5_EXT:
        return "hdf5", path
    head = _head(path, 4096)
    if ext == ".xml" or head.lstrip().startswith(b"<"):
        return xml_format(path, head), path
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt, path
    raise UnknownFormatError(f"{path}: unknown ECG format (extension {ext or 'none'!r})", path)


def xml_format(path: str, head: bytes | None = None) -> str:
    """Route XML by its root element: RestingECG -> muse, AnnotatedECG -> hl7_aecg."""
    head = _head(path, 4096) if head is None else head
    text = re.sub(rb"<!--.*?-->", b"", head, flags=re.S)
    m = _ROOT_TAG.search(text)
    if not m:
        raise NotAnEcgError(f"{path}: no XML root element in the first {len(head)} bytes", path)
    root = m.group(2).decode("ascii", "replace")
    if root not in XML_ROOTS:
        raise NotAnEcgError(f"{path}: XML root <{root}> is not a known ECG format "
                            f"(known: {sorted(XML_ROOTS)})", path)
    return XML_ROOTS[root]


def _sibling_header(root: str, path: str) -> str | None:
    """The .hea beside the signal file ``path`` (read on its behalf: confined to its folder)."""
    for cand in (root + ".hea", root + ".HEA"):
        if os.path.exists(cand):
            return confined(os.path.dirname(root), os.path.basename(cand), path)
    return None


def _head(path: str, n: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            head = fh.read(n)
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot read ({exc.strerror})", path) from None
    if not head:
        raise EmptyFileError(f"{path}: file is empty", path)
    return head
