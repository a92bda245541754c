"""Multi-segment WFDB records (https://physionet.org/physiotools/wag/header-5.htm): a master header
``name/n_segments`` lists segment records and their lengths; ``~`` marks a gap with no data.

Fixed layout: every segment holds the same signals in the same order. Variable layout (MIMIC
style): the first segment has length 0 and is a layout header naming every signal of the record;
each segment holds some of them, matched by name. Each segment is an ordinary single-segment record,
read by the fast path of ``wfdb_reader`` with its own gains and baselines; the record is the
segments end to end, NaN where a segment is a gap or lacks a signal - ``wfdb.rdsamp``'s values.
Names, units and descriptions come from the layout header (variable) or the first segment that
has data (fixed).

A gap claims samples that no file backs, so the whole record's size is checked against the
per-record budget (``confine.check_budget``) before anything is allocated; segment headers, like
signal files, must lie in the master header's folder (``confine.confined``).
"""
from __future__ import annotations

import os

import numpy as np

from ecgbatch.io.confine import check_budget, confined
from ecgbatch.io.errors import (HeaderError, LengthMismatchError, MissingSignalFileError,
                                TooFewLeadsError)
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.leads import canonical_leads
from ecgbatch.io.record import Record
from ecgbatch.io.wfdb_header import WfdbHeader, header_meta, parse_header, read_header_text
from ecgbatch.io.wfdb_reader import (plan_record, read_signals, record_units,
                                     to_common_units)


def read_multisegment(h: WfdbHeader, hea_path: str, *, header_only: bool = False,
                      check_length: bool = True, max_bytes: int | None = None):
    """A multi-segment record as one Record (or RecordHeader), gaps as NaN."""
    folder = os.path.dirname(hea_path)
    layout, parts, variable = _layout(h, folder, hea_path)
    total = sum(length for _, length in parts)
    _check_size(h, total, hea_path, max_bytes)
    segments = _plan_segments(folder, parts, h, hea_path, check_length, max_bytes)
    meta = header_meta(h)
    fmts = sorted({str(s.fmt) for _, _, sh, _, _ in segments if sh for s in sh.signals})
    meta["storage"] = f"wfdb multi-segment ({len(parts)} segments, format {'/'.join(fmts)})"
    names = [s.description for s in layout.signals]
    rec_units = record_units(layout.signals)
    leads = canonical_leads(d or f"ch{i + 1}" for i, d in enumerate(names))
    record_id = os.path.splitext(os.path.basename(hea_path))[0]
    if header_only:
        return RecordHeader(record_id, hea_path, "wfdb", h.fs, leads, total, rec_units, meta)
    signal, flagged = _assemble(segments, names, variable, total, hea_path, max_bytes)
    if rec_units == "mixed":
        signal, rec_units = to_common_units(signal, [s.units for s in layout.signals])
    meta["quality"] = [f"checksum_mismatch:{leads[i]}" for i in sorted(flagged)]
    return Record(signal, float(h.fs), leads, rec_units, record_id, hea_path, meta)


def _plan_segments(folder: str, parts, h: WfdbHeader, hea_path: str, check_length: bool,
                   max_bytes: int | None):
    """[(name, length, header, path, plan)] with each data segment's files checked (no decoding);
    header, path and plan are None for a gap."""
    out = []
    for name, length in parts:
        sh, path = _data_header(folder, name, h, hea_path)
        plan = plan_record(sh, path, check_length=check_length, max_bytes=max_bytes) if sh else None
        if plan is not None and plan[0] != length:
            raise LengthMismatchError(f"{hea_path}: segment {name!r} holds {plan[0]} samples, "
                                      f"the master header says {length}", hea_path)
        out.append((name, length, sh, path, plan))
    return out


def _assemble(segments, names: list[str], variable: bool, total: int, hea_path: str,
              max_bytes: int | None):
    """The segments end to end: float32 [signals, total], NaN where no segment has data; and the
    rows whose checksum disagrees in some segment."""
    signal = np.full((len(names), total), np.nan, np.float32)
    flagged: set[int] = set()
    start = 0
    for _, length, sh, path, plan in segments:
        if sh is not None:
            data, bad = read_signals(sh, path, length, plan[1], max_bytes)
            rows = _rows(sh, names, variable, hea_path)
            for j, row in enumerate(rows):
                if row is not None:
                    signal[row, start:start + length] = data[j]
            flagged.update(rows[j] for j in bad if rows[j] is not None)
        start += length
    return signal, flagged


def _layout(h: WfdbHeader, folder: str, hea_path: str):
    """(header that names the record's signals, [(segment, length)] holding the samples)."""
    if h.n_sig == 0:
        raise TooFewLeadsError(f"{hea_path}: header declares no signals", hea_path)
    segs = h.segments
    variable = segs[0][1] == 0 and segs[0][0] != "~"
    parts = segs[1:] if variable else segs
    ref = segs[0][0] if variable else next((name for name, _ in segs if name != "~"), None)
    if ref is None:
        raise HeaderError(f"{hea_path}: every segment is a gap ('~'); no signal is named", hea_path)
    layout, _ = _segment_header(folder, ref, h, hea_path)
    if layout.n_sig != h.n_sig:
        raise HeaderError(f"{hea_path}: master header announces {h.n_sig} signals, segment "
                          f"{ref!r} has {layout.n_sig}", hea_path)
    return layout, parts, variable


def _check_size(h: WfdbHeader, total: int, hea_path: str, max_bytes: int | None) -> None:
    if h.n_samples is not None and h.n_samples != total:
        raise HeaderError(f"{hea_path}: record line says {h.n_samples} samples, the segments add "
                          f"up to {total}", hea_path)
    if total == 0:
        raise HeaderError(f"{hea_path}: multi-segment record has 0 samples", hea_path)
    check_budget(4 * total * h.n_sig, max_bytes, hea_path, f"the master header ({h.n_sig} signals x "
                 f"{total} samples as float32)")


def _segment_header(folder: str, name: str, master: WfdbHeader, hea_path: str):
    """(parsed single-segment header, its path), or (None, None) for a gap."""
    if name == "~":
        return None, None
    path = confined(folder, name + ".hea", hea_path)
    if not os.path.isfile(path):
        raise MissingSignalFileError(f"{hea_path}: segment header {name + '.hea'!r} is missing",
                                     hea_path)
    sh = parse_header(read_header_text(path), path)
    if sh.segments is not None:
        raise HeaderError(f"{hea_path}: segment {name!r} is itself a multi-segment record",
                          hea_path)
    if sh.fs != master.fs:
        raise HeaderError(f"{hea_path}: segment {name!r} is sampled at {sh.fs} Hz, the record at "
                          f"{master.fs} Hz", hea_path)
    return sh, path


def _data_header(folder: str, name: str, master: WfdbHeader, hea_path: str):
    """A segment that holds samples; one whose signals have no files is a gap like '~'."""
    sh, path = _segment_header(folder, name, master, hea_path)
    if sh is None or all(s.file_name == "~" or s.fmt == 0 for s in sh.signals):
        return None, None
    return sh, path


def _rows(sh: WfdbHeader, names: list[str], by_name: bool, hea_path: str) -> list[int | None]:
    """Row of the record for each signal of a segment: by position (fixed layout) or by name
    (variable layout; a signal the layout does not name is left out)."""
    if not by_name:
        if sh.n_sig != len(names):
            raise HeaderError(f"{hea_path}: fixed-layout segment {sh.record_name!r} has "
                              f"{sh.n_sig} signals, the record {len(names)}", hea_path)
        return list(range(len(names)))
    return [names.index(s.description) if s.description in names else None for s in sh.signals]
