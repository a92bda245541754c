"""GE MUSE XML (``<RestingECG>``, restecg.dtd) reader and writer.

Layout (the parts we use): ``PatientDemographics`` (PatientAge, AgeUnits, Gender; PatientID,
names and DateofBirth are never copied), ``TestDemographics`` (AcquisitionDate MM-DD-YYYY,
AcquisitionTime, AcquisitionDevice), ``RestingECGMeasurements``, ``Diagnosis`` /
``OriginalDiagnosis`` (``DiagnosisStatement/StmtText``, ``StmtFlag`` ENDSLINE closes a line) and
one ``Waveform`` per type (Rhythm, Median) with ``SampleBase`` x 10^``SampleExponent`` Hz and one
``LeadData`` per lead: ``LeadID``, ``LeadAmplitudeUnitsPerBit`` (typically 4.88) in
``LeadAmplitudeUnits`` (MICROVOLTS), ``LeadSampleCountTotal``, ``LeadSampleSize`` (bytes, 2) and
``WaveFormData`` = base64 of little-endian signed integers.

MUSE stores 8 leads (I, II, V1-V6); the reader derives III, aVR, aVL, aVF from I and II when they
are absent and lists them in ``meta["derived_leads"]``.
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from ecgbatch.io._xmlutil import (
    canonical_lead, xml_record, children, derive_limb_leads, find, local, parse_xml, stack_leads, text,
)
from ecgbatch.io.errors import (
    HeaderError, LengthMismatchError, NotAnEcgError, ReadOptionError, TruncatedSignalError,
)
from ecgbatch.io.record import Record
from ecgbatch.io.validate import check_rate

# LeadAmplitudeUnits -> millivolts per unit
_UNIT_TO_MV = {"MICROVOLTS": 1e-3, "MILLIVOLTS": 1.0, "VOLTS": 1e3, "NANOVOLTS": 1e-6}
_SAMPLE_DTYPE = {1: "<i1", 2: "<i2", 4: "<i4"}
_AGE_TO_YEARS = {"YEARS": 1.0, "MONTHS": 1 / 12, "WEEKS": 7 / 365.25, "DAYS": 1 / 365.25,
                 "HOURS": 1 / 8766}
_MEASUREMENTS = {
    "VentricularRate": "ventricular_rate_bpm", "AtrialRate": "atrial_rate_bpm",
    "PRInterval": "pr_ms", "QRSDuration": "qrs_ms", "QTInterval": "qt_ms",
    "QTCorrected": "qtc_ms", "PAxis": "p_axis_deg", "RAxis": "qrs_axis_deg",
    "TAxis": "t_axis_deg", "QRSCount": "qrs_count",
}
MUSE_STORED_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


# ---- reader --------------------------------------------------------------------------------

def read_muse(path: str | Path, *, waveform: str = "rhythm", derive_leads: bool = True) -> Record:
    """Read a GE MUSE XML file into a Record (float32 mV, canonical lead order).

    waveform: "rhythm" (the 10 s strip, default) or "median" (the representative beat).
    derive_leads: compute III, aVR, aVL, aVF from I and II when the file lacks them.
    """
    p = str(path)
    want = waveform.strip().lower()
    if want not in ("rhythm", "median"):
        raise ReadOptionError(f"waveform must be 'rhythm' or 'median', got {waveform!r}")
    root = parse_xml(path)
    if local(root.tag) != "RestingECG":
        raise NotAnEcgError(f"{p}: root element is {local(root.tag)!r}, not RestingECG", p)

    waveforms = children(root, "Waveform")
    types = [text(w, "WaveformType") or "?" for w in waveforms]
    chosen = [w for w, t in zip(waveforms, types) if t.lower() == want]
    if not chosen:
        raise NotAnEcgError(f"{p}: no {waveform!r} <Waveform> in MUSE file (found {types})", p)
    wf = chosen[0]
    fs = _sampling_rate(wf, p)

    leads: dict[str, np.ndarray] = {}
    stored: list[str] = []
    for ld in children(wf, "LeadData"):
        raw_name = text(ld, "LeadID")
        if raw_name is None:
            raise HeaderError(f"{p}: <LeadData> without <LeadID>", p)
        name = canonical_lead(raw_name) or raw_name
        if name in leads:
            raise HeaderError(f"{p}: lead {raw_name!r} appears twice in the {waveform} waveform", p)
        leads[name] = _decode_lead(ld, raw_name, p)
        stored.append(name)
    if not leads:
        raise NotAnEcgError(f"{p}: the {waveform} <Waveform> has no <LeadData>", p)
    lengths = {n: v.size for n, v in leads.items()}
    if len(set(lengths.values())) > 1:
        raise LengthMismatchError(f"{p}: leads have different sample counts: {lengths}", p)

    derived = derive_limb_leads(leads) if derive_leads else []
    signal, names, others = stack_leads(leads, p)
    meta = _meta(root, p)
    meta.update(format="muse", waveform_type=text(wf, "WaveformType"), stored_leads=stored)
    return xml_record(signal, names, others, derived, fs, p, meta)


def _sampling_rate(wf: ET.Element, p: str) -> float:
    base, exp = text(wf, "SampleBase"), text(wf, "SampleExponent") or "0"
    if base is None:
        raise HeaderError(f"{p}: <Waveform> has no <SampleBase>", p)
    try:
        fs = float(base) * 10.0 ** int(exp)
    except (ValueError, OverflowError):
        raise HeaderError(f"{p}: bad SampleBase/SampleExponent {base[:20]!r}/{exp[:20]!r}", p) from None
    return check_rate(fs, p, "sampling rate (SampleBase x 10^SampleExponent)")


def _int_field(ld: ET.Element, name: str, p: str) -> int | None:
    v = text(ld, name)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise HeaderError(f"{p}: <{name}> is not an integer, got {v!r}", p) from None


def _decode_lead(ld: ET.Element, lead: str, p: str) -> np.ndarray:
    """Base64 little-endian ints -> float64 mV (vectorised)."""
    b64 = text(ld, "WaveFormData")
    if b64 is None:
        raise NotAnEcgError(f"{p}: lead {lead!r} has no <WaveFormData>", p)
    try:
        raw = base64.b64decode(b64)  # line breaks and other non-alphabet bytes are skipped
    except (binascii.Error, ValueError) as e:
        raise TruncatedSignalError(f"{p}: lead {lead!r}: base64 data truncated or corrupt ({e})", p) from None
    size = _int_field(ld, "LeadSampleSize", p) or 2
    if size not in _SAMPLE_DTYPE:
        raise HeaderError(f"{p}: lead {lead!r}: unsupported LeadSampleSize {size!r}", p)
    declared_bytes = _int_field(ld, "LeadByteCountTotal", p)
    declared = _int_field(ld, "LeadSampleCountTotal", p)
    if declared is None and declared_bytes is not None:
        declared = declared_bytes // size
    if len(raw) % size:
        raise TruncatedSignalError(
            f"{p}: lead {lead!r}: {len(raw)} bytes is not a whole number of {size}-byte samples", p)
    n = len(raw) // size
    if declared is not None and n < declared:
        raise TruncatedSignalError(f"{p}: lead {lead!r}: {n} samples decoded, {declared} declared", p)
    if declared is not None and n > declared:
        raise LengthMismatchError(f"{p}: lead {lead!r}: {n} samples decoded, only {declared} declared", p)

    per_bit = text(ld, "LeadAmplitudeUnitsPerBit")
    if per_bit is None:
        raise HeaderError(f"{p}: lead {lead!r} has no <LeadAmplitudeUnitsPerBit>", p)
    units = (text(ld, "LeadAmplitudeUnits") or "MICROVOLTS").upper()
    if units not in _UNIT_TO_MV:
        raise HeaderError(f"{p}: lead {lead!r}: unknown LeadAmplitudeUnits {units!r}", p)
    try:
        gain = float(per_bit) * _UNIT_TO_MV[units]
    except ValueError:
        raise HeaderError(f"{p}: lead {lead!r}: bad LeadAmplitudeUnitsPerBit {per_bit[:40]!r}", p) from None
    if not np.isfinite(gain) or gain == 0:
        raise HeaderError(f"{p}: lead {lead!r}: LeadAmplitudeUnitsPerBit must be finite and non-zero, "
                          f"got {per_bit[:40]!r}", p)
    return np.frombuffer(raw, dtype=_SAMPLE_DTYPE[size]).astype(np.float64) * gain


def _statements(diag: ET.Element | None) -> list[str]:
    """DiagnosisStatement texts; fragments are joined up to each ENDSLINE flag when flags exist."""
    if diag is None:
        return []
    stmts = [(text(s, "StmtText") or "", {f.text.strip().upper() for f in children(s, "StmtFlag") if f.text})
             for s in children(diag, "DiagnosisStatement")]
    if not any("ENDSLINE" in flags for _, flags in stmts):
        return [t for t, _ in stmts if t]
    lines, cur = [], []
    for t, flags in stmts:
        if t:
            cur.append(t)
        if "ENDSLINE" in flags and cur:
            lines.append(" ".join(cur))
            cur = []
    if cur:
        lines.append(" ".join(cur))
    return lines


def _acquired(date: str | None, time: str | None) -> str | None:
    """MUSE 'MM-DD-YYYY' + 'HH:MM:SS' -> ISO 8601 (date only when the time is absent); the raw
    text when it does not parse."""
    if not date:
        return None
    try:
        d = _dt.datetime.strptime(date, "%m-%d-%Y").date()
    except ValueError:
        return " ".join(x for x in (date, time) if x)
    if time:
        try:
            return _dt.datetime.combine(d, _dt.time.fromisoformat(time)).isoformat()
        except ValueError:
            pass
    return d.isoformat()


def _meta(root: ET.Element, p: str) -> dict[str, Any]:
    """Whitelisted, non-identifying fields only (no IDs, names, birth date, race, site)."""
    meta: dict[str, Any] = {}
    demo = find(root, "PatientDemographics")
    age, units = text(demo, "PatientAge"), (text(demo, "AgeUnits") or "YEARS").upper()
    if age is not None and units in _AGE_TO_YEARS:
        try:
            years = float(age) * _AGE_TO_YEARS[units]
            meta["age"] = int(years) if units == "YEARS" and years.is_integer() else round(years, 3)
        except ValueError:
            pass  # non-numeric age: not an ECG problem, leave it out
    sex = (text(demo, "Gender") or "").upper()
    if sex in ("MALE", "M", "FEMALE", "F"):
        meta["sex"] = sex[0]
    test = find(root, "TestDemographics")
    acquired = _acquired(text(test, "AcquisitionDate"), text(test, "AcquisitionTime"))
    if acquired:
        meta["acquired"] = acquired
    if text(test, "AcquisitionDevice"):
        meta["acquisition_device"] = text(test, "AcquisitionDevice")
    meas = {}
    for tag, key in _MEASUREMENTS.items():
        v = text(root, f"RestingECGMeasurements/{tag}")
        if v is not None:
            try:
                meas[key] = float(v)
            except ValueError:
                pass
    if meas:
        meta["measurements"] = meas
    stmts = _statements(find(root, "Diagnosis"))
    if stmts:
        meta["diagnoses"] = stmts
    orig = _statements(find(root, "OriginalDiagnosis"))
    if orig:
        meta["original_diagnoses"] = orig
    return meta


# ---- writer --------------------------------------------------------------------------------

def _sub(parent: ET.Element, tag: str, value: object = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if value is not None:
        el.text = str(value)
    return el


def _fs_base_exponent(fs: float) -> tuple[int, int]:
    for exp in range(0, -7, -1):
        base = fs * 10.0 ** (-exp)
        if abs(base - round(base)) < 1e-6:
            return int(round(base)), exp
    raise ValueError(f"sampling rate cannot be written as SampleBase x 10^SampleExponent, got {fs!r}")


def _waveform(root: ET.Element, kind: str, sig: np.ndarray, fs: float, names: list[str],
              per_bit: float) -> None:
    base, exp = _fs_base_exponent(fs)
    wf = _sub(root, "Waveform")
    for tag, v in (("WaveformType", kind), ("WaveformStartTime", 0), ("NumberofLeads", len(names)),
                   ("SampleType", "CONTINUOUS_SAMPLES"), ("SampleBase", base), ("SampleExponent", exp)):
        _sub(wf, tag, v)
    q = np.rint(sig * 1000.0 / per_bit)  # mV -> counts of per_bit microvolts
    if np.abs(q).max(initial=0) > 32767 or not np.isfinite(q).all():
        raise ValueError(f"signal exceeds the int16 range at {per_bit} uV per bit (or is not finite)")
    q = q.astype("<i2")
    for name, row in zip(names, q):
        ld = _sub(wf, "LeadData")
        raw = row.tobytes()
        for tag, v in (("LeadByteCountTotal", len(raw)), ("LeadTimeOffset", 0),
                       ("LeadSampleCountTotal", row.size), ("LeadAmplitudeUnitsPerBit", per_bit),
                       ("LeadAmplitudeUnits", "MICROVOLTS"), ("LeadHighLimit", 32767),
                       ("LeadLowLimit", -32768), ("LeadID", name), ("LeadOffsetFirstSample", 0),
                       ("FirstSampleBaseline", 0), ("LeadSampleSize", 2), ("LeadOff", "FALSE"),
                       ("BaselineSway", "FALSE")):
            _sub(ld, tag, v)
        _sub(ld, "WaveFormData", "\n" + base64.encodebytes(raw).decode("ascii"))


def _select(signal_mV: np.ndarray, leads: list[str] | tuple[str, ...], wanted: tuple[str, ...] | None
            ) -> tuple[np.ndarray, list[str]]:
    sig = np.asarray(signal_mV, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[0] != len(leads):
        raise ValueError(f"signal must be [leads, samples] with {len(leads)} leads, got shape {sig.shape}")
    names = [canonical_lead(n) or n for n in leads]
    if wanted is None:
        return sig, names
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(f"MUSE stores leads {wanted}; missing {missing} in {list(leads)!r}")
    return sig[[names.index(n) for n in wanted]], list(wanted)


def write_muse(path: str | Path, signal_mV: np.ndarray, fs: float, leads, meta: dict | None = None, *,
               units_per_bit: float = 4.88, store_all_leads: bool = False,
               median_mV: np.ndarray | None = None) -> Path:
    """Write a GE MUSE XML file (as MUSE exports it: 8 leads I, II, V1-V6 unless
    ``store_all_leads``; int16 counts of ``units_per_bit`` microvolts).

    meta keys used (the reader's own): age (years), sex (M/F), acquired (ISO 8601 date or
    datetime), acquisition_device, diagnoses (list of str); patient_id, patient_last_name,
    patient_first_name and birth_date are written to the file only so that tests can check the
    reader never copies them. ``median_mV`` (same leads as ``signal_mV``) adds a Median waveform.
    """
    meta = dict(meta or {})
    if not fs or fs <= 0:
        raise ValueError(f"fs must be positive, got {fs!r}")
    wanted = None if store_all_leads else MUSE_STORED_LEADS
    sig, names = _select(signal_mV, leads, wanted)
    root = ET.Element("RestingECG")
    _sub(_sub(root, "MuseInfo"), "MuseVersion", "ecgbatch-writer")
    demo = _sub(root, "PatientDemographics")
    if meta.get("patient_id") is not None:
        _sub(demo, "PatientID", meta["patient_id"])
    if meta.get("age") is not None:
        _sub(demo, "PatientAge", int(meta["age"]))
        _sub(demo, "AgeUnits", "YEARS")
    if meta.get("birth_date"):
        d = _dt.date.fromisoformat(str(meta["birth_date"]))
        _sub(demo, "DateofBirth", d.strftime("%m-%d-%Y"))
    sex = str(meta.get("sex") or "").upper()[:1]
    if sex in ("M", "F"):
        _sub(demo, "Gender", "MALE" if sex == "M" else "FEMALE")
    for key, tag in (("patient_last_name", "PatientLastName"), ("patient_first_name", "PatientFirstName")):
        if meta.get(key):
            _sub(demo, tag, meta[key])
    test = _sub(root, "TestDemographics")
    _sub(test, "DataType", "RESTING")
    if meta.get("acquisition_device"):
        _sub(test, "AcquisitionDevice", meta["acquisition_device"])
    if meta.get("acquired"):
        when = _dt.datetime.fromisoformat(str(meta["acquired"]))
        if "T" in str(meta["acquired"]):
            _sub(test, "AcquisitionTime", when.strftime("%H:%M:%S"))
        _sub(test, "AcquisitionDate", when.strftime("%m-%d-%Y"))
    stmts = [s for s in meta.get("diagnoses") or [] if str(s).strip()]
    if stmts:
        diag = _sub(root, "Diagnosis")
        _sub(diag, "Modality", "RESTING")
        for s in stmts:
            ds = _sub(diag, "DiagnosisStatement")
            _sub(ds, "StmtFlag", "ENDSLINE")
            _sub(ds, "StmtText", str(s).strip())
    if median_mV is not None:
        med, _ = _select(median_mV, leads, wanted)
        _waveform(root, "Median", med, fs, names, units_per_bit)
    _waveform(root, "Rhythm", sig, fs, names, units_per_bit)
    ET.indent(root, space="   ")
    body = ET.tostring(root, encoding="unicode")
    out = Path(path)
    out.write_bytes(('<?xml version="1.0" encoding="ISO-8859-1"?>\n'
                     '<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n' + body + "\n")
                    .encode("iso-8859-1", errors="xmlcharrefreplace"))
    return out


__all__ = ["read_muse", "write_muse", "MUSE_STORED_LEADS"]
