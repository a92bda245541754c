"""What a waveform measurement yields (``Measurements``) and the pieces both measurement
methods share: ECG-Chat's 500 Hz rate, the NeuroKit2 delineation chain, the lead lookup and the
beat-quality rule. ``measure`` (the methods) and ``delineation`` (multi-lead bounds) import it."""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ecgbatch.io.errors import MissingLeadError
from ecgbatch.signal.axis import axis_category
from ecgbatch.signal.preprocess import lead_key
from ecgbatch.signal.rate import rr_irregular
from ecgbatch.signal.voltage import lvh_voltage_met

ECGCHAT_FS = 500
QUALITY_FLAGS = ("ok", "too_few_beats", "noisy", "failed")
MIN_BEATS = 3
# Physiological ranges outside which a measurement says more about the signal than the heart.
HR_RANGE_BPM = (25.0, 250.0)
# Plausible ranges (ms); outside them a number says more about the delineation than the heart.
INTERVAL_RANGES = {"pr_ms": (60, 400), "qrs_ms": (40, 250), "qt_ms": (200, 700), "qtc_ms": (250, 700)}


@dataclass
class Measurements:
    """Intervals in ms (NaN when unknown; ints for method="ecgchat", 0 when it failed as in
    ECG-Chat). p_wave/r_wave/t_wave: ECG-Chat's mean P/R/T peak sample index at 500 Hz."""

    hr_bpm: float
    rr_ms: float
    pr_ms: float
    qrs_ms: float
    qt_ms: float
    qtc_ms: float
    p_wave: float
    r_wave: float
    t_wave: float
    n_beats: int
    quality: str
    method: str
    lead: str = "II"
    axis_deg: float = float("nan")   # frontal QRS axis, degrees in (-180, 180]
    rr_nrmssd: float = float("nan")  # RMSSD / mean RR (ecgbatch.signal.rate)
    sokolow_lyon_mv: float = float("nan")  # S V1 + max(R V5, R V6) (ecgbatch.signal.voltage)
    cornell_mv: float = float("nan")       # R aVL + S V3

    @property
    def axis_category(self) -> str | None:
        """The axis category by the AHA convention (ecgbatch.signal.axis), None when unknown."""
        return axis_category(self.axis_deg, "aha")

    @property
    def rr_irregular(self) -> bool | None:
        """RR irregular by ecgbatch.signal.rate's threshold; None when unknown."""
        return rr_irregular(self.rr_nrmssd)

    @property
    def lvh_voltage(self) -> bool | None:
        """A published LVH voltage criterion met (ecgbatch.signal.voltage); None when unmeasured."""
        return lvh_voltage_met(self.sokolow_lyon_mv, self.cornell_mv)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():  # JSON has no NaN
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        d["axis_category"] = self.axis_category
        d["rr_irregular"] = self.rr_irregular
        d["lvh_voltage"] = self.lvh_voltage
        return d


def lead_index(leads, name: str) -> int:
    keys = [lead_key(n) for n in leads]
    try:
        return keys.index(lead_key(name))
    except ValueError:
        raise MissingLeadError(f"lead {name!r} is needed for measurements; the record has "
                               f"{list(leads)}") from None


def neurokit_delineate(x: np.ndarray, fs: int = ECGCHAT_FS):
    """ECG-Chat's NeuroKit2 chain on one lead -> (rpeaks dict, waves dict). Raises on failure."""
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleaned = nk.ecg_clean(x, sampling_rate=fs)
        _, rpeaks = nk.ecg_peaks(cleaned, sampling_rate=fs, method="neurokit")
        nk.signal_rate(rpeaks, sampling_rate=fs)  # computed (and able to raise) as in ECG-Chat
        _, waves = nk.ecg_delineate(cleaned, rpeaks, sampling_rate=fs, method="dwt", show=False,
                                    show_type="all")
    return cleaned, rpeaks, waves


def beat_quality(n_beats: int, hr: float, interval_ok_fraction: float) -> str:
    """The quality flag: "ok", or why the beats do not support interval values."""
    if n_beats < MIN_BEATS:
        return "too_few_beats"
    if not (HR_RANGE_BPM[0] <= hr <= HR_RANGE_BPM[1]) or interval_ok_fraction < 0.5:
        return "noisy"
    return "ok"
