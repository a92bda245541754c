"""Statements of a generated report that disagree with what ecgbatch measured or what its
calibrated probes are confident of: ``contradictions(text, grounding)``.

The text is read with the negation-aware matcher of ecgbatch.text.findings (``mentions``: one
definition of "what a text says about a finding", shared with training labels and eval). Hedged
statements ("possible LVH") are never contradictions. Rules, each with the fact it stands on:

Measurements (ecgbatch.signal; tolerances absorb measurement error, they are not fitted):
- rate (bradycardia < 60 bpm, tachycardia > 100 bpm; RATE_MARGIN_BPM = 5, about three times the
  heart-rate error against LUDB's annotations, 1.7 bpm): "sinus bradycardia" above 65 bpm,
  "sinus tachycardia" below 95 bpm, and "sinus rhythm" below 55 / above 105 bpm unless the text
  also says sinus bradycardia / tachycardia.
- axis (AXIS_MARGIN_DEG = 15): "normal axis" outside -30..+90 degrees (the widest normal range of
  the conventions in ecgbatch.signal.axis); "left axis deviation" above +30 (left in every
  convention starts below +30: German "Linkstyp"); "right axis deviation" below +90 and not in
  the extreme quadrant; each by more than the margin.
- atrial fibrillation stated with a regular RR series (ecgbatch.signal.rate), unless a probe
  found atrial fibrillation; a measured PR (conducted P waves with a constant PR, which the
  multilead method only reports then) is added to the reasons.
- a complete bundle branch block with a measured QRS below 100 ms (it needs >= 120 ms,
  Surawicz et al. 2009; QRS_MARGIN_MS = 20); a first-degree AV block / prolonged PR with a
  measured PR below 180 ms (it needs > 200 ms; PR_MARGIN_MS = 20).
Probes (calibrated probabilities, Grounding.probabilities): a finding stated present when the
probe that names it is at or below ABSENT_P (0.1), or stated absent when it is at or above
CONFIDENT_P (0.9), following PROBE_KEYS, which says in which direction a probe label speaks for
a text finding (a probe label narrower than the finding, e.g. first-degree AV block for "AV
block", only speaks against its negation; a wider one, e.g. hypertrophy for LVH, only against its
assertion); and a sinus rhythm stated while atrial fibrillation or flutter is at >= CONFIDENT_P.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ecgbatch.text.findings import BY_KEY, mentions
from ecgbatch.llava.grounding import GroundFinding, Grounding
from ecgbatch.signal.rate import BRADYCARDIA_BPM, TACHYCARDIA_BPM

RATE_MARGIN_BPM = 5.0
AXIS_MARGIN_DEG = 15.0
NORMAL_AXIS = (-30.0, 90.0)
LEFT_AXIS_MAX = 30.0
RIGHT_AXIS_MIN = 90.0
BBB_QRS_MS, QRS_MARGIN_MS = 120.0, 20.0
FIRST_DEGREE_PR_MS, PR_MARGIN_MS = 200.0, 20.0
CONFIDENT_P, ABSENT_P = 0.9, 0.1
# probe label -> (findings key, direction): "both" (the same finding), "negated" (the probe
# label is narrower: only a denial contradicts it), "present" (wider: only an assertion does)
PROBE_KEYS = {
    "AFIB": ("atrial_fibrillation", "both"), "AFLT": ("atrial_flutter", "both"),
    "SBRAD": ("sinus_bradycardia", "both"), "STACH": ("sinus_tachycardia", "both"),
    "SARRH": ("sinus_arrhythmia", "both"), "SR": ("sinus_rhythm", "negated"),
    "LBBB": ("lbbb", "both"), "RBBB": ("rbbb", "both"), "MI": ("infarction", "both"),
    "STTC": ("st_t_change", "both"), "STD": ("st_t_change", "negated"),
    "1AVB": ("av_block", "negated"), "HYP": (("lvh", "rvh"), "present"),
}
SINUS_KEYS = ("sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "sinus_arrhythmia")
_FIRST_DEGREE = re.compile(r"\b(first|1st|1)[- ]?(degree|°)|\bi°|\bprolonged pr\b|\b1avb\b")


@dataclass(frozen=True)
class Contradiction:
    statement: str   # the clause of the report (lower-cased, as the matcher reads it)
    finding: str     # the ecgbatch.text.findings key it states
    stated: str      # "present" | "negated"
    against: str     # what it disagrees with, e.g. "measured heart rate 45 bpm"
    source: str      # "measurement" | "probe"
    reason: str

    def to_dict(self) -> dict:
        return {"statement": self.statement, "finding": self.finding, "stated": self.stated,
                "against": self.against, "source": self.source, "reason": self.reason}


def _facts(grounding) -> tuple[dict[str, GroundFinding], dict[str, float], set[str]]:
    """(measurement findings by label, probe probabilities, labels the probes found)."""
    if isinstance(grounding, Grounding):
        fs, probs = grounding.findings, grounding.probabilities
    elif isinstance(grounding, Mapping):  # Grounding.to_dict(), e.g. read back from a report row
        fs = [GroundFinding.from_dict(d) for d in grounding.get("findings") or ()]
        probs = dict(grounding.get("probabilities") or {})
    else:
        fs, probs = list(grounding or ()), {}
    fs = [GroundFinding.from_dict(f) if isinstance(f, Mapping) else f for f in fs]
    by = {f.label: f for f in fs if f.source == "measurement"}
    found = {f.label for f in fs if f.source == "probe"}
    for f in fs:  # probe findings without the full probability table still count
        if f.source == "probe" and f.probability is not None:
            probs[f.label] = max(probs.get(f.label, 0.0), float(f.probability))
    return by, probs, found


def _measurement_rules(key: str, clause: str, stated: set[str], by: dict[str, GroundFinding],
                       probs: dict[str, float], found: set[str]) -> Iterable[tuple[str, str]]:
    """(against, reason) for a finding stated present, from the measurements."""
    hr = by.get("heart_rate")
    if hr is not None:
        v = hr.value
        if key == "sinus_bradycardia" and v > BRADYCARDIA_BPM + RATE_MARGIN_BPM:
            yield f"measured heart rate {v:.0f} bpm", f"bradycardia is a rate below {BRADYCARDIA_BPM:.0f} bpm"
        if key == "sinus_tachycardia" and v < TACHYCARDIA_BPM - RATE_MARGIN_BPM:
            yield f"measured heart rate {v:.0f} bpm", f"tachycardia is a rate above {TACHYCARDIA_BPM:.0f} bpm"
        if key == "sinus_rhythm" and v < BRADYCARDIA_BPM - RATE_MARGIN_BPM and "sinus_bradycardia" not in stated:
            yield (f"measured heart rate {v:.0f} bpm",
                   f"a sinus rhythm below {BRADYCARDIA_BPM:.0f} bpm is sinus bradycardia")
        if key == "sinus_rhythm" and v > TACHYCARDIA_BPM + RATE_MARGIN_BPM and "sinus_tachycardia" not in stated:
            yield (f"measured heart rate {v:.0f} bpm",
                   f"a sinus rhythm above {TACHYCARDIA_BPM:.0f} bpm is sinus tachycardia")
    ax = by.get("axis")
    if ax is not None:
        d = ax.value
        lo, hi = NORMAL_AXIS[0] - AXIS_MARGIN_DEG, NORMAL_AXIS[1] + AXIS_MARGIN_DEG
        if key == "axis_normal" and not lo <= d <= hi:
            yield (f"measured QRS axis {d:.0f} degrees",
                   f"a normal axis lies between {NORMAL_AXIS[0]:.0f} and +{NORMAL_AXIS[1]:.0f} degrees")
        if key == "axis_left" and d > LEFT_AXIS_MAX + AXIS_MARGIN_DEG:
            yield (f"measured QRS axis {d:.0f} degrees",
                   f"a left axis lies below +{LEFT_AXIS_MAX:.0f} degrees in every convention (AHA: below -30)")
        if key == "axis_right" and -90.0 < d < RIGHT_AXIS_MIN - AXIS_MARGIN_DEG:
            yield (f"measured QRS axis {d:.0f} degrees",
                   f"right axis deviation is an axis beyond +{RIGHT_AXIS_MIN:.0f} degrees")
    rr = by.get("rr_regularity")
    if key == "atrial_fibrillation" and rr is not None and rr.category == "regular" and "AFIB" not in found:
        why = "atrial fibrillation gives an irregularly irregular RR"
        if "AFIB" in probs:
            why += f"; the atrial fibrillation probe is at {probs['AFIB']:.2f}"
        if "pr_interval" in by:
            why += f"; P waves conducted with a constant PR ({by['pr_interval'].value:.0f} ms)"
        yield f"regular RR (RMSSD/mean RR {rr.value:.3f})", why
    qrs = by.get("qrs_duration")
    if key in ("lbbb", "rbbb") and qrs is not None and qrs.value < BBB_QRS_MS - QRS_MARGIN_MS:
        yield (f"measured QRS {qrs.value:.0f} ms",
               f"a complete bundle branch block has a QRS of at least {BBB_QRS_MS:.0f} ms")
    pr = by.get("pr_interval")
    if key == "av_block" and pr is not None and _FIRST_DEGREE.search(clause) \
            and pr.value < FIRST_DEGREE_PR_MS - PR_MARGIN_MS:
        yield (f"measured PR {pr.value:.0f} ms",
               f"a first-degree AV block is a PR above {FIRST_DEGREE_PR_MS:.0f} ms")


def _probe_rules(key: str, state: str, probs: dict[str, float]) -> Iterable[tuple[str, str]]:
    for lab, (keys, direction) in PROBE_KEYS.items():
        keys = keys if isinstance(keys, tuple) else (keys,)
        if key not in keys or lab not in probs:
            continue
        p = probs[lab]
        if state == "present" and direction in ("both", "present") and p <= ABSENT_P:
            yield f"{lab} probe p={p:.2f}", f"the calibrated classifier is confident it is absent (p <= {ABSENT_P})"
        if state == "negated" and direction in ("both", "negated") and p >= CONFIDENT_P:
            yield (f"{lab} probe p={p:.2f}",
                   f"the calibrated classifier is confident it is present (p >= {CONFIDENT_P})")
    if state == "present" and key in SINUS_KEYS:
        for lab in ("AFIB", "AFLT"):
            if probs.get(lab, 0.0) >= CONFIDENT_P:
                what = BY_KEY[PROBE_KEYS[lab][0]].phrase
                yield (f"{lab} probe p={probs[lab]:.2f}",
                       f"the calibrated classifier is confident of {what}, not a sinus rhythm")


def contradictions(text: str, grounding) -> list[Contradiction]:
    """The statements of ``text`` that disagree with ``grounding`` (a Grounding, its to_dict(),
    or a list of GroundFinding / their dicts), in text order, each (statement, finding) once per
    fact it disagrees with."""
    by, probs, found = _facts(grounding)
    ms = mentions(text)
    stated = {m.finding for m in ms if m.state == "present"}
    out, seen = [], set()
    for m in ms:
        if m.state == "uncertain":
            continue
        rules = [("probe", a, r) for a, r in _probe_rules(m.finding, m.state, probs)]
        if m.state == "present":
            measured = _measurement_rules(m.finding, m.clause, stated, by, probs, found)
            rules = [("measurement", a, r) for a, r in measured] + rules
        for source, against, reason in rules:
            k = (m.clause, m.finding, against)
            if k not in seen:
                seen.add(k)
                out.append(Contradiction(m.clause, m.finding, m.state, against, source, reason))
    return out


def report_fields(text: str, grounding: Grounding) -> dict:
    """The two fields a report row carries beside its text (JSON-able): ``findings`` (what the
    prompt stated) and ``contradictions`` (statements of ``text`` that disagree with them)."""
    return {"findings": [f.to_dict() for f in grounding.findings],
            "contradictions": [c.to_dict() for c in contradictions(text, grounding)]}
