"""HL7 v3 annotated ECG (aECG, the FDA format) reader and writer.

Layout (the parts we use), all in namespace ``urn:hl7-org:v3``::

    AnnotatedECG
      effectiveTime/low@value                         acquisition time (HL7 TS, YYYYMMDDHHMMSS)
      componentOf/timepointEvent/componentOf/subjectAssignment/subject/trialSubject
        subjectDemographicPerson/administrativeGenderCode@code, birthTime@value  (age only)
      component/series  (code RHYTHM)  and  .../derivation/derivedSeries (REPRESENTATIVE_BEAT)
        component/sequenceSet/component/sequence
          code@code TIME_ABSOLUTE|TIME_RELATIVE, value GLIST_TS|GLIST_PQ: increment@value,@unit
          code@code MDC_ECG_LEAD_I ..., value SLIST_PQ: origin, scale (@value, @unit), digits
        subjectOf/annotationSet/.../annotation code MDC_ECG_INTERPRETATION_STATEMENT, value ST

Physical value = origin + scale * digit, converted to mV from the stated unit. Patient IDs,
names and the birth date are never copied into the Record (age is computed, then the birth
date is dropped).
"""
from __future__ import annotations

import datetime as _dt
import math
import re
import uuid
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from ecgbatch.io._xmlutil import (
    canonical_lead, xml_record, child, derive_limb_leads, find, find_all, local, parse_xml, stack_leads,
)
from ecgbatch.io.errors import HeaderError, LengthMismatchError, NotAnEcgError, ReadOptionError
from ecgbatch.io.validate import check_rate
from ecgbatch.io.record import Record

NS = "urn:hl7-org:v3"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
_XSI_TYPE = f"{{{XSI}}}type"
_TO_MV = {"V": 1e3, "mV": 1.0, "uV": 1e-3, "\u00b5V": 1e-3, "\u03bcV": 1e-3, "nV": 1e-6}
_TO_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6}
_SERIES_CODE = {"rhythm": "RHYTHM", "median": "REPRESENTATIVE_BEAT",
                "representative_beat": "REPRESENTATIVE_BEAT"}
_LEAD_PREFIX = "MDC_ECG_LEAD_"
_TS_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")
_CS_ACTCODE, _CS_MDC, _CS_GENDER = "2.16.840.1.113883.5.4", "2.16.840.1.113883.6.24", "2.16.840.1.113883.5.1"


# ---- reader --------------------------------------------------------------------------------

def read_hl7_aecg(path: str | Path, *, waveform: str = "rhythm", sequence_set: int = 0,
                  derive_leads: bool = True) -> Record:
    """Read an HL7 aECG XML file into a Record (float32 mV, canonical lead order).

    waveform: "rhythm" (series code RHYTHM, default) or "median" (REPRESENTATIVE_BEAT, usually a
    derivedSeries). sequence_set: which sequenceSet of the series (some devices split a strip).
    derive_leads: compute III, aVR, aVL, aVF from I and II when absent (8-lead devices).
    """
    p = str(path)
    want = _SERIES_CODE.get(waveform.strip().lower())
    if want is None:
        raise ReadOptionError(f"waveform must be 'rhythm' or 'median', got {waveform!r}")
    root = parse_xml(path)
    if local(root.tag) != "AnnotatedECG":
        raise NotAnEcgError(f"{p}: root element is {local(root.tag)!r}, not AnnotatedECG", p)

    series = [s for top in find_all(root, "component/series")
              for s in [top, *find_all(top, "derivation/derivedSeries")]]
    if not series:
        raise NotAnEcgError(f"{p}: no component/series in AnnotatedECG", p)
    codes = [_code(s) for s in series]
    chosen = [s for s, c in zip(series, codes) if c == want]
    if not chosen and want == "RHYTHM":  # uncoded series: take the first that is not a median beat
        chosen = [s for s, c in zip(series, codes) if c != "REPRESENTATIVE_BEAT"]
    if not chosen:
        raise NotAnEcgError(f"{p}: no {want} series (found series codes {codes})", p)
    sets = list(find_all(chosen[0], "component/sequenceSet"))
    if not sets:
        raise NotAnEcgError(f"{p}: the {want} series has no sequenceSet", p)
    if not 0 <= sequence_set < len(sets):
        raise ReadOptionError(f"sequence_set must be in [0, {len(sets)}), got {sequence_set!r}")

    fs, head = None, None
    leads: dict[str, np.ndarray] = {}
    for seq in find_all(sets[sequence_set], "component/sequence"):
        code, value = _code(seq) or "", child(seq, "value")
        if value is None:
            raise NotAnEcgError(f"{p}: sequence {code!r} has no <value>", p)
        if code.startswith("TIME_"):
            fs, head = _time_axis(value, code, p)
            continue
        raw_name = code[len(_LEAD_PREFIX):] if code.startswith(_LEAD_PREFIX) else code
        name = canonical_lead(raw_name) or raw_name
        if not name:
            raise HeaderError(f"{p}: lead sequence without a code", p)
        if name in leads:
            raise HeaderError(f"{p}: lead {code!r} appears twice in one sequenceSet", p)
        leads[name] = _decode_slist(value, code, p)
    if not leads:
        raise NotAnEcgError(f"{p}: sequenceSet has no lead sequences", p)
    if fs is None:
        raise HeaderError(f"{p}: sequenceSet has no TIME_ABSOLUTE/TIME_RELATIVE sequence", p)
    lengths = {n: v.size for n, v in leads.items()}
    if len(set(lengths.values())) > 1:
        raise LengthMismatchError(f"{p}: leads have different sample counts: {lengths}", p)

    stored = list(leads)
    derived = derive_limb_leads(leads) if derive_leads else []
    signal, names, others = stack_leads(leads, p)
    meta = _meta(root, head)
    meta.update(format="hl7_aecg", series_code=_code(chosen[0]), stored_leads=stored)
    if len(sets) > 1:
        meta.update(n_sequence_sets=len(sets), sequence_set=sequence_set)
    return xml_record(signal, names, others, derived, fs, p, meta)


