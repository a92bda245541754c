"""What a data source's own labels mean in a built-in label set: the ground truth of the linear
probes (ecgbatch.encoders.probes). The mapping is data (``labels/source_labels.json``):

- PTB-XL ``scp_codes`` keys (a code that is a label of the set, a renamed code, or the code's
  ``diagnostic_class`` / ``diagnostic_subclass`` in ``scp_statements.csv``);
- PhysioNet/CinC Challenge ``#Dx`` SNOMED-CT codes;
- LUDB-style free-text ``Rhythm: ...`` lines.

Each function returns the set of labels the source states, or None when that source says
nothing about the label set (its records are then left out of that set's probe, never counted
as negatives). Numpy-free, no I/O beyond the bundled JSON.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache

from ecgbatch.encoders.zeroshot import LABELS_DIR, load_labelset


@lru_cache(maxsize=1)
def _mapping() -> dict:
    return json.loads((LABELS_DIR / "source_labels.json").read_text())


def supported_labelsets() -> list[str]:
    """Label sets with a source mapping (the ones `ecgbatch train probe` can fit from ../shared)."""
    return sorted(k for k in _mapping() if not k.startswith("_"))


def labelset_spec(name: str) -> dict:
    spec = _mapping().get(name)
    if spec is None:
        raise ValueError(f"label set {name!r} has no mapping from source labels; known: {supported_labelsets()}")
    return spec


def is_exclusive(name: str) -> bool:
    """One label per record (a rhythm) rather than several (diagnoses)."""
    return bool(_mapping().get(name, {}).get("exclusive", False))


def primary_label(name: str, labels: set[str]) -> str | None:
    """The one label an exclusive set keeps when a source states several (the most specific
    rhythm first: flutter before fibrillation before sinus variants before sinus rhythm)."""
    if not labels:
        return None
    order = labelset_spec(name).get("priority") or list(load_labelset(name).labels)
    ranked = [lab for lab in order if lab in labels]
    return ranked[0] if ranked else sorted(labels)[0]


def labels_from_scp(name: str, codes, scp_classes: dict[str, dict] | None = None) -> set[str] | None:
    """PTB-XL scp_codes (dict or iterable of codes) -> labels of set ``name``. ``scp_classes``:
    code -> row of scp_statements.csv (needed for diagnostic_class / diagnostic_subclass)."""
    rule = labelset_spec(name).get("scp")
    if rule is None:
        return None
    known = set(load_labelset(name).labels)
    out: set[str] = set()
    for code in codes:
        if rule == "identity":
            lab = code
        elif isinstance(rule, dict):
            lab = rule.get(code)
        else:  # a column of scp_statements.csv
            if scp_classes is None:
                raise ValueError(f"label set {name!r} maps SCP codes by {rule!r}: pass scp_classes")
            lab = (scp_classes.get(code) or {}).get(rule) or None
        if lab in known:
            out.add(lab)
    return out


def labels_from_snomed(name: str, codes) -> set[str] | None:
    """Challenge SNOMED-CT codes -> labels of set ``name`` (None: the set has no SNOMED mapping,
    or, for an exclusive set, none of the codes names one of its labels: rhythm not stated)."""
    spec = labelset_spec(name)
    table = spec.get("snomed")
    if table is None:
        return None
    codes = [str(c).strip() for c in codes if str(c).strip()]
    out = {table[c] for c in codes if c in table}
    normal = spec.get("normal_if_only")
    if normal and codes and all(c in set(normal["codes"]) for c in codes):
        out.add(normal["label"])
    if spec.get("exclusive") and not out:
        return None
    return out


def labels_from_rhythm_text(name: str, text: str | None) -> set[str] | None:
    """A free-text rhythm statement ("Sinus bradycardia.", "Atrial flutter, typical.") -> the
    label of the first matching rule; None when the set reads no rhythm text or nothing matches."""
    rules = labelset_spec(name).get("rhythm_text")
    if not rules or not text:
        return None
    t = " ".join(str(text).lower().split())
    for pattern, label in rules:
        if re.search(pattern, t):
            return {label}
    return None
