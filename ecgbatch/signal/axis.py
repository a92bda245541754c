"""Frontal-plane QRS axis: degrees from the limb leads, and its category in the conventions the
reference labels use.

Degrees. In Einthoven's model every limb lead is a projection of one frontal-plane heart vector
H on the lead's direction (I 0 deg, II +60, III +120, aVR -150, aVL -30, aVF +90; the augmented
leads carry a factor sqrt(3)/2, since aVF = (II + III) / 2 = sqrt(3)/2 |H| sin(theta)). The
mean QRS axis is the direction of the vector whose projections best match the net QRS areas
(integral over the QRS of the signal minus its level at QRS onset) of the limb leads the record
has, by least squares; with only I and aVF it reduces to the textbook atan2 of those two. The
QRS windows are the multi-lead onsets/offsets of ecgbatch.signal.delineation (one window for all
leads, as an axis needs); each lead's area is the median over beats, so a few ectopic beats do
not move it. Degrees are in (-180, 180], 0 = lead I, positive = inferior (clockwise).

Categories (``axis_category(deg, convention)``), from the standards, not fitted to any data:
- ``"aha"``: AHA/ACCF/HRS recommendations (Surawicz et al., Circulation 2009;119:e235, part
  III; Mason et al., Circulation 2007;115:1325, the statement list): normal -30 to +90, left axis
  deviation -30 to -90, right axis deviation +90 to +180, and -90 to -180 "extreme" (right
  superior axis / "northwest", an indeterminate-looking quadrant).
- ``"ludb"``: the Russian convention of LUDB's cardiologists (angle alpha; e.g. V. N. Orlov,
  "Руководство по электрокардиографии"): horizontal 0 to +29, normal +30 to +69, vertical
  +70 to +90, left axis deviation below 0 (to -90), right axis deviation above +90; -90 to
  -180 "extreme" (LUDB has no such record).
- ``"ptbxl"``: PTB-XL's ``heart_axis`` codes follow the German "Lagetyp" scheme of its reports
  (Linkstyp -30 to +30, überdrehter Linkstyp beyond -30, Indifferenz-/Mitteltyp +30 to +60,
  Steiltyp +60 to +90, Rechtstyp +90 to +120, überdrehter Rechtstyp beyond +120):
  ALAD < -30, LAD -30..+30, MID +30..+60, AXR +60..+90, RAD +90..+120, ARAD > +120. (PTB-XL also
  has AXL = "borderline left axis deviation" and SUS, from English/sagittal statements, and some
  LAD rows come from English "left axis deviation" statements: see bench/axis.py.)
Boundaries: a category's lower bound is inclusive, the upper exclusive, except that each
convention's normal range keeps both its stated ends (-30 and +90 are normal for AHA).
"""
from __future__ import annotations

import math

import numpy as np

from ecgbatch.signal.preprocess import lead_key

# lead -> (direction in degrees, gain): Einthoven/Goldberger hexaxial reference system
LIMB_LEADS = {"i": (0.0, 1.0), "ii": (60.0, 1.0), "iii": (120.0, 1.0),
              "avr": (-150.0, math.sqrt(3) / 2), "avl": (-30.0, math.sqrt(3) / 2),
              "avf": (90.0, math.sqrt(3) / 2)}
BASELINE_S = 0.010  # the QRS-onset level: mean over the 10 ms before the onset
MIN_BEATS = 2

# (category, low, high) in degrees, low inclusive / high exclusive; the conventions' ranges
AXIS_CONVENTIONS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "aha": (("extreme", -180.0, -90.0), ("left", -90.0, -30.0), ("normal", -30.0, 90.0 + 1e-9),
            ("right", 90.0 + 1e-9, 180.0 + 1e-9)),
    "ludb": (("extreme", -180.0, -90.0), ("left", -90.0, 0.0), ("horizontal", 0.0, 30.0),
             ("normal", 30.0, 70.0), ("vertical", 70.0, 90.0 + 1e-9), ("right", 90.0 + 1e-9, 180.0 + 1e-9)),
    "ptbxl": (("ARAD", -180.0, -90.0), ("ALAD", -90.0, -30.0), ("LAD", -30.0, 30.0), ("MID", 30.0, 60.0),
              ("AXR", 60.0, 90.0), ("RAD", 90.0, 120.0), ("ARAD", 120.0, 180.0 + 1e-9)),
}
# What each category is called in a sentence
AXIS_TEXT = {"normal": "normal axis", "left": "left axis deviation", "right": "right axis deviation",
             "extreme": "extreme axis deviation", "horizontal": "horizontal axis",
             "vertical": "vertical axis"}


