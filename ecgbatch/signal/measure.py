"""Waveform measurements per record: heart rate, RR, PR, QRS, QT, QTc (Bazett) in ms, and
ECG-Chat's P/R/T "wave" values (mean peak position in samples, ecg-chat-reference.md 2.6).

method="ecgchat" reproduces ECG-Chat's ``signal_analysis.py::signal_analyse`` step for step
(lead II, NeuroKit2 ecg_clean -> ecg_peaks("neurokit") -> ecg_delineate("dwt") at 500 Hz, NaN-mean
over beats, int() of ms, all eight values 0 on any exception). method="multilead" (see
ecgbatch.signal.delineation) keeps NeuroKit2's R peaks, P onsets and T offsets but measures the
QRS from all leads; it is what ``ecgbatch inspect`` shows.

Both methods also give the frontal QRS axis (``axis_deg``, ecgbatch.signal.axis, from the QRS
windows of ecgbatch.signal.delineation on all leads), the RR irregularity (``rr_nrmssd``,
ecgbatch.signal.rate) from their R peaks, and the Sokolow-Lyon and Cornell voltages in mV
(``sokolow_lyon_mv``, ``cornell_mv``, ecgbatch.signal.voltage; records in physical units only); these are beside ECG-Chat's eight values, which stay
as ECG-Chat computes them."""
from __future__ import annotations

import math
import warnings

import numpy as np

from ecgbatch.signal import filters
from ecgbatch.signal.delineation import axis_and_regularity, measure_multilead
from ecgbatch.signal.measurements import (ECGCHAT_FS, Measurements, beat_quality, lead_index,
                                          neurokit_delineate)
from ecgbatch.signal.voltage import limb_ratios_kept, mv_scale, rescaled_per_lead

METHODS = ("ecgchat", "multilead")


def _unpack(record_or_tuple) -> tuple[np.ndarray, float, tuple[str, ...], str | None]:
    """(signal, fs, leads, units); a (signal, fs, leads) tuple is in mV (physical units)."""
    units = "mV"
    if isinstance(record_or_tuple, tuple):
        if len(record_or_tuple) != 3:
            raise ValueError(f"measure() takes a Record or (signal, fs, leads), got a tuple of "
                             f"{len(record_or_tuple)}")
        sig, fs, leads = record_or_tuple
    else:
        sig, fs, leads = record_or_tuple.signal, record_or_tuple.fs, record_or_tuple.leads
        units = getattr(record_or_tuple, "units", None)
    sig = np.asarray(sig)
    if sig.ndim != 2 or sig.shape[0] != len(leads):
        raise ValueError(f"signal must be [leads, samples] with one name per lead, got shape "
                         f"{sig.shape} and {len(leads)} names")
    fs = float(fs)
    if not fs > 0:
        raise ValueError(f"sampling rate must be > 0, got {fs!r}")
    return sig, fs, tuple(leads), units


