"""The grounded prompt: the part of a prompt that states what ecgbatch measured and found in one
ECG, so that a report stands on the measurements instead of a template. One function,
``ground(measurements, probes=..., embedding=...)``, for every path that builds a prompt
(``report``, ``report --input``, ``chat``, ``serve``, ``eval report``, the instruction-data
builder), so a model is trained on exactly the prompts it is served with.

What it states, in two short lines (the mini LM has a 2,048-token context):
- measurements (ecgbatch.signal.measure; the "multilead" method is the one to use: it withholds
  PR when P waves are not conducted): heart rate with bradycardia (< 60 bpm) / tachycardia
  (> 100 bpm), RR regular/irregular (ecgbatch.signal.rate), the frontal QRS axis in degrees with
  its category (ecgbatch.signal.axis; GROUND_AXIS_CONVENTION, see below), PR, QRS, QT/QTc in ms,
  and the Sokolow-Lyon and Cornell voltages in mV with "LVH voltage criteria met" when one of
  the published criteria is (ecgbatch.signal.voltage; records in physical units only);
- the calibrated probe findings (ecgbatch.llava.diagnosis_prompt.findings_from_embeddings on the encoder's
  embedding) at or above their cross-validated thresholds, with their probabilities. Unlike the
  paper's DDP sentences, the top rhythm of an exclusive probe is not stated when it is below its
  threshold.
Nothing is invented: a failed measurement (quality other than "ok"), a missing or implausible
value (outside ecgbatch.signal.measurements.INTERVAL_RANGES / HR_RANGE_BPM) is left out, and with
nothing to state the text is empty. A PR from another method than "multilead" is left out when
the RR is irregular (ECG-Chat's method measures one in atrial fibrillation too).

``ground_batch`` does it per ECG of a batch (measurement rows + embeddings [N, D]);
ecgbatch.llava.contradictions.report_fields(text, grounding) gives a report row's ``findings``
and ``contradictions``. ``Grounding.question(q)`` puts the lines before a question.

The words of a grounding are versioned (``WORDINGS``): a model folder's config records the version
its prompts were built with when it was trained (``prompt.wording``; a config without one was
trained with version 1, ``LEGACY_WORDING``), and every path that builds its prompts passes it on
(``wording=``), so a model is served in the words it learned. Version 2 states a met LVH voltage
criterion in the words the training reports use for it ("left ventricular hypertrophy by voltage
criteria", ecgbatch.training.instruct.MEASURED_LVH): a model repeats the findings its prompt names
in a report's own words (bench/RESULTS.md, ecg-llava-mini v12).

``Grounding.findings`` lists what the text states (label, source "measurement" | "probe", value
or probability) for report rows; ``Grounding.probabilities`` keeps every probe label's calibrated
probability (the highest over probes naming it), which ecgbatch.llava.contradictions needs to
see a finding stated against a probe that is confident it is absent.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ecgbatch.io.errors import EcgReadError
from ecgbatch.llava.errors import EcgLlavaError
from ecgbatch.llava.diagnosis_prompt import (DiagnosisPromptUnavailableError, Finding, FindingsLabeller,
                                             findings_from_embeddings)
from ecgbatch.signal.axis import AXIS_TEXT, axis_category
from ecgbatch.signal.measure import measure
from ecgbatch.signal.measurements import HR_RANGE_BPM, INTERVAL_RANGES
from ecgbatch.signal.rate import rate_category, rr_irregular
from ecgbatch.signal.voltage import lvh_voltage_met

SOURCES = ("measurement", "probe")
GROUND_METHOD = "multilead"      # the measurement method of every grounded prompt (see the module doc)
# The axis category the prompt names. Both label sources a model is trained on call an axis "left"
# well above the AHA's -30 degrees: LUDB's Russian convention below 0 (0..+29 "horizontal"), PTB-XL's
# German LAD ("Linkstyp") from -30 to +30. On the training records with an axis label (315 PTB-XL,
# 72 LUDB; test fold left out) the LUDB convention's left/normal/right agrees with the labels for
# 0.871, the AHA's for 0.749 (bench/axis.py). The degrees are always stated beside the category.
GROUND_AXIS_CONVENTION = "ludb"
MEASURED_INTRO = "Measured:"
# The prompt's words by version (see the module doc): what changed from one to the next, by finding.
WORDINGS = {
    1: {"lvh_voltage": "LVH voltage criteria met"},
    2: {"lvh_voltage": "left ventricular hypertrophy by voltage criteria"},
}
LEGACY_WORDING = 1   # the words of a model config without prompt.wording (every model before versions)
PROBE_INTRO = "Classifier findings:"
# label, text, measurement key
INTERVALS = (("pr_interval", "PR", "pr_ms"), ("qrs_duration", "QRS", "qrs_ms"))


@dataclass(frozen=True)
class GroundFinding:
    label: str                       # "heart_rate", "bradycardia", "axis", ..., or a probe code ("AFIB")
    text: str                        # what the prompt calls it
    source: str                      # "measurement" | "probe"
    value: float | None = None       # measured value, in ``unit``
    unit: str | None = None
    category: str | None = None      # e.g. the axis category, "irregular"
    probability: float | None = None  # probe findings: calibrated probability
    labelset: str | None = None      # probe findings: the probe that found it

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"finding source must be one of {SOURCES}, got {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {"label": self.label, "text": self.text, "source": self.source}
        for k in ("value", "unit", "category", "probability", "labelset"):
            v = getattr(self, k)
            if v is not None:
                d[k] = round(v, 4) if isinstance(v, float) else v
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GroundFinding":
        return cls(**{k: d.get(k) for k in ("label", "text", "source", "value", "unit", "category",
                                              "probability", "labelset")})


@dataclass(frozen=True)
class Grounding:
    text: str                                  # "" when nothing was measured or found
    findings: tuple[GroundFinding, ...] = ()
    probabilities: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "findings": [f.to_dict() for f in self.findings],
                "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()}}

    def question(self, question: str) -> str:
        """The grounding's lines, then the question (the question unchanged when there are none)."""
        return f"{self.text}\n{question}" if self.text else question


