"""Question/answer turns from a record's facts (``instruct.RecordFacts``). Every answer states only
a fact of the record: a label statement, a finding present or absent by its labels, or a
measured value with its unit (said to be measured). Phrasings vary, picked by a seeded rng."""
from __future__ import annotations

from ecgbatch.text.findings import BY_KEY, group_keys

REPORT_REQUESTS = (
    "Please write a report for this ECG.",
    "Describe the main findings of this ECG.",
    "What does this 12-lead ECG show? Write a short diagnostic report.",
    "Interpret this electrocardiogram.",
    "Can you summarise this ECG in a few sentences?",
    "Generate a diagnostic report for this ECG recording.",
)
FINDING_QUESTIONS = (   # each reads well with every FINDINGS phrase (singular or plural)
    "Does this ECG show {phrase}?",
    "Is there evidence of {phrase} on this ECG?",
    "Can you see {phrase} in this recording?",
    "Would you say this ECG shows {phrase}?",
    "Is there {phrase}?",
)
YES_NO_SUFFIX = " Answer yes or no."   # appended to some yes/no questions (the answer still says why)
# Yes/no questions about a group of findings: (phrasings, the keys meaning "yes", the keys whose
# presence means "no" (None: every "yes" key absent means "no"), the "no" answer).
GROUP_QUESTIONS = (
    (("Is the electrical axis deviated?", "Is there axis deviation on this ECG?",
      "Does the QRS axis deviate from normal?"), ("axis_left", "axis_right"), ("axis_normal",),
     "No, the electrical axis is normal."),
    (("Is there a bundle branch block?", "Does this ECG show a bundle branch block?",
      "Can you see a bundle branch block in this recording?"), ("rbbb", "lbbb"), None,
     "No, there is no bundle branch block."),
)
RHYTHM_QUESTIONS = ("What is the rhythm of this ECG?", "Which rhythm does this ECG show?",
                    "What is the underlying rhythm?")
AXIS_QUESTIONS = ("What is the electrical axis of the heart on this ECG?", "How would you describe the QRS axis?")
RATE_QUESTIONS = ("What is the heart rate?", "How fast is the heart beating on this ECG?",
                  "What is the ventricular rate?")
INTERVAL_QUESTIONS = {
    "pr_ms": ("How long is the PR interval?", "The measured PR interval is about {v} ms."),
    "qrs_ms": ("What is the QRS duration?", "The measured QRS duration is about {v} ms."),
    "qt_ms": ("What is the QT interval?", "The measured QT interval is about {v} ms."),
    "qtc_ms": ("What is the corrected QT interval (QTc)?",
               "The measured QTc (Bazett) is about {v} ms."),
}
_AXIS_ANSWER = {"axis_left": "The ECG shows left axis deviation.",
                "axis_right": "The ECG shows right axis deviation.",
                "axis_normal": "The electrical axis is normal."}


def _bare(phrase: str) -> str:
    """"a complete right bundle branch block" -> "complete right bundle branch block"."""
    for art in ("a ", "an "):
        if phrase.startswith(art):
            return phrase[len(art):]
    return phrase


def report_text(report: str) -> str:
    """Statement text ("sinus rhythm. left axis deviation") -> sentences."""
    parts = [s.strip() for s in report.split(". ") if s.strip()]
    return " ".join(p[0].upper() + p[1:] + ("" if p.endswith(".") else ".") for p in parts)


def report_turn(facts, rng) -> dict:
    return {"q": REPORT_REQUESTS[rng.integers(len(REPORT_REQUESTS))], "a": report_text(facts.report),
            "kind": "report", "facts": {"report": facts.report}}


def _yes_no(q: str, rng) -> str:
    return q + (YES_NO_SUFFIX if rng.random() < 0.3 else "")


def finding_turn(key: str, present: bool, rng) -> dict:
    f = BY_KEY[key]
    q = _yes_no(FINDING_QUESTIONS[rng.integers(len(FINDING_QUESTIONS))].format(phrase=f.phrase), rng)
    a = (f"Yes, the ECG shows {f.phrase}." if present else f"No, the ECG does not show {f.phrase}.")
    return {"q": q, "a": a, "kind": "finding_yes" if present else "finding_no",
            "facts": {"finding": key, "present": present}}


