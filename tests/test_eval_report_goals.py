"""Issue 20's report goals (ecgbatch.eval.report_goals) on real LUDB reference texts."""
from __future__ import annotations

import math

import pytest

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
