"""Is there an ECG in this signal? The one check, before a model reports on a record.

``physiological_flags(signal, leads, units)`` -> flags per lead (``flat:<lead>``,
``saturated:<lead>``, ``absurd_amplitude:<lead>``, ``all_nan:<lead>``) and, when the record as a
whole cannot carry cardiac activity, ``no_physiological_content``. ``require_physiological``
raises ``NoPhysiologicalContentError`` (kind ``no_physiological_content``) in that case. The
server refuses such a record with 422, ``report`` lists it as a failure and ``report --input``
writes it as a failure row (its flags in the ``quality`` column) instead of a confident report.

A record has no physiological content when no lead is usable (every lead flat, saturated or
missing) or when any lead's typical amplitude is absurd (the gain is wrong, so no lead's scale can
be trusted). One odd lead among good ones (a lead off) is flagged, not refused.

Thresholds are general physiology and electronics, not fitted to any file:
- FLAT_MV = 0.01 mV peak to peak: the smallest cardiac deflections (P waves, QRS in low-voltage
  records, whose definition is < 0.5 mV in the limb leads) are tens to hundreds of uV, and
  diagnostic front ends resolve 1-5 uV; a lead that moves less than 10 uV in the whole record
  carries no cardiac cycle. Arrays without voltage units: exactly constant (1e-6 of nothing).
- ABSURD_MV = 30 mV for the 99th percentile of |x - median|: surface ECG amplitudes stay within a
  few mV (the tallest QRS complexes are ~5-7 mV), and 16-bit front ends at 1 uV/LSB saturate near
  32 mV. The percentile (not the maximum) keeps a single artefact spike from condemning a lead:
  more than 1 % of samples beyond 30 mV is a scale error, not an artefact.
- SATURATED_FRACTION = 0.25 of the samples pinned at the lead's minimum or maximum: a cardiac
  cycle reaches its extremes only at the peaks of its waves (a few percent of the samples, even
  at coarse quantisation), while an overloaded or disconnected input rests on its rail.
"""
from __future__ import annotations

import numpy as np

from ecgbatch.io.errors import NoPhysiologicalContentError
from ecgbatch.io.quality import ABSURD_MV, FLAT_TOL, canonical_units

FLAT_MV = 0.01
SATURATED_FRACTION = 0.25
NO_CONTENT = "no_physiological_content"


def physiological_flags(signal: np.ndarray, leads, units: str | None) -> list[str]:
    """Flags per lead, plus ``no_physiological_content`` when the record carries no ECG."""
    x = np.asarray(signal, dtype=np.float64)        # [leads, samples]; float64: 3e38 stays finite
    to_mv = canonical_units(units)[1]
    flat_tol = FLAT_MV / to_mv if to_mv else FLAT_TOL
    flags, usable, absurd = [], 0, False
    for i, lead in enumerate(leads):
        v = x[i][np.isfinite(x[i])]
        if v.size == 0:
            flags.append(f"all_nan:{lead}")
            continue
        lo, hi = v.min(), v.max()
        if hi - lo <= flat_tol:
            flags.append(f"flat:{lead}")
            continue
        if to_mv and np.percentile(np.abs(v - np.median(v)), 99) * to_mv > ABSURD_MV:
            flags.append(f"absurd_amplitude:{lead}")
            absurd = True
            continue
        if np.count_nonzero((v == lo) | (v == hi)) >= SATURATED_FRACTION * v.size:
            flags.append(f"saturated:{lead}")
            continue
        usable += 1
    if absurd or not usable:
        flags.append(NO_CONTENT)
    return flags


def require_physiological(rec) -> list[str]:
    """The record's flags; NoPhysiologicalContentError when it carries no ECG."""
    flags = physiological_flags(rec.signal, rec.leads, rec.units)
    if NO_CONTENT in flags:
        raise NoPhysiologicalContentError(
            f"{rec.record_id}: no physiological content ({', '.join(flags[:-1][:6])}"
            f"{', ...' if len(flags) > 7 else ''}); not reported", rec.source)
    return flags
