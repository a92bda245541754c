"""The clinical findings matcher: patterns, negation scope, hedges, and the real label
vocabularies (SNOMED names, PTB-XL SCP descriptions) it must read."""
from __future__ import annotations

import csv

import pytest

from ecgbatch.text.findings import (KEYS, extract_findings, group_keys, mentions, positive_findings,
                                    related_findings)


@pytest.mark.parametrize("text,expected", [
    ("Sinus rhythm. Left axis deviation. Left ventricular hypertrophy.",
     {"sinus_rhythm": "present", "axis_left": "present", "lvh": "present"}),
    ("atrial fibrillation with rapid ventricular response", {"atrial_fibrillation": "present"}),
    ("Complete right bundle branch block and first degree AV block.",
     {"rbbb": "present", "av_block": "present"}),
    ("incomplete right bundle branch block", {}),
    ("left anterior hemiblock", {"lafb": "present"}),
    ("sinus rhythm. prolonged PR interval.", {"sinus_rhythm": "present", "av_block": "present"}),
    ("ST segments are depressed in II, III, aVF", {"st_t_change": "present"}),
    ("inverted T-waves in V4-V6", {"st_t_change": "present"}),
    ("old inferior myocardial infarction", {"infarction": "present"}),
    ("normal electric axis", {"axis_normal": "present"}),
    ("Rhythm 0.5 mV sinus bradycardia", {"sinus_bradycardia": "present"}),
])
def test_patterns(text, expected):
    assert extract_findings(text) == expected


@pytest.mark.parametrize("text,key", [
    ("No atrial fibrillation.", "atrial_fibrillation"),
    ("Sinus rhythm without ST-T changes.", "st_t_change"),
    ("Absence of left bundle branch block", "lbbb"),
    ("no evidence of acute myocardial ischemia", "ischemia"),
    ("Atrial flutter is not present.", "atrial_flutter"),
    ("Myocardial infarction was ruled out", "infarction"),
    ("negative for left ventricular hypertrophy", "lvh"),
    ("no atrial fibrillation or flutter", "atrial_fibrillation"),
])
def test_negation(text, key):
    assert extract_findings(text)[key] == "negated"
    assert key not in positive_findings(text)


def test_negation_scope_ends_at_terminators_and_clauses():
    f = extract_findings("No ST changes, left axis deviation. Sinus rhythm but no AV block.")
    assert f["st_t_change"] == "negated"
    assert f["axis_left"] == "present"          # the comma ends the scope of "no"
    assert f["sinus_rhythm"] == "present"       # "no" comes after it
    assert f["av_block"] == "negated"
    f = extract_findings("Not a sinus rhythm; atrial fibrillation")
    assert f == {"sinus_rhythm": "negated", "atrial_fibrillation": "present"}
    f = extract_findings("no pathology seen in lead II with left bundle branch block")
    assert f["lbbb"] == "present"               # "with" ends the scope


def test_present_beats_negated_and_hedges_are_uncertain():
    assert extract_findings("no lvh. left ventricular hypertrophy")["lvh"] == "present"
    assert extract_findings("possible anterior myocardial infarction") == {"infarction": "uncertain"}
    f = extract_findings("undefined ischemia/scar/supp.nstemi: lateral wall")
    assert f == {"ischemia": "uncertain", "infarction": "uncertain"}
    assert positive_findings("probable left ventricular hypertrophy") == {"lvh"}
    assert extract_findings("voltage criteria (qrs) for left ventricular hypertrophy") == {"lvh": "uncertain"}
    assert extract_findings("Myocardial infarction cannot be excluded.") == {"infarction": "uncertain"}
    assert extract_findings("cannot rule out atrial flutter") == {"atrial_flutter": "uncertain"}
    assert extract_findings("rule out acute myocardial ischemia") == {"ischemia": "uncertain"}


def test_related_and_groups():
    assert "rbbb" in related_findings("incomplete right bundle branch block")
    assert "lvh" in related_findings("left ventricular overload")
    assert "sinus_rhythm" in related_findings("sinus bradycardia")
    assert "sinus_tachycardia" not in related_findings("sinus bradycardia")
    assert set(group_keys("rhythm")) | set(group_keys("form")) | set(group_keys("disease")) == set(KEYS)
    with pytest.raises(ValueError, match="unknown findings"):
        mentions("x", ["no_such_finding"])


def test_real_label_vocabularies(shared_data):
    """Every SNOMED name and SCP description that names one of the findings is read as it."""
    from ecgbatch.io.snomed import snomed_table

    names = {n.lower(): code for code, (n, _) in snomed_table().items()}
    assert extract_findings(next(n for n in names if n == "atrial fibrillation")) == {"atrial_fibrillation": "present"}
    assert positive_findings("1st degree av block") == {"av_block"}
    assert positive_findings("complete left bundle branch block") == {"lbbb"}
    with open(shared_data / "ptbxl" / "scp_statements.csv", newline="") as fh:
        desc = {r[""]: r["description"] for r in csv.DictReader(fh)}
    expect = {"AFIB": "atrial_fibrillation", "AFLT": "atrial_flutter", "SR": "sinus_rhythm",
              "SBRAD": "sinus_bradycardia", "STACH": "sinus_tachycardia", "SARRH": "sinus_arrhythmia",
              "1AVB": "av_block", "3AVB": "av_block", "CRBBB": "rbbb", "CLBBB": "lbbb", "LAFB": "lafb",
              "LVH": "lvh", "RVH": "rvh", "ISC_": "ischemia", "IMI": "infarction", "AMI": "infarction",
              "NDT": "st_t_change", "INVT": "st_t_change", "STD_": "st_t_change"}
    for code, key in expect.items():
        assert positive_findings(desc[code]) == {key}, (code, desc[code])
    for code in ("IRBBB", "ILBBB", "PVC", "PAC", "LAO/LAE", "NORM"):
        assert positive_findings(desc[code]) == set(), (code, desc[code])
