"""Training's keyword labels read by the findings matcher: negation-aware, and in agreement with
the evaluation's findings on real report texts (LUDB headers, Challenge SNOMED names, PTB-XL
SCP statements and English reports)."""
from __future__ import annotations

import csv

import pytest

from ecgbatch.text.findings import positive_findings
from ecgbatch.text.labels import KEYWORD_LABELS, keyword_labels
from ecgbatch.training import texts as T

AF_FINDINGS = {"atrial_fibrillation", "atrial_flutter"}


@pytest.mark.parametrize("text,af", [
    ("no atrial fibrillation", 0),
    ("sinus rhythm. no atrial fibrillation", 0),
    ("atrial fibrillation is not present", 0),
    ("without atrial flutter", 0),
    ("atrial fibrillation with rapid ventricular response", 1),
    ("possible atrial flutter", 1),                       # hedged: counts, as in CE-F1
    ("atrial fibrillation cannot be excluded", 1),
    ("sinus rhythm, no atrial fibrillation. later atrial fibrillation", 1),
    ("sinus rhythm. left axis deviation", 0),
])
def test_af_label_is_negation_aware(text, af):
    assert keyword_labels(text, ["af"]) == {"af": af}
    assert (af == 1) == bool(positive_findings(text) & AF_FINDINGS)


def test_negation_applies_to_every_label():
    got = keyword_labels("no left bundle branch block. no left ventricular hypertrophy. left axis deviation")
    assert got["lbbb"] == 0 and got["lvh"] == 0 and got["lad"] == 1
    with pytest.raises(ValueError, match="unknown keyword label"):
        keyword_labels("x", ["nope"])


def _real_texts(d) -> list[str]:
    out = [T.ludb_text(T.hea_comments(h)) for h in sorted((d / "ludb" / "data").glob("*.hea"))]
    names = T.SnomedNames.from_dir(d / "cinc2021")
    out += [T.header_text(T.hea_comments(h), names) for h in sorted((d / "cinc2021").glob("*.hea"))]
    st = T.ScpStatements.from_csv(d / "ptbxl" / "scp_statements.csv")
    with open(d / "ptbxl" / "ptbxl_database_subset.csv", newline="") as fh:
        out += [T.ptbxl_text(r["scp_codes"], st, r["report"]) for r in csv.DictReader(fh)]
    return out


def test_training_labels_and_eval_findings_agree_on_real_texts(shared_data):
    texts = _real_texts(shared_data)
    assert len(texts) > 450
    n_af = 0
    for t in texts:
        af = keyword_labels(t, ["af"])["af"]
        assert bool(af) == bool(positive_findings(t) & AF_FINDINGS), t
        n_af += af
    assert n_af == 143       # 10 LUDB + 122 PTB-XL + 11 Challenge records: the same as the plain regex gave
    # the other labels with a findings twin agree too (an incomplete block is no block label)
    twins = {"lbbb": "lbbb", "rbbb": "rbbb", "lvh": "lvh", "lad": "axis_left"}
    for t in texts:
        lab, pos = keyword_labels(t, list(twins)), positive_findings(t, list(twins.values()))
        for name, key in twins.items():
            assert bool(lab[name]) == (key in pos), (name, t)
    assert keyword_labels("sinus rhythm. incomplete right bundle branch block")["rbbb"] == 0


def test_every_label_has_a_prompt():
    assert all(isinstance(p, str) and p for _, p in KEYWORD_LABELS.values())
