"""Bootstrap confidence intervals for test-fold figures (numpy only).

``bootstrap_ci(stat, *arrays)`` resamples the rows of ``arrays`` with replacement ``reps`` times
(seeded: the same call gives the same interval), recomputes ``stat`` on each resample and returns
the percentile interval. With ``groups`` whole groups (patients) are resampled instead of rows,
so records of one patient stay together. Resamples where ``stat`` is undefined (NaN, e.g. an AUC
drawn without positives) are dropped and counted.
"""
from __future__ import annotations

import numpy as np

DEFAULT_REPS = 2000


def bootstrap_ci(stat, *arrays, reps: int = DEFAULT_REPS, level: float = 0.95, seed: int = 0,
                 groups=None) -> dict:
    """{"value": stat(arrays), "lo", "hi", "level", "reps", "undefined"} (percentile interval)."""
    arrs = [np.asarray(a) for a in arrays]
    if not arrs:
        raise ValueError("bootstrap_ci needs at least one array")
    n = len(arrs[0])
    if n == 0 or any(len(a) != n for a in arrs):
        raise ValueError(f"arrays must be non-empty and of one length, got {[len(a) for a in arrs]}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if groups is None:
        members = [np.array([i]) for i in range(n)]
    else:
        g = np.asarray(groups)
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} entries for {n} rows")
        _, inv = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inv == k) for k in range(inv.max() + 1)]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(int(reps)):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[k] for k in pick])
        v = float(stat(*[a[idx] for a in arrs]))
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        raise ValueError("the statistic is undefined on every resample")
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return {"value": float(stat(*arrs)), "lo": float(lo), "hi": float(hi), "level": level,
            "reps": int(reps), "undefined": int(reps) - len(vals),
            "unit": "record" if groups is None else "patient"}


def fmt_ci(r: dict, digits: int = 3) -> str:
    """'0.812 (0.770-0.851)'."""
    return f"{r['value']:.{digits}f} ({r['lo']:.{digits}f}-{r['hi']:.{digits}f})"
