"""Issue 20's report goals (ecgbatch.eval.report_goals) on real LUDB reference texts."""
from __future__ import annotations

import math

import pytest
from helpers.bench import bench_module

from ecgbatch.eval.report_goals import axis_category, goal_rows, report_goals


@pytest.fixture(scope="module")
def ludb_refs():
    from ecgbatch._paths import shared_dir
    from ecgbatch.training.texts import hea_comments, ludb_text

    s = shared_dir()
    if s is None:
        pytest.skip("../shared/data not here")
    heas = sorted((s / "data" / "ludb" / "data").glob("*.hea"), key=lambda p: int(p.stem))
    return [ludb_text(hea_comments(h)) for h in heas]


@pytest.mark.parametrize("text, cat", [
    ("Sinus rhythm. Left axis deviation.", "left"),
    ("sinus rhythm. vertical electric axis", "normal"),
    ("Normal electrical axis.", "normal"),
    ("Right axis deviation. Left ventricular hypertrophy.", "right"),
    ("No axis deviation.", None),
    ("Sinus rhythm.", None),
])
def test_axis_category(text, cat):
    assert axis_category(text) == cat


def test_the_references_meet_every_goal_and_a_template_does_not(ludb_refs):
    own = report_goals(ludb_refs, ludb_refs, reps=200)
    assert all(own[k]["value"] == 1.0 for k in ("rhythm_correct", "af_f1", "axis_correct", "lvh_f1"))
    assert own["false_af_rate"]["value"] == 0.0
    assert own["distinct_reports"]["count"] > 30 and own["distinct_reports"]["value"] > 0.3
    assert all(r[3] == "yes" for r in goal_rows(own))

    template = ["Sinus rhythm. Normal ECG. Normal electrical axis."] * len(ludb_refs)
    t = report_goals(template, ludb_refs, reps=200)
    n_sinus = t["rhythm_correct"]["n"]
    assert 0.3 < t["rhythm_correct"]["value"] < 1.0 and n_sinus > 80
    assert t["af_f1"]["value"] == 0.0 and t["lvh_f1"]["value"] == 0.0 and t["false_af_rate"]["value"] == 0.0
    assert 0.3 < t["axis_correct"]["value"] < 0.8          # LUDB: about a third left axis deviation
    assert t["distinct_reports"]["count"] == 1 and t["distinct_reports"]["value"] == 1 / len(ludb_refs)
    rows = {r[0]: r for r in goal_rows(t)}
    assert rows["af_f1"][3] == "no" and rows["distinct_reports"][3] == "no"
    lo, hi = t["axis_correct"]["lo"], t["axis_correct"]["hi"]
    assert lo <= t["axis_correct"]["value"] <= hi


def test_always_af_is_a_false_af_on_every_sinus_record(ludb_refs):
    always = ["Atrial fibrillation. Left ventricular hypertrophy."] * len(ludb_refs)
    r = report_goals(always, ludb_refs, reps=100)
    assert r["false_af_rate"]["value"] == 1.0
    assert 0 < r["af_f1"]["value"] < 0.5 and 0 < r["lvh_f1"]["value"] < 1
    assert math.isclose(r["axis_correct"]["value"], 0.0)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="references"):
        report_goals(["a"], ["a", "b"])


def test_grounds_only_report_says_the_categorical_grounds_and_nothing_else(tmp_path):
    """bench/report_goals.py grounds: a report row's findings (GroundFinding.to_dict, as report
    --input writes them) become sentences by STATED_RULES (ecgbatch.llava.grounding); values without a category (rate,
    intervals, voltages below the criteria) are not stated, and the result scores as its words say."""
    import json

    from ecgbatch.llava.grounding import GroundFinding

    bench = bench_module("report_goals")
    row = [GroundFinding("heart_rate", "heart rate", "measurement", 48.0, "bpm"),
           GroundFinding("bradycardia", "bradycardia", "measurement", 48.0, "bpm"),
           GroundFinding("rr_regularity", "irregular RR", "measurement", 0.3, "RMSSD/mean RR", "irregular"),
           GroundFinding("axis", "left axis deviation", "measurement", -52.0, "degrees", "left"),
           GroundFinding("sokolow_lyon", "Sokolow-Lyon", "measurement", 4.1, "mV"),
           GroundFinding("lvh_voltage", "LVH voltage criteria met", "measurement", category="met"),
           GroundFinding("qt_interval", "QT", "measurement", 420.0, "ms"),
           GroundFinding("AFIB", "atrial fibrillation", "probe", probability=0.91, labelset="ptbxl-rhythm")]
    text = bench.grounds_report([f.to_dict() for f in row])
    assert text == ("Bradycardia. Left axis deviation. Left ventricular hypertrophy. Atrial fibrillation.")
    assert bench.grounds_report([GroundFinding("heart_rate", "heart rate", "measurement", 72.0, "bpm").to_dict()]) == ""

    reports = tmp_path / "reports.jsonl"
    reports.write_text(json.dumps({"record_id": "a/1", "report": "x", "findings": [f.to_dict() for f in row]}) + "\n")
    assert bench.grounds(reports, tmp_path / "g.jsonl") == 1
    assert json.loads((tmp_path / "g.jsonl").read_text())["report"] == text
    res = report_goals([text], ["Atrial fibrillation. Left axis deviation. Left ventricular hypertrophy."])
    assert res["af_f1"]["value"] == 1.0 and res["lvh_f1"]["value"] == 1.0
    reports.write_text(json.dumps({"record_id": "a/1", "report": "x"}) + "\n")     # a row of --no-grounded
    with pytest.raises(SystemExit, match="no findings"):
        bench.grounds(reports, tmp_path / "g.jsonl")