def group_turns(facts, rng) -> list[dict]:
    """The GROUP_QUESTIONS this record's labels answer."""
    out = []
    for qs, yes_keys, no_keys, no_answer in GROUP_QUESTIONS:
        q = qs[rng.integers(len(qs))]
        yes = [k for k in yes_keys if k in facts.present]
        if yes:
            a, present = f"Yes, the ECG shows {' and '.join(BY_KEY[k].phrase for k in yes)}.", True
        elif (any(k in facts.present for k in no_keys) if no_keys else all(k in facts.absent for k in yes_keys)):
            a, present = no_answer, False
        else:
            continue
        out.append({"q": _yes_no(q, rng), "a": a, "kind": "finding_yes" if present else "finding_no",
                    "facts": {"findings": list(yes_keys), "present": present}})
    return out


def balanced_yes_no(pool: list[dict], rng) -> list[dict]:
    """The pool with at most as many "no" turns as "yes" turns (at least one of each kind the
    record has): a record's labels list far more absent findings than present ones, and a model
    trained on six "no" per "yes" answers "no" to everything. Order kept."""
    no = [i for i, t in enumerate(pool) if t["kind"] == "finding_no"]
    n_yes = sum(t["kind"] == "finding_yes" for t in pool)
    keep = set(rng.permutation(no)[:max(n_yes, 1)].tolist()) if len(no) > max(n_yes, 1) else set(no)
    return [t for i, t in enumerate(pool) if t["kind"] != "finding_no" or i in keep]


def qa_pool(facts, rng) -> list[dict]:
    """All single turns this record can answer (report request excluded)."""
    pool = [finding_turn(k, True, rng) for k in facts.present]
    pool += [finding_turn(k, False, rng) for k in facts.absent]
    pool += group_turns(facts, rng)
    rhythm = [k for k in facts.present if k in group_keys("rhythm")]
    if rhythm:
        names = " with ".join(_bare(BY_KEY[k].phrase) for k in rhythm)
        pool.append({"q": RHYTHM_QUESTIONS[rng.integers(len(RHYTHM_QUESTIONS))],
                     "a": f"The rhythm is {names}.", "kind": "rhythm", "facts": {"findings": rhythm}})
    axis = [k for k in facts.present if k.startswith("axis_")]
    if len(axis) == 1:
        pool.append({"q": AXIS_QUESTIONS[rng.integers(len(AXIS_QUESTIONS))], "a": _AXIS_ANSWER[axis[0]],
                     "kind": "axis", "facts": {"finding": axis[0]}})
    m = facts.measurements
    if "hr_bpm" in m:
        pool.append({"q": RATE_QUESTIONS[rng.integers(len(RATE_QUESTIONS))],
                     "a": f"The measured heart rate is about {m['hr_bpm']} beats per minute.",
                     "kind": "rate", "facts": {"hr_bpm": m["hr_bpm"], "method": m.get("method")}})
    for k, (q, a) in INTERVAL_QUESTIONS.items():
        if k in m:
            pool.append({"q": q, "a": a.format(v=m[k]), "kind": "interval",
                         "facts": {k: m[k], "method": m.get("method")}})
    return pool


def conversation(turns: list[dict], ecg_first: bool = True) -> list[dict]:
    """ECG-Instruct turns; ``<ecg>`` at the start (or end) of the first human turn."""
    conv = []
    for j, t in enumerate(turns):
        q = t["q"]
        if j == 0:
            q = f"<ecg>\n{q}" if ecg_first else f"{q}\n<ecg>"
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": t["a"]}]
    return conv


# data.yes_no (a llava job): single-question items on the findings a user asks about most, by name:
# the finding keys whose presence means "yes" (one key: FINDING_QUESTIONS; two: GROUP_QUESTIONS).
FOCUS_QUESTIONS = {"af": ("atrial_fibrillation",), "lvh": ("lvh",), "bbb": ("rbbb", "lbbb"),
                   "axis": ("axis_left", "axis_right")}


def focus_turn(name: str, facts, rng) -> dict | None:
    """The yes/no turn of FOCUS_QUESTIONS[name] that a record's labels (``facts.present`` /
    ``facts.absent``) answer, or None when they do not."""
    keys = FOCUS_QUESTIONS[name]
    if len(keys) > 1:
        return next((t for t in group_turns(facts, rng) if t["facts"]["findings"] == list(keys)), None)
    if keys[0] in facts.present:
        return finding_turn(keys[0], True, rng)
    if keys[0] in facts.absent:
        return finding_turn(keys[0], False, rng)
    return None