def _code(el: ET.Element) -> str | None:
    c = child(el, "code")
    return c.get("code") if c is not None else None


def _pq(el: ET.Element | None, what: str, table: dict[str, float], p: str) -> float:
    """A PQ element (value, unit) -> value in the table's base unit."""
    if el is None or el.get("value") is None:
        raise HeaderError(f"{p}: missing <{what} value=...>", p)
    unit = el.get("unit", "")
    if unit not in table:
        raise HeaderError(f"{p}: <{what}> has unknown unit {unit!r} (expected one of {sorted(table)})", p)
    try:
        value = float(el.get("value")) * table[unit]
    except ValueError:
        raise HeaderError(f"{p}: <{what}> value is not a number, got {el.get('value')[:40]!r}", p) from None
    if not math.isfinite(value):
        raise HeaderError(f"{p}: <{what}> value must be finite, got {el.get('value')[:40]!r}", p)
    return value


def _time_axis(value: ET.Element, code: str, p: str) -> tuple[float, str | None]:
    step = _pq(child(value, "increment"), f"{code} increment", _TO_S, p)
    if step <= 0:
        raise HeaderError(f"{p}: {code} increment must be positive, got {step!r}", p)
    fs = check_rate(1.0 / step, p, f"sampling rate (1 / {code} increment)")
    if abs(fs - round(fs)) < 1e-6 * fs:  # 1/0.002777... -> 360, not 359.99999999999994
        fs = float(round(fs))
    head = child(value, "head")
    return fs, (head.get("value") if head is not None and code == "TIME_ABSOLUTE" else None)


def _decode_slist(value: ET.Element, code: str, p: str) -> np.ndarray:
    """SLIST_PQ -> float64 mV (vectorised digit parse)."""
    xsi_type = value.get(_XSI_TYPE)
    if xsi_type not in (None, "SLIST_PQ"):
        raise HeaderError(f"{p}: lead {code!r} value has xsi:type {xsi_type!r}, expected SLIST_PQ", p)
    digits = child(value, "digits")
    if digits is None or not (digits.text or "").strip():
        raise NotAnEcgError(f"{p}: lead {code!r} has no <digits>", p)
    origin = child(value, "origin")
    origin_mv = _pq(origin, f"{code} origin", _TO_MV, p) if origin is not None else 0.0
    scale_mv = _pq(child(value, "scale"), f"{code} scale", _TO_MV, p)
    return origin_mv + scale_mv * _parse_digits(digits.text, code, p)