def finding_text(d: Mapping[str, Any]) -> str:
    """One finding of a report row (GroundFinding.to_dict) for people: "heart rate 72 bpm",
    "atrial fibrillation (p=0.93)"."""
    if d.get("probability") is not None:
        return f"{d['text']} (p={d['probability']:.2f})"
    if d.get("value") is not None and d.get("label") not in ("rr_regularity",):
        v = f"{d['value']:.1f}" if d.get("unit") == "mV" else _fmt(d["value"])
        return f"{d['text']} {v} {d.get('unit') or ''}".rstrip()
    return str(d["text"])


# What a grounding states as findings, in a report's words: the categorical part of the prompt. Used
# where a text must be compared with its own prompt (bench/report_goals.py's grounds and agreement,
# data.repeat_grounded in training). Nothing here is fitted.
STATED_RULES = (
    "every probe finding, as the prompt names it (above its cross-validated threshold)",
    "the measured axis category (e.g. 'left axis deviation', 'horizontal axis')",
    "measured bradycardia / tachycardia (rate < 60 / > 100 bpm)",
    "'left ventricular hypertrophy' when the measured LVH voltage criteria are met",
)


def stated_report(findings: Sequence) -> str:
    """One report of what ``findings`` (GroundFinding or their to_dict()) state, by STATED_RULES, in
    the order the prompt states them ("" when they state no category)."""
    said = []
    for f in findings:
        f = f.to_dict() if isinstance(f, GroundFinding) else f
        if f.get("source") == "probe" or f.get("label") in ("axis", "bradycardia", "tachycardia"):
            said.append(f["text"])
        elif f.get("label") == "lvh_voltage" and f.get("category") == "met":
            said.append("left ventricular hypertrophy")
    return " ".join(t[:1].upper() + t[1:] + "." for t in dict.fromkeys(said))


