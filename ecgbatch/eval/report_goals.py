"""What a cardiologist checks first in a batch of generated reports, scored against the
reference reports of the same records (issue 20's goals for `report --input`):

- ``rhythm_correct``: the rhythm findings the report states equal the reference's (records whose
  reference states a rhythm; ecgbatch.eval.llava_eval.rhythm_goals);
- ``af_f1`` (atrial fibrillation or flutter stated), ``false_af_rate`` (AF/flutter stated on a
  record whose reference states sinus rhythm and no AF/flutter);
- ``axis_correct``: the axis category the report states (left / right deviation, normal) equals the
  reference's, on records whose reference states an axis. "Vertical" and "horizontal" (LUDB's
  Russian-convention categories) lie inside the AHA normal range (-30 to +90 degrees) and count as
  normal; a report that states no axis is wrong;
- ``lvh_f1``: left ventricular hypertrophy stated (negation-aware, ecgbatch.text.findings);
- ``distinct_reports``: how many different texts the model wrote, as a share of the records (the
  issue's goal is 30 of 100; a model that writes a few templates cannot be right for many records).

``goal_table`` puts the figures beside the goals, with bootstrap 95 % intervals over patients
(ecgbatch.eval.bootstrap).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ecgbatch.eval.bootstrap import bootstrap_ci
from ecgbatch.eval.llava_eval import AF_KEYS
from ecgbatch.text.findings import group_keys, positive_findings

AXIS_KEYS = ("axis_left", "axis_right", "axis_normal")
AXIS_INSIDE_NORMAL = re.compile(r"\b(vertical|horizontal)\b[^.]*\baxis\b|\baxis[^.]*\b(vertical|horizontal)\b",
                                re.IGNORECASE)
# (measure, comparison, goal) of issue 20 part 7; rhythm on PTB-XL: >= 0.90 (see GOALS_BY_SOURCE)
GOALS = {"rhythm_correct": (">=", 0.85), "af_f1": (">=", 0.85), "false_af_rate": ("<=", 0.03),
         "axis_correct": (">=", 0.80), "lvh_f1": (">=", 0.50), "distinct_reports": (">=", 0.30)}
GOALS_BY_SOURCE = {"ptbxl": {"rhythm_correct": (">=", 0.90)}}


def axis_category(text: str) -> str | None:
    """"left" | "right" | "normal" | None (no axis stated, or more than one)."""
    found = positive_findings(text, AXIS_KEYS)
    if not found and AXIS_INSIDE_NORMAL.search(text):
        return "normal"
    if len(found) != 1:
        return None
    return next(iter(found)).removeprefix("axis_")


def af_stated(text: str) -> bool:
    """The text states atrial fibrillation or flutter (negation-aware)."""
    return bool(set(AF_KEYS) & positive_findings(text, group_keys("rhythm")))


def lvh_stated(text: str) -> bool:
    """The text states left ventricular hypertrophy (negation-aware)."""
    return bool(positive_findings(text, ("lvh",)))


def _f1(pred: np.ndarray, ref: np.ndarray) -> float:
    tp = float(np.sum(pred & ref))
    den = float(np.sum(pred) + np.sum(ref))
    return 2 * tp / den if den else float("nan")


def record_scores(preds: Sequence[str], refs: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-record arrays the goals are computed from (so they can be bootstrapped)."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} reports but {len(refs)} references")
    rk = group_keys("rhythm")
    pr = [positive_findings(p, rk) for p in preds]
    rr = [positive_findings(r, rk) for r in refs]
    pa = np.array([bool(set(AF_KEYS) & p) for p in pr])
    ra = np.array([bool(set(AF_KEYS) & r) for r in rr])
    has_rhythm = np.array([bool(r) for r in rr])
    rhythm_ok = np.array([p == r for p, r in zip(pr, rr)])
    sinus = np.array([bool(r) and not a and any(k.startswith("sinus") for k in r) for r, a in zip(rr, ra)])
    pax = [axis_category(p) for p in preds]
    rax = [axis_category(r) for r in refs]
    pl = np.array([lvh_stated(p) for p in preds])
    rl = np.array([lvh_stated(r) for r in refs])
    return {"pred_af": pa, "ref_af": ra, "has_rhythm": has_rhythm, "rhythm_ok": rhythm_ok, "sinus": sinus,
            "has_axis": np.array([a is not None for a in rax]),
            "axis_ok": np.array([p is not None and p == r for p, r in zip(pax, rax)]),
            "pred_lvh": pl, "ref_lvh": rl}


def _mean_where(ok, mask) -> float:
    return float(np.mean(ok[mask])) if mask.any() else float("nan")


STATS = {
    "rhythm_correct": (("rhythm_ok", "has_rhythm"), _mean_where),
    "af_f1": (("pred_af", "ref_af"), _f1),
    "false_af_rate": (("pred_af", "sinus"), _mean_where),
    "axis_correct": (("axis_ok", "has_axis"), _mean_where),
    "lvh_f1": (("pred_lvh", "ref_lvh"), _f1),
}
COUNTS = {"rhythm_correct": "has_rhythm", "af_f1": "ref_af", "false_af_rate": "sinus", "axis_correct": "has_axis",
          "lvh_f1": "ref_lvh"}


def report_goals(preds: Sequence[str], refs: Sequence[str], groups: Sequence | None = None,
                 reps: int = 2000, seed: int = 0) -> dict[str, dict]:
    """{measure: {"value", "lo", "hi", "n"}}: each goal with its bootstrap interval over ``groups``
    (patients; records when None); ``n`` = the records the measure is taken over (AF and LVH:
    the reference positives). ``distinct_reports`` has no interval."""
    s = record_scores(preds, refs)
    out: dict[str, dict] = {}
    for name, (cols, fn) in STATS.items():
        arrays = [s[c] for c in cols]
        try:
            ci = bootstrap_ci(fn, *arrays, reps=reps, seed=seed, groups=groups)
        except ValueError:   # undefined on every resample (e.g. no AF in the set)
            ci = {"value": fn(*arrays), "lo": float("nan"), "hi": float("nan")}
        out[name] = {"value": ci["value"], "lo": ci["lo"], "hi": ci["hi"], "n": int(s[COUNTS[name]].sum())}
    distinct = len({p.strip() for p in preds})
    out["distinct_reports"] = {"value": distinct / len(preds) if preds else float("nan"), "count": distinct,
                               "n": len(preds)}
    return out


def met(name: str, value: float, source: str | None = None) -> bool | None:
    """Whether ``value`` meets the goal of ``name`` (None when it is undefined)."""
    op, goal = {**GOALS, **GOALS_BY_SOURCE.get(source or "", {})}[name]
    if value is None or value != value:
        return None
    return value >= goal if op == ">=" else value <= goal


def goal_rows(res: dict[str, dict], source: str | None = None) -> list[tuple[str, str, str, str]]:
    """(measure, value [interval] (n), goal, met) rows for a table."""
    rows = []
    for name in GOALS:
        r = res[name]
        op, goal = {**GOALS, **GOALS_BY_SOURCE.get(source or "", {})}[name]
        v = r["value"]
        if name == "distinct_reports":
            shown = f"{r['count']} of {r['n']} ({v:.2f})"
        elif v != v:
            shown = f"n/a (n={r['n']})"
        else:
            shown = f"{v:.3f} [{r['lo']:.3f}-{r['hi']:.3f}] (n={r['n']})"
        ok = met(name, v, source)
        rows.append((name, shown, f"{op} {goal:g}", "n/a" if ok is None else ("yes" if ok else "no")))
    return rows
