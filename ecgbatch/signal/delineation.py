"""Multi-lead delineation: the "multilead" measurement method (the one ``ecgbatch inspect``
shows). Global intervals are defined over all leads (the QRS starts at the earliest onset in any
lead and ends at the latest offset), which a single-lead wavelet delineator cannot see.

- R peaks, P onsets and P/R/T peak positions: NeuroKit2 on lead II exactly as ECG-Chat (its P
  onsets agree with LUDB's cardiologists to a few ms).
- QRS onset/offset: spatial velocity (Euclidean norm over leads of the first difference of the
  0.5-40 Hz band-passed leads, 10-ms moving average); the bounds are where it falls below
  noise + 5 % of the QRS peak velocity (noise = 20th percentile over the record), searched at
  most 150 ms from the R peak.
- T end: per lead, T peak = largest deviation from the QRS-onset level between QRS offset +
  40 ms and min(0.6 RR, 500 ms) after R; T end by the trapezium-area method (Zhang et al.,
  IEEE TBME 2006) after the steepest T downslope; median over leads.
- PR is reported only when P waves are conducted: a P onset before at least half of the QRS
  complexes and per-beat PR with an interquartile range <= 40 ms (conducted P waves keep a
  near-constant PR; in atrial fibrillation the "P onsets" a delineator finds are fibrillation
  waves at random distances from the QRS, and a PR value would be meaningless). NaN otherwise.
The 5 % threshold and the windows were chosen on every other LUDB record (sorted by number) and
checked on the other half (bench/ludb_intervals.py prints both)."""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.ndimage import uniform_filter1d

from ecgbatch.signal import filters
from ecgbatch.signal.axis import frontal_axis
from ecgbatch.signal.measurements import ECGCHAT_FS, Measurements, beat_quality, lead_index, neurokit_delineate
from ecgbatch.signal.rate import rr_regularity
from ecgbatch.signal.voltage import lvh_voltages

QRS_THRESHOLD = 0.05  # fraction of peak spatial velocity above noise
QRS_SEARCH_S = 0.15  # max distance of a QRS bound from the R peak
SMOOTH_S = 0.010
PR_MAX_IQR_MS = 40.0
PR_MIN_FRACTION = 0.5


def spatial_velocity(y: np.ndarray, fs: float) -> np.ndarray:
    dv = np.diff(y, axis=1, prepend=y[:, :1])
    sv = np.sqrt((dv ** 2).sum(axis=0))
    return uniform_filter1d(sv, max(1, int(round(SMOOTH_S * fs))))


