"""Frontal QRS axis (ecgbatch.signal.axis) and rate/regularity facts (ecgbatch.signal.rate): the
hexaxial geometry, the conventions' boundaries, and real records in mV (physics: a limb-lead
reversal mirrors the axis; the measurement is invariant to lead order and sampling rate; the
cardiologists' categories order the measured degrees); ../shared's LUDB copy, rescaled lead by
lead, has no axis."""
from __future__ import annotations

import csv
import dataclasses
import math

import numpy as np
import pytest

from ecgbatch.io import read_record
from ecgbatch.io.record import Record
from ecgbatch.signal import measure
from ecgbatch.signal.axis import LIMB_LEADS, axis_category, axis_from_areas, wrap_degrees
from ecgbatch.signal.filters import resample
from ecgbatch.signal.rate import rate_category, rr_irregular, rr_regularity

wfdb = pytest.importorskip("wfdb")
pytest.importorskip("neurokit2")


def _projections(theta: float, leads=("I", "II", "III", "aVR", "aVL", "aVF")) -> dict[str, float]:
    """Einthoven/Goldberger: each limb lead = gain * |H| cos(theta - lead direction)."""
    out = {}
    for name in leads:
        ang, gain = LIMB_LEADS[name.lower()]
        out[name] = 1.7 * gain * math.cos(math.radians(theta - ang))
    return out


@pytest.mark.parametrize("theta", [-150, -90, -45, -30, 0, 15, 60, 89, 120, 180])
def test_least_squares_recovers_the_heart_vector_direction(theta):
    assert abs(wrap_degrees(axis_from_areas(_projections(theta)) - theta)) < 1e-6
    # two perpendicular leads suffice, and I + aVF is the textbook atan2 with aVF's sqrt(3)/2
    two = _projections(theta, ("I", "aVF"))
    assert abs(wrap_degrees(axis_from_areas(two) - theta)) < 1e-6
    textbook = math.degrees(math.atan2(two["aVF"] / (math.sqrt(3) / 2), two["I"]))
    assert abs(wrap_degrees(axis_from_areas(two) - textbook)) < 1e-6


def test_too_few_or_collinear_leads_give_nan():
    assert math.isnan(axis_from_areas({"I": 1.0}))
    assert math.isnan(axis_from_areas({"I": 1.0, "V1": 2.0, "aVF": float("nan")}))
    assert math.isnan(axis_from_areas({"I": 0.0, "aVF": 0.0}))


@pytest.mark.parametrize("deg,aha,ludb", [
    (-30.0, "normal", "left"), (-30.1, "left", "left"), (-90.0, "left", "left"), (-90.1, "extreme", "extreme"),
    (0.0, "normal", "horizontal"), (-0.1, "normal", "left"), (29.9, "normal", "horizontal"),
    (30.0, "normal", "normal"), (69.9, "normal", "normal"), (70.0, "normal", "vertical"),
    (90.0, "normal", "vertical"), (90.1, "right", "right"), (180.0, "right", "right"),
    (-180.0, "right", "right"), (-179.0, "extreme", "extreme"), (390.0, "normal", "normal"),
])
def test_categories_follow_the_standards_boundaries(deg, aha, ludb):
    assert axis_category(deg, "aha") == aha
    assert axis_category(deg, "ludb") == ludb


def test_ptbxl_lagetyp_ranges_and_unknowns():
    assert [axis_category(d, "ptbxl") for d in (-45, -30, 29, 30, 60, 90, 119, 121)] == \
        ["ALAD", "LAD", "LAD", "MID", "AXR", "RAD", "RAD", "ARAD"]
    assert axis_category(None) is None and axis_category(float("nan")) is None
    with pytest.raises(ValueError, match="convention"):
        axis_category(10.0, "cabrera")


