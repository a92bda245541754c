"""QRS voltage criteria for left ventricular hypertrophy, in mV, from a record in physical units.

- Sokolow-Lyon index (Sokolow & Lyon, Am Heart J 1949;37:161): S in V1 plus the larger R of V5
  and V6; LVH by voltage at >= 3.5 mV.
- Cornell voltage (Casale et al., Circulation 1987;75:565): R in aVL plus S in V3; LVH at
  > 2.8 mV in men and > 2.0 mV in women. A record's sex is not part of a measurement, so the
  criterion here is the men's 2.8 mV, the stricter of the two (a woman's record between 2.0 and
  2.8 mV is not flagged).
R = the largest deflection above, S = the largest below, the level just before the QRS onset
(the 10 ms the axis uses, ecgbatch.signal.axis), within the multi-lead QRS window of each beat
(ecgbatch.signal.delineation), median over beats, on the 0.5-40 Hz band-passed leads.

A voltage needs physical units: ``mv_scale(units)`` converts mV / uV / V records and gives None
for anything else (z-scored arrays, "unknown", "normalized"), and the voltages are then NaN:
nothing is stated that the record cannot support. The thresholds are the published ones; none
is fitted to any data.
"""
from __future__ import annotations

import math

import numpy as np

from ecgbatch.signal.axis import BASELINE_S
from ecgbatch.signal.preprocess import lead_key

SOKOLOW_LYON_MV = 3.5
CORNELL_MV = 2.8
MIN_BEATS = 2
_SCALE = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3,
          "microvolt": 1e-3, "microvolts": 1e-3, "v": 1e3, "volt": 1e3, "volts": 1e3}


def mv_scale(units: str | None) -> float | None:
    """Factor from ``units`` to mV, or None when the units are not a voltage (e.g. z-scored)."""
    if units is None:
        return None
    return _SCALE.get(str(units).strip().lower())


def qrs_deflections(y: np.ndarray, k: int, ons, offs, fs: float) -> tuple[float, float]:
    """(R, S) of lead ``k`` of ``y`` [leads, samples]: median over beats of the largest
    deflection above and below the pre-onset level (both >= 0); NaN with fewer than 2 beats."""
    base = max(1, int(round(BASELINE_S * fs)))
    r, s = [], []
    for a, b in zip(ons, offs):
        if not (np.isfinite(a) and np.isfinite(b)) or b <= a:
            continue
        a, b = int(a), int(b)
        seg = y[k, a:b + 1] - float(np.mean(y[k, max(0, a - base):a + 1]))
        r.append(max(float(seg.max()), 0.0))
        s.append(max(-float(seg.min()), 0.0))
    if len(r) < MIN_BEATS:
        return float("nan"), float("nan")
    return float(np.median(r)), float(np.median(s))


def lvh_voltages(y: np.ndarray, leads, ons, offs, fs: float, scale: float | None = 1.0) -> tuple[float, float]:
    """(Sokolow-Lyon, Cornell) in mV of band-passed leads ``y`` with QRS onsets/offsets per beat;
    NaN where a lead is missing, too few beats were delineated, or ``scale`` (to mV) is None."""
    nan = float("nan")
    if scale is None:
        return nan, nan
    keys = [lead_key(n) for n in leads]

    def defl(name: str) -> tuple[float, float]:
        return qrs_deflections(y, keys.index(name), ons, offs, fs) if name in keys else (nan, nan)

    (_, s_v1), (r_v5, _), (r_v6, _) = defl("v1"), defl("v5"), defl("v6")
    (r_avl, _), (_, s_v3) = defl("avl"), defl("v3")
    r_lat = max((v for v in (r_v5, r_v6) if math.isfinite(v)), default=nan)
    sokolow = (s_v1 + r_lat) * scale
    cornell = (r_avl + s_v3) * scale
    return round(sokolow, 2) if math.isfinite(sokolow) else nan, round(cornell, 2) if math.isfinite(cornell) else nan


def lvh_voltage_met(sokolow_mv: float | None, cornell_mv: float | None) -> bool | None:
    """Whether either published voltage criterion is met; None when neither was measured."""
    vals = [(v, t) for v, t in ((sokolow_mv, SOKOLOW_LYON_MV), (cornell_mv, CORNELL_MV))
            if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return any(v >= t if t == SOKOLOW_LYON_MV else v > t for v, t in vals)
