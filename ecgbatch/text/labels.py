"""Keyword labels of training texts (balancing, stratified splits, the multi-positive label
loss, validation AUC): each label is a pattern read by ``ecgbatch.text.findings``' matcher, so
a negated mention ("no atrial fibrillation", "atrial fibrillation is not present") gives no
label, and a hedged one ("possible atrial fibrillation") counts, as in the CE-F1 labels.

"af" = atrial fibrillation or flutter, the judged class of the default model. Every label with
a twin in the findings table uses that finding's pattern (af: atrial fibrillation or flutter),
so training labels and evaluation read a text alike; only "avb1" (first-degree block; the table
has one AV-block finding) keeps its own pattern.
Prompts are the zero-shot class texts.
"""
from __future__ import annotations

from ecgbatch.text.findings import BY_KEY, POSITIVE_STATES, pattern_mentions, strongest_states

# name -> (pattern searched in the lower-cased statement text, never in the measurement
# suffix; zero-shot prompt)
def _any_of(*keys: str) -> str:
    return "|".join(BY_KEY[k].pattern for k in keys)


KEYWORD_LABELS: dict[str, tuple[str, str]] = {
    "af": (_any_of("atrial_fibrillation", "atrial_flutter"), "atrial fibrillation"),
    "sinus_rhythm": (_any_of("sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "sinus_arrhythmia")
                     + r"|normal sinus", "sinus rhythm"),
    "lbbb": (_any_of("lbbb"), "left bundle branch block"),
    "rbbb": (_any_of("rbbb"), "right bundle branch block"),
    "lvh": (_any_of("lvh"), "left ventricular hypertrophy"),
    "avb1": (r"\b(first|1st|i) degree av(-| )block|prolonged pr interval", "first degree av block"),
    "lad": (_any_of("axis_left"), "left axis deviation"),
}

# Counter-prompts for a binary zero-shot decision "label vs its usual alternative": the score
# is then cos(ECG, label prompt) - cos(ECG, counter prompt) (opt-in; ECG-Chat scores each class
# on its own prompt).
KEYWORD_COUNTER_PROMPTS: dict[str, str] = {
    "af": "sinus rhythm",
    "sinus_rhythm": "atrial fibrillation",
}


def keyword_labels(text: str, names=None) -> dict[str, int]:
    """{label: 0/1} for the KEYWORD_LABELS named (all by default), read from ``text``: 1 when
    the text asserts it (present or hedged), 0 when it is absent or only negated."""
    names = list(KEYWORD_LABELS) if names is None else list(names)
    unknown = [n for n in names if n not in KEYWORD_LABELS]
    if unknown:
        raise ValueError(f"unknown keyword label {unknown[0]!r}; known: {sorted(KEYWORD_LABELS)}")
    states = strongest_states(pattern_mentions(text, {n: KEYWORD_LABELS[n][0] for n in names}))
    return {n: int(states.get(n) in POSITIVE_STATES) for n in names}


def label_prompts(name: str) -> list[str]:
    """Zero-shot prompts of a KEYWORD_LABELS label (one or more, ensembled)."""
    p = KEYWORD_LABELS[name][1]
    return [p] if isinstance(p, str) else list(p)