def _value(m, key: str, zero_ok: bool = False) -> float | None:
    """A finite number from a Measurements or a row dict, else None; 0 is None unless
    ``zero_ok`` (ECG-Chat's method writes 0 for a failed interval; an axis of 0 is real)."""
    v = m.get(key) if isinstance(m, Mapping) else getattr(m, key, None)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and (zero_ok or v != 0) else None


def _quality_ok(m) -> bool:
    q = m.get("quality", "ok") if isinstance(m, Mapping) else getattr(m, "quality", "ok")
    return q in (None, "ok")


def _fmt(v: float) -> str:
    return f"{int(round(v))}"


def check_wording(wording) -> int:
    """``wording`` as a WORDINGS version, or ValueError naming the known ones."""
    if isinstance(wording, bool) or wording not in WORDINGS:
        raise ValueError(f"unknown grounding wording {wording!r}: one of {sorted(WORDINGS)}")
    return int(wording)


def measured_findings(m, axis_convention: str = GROUND_AXIS_CONVENTION,
                      wording: int = LEGACY_WORDING) -> list[GroundFinding]:
    """The measurement findings of a Measurements (or a row dict with its columns); [] when the
    measurement failed."""
    if m is None or not _quality_ok(m):
        return []
    out: list[GroundFinding] = []
    hr = _value(m, "hr_bpm")
    if hr is not None and HR_RANGE_BPM[0] <= hr <= HR_RANGE_BPM[1]:
        out.append(GroundFinding("heart_rate", "heart rate", "measurement", round(hr, 1), "bpm"))
        rate = rate_category(hr)
        if rate != "normal":
            out.append(GroundFinding(rate, rate, "measurement", round(hr, 1), "bpm"))
        nrmssd = _value(m, "rr_nrmssd", zero_ok=True)
        irregular = rr_irregular(nrmssd)
        if irregular is not None:
            cat = "irregular" if irregular else "regular"
            out.append(GroundFinding("rr_regularity", f"{cat} RR", "measurement", nrmssd, "RMSSD/mean RR", cat))
    axis = _value(m, "axis_deg", zero_ok=True)
    if axis is not None:
        cat = axis_category(axis, axis_convention)
        out.append(GroundFinding("axis", AXIS_TEXT.get(cat, cat), "measurement", round(axis, 1), "degrees", cat))
    out += voltage_findings(m, wording)
    method = m.get("method") if isinstance(m, Mapping) else getattr(m, "method", None)
    irregular = any(f.category == "irregular" for f in out)
    for label, text, key in INTERVALS:
        if key == "pr_ms" and irregular and method != "multilead":
            continue  # ECG-Chat's method measures a "PR" to fibrillation waves; multilead withholds it
        v = _value(m, key)
        lo, hi = INTERVAL_RANGES[key]
        if v is not None and lo <= v <= hi:
            out.append(GroundFinding(label, text, "measurement", round(v, 1), "ms"))
    qt, qtc = _value(m, "qt_ms"), _value(m, "qtc_ms")
    if qt is not None and INTERVAL_RANGES["qt_ms"][0] <= qt <= INTERVAL_RANGES["qt_ms"][1]:
        out.append(GroundFinding("qt_interval", "QT", "measurement", round(qt, 1), "ms"))
        if qtc is not None and INTERVAL_RANGES["qtc_ms"][0] <= qtc <= INTERVAL_RANGES["qtc_ms"][1]:
            out.append(GroundFinding("qtc_interval", "QTc", "measurement", round(qtc, 1), "ms"))
    return out