def test_agreement_counts_what_a_report_says_of_its_own_grounds(tmp_path):
    """bench/report_goals.py agreement: per finding, a report that repeats its grounds, one that
    contradicts them (another axis), one that adds LVH its grounds do not state (right or wrong by
    the reference) are each counted where they belong."""
    import json

    from ecgbatch.llava.grounding import GroundFinding

    bench = bench_module("report_goals")
    lad = GroundFinding("axis", "left axis deviation", "measurement", -40.0, "degrees", "left").to_dict()
    af = GroundFinding("AFIB", "atrial fibrillation", "probe", probability=0.9, labelset="ptbxl-rhythm").to_dict()
    rows = [
        {"record_id": "a", "findings": [lad, af], "report": "Atrial fibrillation. Left axis deviation."},
        {"record_id": "b", "findings": [lad], "report": "Sinus rhythm. Normal axis. Left ventricular hypertrophy."},
        {"record_id": "c", "findings": [], "report": "Sinus rhythm. Left ventricular hypertrophy."},
    ]
    refs = {"a": {"reference": "Atrial fibrillation. Left axis deviation.", "source": "x"},
            "b": {"reference": "Sinus rhythm. Left axis deviation.", "source": "x"},
            "c": {"reference": "Sinus rhythm. Left ventricular hypertrophy.", "source": "x"}}
    res = bench.agreement(rows, refs)
    assert res["AF/flutter"] == {"prompt_states": 1, "said": 1, "contrary": 0, "prompt_silent": 2, "added": 0,
                                 "added_right": 0}
    assert res["axis category"] == {"prompt_states": 2, "said": 1, "contrary": 1, "prompt_silent": 1, "added": 0,
                                    "added_right": 0}
    assert res["LVH"] == {"prompt_states": 0, "said": 0, "contrary": 0, "prompt_silent": 3, "added": 2,
                          "added_right": 1}

    (tmp_path / "references.jsonl").write_text("".join(json.dumps({"record_id": k, **v}) + "\n"
                                                        for k, v in refs.items()))
    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.agreement_table(tmp_path, reports)["x"] == res
    reports.write_text(json.dumps({"record_id": "a", "report": "x"}) + "\n")     # a row of --no-grounded
    with pytest.raises(SystemExit, match="no findings"):
        bench.agreement_table(tmp_path, reports)


def test_chat_bench_scores_the_axis_only_where_the_labels_state_one(capsys):
    """bench/chat_goals.py: a reference silent on the axis is not an axis "no" (many PTB-XL records
    have no heart_axis); the table counts each question on the rows whose truth is known."""
    bench = bench_module("chat_goals")
    assert bench.reference_truth("Sinus rhythm. Left axis deviation.")["axis"] is True
    assert bench.reference_truth("Sinus rhythm. Normal electrical axis.")["axis"] is False
    silent = bench.reference_truth("Atrial fibrillation. Left ventricular hypertrophy.")
    assert silent["axis"] is None and silent["af"] is True and silent["lvh"] is True and silent["bbb"] is False

    def row(axis_truth, said):
        qa = {"truth": "no", "said": "no", "answer": "No."}
        return {"record": "x", "hr_true": float("nan"), "hr_said": None, "af": qa, "lvh": qa, "bbb": qa,
                "axis": {"truth": axis_truth, "said": said, "answer": said}}

    summary = bench.report([row("yes", "yes"), row("no", "no"), row(None, "yes"), row(None, "yes")], "ptbxl2k")
    assert summary["axis"] == {"right": 1.0, "n": 2, "said_yes": 1, "said_no": 1}
    assert summary["af"]["n"] == 4 and summary["af"]["said_yes"] == 0
    assert "yes/no axis" in capsys.readouterr().out
