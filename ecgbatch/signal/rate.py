"""Rate and regularity facts from the measured R peaks: bradycardia / tachycardia by the measured
rate, and RR irregularity.

- Rate: bradycardia below 60 bpm, tachycardia above 100 bpm (the adult limits of the AHA/ACCF/HRS
  recommendations, Mason et al., Circulation 2007;115:1325, and of PTB-XL's SBRAD/STACH).
- Irregularity: the normalised RMSSD of the RR intervals (root mean square of successive RR
  differences divided by the mean RR). Dash, Chon et al. ("Automatic real time detection of
  atrial fibrillation", Ann Biomed Eng 2009;37:1701) call an RR series irregular (one of their
  three atrial fibrillation criteria) above 0.1; that threshold is used here as published. It
  was set on 128-beat segments; a 10-s ECG has about 8-15 beats, so the value is noisier, and
  sinus arrhythmia or ectopic beats can exceed it too: "irregular RR" is a fact about the RR
  series, not a diagnosis. The coefficient of variation (SD / mean) is reported beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BRADYCARDIA_BPM = 60.0
TACHYCARDIA_BPM = 100.0
IRREGULAR_NRMSSD = 0.1
MIN_RR = 4  # fewer RR intervals than this: regularity unknown


@dataclass(frozen=True)
class RrRegularity:
    n_rr: int
    cv: float          # SD / mean of the RR intervals
    nrmssd: float      # RMSSD / mean RR
    irregular: bool | None  # None when there are too few RR intervals


def rr_regularity(rr_ms) -> RrRegularity:
    """Regularity of a series of RR intervals (ms); NaN/None values are dropped."""
    rr = np.asarray([v for v in np.asarray(rr_ms, dtype=float).ravel() if math.isfinite(v) and v > 0])
    if len(rr) < MIN_RR:
        return RrRegularity(len(rr), float("nan"), float("nan"), None)
    mean = float(np.mean(rr))
    nrmssd = float(np.sqrt(np.mean(np.diff(rr) ** 2)) / mean)
    return RrRegularity(len(rr), float(np.std(rr) / mean), nrmssd, rr_irregular(nrmssd))


def rr_irregular(nrmssd: float | None) -> bool | None:
    """Whether a normalised RMSSD says "irregular" (> 0.1); None when unknown."""
    if nrmssd is None or not math.isfinite(nrmssd):
        return None
    return bool(nrmssd > IRREGULAR_NRMSSD)


def rate_category(hr_bpm: float | None) -> str | None:
    """"bradycardia" (< 60 bpm), "tachycardia" (> 100 bpm), "normal", or None when unknown."""
    if hr_bpm is None or not math.isfinite(hr_bpm) or hr_bpm <= 0:
        return None
    if hr_bpm < BRADYCARDIA_BPM:
        return "bradycardia"
    if hr_bpm > TACHYCARDIA_BPM:
        return "tachycardia"
    return "normal"