def voltage_findings(m, wording: int = LEGACY_WORDING) -> list[GroundFinding]:
    """The LVH voltages of a measurement (mV), and "LVH voltage criteria met" (WORDINGS) when one is."""
    sl, co = _value(m, "sokolow_lyon_mv", zero_ok=True), _value(m, "cornell_mv", zero_ok=True)
    out = [GroundFinding(label, text, "measurement", round(v, 2), "mV")
           for label, text, v in (("sokolow_lyon", "Sokolow-Lyon", sl), ("cornell", "Cornell", co)) if v is not None]
    if lvh_voltage_met(sl, co):
        out.append(GroundFinding("lvh_voltage", WORDINGS[check_wording(wording)]["lvh_voltage"], "measurement",
                                 category="met"))
    return out


def probe_findings(probes: Sequence, embedding) -> tuple[list[GroundFinding], dict[str, float]]:
    """(the probes' findings at or above their cross-validated thresholds, most probable first
    within a probe; every trained label's probability, the highest over probes) of one embedding."""
    if not probes or embedding is None:
        return [], {}
    emb = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
    thresholds, probs = {}, {}
    for pr in probes:
        p = pr.trained_probabilities(emb)[0]
        for j, lab in enumerate(pr.trained):
            thresholds[(pr.labelset, lab)] = float(pr.thresholds[j])
            probs[lab] = max(probs.get(lab, 0.0), float(p[j]))
    found: list[Finding] = findings_from_embeddings(probes, emb)[0]
    out = [GroundFinding(f.label, f.text, "probe", probability=round(f.probability, 4), labelset=f.labelset)
           for f in found if f.probability >= thresholds[(f.labelset, f.label)]]
    return out, probs


def measured_text(fs: Sequence[GroundFinding]) -> str:
    """The "Measured: ..." line of the measurement findings ``fs`` ("" when they state nothing)."""
    by = {f.label: f for f in fs}
    parts = []
    if "heart_rate" in by:
        s = f"heart rate {_fmt(by['heart_rate'].value)} bpm"
        extra = [lab for lab in ("bradycardia", "tachycardia") if lab in by]
        if "rr_regularity" in by:
            extra.append(by["rr_regularity"].text)
        parts.append(s + (f" ({', '.join(extra)})" if extra else ""))
    if "axis" in by:
        a = by["axis"]
        parts.append(f"QRS axis {_fmt(a.value)} degrees ({a.text})")
    iv = [f"{by[lab].text} {_fmt(by[lab].value)} ms" for lab, _, _ in INTERVALS if lab in by]
    if "qt_interval" in by:
        qtc = f"/{_fmt(by['qtc_interval'].value)}" if "qtc_interval" in by else ""
        iv.append(f"QT{'/QTc' if qtc else ''} {_fmt(by['qt_interval'].value)}{qtc} ms")
    if iv:
        parts.append(", ".join(iv))
    volts = [f"{by[lab].text} {by[lab].value:.1f} mV" for lab in ("sokolow_lyon", "cornell") if lab in by]
    if volts:
        parts.append(", ".join(volts) + (f" ({by['lvh_voltage'].text})" if "lvh_voltage" in by else ""))
    return f"{MEASURED_INTRO} {'; '.join(parts)}." if parts else ""


def ground(measurements=None, *, probes: Sequence = (), embedding=None,
           axis_convention: str = GROUND_AXIS_CONVENTION, wording: int = LEGACY_WORDING) -> Grounding:
    """The grounded part of a prompt for one ECG.

    ``measurements``: an ecgbatch.signal.Measurements (best: method="multilead") or a row dict
    with its columns (hr_bpm, rr_nrmssd, axis_deg, pr_ms, qrs_ms, qt_ms, qtc_ms, sokolow_lyon_mv,
    cornell_mv, quality), or
    None. ``probes`` (ecgbatch.encoders.probes.LinearProbe, e.g. a FindingsLabeller's ``probes``) and
    ``embedding`` (that encoder's embedding of the ECG, [D]) give the probe findings; leave them
    out for measurements only. ``wording``: the WORDINGS version (the model config's
    ``grounding_wording``). Deterministic: the same inputs give the same text."""
    measured = measured_findings(measurements, axis_convention, check_wording(wording))
    found, probs = probe_findings(probes, embedding)
    lines = [measured_text(measured)]
    if found:
        lines.append(f"{PROBE_INTRO} " + ", ".join(f"{f.text} (p={f.probability:.2f})" for f in found) + ".")
    return Grounding("\n".join(line for line in lines if line), tuple(measured + found), probs)