def at_500hz(sig: np.ndarray, fs: float) -> np.ndarray:
    """float64 copy with NaN/inf -> 0 (as ECG-Chat), resampled to 500 Hz when needed."""
    x = np.nan_to_num(np.asarray(sig, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if abs(fs - ECGCHAT_FS) > 1e-9:
        x = filters.resample(x, fs, ECGCHAT_FS)
    return x


def _nanmean_or_0(values) -> float:
    a = np.array(values, dtype=float)
    a = a[~np.isnan(a)]
    return float(np.mean(a)) if len(a) > 0 else 0


def _ecgchat_values(rpeaks, waves, fs: int = ECGCHAT_FS) -> tuple[int, ...]:
    """signal_analyse's loop, verbatim in arithmetic (seconds, /1000 positions, int())."""
    qrs, rr, pr, qt, pp, rp, tp = [], [], [], [], [], [], []
    r = rpeaks["ECG_R_Peaks"]
    for index, _ in enumerate(r):
        if index < len(waves["ECG_Q_Peaks"]):
            pr.append(float(waves["ECG_Q_Peaks"][index] - waves["ECG_P_Onsets"][index]) / fs)
            qrs.append(float(waves["ECG_S_Peaks"][index] - waves["ECG_Q_Peaks"][index]) / fs)
        q_t = float(waves["ECG_T_Offsets"][index] - waves["ECG_R_Onsets"][index]) / fs
        if index > 0:
            rr.append(float(r[index] - r[index - 1]) / fs)
        qt.append(q_t)
        pp.append(waves["ECG_P_Peaks"][index] / 1000)
        rp.append(r[index] / 1000)
        tp.append(waves["ECG_T_Peaks"][index] / 1000)
    m = _nanmean_or_0
    return (int(m(rr) * 1000), int(m(pr) * 1000), int(m(qrs) * 1000), int(m(qt) * 1000),
            int((m(qt) / np.sqrt(m(rr))) * 1000), int(m(pp) * 1000), int(m(rp) * 1000),
            int(m(tp) * 1000))


def measure_ecgchat(x500: np.ndarray, lead: str = "II", all_leads=None, mv: float | None = 1.0,
                    axis: bool = True) -> Measurements:
    """ECG-Chat's measurement of one lead already at 500 Hz (float64, NaN-free). ``all_leads``:
    (every lead at 500 Hz [L, T], their names) to add the axis, RR irregularity and LVH voltages
    (``mv``: the factor from the signal's units to mV; None: no voltages; ``axis`` False: no axis)
    from the same R peaks."""
    try:
        _, rpeaks, waves = neurokit_delineate(x500)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            vals = _ecgchat_values(rpeaks, waves)
        n_beats = len(rpeaks["ECG_R_Peaks"])
        qt = np.asarray(waves["ECG_T_Offsets"], float) - np.asarray(waves["ECG_R_Onsets"], float)
        ok_frac = float(np.mean(np.isfinite(qt))) if len(qt) else 0.0
    except Exception:  # ECG-Chat: any failure -> all eight values 0 (reported as "failed")
        return Measurements(0, 0, 0, 0, 0, 0, 0, 0, 0, n_beats=0, quality="failed",
                            method="ecgchat", lead=lead)
    rr, pr, qrs, qt_ms, qtc, p, r, t = vals
    hr = 60000.0 / rr if rr > 0 else 0.0
    quality = "failed" if rr == 0 else beat_quality(n_beats, hr, ok_frac)
    m = Measurements(round(hr, 1), rr, pr, qrs, qt_ms, qtc, p, r, t, n_beats=n_beats,
                     quality=quality, method="ecgchat", lead=lead)
    if all_leads is not None and quality != "failed":
        vec = axis_and_regularity(all_leads[0], all_leads[1], np.asarray(rpeaks["ECG_R_Peaks"], dtype=int),
                                  float(ECGCHAT_FS), mv=mv, axis=axis)
        for k, v in vec.items():
            setattr(m, k, v)
    return m


def measure(record_or_tuple, method: str = "ecgchat", lead: str = "II") -> Measurements:
    """Measurements of a Record or (signal [leads, samples], fs, leads; mV). Resampled to 500 Hz
    first when needed. The LVH voltages need a Record in a voltage unit, the axis one whose leads
were not rescaled one by one (ecgbatch.signal.voltage: by its units, or seen in the signal:
every lead the same peak to peak). method: "ecgchat" (faithful to ECG-Chat) or "multilead"."""
    if method not in METHODS:
        raise ValueError(f"measure method must be one of {METHODS}, got {method!r}")
    sig, fs, leads, units = _unpack(record_or_tuple)
    i = lead_index(leads, lead)
    x500 = at_500hz(sig, fs)
    mv, axis = mv_scale(units), limb_ratios_kept(units)
    if rescaled_per_lead(sig, leads):     # whatever the units say, no voltage and no limb-lead ratio is left
        mv, axis = None, False
    if method == "ecgchat":
        return measure_ecgchat(x500[i], lead=lead, all_leads=(x500, leads), mv=mv, axis=axis)
    return measure_multilead(x500, leads, lead=lead, mv=mv, axis=axis)


def ecgchat_wave_text(m: Measurements) -> str:
    """ECG-Chat's --wfep text suffix (data.py::get_wave_info), leading space, ints."""
    v = [m.rr_ms, m.pr_ms, m.qrs_ms, m.qt_ms, m.qtc_ms, m.p_wave, m.r_wave, m.t_wave]
    rr, pr, qrs, qt, qtc, p, r, t = (int(x) if x is not None and math.isfinite(x) else 0 for x in v)
    return f" RR: {rr} PR: {pr} QRS: {qrs} QT/QTc: {qt}/{qtc} P/R/T Wave: {p}/{r}/{t}"
