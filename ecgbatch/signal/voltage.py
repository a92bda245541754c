"""QRS voltage criteria for left ventricular hypertrophy, in mV, from a record in physical units.

- Sokolow-Lyon index (Sokolow & Lyon, Am Heart J 1949;37:161): S in V1 plus the larger R of V5
  and V6; LVH by voltage at >= 3.5 mV.
- Cornell voltage (Casale et al., Circulation 1987;75:565): R in aVL plus S in V3; LVH at
  > 2.8 mV in men and > 2.0 mV in women. A record's sex is not part of a measurement, so the
  criterion here is the men's 2.8 mV, the stricter of the two (a woman's record between 2.0 and
  2.8 mV is not flagged).
R = the largest deflection above, S = the largest below, the level just before the QRS onset
(the 10 ms the axis uses: ecgbatch.signal.axis.qrs_segment), within the multi-lead QRS window of each beat
(ecgbatch.signal.delineation), median over beats, on the 0.5-40 Hz band-passed leads.

A voltage needs physical units: ``mv_scale(units)`` converts mV / uV / V records and gives None
for anything else (z-scored arrays, "unknown", "normalized"), and the voltages are then NaN:
nothing is stated that the record cannot support. So too for a record whose leads were
rescaled one by one to the same size, whatever its units say (``rescaled_per_lead``: ../shared's
LUDB copy spans 1.000 mV in every lead); measure() then states no axis either. The thresholds
are the published ones; none is fitted to any data.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ecgbatch.io.quality import canonical_units
from ecgbatch.signal.axis import qrs_segment, qrs_windows
from ecgbatch.signal.preprocess import lead_key

SOKOLOW_LYON_MV = 3.5
CORNELL_MV = 2.8


def mv_scale(units: str | None) -> float | None:
    """Factor from ``units`` to mV, or None when the units are not a voltage (e.g. z-scored):
    the readers' own table (ecgbatch.io.quality.canonical_units)."""
    return canonical_units(units)[1]


def limb_ratios_kept(units: str | None) -> bool:
    """Whether the frontal QRS axis can be measured from a record in ``units``: the axis rests
    on the ratios between limb leads, which a voltage unit keeps and a per-lead rescaling (e.g.
    z-scored arrays, units "normalized") does not. Units not stated ("unknown", e.g. a bare
    .npy) are taken as given: the array may well be in mV."""
    name, scale = canonical_units(units)
    return scale is not None or name == "unknown"


RESCALED_SPREAD = 1.02   # max/min peak-to-peak across leads below this: the leads were rescaled one by one
MIN_LEADS_FOR_RESCALE_CHECK = 6


DERIVED_LIMB_LEADS = frozenset({"iii", "avr", "avl", "avf"})   # computed from I and II (Einthoven, Goldberger)


def rescaled_per_lead(sig: np.ndarray, leads=None) -> bool:
    """Whether the leads of ``sig`` [leads, samples] were rescaled one by one to a common size,
    whatever the units say: every lead (at least 6 with a signal) spans the same peak to peak
    within 2 %. Real leads differ (limb leads are smaller than chest leads, aVR than II; on the
    PTB-XL and Challenge records here the largest lead spans at least 1.7 times the smallest),
    so such a record's mV are not its voltages and its limb-lead ratios are gone: no voltage
    criterion and no axis can be read from it. A flat (zero) lead is left out of the check.
    With ``leads`` named, III, aVR, aVL and aVF are left out too: a format that stores I and II
    only (GE MUSE: 8 leads) computes them after any rescaling, so they differ even then."""
    x = np.asarray(sig, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        return False
    if leads is not None:
        if len(leads) != x.shape[0]:
            raise ValueError(f"rescaled_per_lead: {len(leads)} lead names for {x.shape[0]} leads")
        x = x[[lead_key(n) not in DERIVED_LIMB_LEADS for n in leads]]
    if x.shape[0] < MIN_LEADS_FOR_RESCALE_CHECK:
        return False
    with warnings.catch_warnings():      # an all-NaN lead is left out below, not warned about
        warnings.simplefilter("ignore", RuntimeWarning)
        pp = np.nanmax(x, axis=1) - np.nanmin(x, axis=1)
    pp = pp[np.isfinite(pp) & (pp > 0)]
    if len(pp) < MIN_LEADS_FOR_RESCALE_CHECK:
        return False
    return bool(pp.max() / pp.min() < RESCALED_SPREAD)


def qrs_deflections(y: np.ndarray, k: int, ons, offs, fs: float) -> tuple[float, float]:
    """(R, S) of lead ``k`` of ``y`` [leads, samples]: median over beats of the largest
    deflection above and below the pre-onset level (both >= 0); NaN with too few beats
    (ecgbatch.signal.axis.qrs_windows, as the axis)."""
    segs = [qrs_segment(y[k], a, b, fs) for a, b in qrs_windows(ons, offs)]
    if not segs:
        return float("nan"), float("nan")
    return (float(np.median([max(float(g.max()), 0.0) for g in segs])),
            float(np.median([max(-float(g.min()), 0.0) for g in segs])))


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
    return _mv(s_v1 + r_lat, scale), _mv(r_avl + s_v3, scale)


def _mv(v: float, scale: float) -> float:
    v = v * scale
    return round(v, 2) if math.isfinite(v) else float("nan")


def lvh_voltage_met(sokolow_mv: float | None, cornell_mv: float | None) -> bool | None:
    """Whether either published voltage criterion is met; None when neither was measured."""
    sl = sokolow_mv if sokolow_mv is not None and math.isfinite(sokolow_mv) else None
    co = cornell_mv if cornell_mv is not None and math.isfinite(cornell_mv) else None
    if sl is None and co is None:
        return None
    return (sl is not None and sl >= SOKOLOW_LYON_MV) or (co is not None and co > CORNELL_MV)