def ground_batch(measurements: Sequence, *, probes: Sequence = (), embeddings=None,
                 axis_convention: str = GROUND_AXIS_CONVENTION, wording: int = LEGACY_WORDING) -> list[Grounding]:
    """``ground`` per ECG: ``measurements`` (one per ECG, None where there are none) and, with
    ``probes``, the encoder's ``embeddings`` [N, D] in the same order."""
    if embeddings is not None and len(embeddings) != len(measurements):
        raise ValueError(f"{len(measurements)} measurements but {len(embeddings)} embeddings")
    embs = [None] * len(measurements) if embeddings is None else list(np.asarray(embeddings))
    return [ground(m, probes=probes, embedding=e, axis_convention=axis_convention, wording=wording)
            for m, e in zip(measurements, embs)]


def ground_conversation(grounding: Grounding, question: str, history: Sequence[tuple[str, str]] = ()
                        ) -> tuple[str, list[tuple[str, str]]]:
    """(question, history) with the grounding's lines before the FIRST user question (like the
    ECG token: once per conversation), for chat and the server's multi-turn prompts."""
    history = list(history)
    if not history:
        return grounding.question(question), history
    (u0, a0), rest = history[0], history[1:]
    return question, [(grounding.question(u0), a0), *rest]


def measure_for_grounds(record) -> Any:
    """The grounds' measurements of one Record or (signal, fs, leads) with GROUND_METHOD, or None
    when it cannot be measured (e.g. no lead II): the measurements are then left out."""
    try:
        return measure(record, method=GROUND_METHOD)
    except (EcgReadError, ValueError):
        return None


def grounds_labeller(model):
    """The FindingsLabeller (tower encoder + calibrated probes) of an ECG-LLaVA model, found as
    --ddp finds it, or None when the model's tower has no encoder with probes installed: the
    grounds are then measurements only."""
    try:
        return FindingsLabeller.for_model(model)
    except DiagnosisPromptUnavailableError:
        return None


def ground_inputs(measurements: Sequence, xs=None, labeller=None, wording: int = LEGACY_WORDING) -> list[Grounding]:
    """``ground_batch`` for the model inputs ``xs`` [N, leads, samples] of N ECGs: the probe
    findings from ``labeller`` (grounds_labeller's) on the model inputs, when there is one;
    ``wording``: the model config's ``grounding_wording``."""
    if labeller is None or xs is None or not len(measurements):
        return ground_batch(measurements, wording=wording)
    return ground_batch(measurements, probes=labeller.probes, embeddings=labeller.embed(np.stack(list(xs))),
                        wording=wording)


class GroundedWithDdpError(EcgLlavaError):
    """--grounded and --ddp together: two prompts stating the probes' findings."""

    kind = "bad_option"


def use_grounded(grounded: Optional[bool], ddp: bool, config) -> bool:
    """Whether prompts carry the grounded prompt: ``grounded`` when given, else the model's
    config (``prompt.grounded``). --ddp (the paper's prompt for ECG-Chat's own model) replaces
    the model's default; with an explicit --grounded it is refused (both state the probes)."""
    if ddp and grounded:
        raise GroundedWithDdpError("--grounded and --ddp both state the probes' findings before the question: "
                                   "give one (--ddp is for ECG-Chat's own model, --grounded for models "
                                   "trained with the grounded prompt)")
    if ddp:
        return False
    return bool(config.grounded_prompt) if grounded is None else bool(grounded)
