"""``read_wfdb``: a WFDB record from its .hea path, single-segment (``wfdb_reader``) or
multi-segment (``wfdb_segments``, which reads each segment through ``wfdb_reader``)."""
from __future__ import annotations

from ecgbatch.io.wfdb_header import parse_header, read_header_text
from ecgbatch.io.wfdb_reader import read_single_segment
from ecgbatch.io.wfdb_segments import read_multisegment


def read_wfdb(hea_path: str, *, header_only: bool = False, check_length: bool = True,
              max_bytes: int | None = None):
    """Read a WFDB record from its .hea path; returns a Record (or a RecordHeader). Signal files
    must lie in the header's folder (``confine.confined``); ``max_bytes``: the per-record budget
    of decoded bytes, checked against the header before decoding (None: the default)."""
    h = parse_header(read_header_text(hea_path), hea_path)
    read = read_single_segment if h.segments is None else read_multisegment
    return read(h, hea_path, header_only=header_only, check_length=check_length, max_bytes=max_bytes)