def _parse_digits(s: str, code: str, p: str) -> np.ndarray:
    """Whitespace-separated integers -> float64; C-speed path first (about 6x faster than
    split + convert), then a float path for producers that write decimals."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # older numpy warns on unmatched data
        try:
            return np.fromstring(s, dtype=np.int64, sep=" ").astype(np.float64)
        except (ValueError, DeprecationWarning):
            pass
    try:
        return np.array(s.split(), dtype=np.float64)
    except ValueError as e:
        raise HeaderError(f"{p}: lead {code!r}: <digits> holds a non-number ({e})", p) from None


def _parse_ts(ts: str | None) -> tuple[_dt.datetime, int] | None:
    """HL7 TS -> (datetime, number of date/time parts given: 1 = year only ... 6 = seconds)."""
    m = _TS_RE.match(ts.strip()) if ts else None
    if not m:
        return None
    parts = [g for g in m.groups()[:6]]
    given = sum(g is not None for g in parts)
    y, mo, d, h, mi, s = (int(g) if g is not None else dflt for g, dflt in zip(parts, (0, 1, 1, 0, 0, 0)))
    try:
        return _dt.datetime(y, mo, d, h, mi, s), given
    except ValueError:
        return None


def _age(birth: tuple[_dt.datetime, int], at: _dt.datetime) -> int:
    b, given = birth
    if given < 3:  # year (or year-month) precision: the year difference is all we know
        return at.year - b.year
    return at.year - b.year - ((at.month, at.day) < (b.month, b.day))


def _meta(root: ET.Element, head: str | None) -> dict[str, Any]:
    """Whitelisted, non-identifying fields (no subject IDs, names, birth date, trial IDs)."""
    meta: dict[str, Any] = {}
    low = find(root, "effectiveTime/low")
    acq = _parse_ts(low.get("value") if low is not None else None) or _parse_ts(head)
    if acq is not None:
        meta["acquired"] = acq[0].isoformat() if acq[1] >= 4 else acq[0].date().isoformat()
    subject = find(root, "componentOf/timepointEvent/componentOf/subjectAssignment/subject/trialSubject")
    if subject is not None:
        person = {local(e.tag): e for e in subject.iter() if local(e.tag) in ("administrativeGenderCode", "birthTime")}
        sex = (person["administrativeGenderCode"].get("code") or "").upper() if "administrativeGenderCode" in person else ""
        if sex in ("M", "F"):
            meta["sex"] = sex
        birth = _parse_ts(person["birthTime"].get("value")) if "birthTime" in person else None
        if birth is not None and acq is not None:
            meta["age"] = _age(birth, acq[0])
    stmts, summary = [], []
    for ann in (e for e in root.iter() if local(e.tag) == "annotation"):
        code, value = _code(ann), child(ann, "value")
        t = (value.text or "").strip() if value is not None else ""
        if t and code == "MDC_ECG_INTERPRETATION_STATEMENT":
            stmts.append(t)
        elif t and code == "MDC_ECG_INTERPRETATION_SUMMARY":
            summary.append(t)
    if stmts:
        meta["diagnoses"] = stmts
    if summary:
        meta["interpretation_summary"] = "\n".join(summary)
    return meta


# ---- writer --------------------------------------------------------------------------------

def _el(parent: ET.Element, tag: str, text_: object = None, *, xsi_type: str | None = None,
        **attrs: object) -> ET.Element:
    el = ET.SubElement(parent, f"{{{NS}}}{tag}", {k: str(v) for k, v in attrs.items()})
    if xsi_type is not None:
        el.set(_XSI_TYPE, xsi_type)
    if text_ is not None:
        el.text = str(text_)
    return el


def _ts(d: _dt.datetime) -> str:
    return d.strftime("%Y%m%d%H%M%S")


def _sequence_set(series: ET.Element, sig: np.ndarray, fs: float, names: list[str],
                  start: _dt.datetime | None, unit: str, scale: float, origin: float) -> None:
    ss = _el(_el(series, "component"), "sequenceSet")
    seq = _el(_el(ss, "component"), "sequence")
    inc = repr(1.0 / fs)
    if start is not None:
        _el(seq, "code", code="TIME_ABSOLUTE", codeSystem=_CS_ACTCODE)
        v = _el(seq, "value", xsi_type="GLIST_TS")
        _el(v, "head", value=_ts(start))
    else:
        _el(seq, "code", code="TIME_RELATIVE", codeSystem=_CS_ACTCODE)
        v = _el(seq, "value", xsi_type="GLIST_PQ")
        _el(v, "head", value=0, unit="s")
    _el(v, "increment", value=inc, unit="s")
    digits = np.rint((sig / _TO_MV[unit] - origin) / scale)
    if not np.isfinite(digits).all() or np.abs(digits).max(initial=0) > 2**31 - 1:
        raise ValueError(f"signal is not finite or too large for scale {scale} {unit}")
    for name, row in zip(names, digits.astype(np.int64)):
        seq = _el(_el(ss, "component"), "sequence")
        _el(seq, "code", code=_LEAD_PREFIX + (name.upper() if canonical_lead(name) else name),
            codeSystem=_CS_MDC)
        v = _el(seq, "value", xsi_type="SLIST_PQ")
        _el(v, "origin", value=repr(float(origin)), unit=unit)
        _el(v, "scale", value=repr(float(scale)), unit=unit)
        _el(v, "digits", " ".join(map(str, row.tolist())))


def write_hl7_aecg(path: str | Path, signal_mV: np.ndarray, fs: float, leads, meta: dict | None = None, *,
                   unit: str = "uV", scale: float = 1.0, origin: float = 0.0,
                   median_mV: np.ndarray | None = None) -> Path:
    """Write an HL7 aECG file: one RHYTHM series (plus a REPRESENTATIVE_BEAT derivedSeries when
    ``median_mV`` is given); digits = round((value_in_unit - origin) / scale).

    meta keys used (the reader's own): acquired (ISO 8601 date or datetime) -> TIME_ABSOLUTE
    (else TIME_RELATIVE); sex (M/F); age (written as a year-precision birthTime when the date is
    known, since aECG has no age field); diagnoses (list of str). patient_id,
    patient_name and birth_date are written only so tests can check the reader drops them.
    """
    meta = dict(meta or {})
    if unit not in _TO_MV:
        raise ValueError(f"unit must be one of {sorted(_TO_MV)}, got {unit!r}")
    if not scale or scale <= 0 or not fs or fs <= 0:
        raise ValueError(f"scale and fs must be positive, got scale={scale!r}, fs={fs!r}")
    sig = np.asarray(signal_mV, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[0] != len(leads):
        raise ValueError(f"signal must be [leads, samples] with {len(leads)} leads, got shape {sig.shape}")
    names = [canonical_lead(n) or n for n in leads]
    start = None
    if meta.get("acquired"):
        start = _dt.datetime.fromisoformat(str(meta["acquired"]))

    ET.register_namespace("", NS)
    ET.register_namespace("xsi", XSI)
    root = ET.Element(f"{{{NS}}}AnnotatedECG")
    _el(root, "id", root=str(uuid.uuid5(uuid.NAMESPACE_URL, f"ecgbatch:{Path(path).name}")))
    _el(root, "code", code="93000", codeSystem="2.16.840.1.113883.6.12", codeSystemName="CPT-4")
    et = _el(root, "effectiveTime")
    end = start + _dt.timedelta(seconds=sig.shape[1] / fs) if start else None
    for tag, t in (("low", start), ("high", end)):
        if t is None:
            _el(et, tag, nullFlavor="UNK")
        else:
            _el(et, tag, value=_ts(t))
    tpe = _el(_el(root, "componentOf"), "timepointEvent")
    _el(tpe, "code", nullFlavor="UNK")
    sa = _el(_el(tpe, "componentOf"), "subjectAssignment")
    ts = _el(_el(sa, "subject"), "trialSubject")
    if meta.get("patient_id"):
        _el(ts, "id", root="2.25.0", extension=meta["patient_id"])
    else:
        _el(ts, "id", nullFlavor="UNK")
    person = _el(ts, "subjectDemographicPerson")
    if meta.get("patient_name"):
        _el(person, "name", meta["patient_name"])
    sex = str(meta.get("sex") or "").upper()[:1]
    _el(person, "administrativeGenderCode", code=sex if sex in ("M", "F") else "UN", codeSystem=_CS_GENDER)
    if meta.get("birth_date"):
        _el(person, "birthTime", value=_dt.date.fromisoformat(str(meta["birth_date"])).strftime("%Y%m%d"))
    elif meta.get("age") is not None and start is not None:
        _el(person, "birthTime", value=f"{start.year - int(meta['age']):04d}")
    _el(_el(_el(sa, "componentOf"), "clinicalTrial"), "id", nullFlavor="UNK")

    series = _el(_el(root, "component"), "series")
    _el(series, "code", code="RHYTHM", codeSystem=_CS_ACTCODE)
    _sequence_set(series, sig, fs, names, start, unit, scale, origin)
    if median_mV is not None:
        med = np.asarray(median_mV, dtype=np.float64)
        if med.shape[0] != len(names):
            raise ValueError(f"median_mV must have {len(names)} leads, got shape {med.shape}")
        ds = _el(_el(series, "derivation"), "derivedSeries")
        _el(ds, "code", code="REPRESENTATIVE_BEAT", codeSystem=_CS_ACTCODE)
        _sequence_set(ds, med, fs, names, None, unit, scale, origin)
    stmts = [str(s).strip() for s in meta.get("diagnoses") or [] if str(s).strip()]
    if stmts:
        aset = _el(_el(series, "subjectOf"), "annotationSet")
        interp = _el(_el(aset, "component"), "annotation")
        _el(interp, "code", code="MDC_ECG_INTERPRETATION", codeSystem=_CS_MDC)
        for s in stmts:
            a = _el(_el(interp, "component"), "annotation")
            _el(a, "code", code="MDC_ECG_INTERPRETATION_STATEMENT", codeSystem=_CS_MDC)
            _el(a, "value", s, xsi_type="ST")
    ET.indent(root, space="  ")
    out = Path(path)
    out.write_bytes(b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8",
                                                                              xml_declaration=False) + b"\n")
    return out


__all__ = ["read_hl7_aecg", "write_hl7_aecg"]