def qrs_bounds(y: np.ndarray, rpeaks: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """QRS onset/offset sample per R peak from band-passed leads y [L, T]; NaN when not found."""
    sv = spatial_velocity(y, fs)
    noise = float(np.percentile(sv, 20))
    n = len(sv)
    ons = np.full(len(rpeaks), np.nan)
    offs = np.full(len(rpeaks), np.nan)
    half = int(0.06 * fs)
    lim = int(QRS_SEARCH_S * fs)
    for j, r in enumerate(rpeaks):
        lo, hi = max(0, r - half), min(n, r + half)
        if hi <= lo:
            continue
        m = lo + int(np.argmax(sv[lo:hi]))
        thr = noise + QRS_THRESHOLD * (sv[m] - noise)
        below = np.nonzero(sv[max(0, r - lim):m] <= thr)[0]
        if len(below):
            ons[j] = max(0, r - lim) + below[-1]
        above_end = np.nonzero(sv[m:min(n, r + lim)] <= thr)[0]
        if len(above_end):
            offs[j] = m + above_end[0]
    return ons, offs


def _rr_at(rpeaks: np.ndarray, j: int, fs: float) -> float:
    if j + 1 < len(rpeaks):
        return float(rpeaks[j + 1] - rpeaks[j])
    return float(rpeaks[j] - rpeaks[j - 1]) if j > 0 else fs


def t_end_one_lead(y: np.ndarray, rpeaks: np.ndarray, ons: np.ndarray, offs: np.ndarray,
                   fs: float) -> np.ndarray:
    out = np.full(len(rpeaks), np.nan)
    n = len(y)
    for j, r in enumerate(rpeaks):
        if not (np.isfinite(ons[j]) and np.isfinite(offs[j])):
            continue
        rr = _rr_at(rpeaks, j, fs)
        a = int(offs[j]) + int(0.04 * fs)
        b = min(int(r + min(0.6 * rr, 0.5 * fs)), n - 1)
        if b <= a + 5:
            continue
        tp = a + int(np.argmax(np.abs(y[a:b] - y[int(ons[j])])))
        tr = min(tp + int(0.25 * fs), int(r + 0.75 * rr), n - 1)
        if tr <= tp + 2:
            continue
        xm = tp + int(np.argmax(np.abs(np.diff(y[tp:tr + 1]))))
        t = np.arange(xm, tr + 1)
        area = np.abs(0.5 * (y[xm] - y[t]) * (2 * tr - t - xm))
        out[j] = t[int(np.argmax(area))]
    return out


def t_ends(y: np.ndarray, rpeaks: np.ndarray, ons, offs, fs: float) -> np.ndarray:
    per_lead = np.stack([t_end_one_lead(y[k], rpeaks, ons, offs, fs) for k in range(y.shape[0])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN beats stay NaN
        return np.nanmedian(per_lead, axis=0)


def _nanmedian(v) -> float:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else float("nan")


def _nanmean(v) -> float:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return float(np.mean(v)) if len(v) else float("nan")


def axis_and_regularity(x: np.ndarray, leads, rpeaks: np.ndarray, fs: float, y: np.ndarray | None = None,
                        bounds=None, mv: float | None = None, axis: bool = True) -> dict[str, float]:
    """{"axis_deg": frontal QRS axis in degrees, "rr_nrmssd": RR normalised RMSSD,
    "sokolow_lyon_mv", "cornell_mv": the LVH voltages (ecgbatch.signal.voltage)} of leads ``x``
    [L, T] at ``fs`` with R peaks ``rpeaks``; ``y`` (x band-passed 0.5-40 Hz) and ``bounds`` (QRS
    onsets, offsets) when the caller has them already; ``mv``: the factor from x's units to mV
    (None: units that are not a voltage, no voltages); ``axis`` False: leads rescaled one by one
    (ecgbatch.signal.voltage.limb_ratios_kept), no axis. NaN where not measurable."""
    rr = np.diff(np.asarray(rpeaks, dtype=float)) * 1000.0 / fs
    nan = float("nan")
    out = {"axis_deg": nan, "rr_nrmssd": rr_regularity(rr).nrmssd, "sokolow_lyon_mv": nan, "cornell_mv": nan}
    if math.isfinite(out["rr_nrmssd"]):
        out["rr_nrmssd"] = round(out["rr_nrmssd"], 4)
    if len(rpeaks) < 2 or x.shape[1] <= 30:
        return out
    if y is None:
        y = filters.bandpass(x, fs, 0.5, 40.0)
    ons, offs = bounds if bounds is not None else qrs_bounds(y, rpeaks, fs)
    if axis:
        out["axis_deg"] = round(frontal_axis(y, leads, ons, offs, fs), 1)
    out["sokolow_lyon_mv"], out["cornell_mv"] = lvh_voltages(y, leads, ons, offs, fs, mv)
    return out


def measure_multilead(x500: np.ndarray, leads, lead: str = "II", mv: float | None = 1.0, axis: bool = True):
    """All leads at 500 Hz (float64, NaN-free) -> Measurements (median over beats, ms); ``mv``:
    the factor from the signal's units to mV (None: no voltages); ``axis`` False: no axis
    (leads rescaled one by one)."""
    fs = float(ECGCHAT_FS)
    failed = Measurements(*([float("nan")] * 9), n_beats=0, quality="failed",
                          method="multilead", lead=lead)
    try:
        _, rp, waves = neurokit_delineate(x500[lead_index(leads, lead)])
    except Exception:  # NeuroKit2 raises on flat/too-short/peak-less signals
        return failed
    r = np.asarray(rp["ECG_R_Peaks"], dtype=int)
    if len(r) < 2 or x500.shape[1] <= 30:
        return Measurements(*([float("nan")] * 9), n_beats=len(r), quality="too_few_beats"
                            if len(r) else "failed", method="multilead", lead=lead)
    y = filters.bandpass(x500, fs, 0.5, 40.0)
    ons, offs = qrs_bounds(y, r, fs)
    tend = t_ends(y, r, ons, offs, fs)
    p_on = np.array([np.nan if v is None else v for v in waves["ECG_P_Onsets"]], float)
    p_on = np.where(p_on < ons, p_on, np.nan)  # a P onset after the QRS onset is not one
    ms = 1000.0 / fs
    rr = np.diff(r) * ms
    pr = (ons - p_on) * ms
    pr = np.where(pr > 0, pr, np.nan)
    ok_pr = pr[np.isfinite(pr)]
    if (len(ok_pr) < PR_MIN_FRACTION * len(r) or len(ok_pr) < 2
            or np.subtract(*np.percentile(ok_pr, [75, 25])) > PR_MAX_IQR_MS):
        pr = np.full_like(pr, np.nan)  # no conducted P waves (e.g. atrial fibrillation)
    qrs = (offs - ons) * ms
    qt = (tend - ons) * ms
    rr_mean = _nanmean(rr)
    qt_med = _nanmedian(qt)
    hr = 60000.0 / rr_mean
    qtc = qt_med / np.sqrt(rr_mean / 1000.0)
    pos = {k: _nanmean(np.array([np.nan if v is None else v for v in waves[k]], float))
           for k in ("ECG_P_Peaks", "ECG_T_Peaks")}
    ok = float(np.mean(np.isfinite(qrs) & np.isfinite(qt)))
    vec = axis_and_regularity(x500, leads, r, fs, y=y, bounds=(ons, offs), mv=mv, axis=axis)
    return Measurements(round(hr, 1), round(rr_mean, 1), round(_nanmedian(pr), 1),
                        round(_nanmedian(qrs), 1), round(qt_med, 1), round(float(qtc), 1),
                        round(pos["ECG_P_Peaks"], 1), round(float(np.mean(r)), 1),
                        round(pos["ECG_T_Peaks"], 1), n_beats=len(r),
                        quality=beat_quality(len(r), hr, ok), method="multilead", lead=lead,
                        **vec)
