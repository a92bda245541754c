"""Text builders on real headers and tables from ../shared/data."""
from __future__ import annotations

import csv
import json

import pytest

from ecgbatch.text.labels import keyword_labels
from ecgbatch.training import texts as T


def test_ludb_header_comments_to_statements(shared_data):
    comments = T.hea_comments(shared_data / "ludb" / "data" / "1.hea")
    text = T.ludb_text(comments)
    # record 1: sinus bradycardia, left axis deviation, LVH, LV overload, repolarisation
    assert text.startswith("sinus bradycardia. left axis deviation. left ventricular hypertrophy")
    assert "51" not in text and "<sex>" not in text  # demographics never enter the text
    assert text == text.lower()


def test_ludb_axis_and_rhythm_forms(shared_data):
    seen_af = 0
    for hea in sorted((shared_data / "ludb" / "data").glob("*.hea")):
        text = T.ludb_text(T.hea_comments(hea))
        assert text and "rhythm:" not in text and "electric axis of the heart" not in text
        seen_af += keyword_labels(text, ["af"])["af"]
    assert seen_af == 10  # 8 atrial fibrillation + 2 atrial flutter in the shared LUDB half


def test_challenge_dx_codes_to_names(shared_data):
    names = T.SnomedNames.from_dir(shared_data / "cinc2021")
    comments = T.hea_comments(shared_data / "cinc2021" / "A0689.hea")
    assert T.challenge_dx_codes(comments) == ["164889003"]
    assert T.header_text(comments, names) == "atrial fibrillation"
    for hea in sorted((shared_data / "cinc2021").glob("*.hea")):
        assert T.header_text(T.hea_comments(hea), names)  # every shared record has known codes
    with pytest.raises(T.TextSourceError, match="not in the dx mapping"):
        T.snomed_text(["999999999"], names)
    with pytest.raises(T.TextSourceError, match="no dx mapping"):
        T.header_text(comments, None)


def test_ptbxl_prefers_english_statements(shared_data):
    st = T.ScpStatements.from_csv(shared_data / "ptbxl" / "scp_statements.csv")
    rows = {r["ecg_id"]: r for r in csv.DictReader(open(shared_data / "ptbxl" / "ptbxl_database_subset.csv"))}
    german = rows["448"]  # "sinusrhythmus ueberdrehter linkstyp linksanteriorer hemiblock"
    assert not T.looks_english(german["report"])
    assert T.ptbxl_text(german["scp_codes"], st, german["report"]) == "sinus rhythm. left anterior fascicular block"
    english = rows["318"]
    t = T.ptbxl_text(english["scp_codes"], st, english["report"])
    assert t.startswith("atrial fibrillation. ")       # rhythm first
    assert t.count("atrial fibrillation") == 1          # report repeat dropped
    assert "st segments are depressed" in t             # English report kept
    n_af = sum(keyword_labels(T.ptbxl_text(r["scp_codes"], st), ["af"])["af"] for r in rows.values())
    assert n_af == 122
    with pytest.raises(T.TextSourceError, match="not in scp_statements"):
        T.ptbxl_text("{'NOPE': 100.0}", st)


def test_mimic_rules():
    row = {"report_0": "Sinus rhythm", "report_1": "--- Warning: Data quality may affect interpretation ---",
           "report_2": "RBBB and LAFB", "report_3": "Minimal voltage criteria for LVH, may be normal variant",
           "report_4": "Borderline ECG - age undetermined"}
    t = T.mimic_machine_report(row)
    assert t == ("sinus rhythm right bundle branch block and left anterior fascicular block minimal voltage "
                 "criteria for left ventricle hypertrophy, may be normal variant borderline ecg")
    # ECG-Chat's literal substring replaces (quirk Q4) on request
    assert "myocardial infarctionnimal" in T.mimic_machine_report(row, faithful=True)
    with pytest.raises(T.TextSourceError):
        T.mimic_machine_report({"report_0": "Analysis error"})


def test_text_table_csv_and_jsonl(tmp_path):
    c = tmp_path / "r.csv"
    c.write_text("record_id,text\nA1,Sinus Rhythm.  Normal ECG\nA2,atrial fibrillation\n")
    assert T.read_text_table(c) == {"A1": "sinus rhythm. normal ecg", "A2": "atrial fibrillation"}
    j = tmp_path / "r.jsonl"
    j.write_text("\n".join(json.dumps({"path": f"/x/{i}.hea", "text": "ok"}) for i in range(2)))
    assert set(T.read_text_table(j)) == {"/x/0.hea", "/x/1.hea"}
    bad = tmp_path / "bad.csv"
    bad.write_text("record_id,text\nA1,one\nA1,two\n")
    with pytest.raises(T.TextSourceError, match="twice"):
        T.read_text_table(bad)
    with pytest.raises(T.TextSourceError, match="needs a key column"):
        (tmp_path / "nokey.csv").write_text("foo,text\n1,x\n")
        T.read_text_table(tmp_path / "nokey.csv")


def test_wave_suffix_is_appended_lowercased():
    s = " RR: 845 PR: 160 QRS: 92 QT/QTc: 380/413 P/R/T Wave: 2480/2530/2650"
    assert T.with_wave_suffix("atrial fibrillation", s) == (
        "atrial fibrillation rr: 845 pr: 160 qrs: 92 qt/qtc: 380/413 p/r/t wave: 2480/2530/2650")
    assert T.with_wave_suffix("Sinus rhythm", None) == "sinus rhythm"
