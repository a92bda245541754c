"""WFDB header (.hea) parsing: record line, signal lines (or segment lines), comment lines -> meta.

Follows the WFDB header specification (https://physionet.org/physiotools/wag/header-5.htm) for
single-segment records and the master headers of multi-segment records (``name/n_segments`` on
the record line, then ``segment length`` lines), and tolerates what real archives write: dates
such as ``12-May-2020`` (PhysioNet/CinC Challenge), lower-case units (``1000/mv``), ``# Age:``
with a space, and LUDB's ``#<age>:`` / ``#<diagnoses>:`` blocks. Patient identifiers in comments
(name, MRN, patient id, birth date, ...) are dropped, never copied into meta.

Absurd fields are refused with ``HeaderError`` before anything is allocated: a sampling frequency
that is not a finite positive number, a gain that is not finite (or so close to 0 that physical
values would overflow float32), a baseline or initial value outside the 32-bit range the WFDB
library stores them in, zero samples per frame, a signal or segment count the lines do not back.
A gain of 0 is not absurd: the specification reads it as "uncalibrated", 200 adu per unit, as
``wfdb.rdsamp`` and the C library do.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ecgbatch.io.errors import EmptyFileError, HeaderError, UnreadableError
from ecgbatch.io.snomed import snomed_names

DEFAULT_GAIN = 200.0  # WFDB: an uncalibrated (gain 0 or absent) signal is read with 200 adu/unit
_INT32 = 1 << 31      # the WFDB library holds baselines and samples in (32-bit) ints
_MIN_GAIN = 2.0 * _INT32 / 3.4028234663852886e38  # smaller: a 32-bit sample overflows float32

# signal-file field: "name fmt[xspf][:skew][+offset]"
_FMT = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
# gain field: "gain[(baseline)][/units]"
_GAIN = re.compile(r"^([-+]?[0-9.eE+-]+?)(?:\(([-+]?\d+)\))?(?:/(.*))?$")
_IDENTIFIER_KEYS = re.compile(
    r"^(name|patient|patient[\s_]*(id|name|number)|pid|mrn|medical[\s_]*record.*|id|ssn|"
    r"dob|birth.*|date[\s_]*of[\s_]*birth|address|phone|email|first[\s_]*name|last[\s_]*name)$",
    re.IGNORECASE)
_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}


@dataclass
class SignalSpec:
    file_name: str      # signal file, relative to the header's directory
    fmt: int
    spf: int            # samples per frame
    skew: int
    byte_offset: int
    gain: float         # adu per physical unit
    baseline: int
    units: str
    adc_res: int
    adc_zero: int
    init_value: int | None
    checksum: int | None
    description: str


@dataclass
class WfdbHeader:
    record_name: str
    n_sig: int
    fs: float
    n_samples: int | None
    base_time: str | None
    base_date: str | None
    signals: list[SignalSpec]
    comments: list[str] = field(default_factory=list)
    # multi-segment master header: (segment record name or "~" for a gap, samples), else None
    segments: list[tuple[str, int]] | None = None


def read_header_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 20)
    except IsADirectoryError:
        raise UnreadableError(f"{path}: is a directory, not a header file", path) from None
    except OSError as exc:
        raise UnreadableError(f"{path}: cannot read header ({exc.strerror})", path) from None
    if not data.strip():
        raise EmptyFileError(f"{path}: header file is empty", path)
    if b"\x00" in data:
        raise HeaderError(f"{path}: header contains NUL bytes (binary file named .hea?)", path)
    return data.decode("utf-8", errors="replace")


def parse_header(text: str, path: str = "") -> WfdbHeader:
    lines = [ln.strip() for ln in text.splitlines()]
    comments = [ln[1:] for ln in lines if ln.startswith("#")]
    body = [ln.split("#", 1)[0].strip() for ln in lines if ln and not ln.startswith("#")]
    body = [ln for ln in body if ln]
    if not body:
        raise HeaderError(f"{path}: no record line (only comments or blank lines)", path)
    rec = body[0].split()
    name, _, n_seg = rec[0].partition("/")
    try:
        n_sig = int(rec[1]) if len(rec) > 1 else 0
        fs = float(rec[2].split("/")[0].split("(")[0]) if len(rec) > 2 else 250.0
        n_samples = int(rec[3]) if len(rec) > 3 else None
        n_seg = int(n_seg) if n_seg else None
    except ValueError:
        raise HeaderError(f"{path}: malformed record line (expected 'name[/segments] signals "
                          "[fs [samples]]'; its text is not echoed: a header is untrusted)",
                          path) from None
    if (n_sig < 0 or not math.isfinite(fs) or fs <= 0 or (n_samples is not None and n_samples < 0)
            or (n_seg is not None and n_seg < 1)):
        raise HeaderError(f"{path}: implausible record line (a negative count, or a rate that is "
                          "not a positive finite number)", path)
    base_time = rec[4] if len(rec) > 4 else None
    base_date = rec[5] if len(rec) > 5 else None
    if n_seg is not None:
        segments = _parse_segments(body[1:], n_seg, path)
        return WfdbHeader(name, n_sig, fs, n_samples, base_time, base_date, [], comments, segments)
    if len(body) - 1 < n_sig:
        raise HeaderError(
            f"{path}: record line announces {n_sig} signals but {len(body) - 1} signal lines follow",
            path)
    signals = [_parse_signal(ln, path, i + 1) for i, ln in enumerate(body[1:1 + n_sig])]
    return WfdbHeader(rec[0], n_sig, fs, n_samples, base_time, base_date, signals, comments)


def _parse_segments(lines: list[str], n_seg: int, path: str) -> list[tuple[str, int]]:
    if len(lines) < n_seg:
        raise HeaderError(f"{path}: record line announces {n_seg} segments but {len(lines)} "
                          "segment lines follow", path)
    segments = []
    for k, ln in enumerate(lines[:n_seg], 1):
        parts = ln.split()
        try:
            length = int(parts[1])
        except (IndexError, ValueError):
            raise HeaderError(f"{path}: malformed segment line {k} (expected 'name length')",
                              path) from None
        if length < 0 or "/" in parts[0] or "\\" in parts[0] or parts[0] in (".", ".."):
            raise HeaderError(f"{path}: implausible segment line {k} (a negative length, or a name "
                              "with a folder in it)", path)
        segments.append((parts[0], length))
    return segments


def _parse_signal(line: str, path: str, k: int = 1) -> SignalSpec:
    """Signal line ``k`` (1-based). Messages name the line and field, never their text (a header
    is untrusted: its text must not travel into an error a server sends back)."""
    parts = line.split(None, 8)
    if len(parts) < 2:
        raise HeaderError(f"{path}: signal line {k} has no format field", path)
    fmt_field = _format_field(parts[1])
    if fmt_field is None:
        raise HeaderError(f"{path}: signal line {k}: bad format field", path)
    fmt, spf, skew, offset = fmt_field
    if spf < 1:
        raise HeaderError(f"{path}: signal line {k}: zero samples per frame", path)
    gain, baseline, units = DEFAULT_GAIN, None, "mV"
    try:
        adc_res = int(parts[3]) if len(parts) > 3 else 0
        adc_zero = int(parts[4]) if len(parts) > 4 else 0
        init_value = int(parts[5]) if len(parts) > 5 else None
        checksum = int(parts[6]) if len(parts) > 6 else None
        if len(parts) > 2:
            gain, baseline, units = _gain_field(parts[2])
    except ValueError:
        raise HeaderError(f"{path}: malformed signal line {k} (ADC fields must be integers, the "
                          "gain 'gain[(baseline)][/units]')", path) from None
    if not math.isfinite(gain) or 0 < abs(gain) < _MIN_GAIN:
        raise HeaderError(f"{path}: signal line {k}: the gain is not a finite number that keeps "
                          "physical values finite", path)
    if gain == 0:
        gain = DEFAULT_GAIN
    baseline = adc_zero if baseline is None else baseline
    if any(v is not None and not -_INT32 <= v < _INT32 for v in (baseline, init_value)):
        raise HeaderError(f"{path}: signal line {k}: baseline or initial value outside the 32-bit "
                          "range", path)
    description = parts[8].strip() if len(parts) > 8 else ""
    return SignalSpec(parts[0], fmt, spf, skew, offset, gain, baseline, units, adc_res, adc_zero,
                      init_value, checksum, description)


@lru_cache(maxsize=4096)
def _format_field(text: str) -> tuple[int, int, int, int] | None:
    m = _FMT.match(text)
    if not m:
        return None
    return tuple(int(g) if g else d for g, d in zip(m.groups(), (0, 1, 0, 0)))  # type: ignore


@lru_cache(maxsize=65536)
def _gain_field(text: str) -> tuple[float, int | None, str]:
    """'1716(6)/mV' -> (1716.0, 6, 'mV'); raises ValueError when malformed (cached: archives
    repeat the same few gain fields millions of times)."""
    g = _GAIN.match(text)
    if not g:
        raise ValueError(text)
    return (float(g.group(1)), int(g.group(2)) if g.group(2) is not None else None,
            g.group(3) or "mV")


def header_meta(h: WfdbHeader) -> dict[str, Any]:
    """Comments and dates -> meta: age, sex, diagnoses (list of lines), dx_codes, acquired, ..."""
    meta: dict[str, Any] = {}
    acquired = (_parse_datetime(h.base_date, h.base_time)
                or _parse_datetime(h.base_time, h.base_date))  # Challenge: 'dd-Mon-yyyy hh:mm:ss'
    if acquired:
        meta["acquired"] = acquired
    elif h.base_date or h.base_time:
        meta["acquired_raw"] = " ".join(x for x in (h.base_time, h.base_date) if x)
    diagnoses: list[str] = []
    other: list[str] = []
    in_dx = False
    for raw in h.comments:
        text = raw.strip()
        if not text:
            continue
        m = re.match(r"^<?\s*([A-Za-z][\w \-/]*?)\s*>?\s*:\s*(.*)$", text)
        key = m.group(1).strip().lower() if m else None
        value = m.group(2).strip() if m else text
        if key and _IDENTIFIER_KEYS.match(key):
            continue  # never copy patient identifiers
        if in_dx:
            diagnoses.append(text)
            continue
        if key == "age":
            meta["age"] = parse_age(value)
        elif key in ("sex", "gender"):
            meta["sex"] = parse_sex(value)
        elif key in ("diagnoses", "diagnosis"):
            in_dx = True  # LUDB: the lines that follow are the diagnoses
            if value:
                diagnoses.append(value)
        elif key == "dx":
            meta["dx_codes"] = [c.strip() for c in re.split(r"[,;\s]+", value) if c.strip()]
            if meta["dx_codes"]:  # readable names beside the codes (unknown codes kept as is)

                meta["dx_names"] = snomed_names(meta["dx_codes"])
        elif key in ("rx", "hx", "sx"):
            if value and value.lower() != "unknown":
                meta[key] = value
        elif key:
            meta[key.replace(" ", "_")] = value
        else:
            other.append(text)
    if diagnoses:
        meta["diagnoses"] = diagnoses
    if other:
        meta["comments"] = other
    return meta


def parse_age(value: Any) -> int | None:
    m = re.match(r"^\s*(\d{1,3})(?:\.\d*)?", str(value))
    if not m:
        return None
    age = int(m.group(1))
    return age if 0 <= age <= 130 else None


def parse_sex(value: Any) -> str | None:
    v = str(value).strip().lower()
    if v in ("m", "male", "man"):
        return "M"
    if v in ("f", "female", "woman"):
        return "F"
    return None


def _parse_datetime(date: str | None, time: str | None) -> str | None:
    """ISO 8601 from a WFDB 'hh:mm:ss dd/mm/yyyy' pair, also accepting 'dd-Mon-yyyy' dates."""
    d = None
    if date:
        m = re.match(r"^(\d{1,2})[/\-.]([A-Za-z]{3}|\d{1,2})[/\-.](\d{4})$", date)
        if m:
            month = _MONTHS.get(m.group(2).lower()) if m.group(2).isalpha() else int(m.group(2))
            try:
                d = _dt.date(int(m.group(3)), month or 0, int(m.group(1)))
            except (ValueError, TypeError):
                d = None
    t = None
    if time:
        m = re.match(r"^(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?$", time)
        if m:
            try:
                t = _dt.time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
            except ValueError:
                t = None
    if d and t:
        return _dt.datetime.combine(d, t).isoformat()
    if d:
        return d.isoformat()
    return None
