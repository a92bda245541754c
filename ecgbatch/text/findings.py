"""Clinical findings read from ECG report text: one documented keyword table with negation and
hedge handling. The report metrics (clinical-efficacy F1), the instruction-data builder and the
training labels (``ecgbatch.text.labels``, through ``pattern_mentions``) all use it, so "what a
text says about a finding" has one definition. Standard library only.

Matcher, in order (all on lower-cased text):
1. The text is cut into clauses at ``;``, ``:``, new lines and full stops followed by a space or
   the end (so "0.5" and "supp.nstemi" do not cut).
2. Each finding's pattern (``FINDINGS``) is searched in each clause. Incomplete bundle branch
   blocks are not complete ones ("incomplete right bundle branch block" is not RBBB).
3. A match is **uncertain** when its clause says "cannot be excluded", "cannot rule out" or
   "(to) rule out" (a possibility, not a negation). Otherwise it is
   **negated** when a negation cue (``NEGATION_CUES``: no, not, without, absence of,
   negative for, free of, ruled out, ...) stands before it in the same clause, with no scope
   terminator between (``but``, ``however``, ``although``, ``except``, ``with``, ``which``, a
   comma not followed by "or"/"nor"), at most ``NEGATION_WINDOW`` words away; or when the
   clause says after it "... is not present / absent / ruled out / excluded".
4. Otherwise a match is **uncertain** when a hedge (possible, probable, suspected, borderline, undefined,
   cannot be excluded, consider, "voltage criteria for", ...) stands in the same clause before it.
5. Per text a finding is "present" if any non-negated certain match, else "uncertain" if any
   hedged match, else "negated" if only negated matches; unmentioned findings are absent from
   the result.

Groups follow PTB-XL's SCP statement classes, as ECG-Chat's CE-F1 does (ecg-chat-reference.md
section 7): CE-Rhythm = rhythm statements; CE-Form = waveform-form statements (ST-T changes) plus
the electrical axis (not an SCP statement in PTB-XL; it describes the QRS form); CE-Disease =
diagnostic statements (conduction blocks, hypertrophy, ischemia, infarction).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

GROUPS = ("rhythm", "form", "disease")


@dataclass(frozen=True)
class Finding:
    key: str
    group: str      # rhythm | form | disease
    phrase: str     # what a question or answer calls it: "Does this ECG show {phrase}?"
    pattern: str    # an assertive mention
    related: str    # any mention that makes "absent" unsafe (data builder negatives)


_NON_SINUS_RELATED = r"pac(ed|ing|emaker)|wandering|ectopic|junctional|aberrant|escape"
_SINUS_RELATED = r"sinus|" + _NON_SINUS_RELATED
_BB_RELATED = r"bundle|\b[ic]?[rl]bbb\b|intra-?ventricular|conduction (delay|disturbance|defect)|\bivcd\b|fascic|hemiblock"
_ISCH_RELATED = r"isch(a)?em|injury|infarct|stemi|scar|necros|\bst[- ]|\bst-t\b|t[- ]waves?|repolari[sz]ation|\bq[- ]waves?"

FINDINGS: tuple[Finding, ...] = (
    Finding("sinus_rhythm", "rhythm", "sinus rhythm",
            r"\bsinus rhythm\b|\bnsr\b|\bsinusrhythmus\b", _SINUS_RELATED),
    Finding("sinus_bradycardia", "rhythm", "sinus bradycardia",
            r"\bsinus bradycardia\b|\bsinusbradykardie\b", _NON_SINUS_RELATED + r"|bradycard"),
    Finding("sinus_tachycardia", "rhythm", "sinus tachycardia",
            r"\bsinus tachycardia\b|\bsinustachykardie\b", _NON_SINUS_RELATED + r"|tachycard"),
    Finding("sinus_arrhythmia", "rhythm", "sinus arrhythmia",
            r"\bsinus arrhythmia\b|\bsinusarrhythmie\b", _SINUS_RELATED + r"|arrhythmi"),
    Finding("atrial_fibrillation", "rhythm", "atrial fibrillation",
            r"\batrial fibrillation\b|\ba-?fib\b|\bvorhofflimmern\b",
            r"fibrillation|irregular|atrial (arrhythmia|tachyarrhythmia)|supraventricular tachy|aberrant"),
    Finding("atrial_flutter", "rhythm", "atrial flutter",
            r"\batrial flutter\b|\baflt\b|\bvorhofflattern\b",
            r"flutter|atrial tachycardia|supraventricular tachy|aberrant"),
    Finding("av_block", "disease", "an atrioventricular block",
            r"\b(av|a-v|atrio-?ventricular)[- ]?(block|blockade)\b|\b([123]|i{1,3})?avb\b|"
            r"\bheart block\b|\bwenckebach\b|\bmobitz\b|\bprolonged pr(-| )interval\b",
            r"\b(av|a-v|atrio-?ventricular)\b|\bpr[- ]interval|\bavb\b|heart block|wenckebach|mobitz|sinoatrial"),
    Finding("rbbb", "disease", "a complete right bundle branch block",
            r"(?<!incomplete )\bright bundle[- ]branch block\b|\bc?rbbb\b", _BB_RELATED),
    Finding("lbbb", "disease", "a complete left bundle branch block",
            r"(?<!incomplete )\bleft bundle[- ]branch block\b|\bc?lbbb\b", _BB_RELATED),
    Finding("lafb", "disease", "a left anterior fascicular block",
            r"\bleft anterior (fascicular block|hemiblock)\b|\blafb\b|\blahb\b", _BB_RELATED),
    Finding("lvh", "disease", "left ventricular hypertrophy",
            r"\bleft ventric(le|ular) hypertroph|\blvh\b",
            r"left ventric(le|ular) (hypertroph|overload|strain|enlargement)|\blvh\b|voltage"),
    Finding("rvh", "disease", "right ventricular hypertrophy",
            r"\bright ventric(le|ular) hypertroph|\brvh\b",
            r"right ventric(le|ular) (hypertroph|overload|strain|enlargement)|\brvh\b"),
    Finding("ischemia", "disease", "myocardial ischemia",
            r"\bisch(a)?emi", _ISCH_RELATED),
    Finding("infarction", "disease", "myocardial infarction",
            r"\binfarct|\bn?stemi\b|\bscar formation\b|\bmi\b", _ISCH_RELATED),
    Finding("st_t_change", "form", "ST-T changes",
            r"\bst-t\b|\bst[- ](segments? )?(depress|elevat|chang|abnormal)|\bst segments? (are |is )?(depress|elevat)|"
            r"\bt[- ]waves? (inver|abnormal|chang|flatten)|\b(inverted|negative|flat|flattened|low amplitude) t[- ]waves?|"
            r"\bt[- ]?(wave )?abnormalit|repolari[sz]ation (abnormalit|disturbance)",
            _ISCH_RELATED),
    Finding("axis_left", "form", "left axis deviation",
            r"\bleft axis deviation\b|\baxis (is )?deviated to the left\b|\bleft axis\b",
            r"\b(vertical|horizontal|indeterminate)\b|hemiblock|fascic"),
    Finding("axis_right", "form", "right axis deviation",
            r"\bright axis deviation\b|\baxis (is )?deviated to the right\b|\bright axis\b",
            r"\b(vertical|horizontal|indeterminate)\b|posterior fascic|\blpfb\b"),
    Finding("axis_normal", "form", "a normal electrical axis",
            r"\bnormal (electric(al)? |heart |qrs )?axis\b|\baxis (is )?(within )?normal\b",
            r"\b(vertical|horizontal|indeterminate)\b"),
)
BY_KEY = {f.key: f for f in FINDINGS}
KEYS = tuple(f.key for f in FINDINGS)

NEGATION_CUES = (r"\bno\b|\bnot\b|\bwithout\b|\babsen(ce|t)\b|\bnegative for\b|\bfree of\b|"
                 r"\bruled out\b|\bexcluded\b|\bneither\b|\bnor\b|\bdenies\b|\bnone\b")
# "cannot be excluded", "cannot rule out", "rule out ..." (a request): a possibility, not a negation.
_CANNOT_EXCLUDE = re.compile(r"\b(cannot|can not|can't|could not|not) (be )?(excluded|exclude|ruled out|rule out)\b|"
                             r"^(to )?rule out\b|\bto rule out\b")
NEGATION_WINDOW = 8   # words between a negation cue and the finding it negates
_POST_NEGATION = re.compile(r"^[^,]{0,40}?\b(is|are|was|were)?\s*(not (present|seen|observed|evident|"
                            r"identified|detected|found)|absent|ruled out|excluded)\b")
_TERMINATORS = re.compile(r"\b(but|however|although|though|except|apart from|aside from|which|whereas|"
                          r"while|with)\b|,(?!\s*(or|nor)\b)")
_HEDGES = re.compile(r"\b(possible|possibly|probable|probably|suspect(ed)?|suspicious|borderline|undefined|"
                     r"cannot be excluded|cannot rule out|can not be excluded|consider|questionable|"
                     r"likely|may|might|suggests?|suggesting|suggestive of|supp\.?|criteria( \(qrs\))? for)\b")
_CLAUSES = re.compile(r"\.(?=\s|$)|[;:\n]")


@dataclass(frozen=True)
class Mention:
    finding: str
    state: str       # present | uncertain | negated
    clause: str


def _negated(before: str, after: str) -> bool:
    cues = list(re.finditer(NEGATION_CUES, before))
    if cues:
        scope = before[cues[-1].end():]
        if not _TERMINATORS.search(scope) and len(scope.split()) <= NEGATION_WINDOW:
            return True
    return bool(_POST_NEGATION.search(after))


def mentions(text: str, keys=None) -> list[Mention]:
    """Every mention of a finding in ``text`` with its state, clause by clause."""
    keys = KEYS if keys is None else tuple(keys)
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        raise ValueError(f"unknown findings {unknown!r}; known: {list(KEYS)}")
    return pattern_mentions(text, {k: BY_KEY[k].pattern for k in keys})


def pattern_mentions(text: str, patterns: dict[str, str]) -> list[Mention]:
    """Every match of ``patterns`` ({name: regex on lower-cased text}) in ``text``, with its
    state by the rules above: the matcher behind ``mentions`` and the training labels."""
    out = []
    for clause in _CLAUSES.split(str(text).lower()):
        clause = " ".join(clause.split())
        if not clause:
            continue
        for k, pattern in patterns.items():
            for m in re.finditer(pattern, clause):
                before, after = clause[:m.start()], clause[m.end():]
                if _CANNOT_EXCLUDE.search(clause):
                    state = "uncertain"
                elif _negated(before, after):
                    state = "negated"
                elif _HEDGES.search(before):
                    state = "uncertain"
                else:
                    state = "present"
                out.append(Mention(k, state, clause))
    return out


_RANK = {"present": 3, "uncertain": 2, "negated": 1}


def strongest_states(found: list[Mention]) -> dict[str, str]:
    """{name: its strongest state} over ``found``: present > uncertain > negated."""
    best: dict[str, str] = {}
    for m in found:
        if _RANK[m.state] > _RANK.get(best.get(m.finding), 0):
            best[m.finding] = m.state
    return best


def extract_findings(text: str, keys=None) -> dict[str, str]:
    """{finding: "present" | "uncertain" | "negated"} for the findings ``text`` mentions."""
    return strongest_states(mentions(text, keys))


POSITIVE_STATES = ("present", "uncertain")


def positive_findings(text: str, keys=None) -> set[str]:
    """The findings a report asserts (present or hedged), as the CE-F1 labels of that text."""
    return {k for k, s in extract_findings(text, keys).items() if s in POSITIVE_STATES}


def related_findings(text: str, keys=None) -> set[str]:
    """Findings whose ``related`` pattern appears in ``text`` (any mention, negated or not)."""
    t = " ".join(str(text).lower().split())
    return {k for k in (KEYS if keys is None else keys) if re.search(BY_KEY[k].related, t)}


def group_keys(group: str) -> tuple[str, ...]:
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    return tuple(f.key for f in FINDINGS if f.group == group)
