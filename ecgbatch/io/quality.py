"""The last step of every reader: canonical lead names, units, quality flags, strict checks.

Quality flags (``meta["quality"]``, a list of strings, empty when clean) are the default way to
report a readable but suspicious signal; ``strict=True`` turns them into typed errors instead:

- ``all_nan:<lead>``   every sample of the lead is missing          -> BadSignalError
- ``nan_samples:<lead>`` some samples missing (WFDB invalid code)     -> BadSignalError
- ``flat:<lead>``      peak-to-peak below ``flat_tol`` (disconnected) -> BadSignalError
- ``absurd_amplitude:<lead>`` |x| above ``absurd_mv`` (voltage units
  only; wrong gain or a saturated front end)                          -> BadSignalError
- ``checksum_mismatch:<lead>`` WFDB checksum disagrees with the data -> BadSignalError
- ``single_lead``      only one lead                                  -> TooFewLeadsError
- ``unknown_lead:<name>`` not a standard or recognised extra lead     -> UnknownLeadError

Thresholds are physiology, not data fitting: surface ECG amplitudes stay within a few mV and
16-bit front ends at 1 uV/LSB saturate at about 32 mV, so 30 mV is far outside any real ECG.
"""
from __future__ import annotations

import numpy as np

from ecgbatch.io.errors import (BadSignalError, LeadMismatchError, TooFewLeadsError,
                                UnknownLeadError)
from ecgbatch.io.leads import canonical_leads, unknown_leads
from ecgbatch.io.record import Record

ABSURD_MV = 30.0
FLAT_TOL = 1e-6

# spelling -> (canonical spelling, factor to mV or None when not a voltage)
_UNITS = {"mv": ("mV", 1.0), "uv": ("uV", 1e-3), "µv": ("uV", 1e-3), "μv": ("uV", 1e-3),
          "v": ("V", 1e3), "nv": ("nV", 1e-6), "volt": ("V", 1e3), "volts": ("V", 1e3),
          "millivolt": ("mV", 1.0), "millivolts": ("mV", 1.0),
          "microvolt": ("uV", 1e-3), "microvolts": ("uV", 1e-3)}


def canonical_units(units: str | None) -> tuple[str, float | None]:
    """('mv') -> ('mV', 1.0); ('normalized') -> ('normalized', None); None -> ('unknown', None)."""
    if units is None or not str(units).strip():
        return "unknown", None
    u = str(units).strip()
    return _UNITS.get(u.lower(), (u, None))


def finalize(rec: Record, *, target_units: str | None = "mV", strict: bool = False, min_leads: int = 1,
             leads=None, absurd_mv: float = ABSURD_MV, flat_tol: float = FLAT_TOL,
             extra_flags: list[str] | None = None, **_ignored) -> Record:
    """Canonicalise ``rec`` in place and return it (see module docstring).

    target_units: "mV" (default) converts any voltage unit to mV; None keeps the source's units.
    leads: names that override the file's own (must match the channel count).
    """
    path = rec.source
    if rec.signal.ndim != 2:
        raise BadSignalError(f"{path}: signal must be 2-D [leads, samples], got shape {rec.signal.shape}",
                             path)
    if leads is not None:
        leads = list(leads)
        if len(leads) != rec.signal.shape[0]:
            raise LeadMismatchError(
                f"{path}: {len(leads)} lead names given for {rec.signal.shape[0]} channels", path)
        rec.leads = tuple(leads)
    rec.leads = canonical_leads(rec.leads)
    if len(rec.leads) != rec.signal.shape[0]:
        raise LeadMismatchError(
            f"{path}: {len(rec.leads)} lead names for {rec.signal.shape[0]} channels", path)
    if rec.signal.shape[0] < max(1, min_leads):
        raise TooFewLeadsError(
            f"{path}: {rec.signal.shape[0]} lead(s), at least {max(1, min_leads)} required", path)
    if rec.signal.dtype != np.float32:
        rec.signal = rec.signal.astype(np.float32)

    src_units, to_mv = canonical_units(rec.units)
    if target_units is not None:
        want, want_to_mv = canonical_units(target_units)
        if want != src_units and to_mv is not None and want_to_mv is not None:
            rec.signal *= np.float32(to_mv / want_to_mv)
            rec.meta["source_units"] = src_units
            src_units, to_mv = want, want_to_mv
    rec.units = src_units

    flags = list(rec.meta.get("quality", [])) + list(extra_flags or [])
    flags += signal_flags(rec.signal, rec.leads, None if to_mv is None else absurd_mv / to_mv,
                          flat_tol)
    if rec.signal.shape[0] == 1:
        flags.append("single_lead")
    flags += [f"unknown_lead:{n}" for n in unknown_leads(rec.leads)]
    rec.meta["quality"] = flags
    if strict and flags:
        raise _strict_error(flags, path)
    return rec


def signal_flags(x: np.ndarray, leads, absurd: float | None, flat_tol: float) -> list[str]:
    flags: list[str] = []
    nan = np.isnan(x)
    has_nan = nan.any(axis=1)
    if has_nan.any():
        all_nan = nan.all(axis=1)
        for i in np.flatnonzero(has_nan):
            flags.append(f"{'all_nan' if all_nan[i] else 'nan_samples'}:{leads[i]}")
        x = np.where(nan, np.float32(0), x)
        valid = ~all_nan
    else:
        valid = np.ones(x.shape[0], bool)
    if x.shape[1] == 0:
        return flags
    hi, lo = x.max(axis=1), x.min(axis=1)
    for i in np.flatnonzero(valid & ((hi - lo) <= flat_tol)):
        flags.append(f"flat:{leads[i]}")
    if absurd is not None:
        for i in np.flatnonzero(valid & (np.maximum(hi, -lo) > absurd)):
            flags.append(f"absurd_amplitude:{leads[i]}")
    return flags


def _strict_error(flags: list[str], path: str):
    msg = f"{path}: strict checks failed: {', '.join(flags)}"
    kinds = {f.split(":")[0] for f in flags}
    if kinds & {"all_nan", "nan_samples", "flat", "absurd_amplitude", "checksum_mismatch"}:
        return BadSignalError(msg, path)
    if "single_lead" in kinds:
        return TooFewLeadsError(msg, path)
    if "unknown_lead" in kinds:
        return UnknownLeadError(msg, path)
    return BadSignalError(msg, path)
