"""preprocess(record, config) -> the model's input array, exactly as the model's PreprocessConfig
asks: leads by name, units, NaN/inf policy, resampling, filters, crop/pad, normalisation, dtype.

Order of operations (the one that keeps ECGCHAT bit-exact and filters away from padding):
  leads by name -> NaN/inf policy -> units -> resample -> filters -> crop -> normalise -> pad.
Steps that are off (same rate, same units, no filter, normalize="none") touch no sample, so an
ECG-Chat record comes out bit for bit as ECG-Chat's own loader makes it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ecgbatch.io.errors import BadSignalError, MissingLeadError
from ecgbatch.io.leads import canonical_lead
from ecgbatch.signal import filters
from ecgbatch.signal.config import PreprocessConfig

# Physical units -> factor to mV.
_UNIT_TO_MV = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
               "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3,
               "v": 1e3, "volt": 1e3, "volts": 1e3}
_NUMPY_DTYPE = {"float32": np.float32, "float16": np.float16, "float64": np.float64,
                "bfloat16": np.float32}  # numpy has no bfloat16: torch casts float32 later


def lead_key(name: str) -> str:
    """Case- and spelling-insensitive key of a lead name (ecgbatch.io.leads.canonical_lead,
    lower-cased): 'aVR', 'AVR', 'avr' -> 'avr'; 'I', 'i', 'Lead I', 'DI' -> 'i'."""
    return canonical_lead(str(name)).lower()


def unit_factor(from_units: str, to_units: str) -> float | None:
    """Multiplier converting ``from_units`` to ``to_units``; None when either is not a voltage."""
    a = _UNIT_TO_MV.get(str(from_units).strip().lower())
    b = _UNIT_TO_MV.get(str(to_units).strip().lower())
    if a is None or b is None:
        return None
    return a / b


@dataclass
class Preprocessed:
    """Model input for one record. x: [len(config.leads), n_samples] (config.dtype; float32 for
    bfloat16). missing_leads: target leads zero-filled because the record lacked them.
    resampled_from: the record's rate when it was resampled, else None. n_samples_orig: record
    length before resampling/cropping. notes: human-readable list of what was changed."""

    x: np.ndarray
    missing_leads: tuple[str, ...] = ()
    resampled_from: float | None = None
    n_samples_orig: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def info(self) -> dict:
        """Everything but the array (for manifests and batch results)."""
        return {"missing_leads": list(self.missing_leads), "resampled_from": self.resampled_from,
                "n_samples_orig": self.n_samples_orig, "notes": list(self.notes)}


def select_leads(signal: np.ndarray, leads: Sequence[str], wanted: Sequence[str], policy: str,
                 record_id: str = "") -> tuple[np.ndarray, tuple[str, ...]]:
    """Rows of ``signal`` in the order of ``wanted``, matched by lead_key. Missing leads raise
    MissingLeadError (policy "error") or become zero rows (policy "zero")."""
    index: dict[str, int] = {}
    for i, name in enumerate(leads):
        index.setdefault(lead_key(name), i)  # a duplicated lead name: the first one wins
    missing = tuple(w for w in wanted if lead_key(w) not in index)
    if missing and policy == "error":
        raise MissingLeadError(f"record {record_id!r} lacks lead(s) {list(missing)}; it has "
                               f"{list(leads)} (use missing_leads='zero' to zero-fill)")
    out = np.zeros((len(wanted), signal.shape[1]), dtype=signal.dtype)
    for j, w in enumerate(wanted):
        i = index.get(lead_key(w))
        if i is not None:
            out[j] = signal[i]
    return out, missing


def _apply_nan_policy(x: np.ndarray, policy: str, leads: Sequence[str], record_id: str,
                      notes: list[str]) -> np.ndarray:
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    n_bad = int(bad.sum())
    if policy == "error":
        raise BadSignalError(f"record {record_id!r} has {n_bad} NaN/inf samples "
                             f"(nan_policy='error')")
    if policy == "zero":
        notes.append(f"{n_bad} NaN/inf samples set to 0")
        return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    # "interpolate": linear in time per lead; a lead with no finite sample becomes zeros.
    x = x.astype(np.float64, copy=True)
    t = np.arange(x.shape[1])
    for j in range(x.shape[0]):
        ok = ~bad[j]
        if ok.all():
            continue
        if not ok.any():
            x[j] = 0.0
            notes.append(f"lead {leads[j]} has no finite sample: set to 0")
            continue
        x[j, ~ok] = np.interp(t[~ok], t[ok], x[j, ok])
    notes.append(f"{n_bad} NaN/inf samples linearly interpolated")
    return x


def _crop(x: np.ndarray, n: int, how: str) -> np.ndarray:
    if x.shape[1] <= n:
        return x
    start = 0 if how == "start" else (x.shape[1] - n) // 2
    return x[:, start:start + n]


def _pad(x: np.ndarray, n: int, how: str) -> np.ndarray:
    short = n - x.shape[1]
    if short <= 0:
        return x
    before = 0 if how == "end" else short // 2
    out = np.zeros((x.shape[0], n), dtype=x.dtype)
    out[:, before:before + x.shape[1]] = x
    return out


def zscore(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Per-lead (row) z-score; a flat lead (std <= eps) becomes zeros, never NaN."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    flat = sd <= eps
    return np.where(flat, 0.0, (x - mu) / np.where(flat, 1.0, sd))


def preprocess(record, config: PreprocessConfig) -> Preprocessed:
    """One record (an ecgbatch.io.record.Record, or anything with signal [leads, samples], fs,
    leads, units, record_id) -> Preprocessed. Raises MissingLeadError / BadSignalError (typed
    EcgReadError) for records the config cannot take, ValueError for impossible filter settings."""
    rid = getattr(record, "record_id", "")
    sig = np.asarray(record.signal)
    if sig.ndim != 2 or sig.shape[0] == 0 or sig.shape[1] == 0:
        raise BadSignalError(f"record {rid!r}: signal must be a non-empty [leads, samples] array, "
                             f"got shape {sig.shape}")
    if len(record.leads) != sig.shape[0]:
        raise BadSignalError(f"record {rid!r}: {len(record.leads)} lead names for "
                             f"{sig.shape[0]} signal rows")
    fs = float(record.fs)
    if not np.isfinite(fs) or fs <= 0:
        raise BadSignalError(f"record {rid!r}: sampling rate must be > 0, got {record.fs!r}")
    notes: list[str] = []
    n_orig = int(sig.shape[1])

    x, missing = select_leads(sig, record.leads, config.leads, config.missing_leads, rid)
    if missing:
        notes.append(f"zero-filled missing leads {list(missing)}")
    x = _apply_nan_policy(x, config.nan_policy, config.leads, rid, notes)

    units = getattr(record, "units", config.units) or config.units
    factor = unit_factor(units, config.units)
    if factor is None:
        if str(units).strip().lower() != str(config.units).strip().lower():
            notes.append(f"units {units!r} not convertible to {config.units!r}: left as is")
    elif factor != 1.0:
        x = x.astype(np.float64) * factor
        notes.append(f"converted {units} -> {config.units} (x{factor:g})")

    resampled_from = None
    if abs(fs - config.fs) > 1e-9 * config.fs:
        ratio = filters.resample_ratio(fs, config.fs)
        x = filters.resample(x, fs, config.fs)
        resampled_from = fs
        notes.append(f"resampled {fs:g} -> {config.fs:g} Hz (x{ratio.numerator}/{ratio.denominator})")
    out_fs = config.fs

    if config.remove_baseline:
        x = filters.remove_baseline(x, out_fs)
    if config.bandpass is not None:
        x = filters.bandpass(x, out_fs, *config.bandpass)
    if config.notch_hz is not None:
        x = filters.notch(x, out_fs, config.notch_hz)

    n = config.n_samples
    if n is not None:
        if x.shape[1] > n:
            notes.append(f"cropped {x.shape[1]} -> {n} samples ({config.crop})")
        x = _crop(x, n, config.crop)
    if config.normalize == "zscore":
        x = zscore(x)
    elif config.normalize == "scale" and config.scale != 1.0:
        x = x.astype(np.float64) * config.scale
    if n is not None:
        if x.shape[1] < n:
            notes.append(f"zero-padded {x.shape[1]} -> {n} samples ({config.pad})")
        x = _pad(x, n, config.pad)

    x = np.ascontiguousarray(x, dtype=_NUMPY_DTYPE[config.dtype])
    return Preprocessed(x=x, missing_leads=missing, resampled_from=resampled_from,
                        n_samples_orig=n_orig, notes=tuple(notes))


def preprocess_batch(records: Sequence, config: PreprocessConfig) -> tuple[np.ndarray, list[dict]]:
    """Stack preprocess() over records -> (x [B, L, T], per-record info dicts with record_id).
    With config.n_samples=None all records must come out the same length."""
    outs = [preprocess(r, config) for r in records]
    infos = [dict(record_id=getattr(r, "record_id", ""), **o.info()) for r, o in zip(records, outs)]
    if not outs:
        n = config.n_samples or 0
        return np.zeros((0, len(config.leads), n), dtype=_NUMPY_DTYPE[config.dtype]), infos
    lengths = {o.x.shape[1] for o in outs}
    if len(lengths) > 1:
        raise ValueError(f"records have different lengths after preprocessing {sorted(lengths)}; "
                         f"set PreprocessConfig.n_samples to batch them")
    return np.stack([o.x for o in outs]), infos