def test_rate_and_regularity_facts():
    assert [rate_category(v) for v in (45, 59.9, 60, 100, 100.1, None, float("nan"))] == \
        ["bradycardia", "bradycardia", "normal", "normal", "tachycardia", None, None]
    reg = rr_regularity([800] * 10)
    assert reg.irregular is False and reg.nrmssd == 0 and reg.cv == 0
    af = rr_regularity([600, 1000, 700, 950, 560, 880, 720])
    assert af.irregular is True and af.nrmssd > 0.3
    few = rr_regularity([800, 810, np.nan])
    assert few.irregular is None and few.n_rr == 2 and math.isnan(few.nrmssd)
    assert rr_irregular(0.11) is True and rr_irregular(0.1) is False and rr_irregular(None) is None


# --- real records ------------------------------------------------------------------------------
# In mV: PTB-XL's own 100 Hz WFDB release (../shared/data/ptbxl2k, with the cardiologists'
# heart_axis codes) and a PTB-XL record of the Challenge at 500 Hz (sample archive). Not LUDB:
# ../shared's LUDB copy has every lead rescaled to 1.000 mV peak to peak, so it has no axis.

def _record(path) -> Record:
    sig, f = wfdb.rdsamp(str(path))
    return Record(signal=sig.T, fs=float(f["fs"]), leads=tuple(f["sig_name"]), record_id=path.name)


@pytest.fixture(scope="module")
def ludb(shared_data):
    return shared_data / "ludb" / "data"


@pytest.fixture(scope="module")
def ptbxl(shared_data):
    return shared_data / "ptbxl2k"


def _ptbxl_rows(ptbxl) -> dict[str, dict]:
    with open(ptbxl / "ptbxl_database.csv", newline="") as f:
        return {r["ecg_id"]: r for r in csv.DictReader(f)}


def _ptbxl_record(ptbxl, ecg_id: int) -> Record:
    return _record(ptbxl / "records100" / f"{ecg_id // 1000 * 1000:05d}" / f"{ecg_id:05d}_lr")


def test_both_methods_measure_the_axis_and_rr_regularity(ptbxl):
    rec = _ptbxl_record(ptbxl, 691)  # PTB-XL: atrial fibrillation, heart_axis LAD (left axis deviation)
    ml, ec = measure(rec, method="multilead"), measure(rec, method="ecgchat")
    assert ml.axis_deg < -30 and ml.axis_category == "left"
    assert abs(wrap_degrees(ml.axis_deg - ec.axis_deg)) < 10  # same windows, R peaks from the same detector
    assert ml.rr_irregular is True and ec.rr_irregular is True
    d = ml.to_dict()
    assert d["axis_category"] == "left" and d["rr_irregular"] is True and isinstance(d["axis_deg"], float)
    sinus = measure(_ptbxl_record(ptbxl, 2), method="multilead")  # "sinusbradykardie sonst normales ekg"
    assert sinus.rr_irregular is False and rate_category(sinus.hr_bpm) == "bradycardia"


def test_limb_lead_reversal_mirrors_the_axis(ptbxl):
    """Swapping the arm electrodes gives I -> -I, II <-> III, aVR <-> aVL, aVF unchanged: the
    heart vector is mirrored about the vertical, so the axis becomes 180 - theta."""
    rec = _ptbxl_record(ptbxl, 225)   # heart_axis MID
    ix = {n.lower(): i for i, n in enumerate(rec.leads)}
    sig = rec.signal.copy()
    sig[ix["i"]] = -rec.signal[ix["i"]]
    sig[[ix["ii"], ix["iii"]]] = rec.signal[[ix["iii"], ix["ii"]]]
    sig[[ix["avr"], ix["avl"]]] = rec.signal[[ix["avl"], ix["avr"]]]
    a = measure(rec, method="multilead").axis_deg
    b = measure(dataclasses.replace(rec, signal=sig), method="multilead").axis_deg
    assert math.isfinite(a) and abs(wrap_degrees(b - (180.0 - a))) < 3, (a, b)