def wrap_degrees(deg: float) -> float:
    """An angle in (-180, 180]."""
    d = math.fmod(float(deg), 360.0)
    if d <= -180.0:
        d += 360.0
    elif d > 180.0:
        d -= 360.0
    return d


def axis_category(deg: float | None, convention: str = "aha") -> str | None:
    """The category of an axis in degrees under ``convention`` ("aha", "ludb", "ptbxl");
    None when the axis is unknown (None or NaN)."""
    if convention not in AXIS_CONVENTIONS:
        raise ValueError(f"axis convention must be one of {list(AXIS_CONVENTIONS)}, got {convention!r}")
    if deg is None or not math.isfinite(deg):
        return None
    d = wrap_degrees(deg)
    if d == -180.0:
        d = 180.0
    for name, lo, hi in AXIS_CONVENTIONS[convention]:
        if lo <= d < hi:
            return name
    raise AssertionError(f"{convention} leaves {d} uncovered")  # the tables cover (-180, 180]


def axis_from_areas(areas: dict[str, float]) -> float:
    """Least-squares frontal axis (degrees) from net QRS areas (or amplitudes) of limb leads,
    keyed by lead name; NaN when fewer than two limb leads have a finite value or the fitted
    vector is zero."""
    rows, vals = [], []
    for name, v in areas.items():
        key = lead_key(name)
        if key in LIMB_LEADS and v is not None and math.isfinite(v):
            ang, gain = LIMB_LEADS[key]
            a = math.radians(ang)
            rows.append((gain * math.cos(a), gain * math.sin(a)))
            vals.append(float(v))
    if len(rows) < 2:
        return float("nan")
    m = np.asarray(rows)
    if np.linalg.matrix_rank(m) < 2:  # e.g. only aVR and lead II-like directions 180 deg apart
        return float("nan")
    (hx, hy), *_ = np.linalg.lstsq(m, np.asarray(vals), rcond=None)
    if hx == 0 and hy == 0:
        return float("nan")
    return wrap_degrees(math.degrees(math.atan2(hy, hx)))


def qrs_windows(ons, offs) -> list[tuple[int, int]]:
    """The beats' (onset, offset) samples where both are known; [] with fewer than MIN_BEATS."""
    ok = [(int(a), int(b)) for a, b in zip(ons, offs) if np.isfinite(a) and np.isfinite(b) and b > a]
    return ok if len(ok) >= MIN_BEATS else []


def qrs_segment(y_lead: np.ndarray, a: int, b: int, fs: float) -> np.ndarray:
    """One beat's QRS (samples a..b) of one lead, minus the lead's level just before the onset
    (the mean over BASELINE_S)."""
    base = max(1, int(round(BASELINE_S * fs)))
    return y_lead[a:b + 1] - float(np.mean(y_lead[max(0, a - base):a + 1]))


def net_qrs_areas(y: np.ndarray, leads, ons: np.ndarray, offs: np.ndarray, fs: float,
                  kind: str = "area") -> dict[str, float]:
    """Per limb lead of ``y`` [leads, samples] (band-passed): the median over beats of the net
    QRS area in mV*ms (signal minus its level just before the onset, onset to offset), or with
    ``kind="amplitude"`` the net amplitude in mV (largest positive plus largest negative
    deflection from that level: R minus the deeper of Q and S)."""
    if kind not in ("area", "amplitude"):
        raise ValueError(f"kind must be 'area' or 'amplitude', got {kind!r}")
    ok = qrs_windows(ons, offs)
    out: dict[str, float] = {}
    if not ok:
        return out
    for k, name in enumerate(leads):
        if lead_key(name) not in LIMB_LEADS:
            continue
        per_beat = []
        for a, b in ok:
            seg = qrs_segment(y[k], a, b, fs)
            per_beat.append(float(np.sum(seg)) * 1000.0 / fs if kind == "area"
                            else float(max(seg.max(), 0.0) + min(seg.min(), 0.0)))
        out[str(name)] = float(np.median(per_beat))
    return out


def frontal_axis(y: np.ndarray, leads, ons: np.ndarray, offs: np.ndarray, fs: float,
                 kind: str = "area") -> float:
    """Mean frontal-plane QRS axis in degrees (NaN when it cannot be measured) of band-passed
    leads ``y`` [leads, samples] with QRS onsets/offsets per beat (samples)."""
    return axis_from_areas(net_qrs_areas(y, leads, ons, offs, fs, kind))
