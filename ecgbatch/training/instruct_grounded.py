"""The grounded prompt in ECG-LLaVA training data (``data.grounded: <fraction>`` of a llava job
config), so that a model is trained on exactly the prompts it is served with.

A seeded fraction of the job's items, of every kind (report requests, yes/no, rate, rhythm and
axis questions, dialogues: `chat` and `serve` ground the first question of every conversation),
gets its first question rewritten as ``report --grounded`` asks it: ``ecgbatch.llava.grounding.ground`` of the record's measurements (the same
``measure_for_grounds``, multilead method, on the record as read) and, when the tower's encoder
has probes, their findings on the encoder's embedding (cached as the DDP embeddings), then the
question (``Grounding.question``). ``meta.grounding`` records the grounding. A job gives
data.grounded or data.diagnosis_prompt, not both (both state the probes' findings). A model
trained with data.grounded = 1 should say so in its config (``"prompt": {"grounded": true}``) so
that `report`, `chat` and `serve` default to the grounded prompt.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from ecgbatch.llava.contradictions import contradictions
from ecgbatch.llava.grounding import (LEGACY_WORDING, PROBE_INTRO, Grounding, ground, measure_for_grounds,
                                      measured_text)
from ecgbatch.training.instruct_diagnosis_prompt import ask_first_turn, placed_like, record_embeddings

SEED_SALT = 17
# The measured axis categories (ecgbatch.signal.axis, any convention's names) each axis finding
# of the labels stands for: a turn about the axis is supported when the prompt's category is one of
# its finding's (answer "yes") or none of them (answer "no").
AXIS_CATEGORIES = {"axis_left": ("left", "extreme", "ALAD", "LAD", "ARAD"),
                   "axis_right": ("right", "extreme", "RAD", "ARAD"),
                   "axis_normal": ("normal", "horizontal", "vertical", "MID", "AXR")}


# data.evidence_first: the grounded prompt's facts that bear on a finding of the labels (ecgbatch.text.
# findings keys): its measurement labels (with the categories stated beside them) and its probe
# labels. A yes/no answer about the finding first restates these facts in the prompt's own words,
# then says yes or no, so a small model decides after copying what it reads (which it does well in
# reports) instead of in the answer's first token (where every version so far said "No").
RATE_FACTS = ("heart_rate", "bradycardia", "tachycardia", "rr_regularity")
EVIDENCE_FOR = {
    "axis_left": (("axis",), ()), "axis_right": (("axis",), ()), "axis_normal": (("axis",), ()),
    "lvh": (("sokolow_lyon", "cornell", "lvh_voltage"), ("HYP",)),
    "rvh": ((), ("HYP",)),
    "rbbb": (("qrs_duration",), ("RBBB", "CD")), "lbbb": (("qrs_duration",), ("LBBB", "CD")),
    "lafb": (("axis", "qrs_duration"), ("CD",)),
    "atrial_fibrillation": (RATE_FACTS, ("AFIB", "AFLT")), "atrial_flutter": (RATE_FACTS, ("AFLT", "AFIB")),
    "sinus_rhythm": (RATE_FACTS, ("SR", "AFIB", "AFLT", "PACE")),
    "sinus_bradycardia": (RATE_FACTS, ("SBRAD",)), "sinus_tachycardia": (RATE_FACTS, ("STACH",)),
    "sinus_arrhythmia": (RATE_FACTS, ("SARRH",)),
    "av_block": (("pr_interval",), ("1AVB",)),
    "infarction": ((), ("MI",)), "ischemia": ((), ("STTC", "STD")), "st_t_change": ((), ("STTC", "STD")),
}


# evidence_verdict: the probe labels whose finding (above threshold) decides "yes" for a finding key
PROBE_SAYS_YES = {"atrial_fibrillation": ("AFIB", "AFLT"), "atrial_flutter": ("AFLT",), "rbbb": ("RBBB",),
                  "lbbb": ("LBBB",), "sinus_bradycardia": ("SBRAD",), "sinus_tachycardia": ("STACH",)}


def evidence_text(keys, grounding: Grounding) -> str:
    """What ``grounding`` states that bears on the findings ``keys`` (EVIDENCE_FOR), in the prompt's
    own words and order ("Measured: QRS axis -45 degrees (left axis deviation)." and/or "Classifier
    findings: ... (p=0.93)."); "" when it states nothing about them. Facts only: a probe below its
    threshold is not mentioned, so the text never says "no" or "not"."""
    measured, probes = set(), set()
    for k in keys:
        m, p = EVIDENCE_FOR.get(k, ((), ()))
        measured.update(m)
        probes.update(p)
    lines = [measured_text([f for f in grounding.findings if f.source == "measurement" and f.label in measured])]
    found = [f for f in grounding.findings if f.source == "probe" and f.label in probes]
    if found:
        lines.append(f"{PROBE_INTRO} " + ", ".join(f"{f.text} (p={f.probability:.2f})" for f in found) + ".")
    return " ".join(line for line in lines if line)


def evidence_verdict(keys, grounding: Grounding) -> bool | None:
    """What ``grounding`` decides about "is any of ``keys`` present?" (True / False), or None where
    its facts do not decide it. Decisive facts, each as the prompt states it: the measured axis
    category (AXIS_CATEGORIES); a met LVH voltage criterion (yes; criteria not met do not decide: they
    miss most hypertrophy); the probe naming the finding above its threshold (yes), or for AF/flutter
    a regular RR with no such probe (no); for a complete bundle branch block a measured QRS under
    100 ms (no: it needs >= 120 ms); for sinus brady-/tachycardia the measured rate category."""
    keys = list(keys)
    by = {f.label: f for f in grounding.findings if f.source == "measurement"}
    found = {f.label for f in grounding.findings if f.source == "probe"}
    axis_keys = [k for k in keys if k in AXIS_CATEGORIES]
    if axis_keys:
        if "axis" not in by:
            return None
        return by["axis"].category in {c for k in axis_keys for c in AXIS_CATEGORIES[k]}
    if "lvh" in keys and "lvh_voltage" in by:
        return True
    if any(lab in found for k in keys for lab in PROBE_SAYS_YES.get(k, ())):
        return True
    rr = by.get("rr_regularity")
    if keys and set(keys) <= {"atrial_fibrillation", "atrial_flutter"} and rr is not None and rr.category == "regular":
        return False
    qrs = by.get("qrs_duration")
    if keys and set(keys) <= {"rbbb", "lbbb"} and qrs is not None and qrs.value < 100:
        return False
    for k, lab in (("sinus_bradycardia", "bradycardia"), ("sinus_tachycardia", "tachycardia")):
        if keys == [k] and "heart_rate" in by:
            return lab in by
    return None


def evidence_first(item, grounding: Grounding, consistent: bool = False, ecg_token: str = "<ecg>"):
    """(A copy of ``item`` whose yes/no answers (meta.facts kind finding_yes / finding_no) begin with
    ``evidence_text`` of their finding(s), number of answers changed). The verdict stays the labels'
    ("Yes, the ECG shows ..." / "No, ..."), so the model learns how often the labels say yes given
    what the prompt states. Answers with no evidence in the prompt, and items whose meta.facts do
    not list one fact per turn, are unchanged.

    ``consistent``: a yes/no turn whose labels' verdict disagrees with what its evidence decides
    (``evidence_verdict``) is left out, so that the verdict after the facts follows them wherever
    they decide (session 18's v15, trained without it, wrote "(left axis deviation). No, ..."); the
    ECG placeholder moves to the new first question, and an item with no turn left is None."""
    conv, facts = item.conversations, item.meta.get("facts") or []
    if len(conv) != 2 * len(facts):
        return item, 0
    out, n, keep = [dict(t) for t in conv], 0, []
    for j, f in enumerate(facts):
        keep.append(j)
        if f.get("kind") not in ("finding_yes", "finding_no"):
            continue
        keys = [f["finding"]] if "finding" in f else list(f.get("findings") or ())
        if consistent:
            verdict = evidence_verdict(keys, grounding)
            if verdict is not None and verdict != bool(f.get("present", f["kind"] == "finding_yes")):
                keep.pop()
                continue
        ev = evidence_text(keys, grounding)
        if ev:
            out[2 * j + 1]["value"] = f"{ev} {conv[2 * j + 1]['value']}"
            n += 1
    if len(keep) == len(facts):
        return (replace(item, conversations=out), n) if n else (item, 0)
    return keep_turns(item, out, keep, ecg_token), n


def grounded_selection(items, fraction: float, seed: int) -> list[int]:
    """Indices (sorted) of the items asked with their grounding: round(fraction x items), of every
    kind, drawn with a generator seeded by (seed, 17), so the same job picks the same items."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.grounded must be a fraction in [0, 1], got {fraction!r}")
    k = int(round(fraction * len(items)))
    return sorted(int(j) for j in np.random.default_rng([seed, SEED_SALT]).permutation(len(items))[:k])


def with_grounded_prompt(item, grounding: Grounding, ecg_token: str = "<ecg>"):
    """A copy of ``item`` whose first human turn asks the grounded question."""
    return ask_first_turn(item, grounding.question, ecg_token, {"grounding": grounding.to_dict()})


def turn_supported(fact: dict, answer: str, grounding: Grounding) -> bool:
    """Whether one answer of an instruction item (its ``meta.facts`` entry and text) agrees with
    what the item's grounded prompt states: no statement of it contradicts the grounding
    (ecgbatch.llava.contradictions), and an answer about the axis names the measured category
    (AXIS_CATEGORIES; a turn whose prompt states no axis is not judged on it)."""
    keys = [fact["finding"]] if "finding" in fact else list(fact.get("findings") or ())
    axis_keys = [k for k in keys if k in AXIS_CATEGORIES]
    axis = next((f for f in grounding.findings if f.label == "axis" and f.source == "measurement"), None)
    if axis_keys and axis is not None:
        says = axis.category in {c for k in axis_keys for c in AXIS_CATEGORIES[k]}
        if says != bool(fact.get("present", True)):
            return False
    return not contradictions(answer, grounding)


def supported_turns(item, grounding: Grounding, ecg_token: str = "<ecg>"):
    """(``item`` with only its turns that ``turn_supported`` keeps, or None when none is left;
    number of turns left out). The ECG placeholder moves to the new first question. Items whose
    ``meta.facts`` do not list one fact per turn are kept whole."""
    conv, facts = item.conversations, item.meta.get("facts") or []
    if len(conv) != 2 * len(facts):
        return item, 0
    keep = [j for j, f in enumerate(facts) if turn_supported(f, conv[2 * j + 1]["value"], grounding)]
    if len(keep) == len(facts):
        return item, 0
    return keep_turns(item, conv, keep, ecg_token), len(facts) - len(keep)


def keep_turns(item, conv: list[dict], keep: list[int], ecg_token: str = "<ecg>"):
    """A copy of ``item`` with only the turns ``keep`` (indices into its meta.facts) of ``conv`` (its
    conversation, answers possibly rewritten), or None when ``keep`` is empty; the ECG placeholder
    moves to the new first question, placed as in the item's first."""
    if not keep:
        return None
    facts, out = item.meta.get("facts") or [], []
    for j in keep:
        q, a = dict(conv[2 * j]), dict(conv[2 * j + 1])
        q["value"] = q["value"].replace(ecg_token, "").strip()
        out += [q, a]
    out[0]["value"] = placed_like(out[0]["value"], item.conversations[0]["value"], ecg_token)
    return replace(item, conversations=out, meta={**item.meta, "facts": [facts[j] for j in keep]})


def apply_grounded_prompts(items, fraction: float, seed: int, read_record: Callable, labeller=None,
                           read=None, cache_dir=None, config=None, log=print, only_supported: bool = False,
                           wording: int = LEGACY_WORDING, evidence: bool = False, consistent: bool = False):
    """(items with the chosen report items asked with their grounding, number rewritten).
    ``read_record(item)`` -> the item's Record (measured); with ``labeller`` (FindingsLabeller),
    ``read(path)`` -> the model input for the probes' embeddings (cached in ``cache_dir``).
    ``only_supported``: the chosen items keep only their turns ``turn_supported`` by their
    grounding (an item with none left is left out). ``wording``: the grounding's words
    (ecgbatch.llava.grounding.WORDINGS), those the model will be served with. ``evidence``: the
    chosen items' yes/no answers begin with what their prompt states about the finding
    (``evidence_first``); with ``consistent``, those whose verdict disagrees with what the facts
    decide are left out."""
    chosen = grounded_selection(items, fraction, seed)
    if not chosen:
        return list(items), 0
    first = {}
    for i in chosen:
        first.setdefault(str(items[i].ecg_path), items[i])
    paths = sorted(first)
    measured = {p: measure_for_grounds(read_record(first[p])) for p in paths}
    embs = (record_embeddings(labeller, paths, read, cache_dir, config, log) if labeller is not None
            else [None] * len(paths))
    probes = labeller.probes if labeller is not None else ()
    by_path = {p: ground(measured[p], probes=probes, embedding=e, wording=wording) for p, e in zip(paths, embs)}
    out = list(items)
    token = config.ecg_token if config is not None else "<ecg>"
    dropped_turns = with_evidence = inconsistent = 0
    for i in chosen:
        g = by_path[str(items[i].ecg_path)]
        it = items[i]
        if only_supported:
            it, n = supported_turns(it, g, token)
            dropped_turns += n
        if evidence and it is not None:
            before = len(it.conversations)
            it, n = evidence_first(it, g, consistent, token)
            with_evidence += n
            inconsistent += (before - (len(it.conversations) if it is not None else 0)) // 2
        out[i] = None if it is None else with_grounded_prompt(it, g, token)
    log(f"grounded prompt: {len(chosen)} of {len(items)} items ask with their measurements"
        f"{' and the findings of ' + labeller.encoder + chr(39) + 's probes' if labeller is not None else ''}")
    if only_supported:
        log(f"only supported answers: {dropped_turns} turns of the grounded items disagree with their prompt "
            f"and are left out ({sum(o is None for o in out)} items with none left)")
    if evidence:
        log(f"evidence first: {with_evidence} yes/no answers of the grounded items begin with what their "
            f"prompt states about the finding"
            + (f"; {inconsistent} turns whose verdict disagrees with it left out "
               f"({sum(o is None for o in out)} items with none left)" if consistent else ""))
    kept = [o for o in out if o is not None]
    return kept, len(chosen) - (len(out) - len(kept))