def test_axis_is_invariant_to_lead_order_and_sampling_rate(sample_archive):
    rec = read_record(sample_archive / "cinc2021" / "HR03961.hea")   # PTB-XL via the Challenge: 500 Hz, mV
    assert rec.fs == 500
    a = measure(rec, method="multilead").axis_deg
    assert math.isfinite(a)
    order = np.random.default_rng(0).permutation(len(rec.leads))
    shuffled = (rec.signal[order], rec.fs, tuple(rec.leads[i] for i in order))
    assert abs(measure(shuffled, method="multilead").axis_deg - a) < 1e-6
    at250 = (resample(rec.signal, 500, 250), 250.0, rec.leads)
    assert abs(wrap_degrees(measure(at250, method="multilead").axis_deg - a)) < 5


def test_flat_record_has_no_axis():
    flat = (np.zeros((12, 5000)), 500, ("I", "II", "III", "aVR", "aVL", "aVF",
                                        "V1", "V2", "V3", "V4", "V5", "V6"))
    m = measure(flat, method="multilead")
    assert math.isnan(m.axis_deg) and m.axis_category is None and m.to_dict()["axis_deg"] is None


def test_cardiologists_categories_order_the_measured_degrees(ptbxl):
    """First 40 ptbxl2k records with a heart_axis code: the median measured axis rises with the
    German Lagetyp codes, ALAD (beyond -30) < LAD (Linkstyp -30..+30, some coded from an English
    "left axis deviation") < MID (normal) < RAD (beyond +90) (bench/axis.py has the full comparison)."""
    by: dict[str, list[float]] = {}
    rows = [r for r in _ptbxl_rows(ptbxl).values() if r["heart_axis"]][:40]
    for r in rows:
        by.setdefault(r["heart_axis"], []).append(
            measure(_record(ptbxl / r["filename_lr"]), method="multilead").axis_deg)
    med = {k: float(np.median(v)) for k, v in by.items()}
    assert med["ALAD"] < med["LAD"] < med["MID"] < med["RAD"]
    assert med["ALAD"] < -30 and -30 < med["LAD"] < 30 and 30 <= med["MID"] <= 70 and med["RAD"] > 90


@pytest.mark.parametrize("method", ["multilead", "ecgchat"])
def test_leads_rescaled_one_by_one_have_no_axis(ptbxl, method):
    """The axis rests on the ratios between limb leads: a record in a voltage unit, or whose
    units are not stated, has one; the same signal declared "normalized" (z-scored per lead, like
    PTB-XL's shared .npy subset) has none, while the rate and RR regularity stay."""
    rec = _ptbxl_record(ptbxl, 691)
    base = measure(rec, method=method)
    unknown = measure(dataclasses.replace(rec, units="unknown"), method=method)
    zs = measure(dataclasses.replace(rec, units="normalized"), method=method)
    assert math.isfinite(base.axis_deg) and unknown.axis_deg == base.axis_deg
    assert math.isnan(zs.axis_deg) and zs.axis_category is None
    assert zs.hr_bpm == base.hr_bpm and zs.rr_nrmssd == base.rr_nrmssd


@pytest.mark.parametrize("method", ["multilead", "ecgchat"])
def test_shared_ludb_copy_has_no_axis_and_no_voltages(ludb, method):
    """../shared's LUDB copy says mV, but every lead of every record spans 1.000 mV peak to peak
    (rescaled one by one): no axis and no LVH voltage is stated for it, while the rate, the RR
    regularity and the intervals are still measured (LUDB 83: atrial fibrillation; LUDB 1:
    sinus bradycardia)."""
    af, brady = (measure(_record(ludb / n), method=method) for n in ("83", "1"))
    for m in (af, brady):
        assert math.isnan(m.axis_deg) and m.axis_category is None
        assert math.isnan(m.sokolow_lyon_mv) and math.isnan(m.cornell_mv) and m.lvh_voltage is None
        assert m.quality == "ok" and math.isfinite(m.qrs_ms) and math.isfinite(m.qt_ms)
    assert af.rr_irregular is True and brady.rr_irregular is False
    assert rate_category(brady.hr_bpm) == "bradycardia" and math.isfinite(brady.pr_ms)
