"""ECG-Instruct data from the real shared records: every yes/no answer agrees with the record's
own labels (read here independently: LUDB's ludb.csv, Challenge #Dx codes, PTB-XL scp_codes),
splits keep patients apart, and the output is deterministic in the seed."""
from __future__ import annotations

import ast
import csv

import pytest

from ecgbatch.training.instruct import InstructSource, PROFILES, build_instruct, reconcile
from ecgbatch.training.instruct_format import check_conversations
from ecgbatch.training.pairs import SourceSpec

pytestmark = pytest.mark.shared

N = 12   # records per source for the repeated builds


def _sources(shared_data, n=N):
    d = shared_data
    return [
        InstructSource(SourceSpec("ludb", str(d / "ludb" / "data"), "header", limit=n)),
        InstructSource(SourceSpec("cinc2021", str(d / "cinc2021"), "header", dx_mapping=str(d / "cinc2021"), limit=n)),
        InstructSource(SourceSpec("ptbxl", str(d / "ptbxl" / "records"), "ptbxl",
                                  metadata=str(d / "ptbxl" / "ptbxl_database_subset.csv"),
                                  statements=str(d / "ptbxl" / "scp_statements.csv"),
                                  read_options={"fs": 500, "layout": "samples_first"}, limit=n)),
    ]


@pytest.fixture(scope="module")
def built(shared_data):
    """All 477 labelled shared records (no measurements: ~10 s)."""
    return build_instruct(_sources(shared_data, None), seed=3, val_fraction=0.3, measure_method=None)


# Independent ground truth per source: finding -> does the record's raw label say so?
LUDB_COLS = {"atrial_fibrillation": ("Rhythms", "Atrial fibrillation"),
             "atrial_flutter": ("Rhythms", "Atrial flutter"),
             "sinus_bradycardia": ("Rhythms", "Sinus bradycardia"),
             "rbbb": ("Conduction abnormalities", "Complete right bundle branch block"),
             "lbbb": ("Conduction abnormalities", "Complete left bundle branch block"),
             "av_block": ("Conduction abnormalities", "av block"),
             "lvh": ("Hypertrophies", "Left ventricular hypertrophy"),
             "axis_left": ("Electric axis of the heart", "left axis deviation")}
SNOMED = {"atrial_fibrillation": {"164889003"}, "atrial_flutter": {"164890007"},
          "rbbb": {"59118001", "713427006"}, "lbbb": {"164909002", "733534002"},
          "av_block": {"270492004", "195042002", "27885002", "233917008", "54016002", "28189009"},
          "lvh": {"164873001"}, "sinus_bradycardia": {"426177001"}}
SCP = {"atrial_fibrillation": {"AFIB"}, "atrial_flutter": {"AFLT"}, "rbbb": {"CRBBB"}, "lbbb": {"CLBBB"},
       "av_block": {"1AVB", "2AVB", "3AVB"}, "lvh": {"LVH"}, "sinus_bradycardia": {"SBRAD"}, "sinus_rhythm": {"SR"}}


def _truth(shared_data):
    d = shared_data
    with open(d / "ludb" / "ludb.csv", newline="") as fh:
        ludb = {r["ID"]: r for r in csv.DictReader(fh)}
    with open(d / "ptbxl" / "ptbxl_database_subset.csv", newline="") as fh:
        ptb = {str(int(r["ecg_id"])): ast.literal_eval(r["scp_codes"]) for r in csv.DictReader(fh)}

    def says(source, rid, key):
        if source == "ludb":
            if key not in LUDB_COLS:
                return None
            col, value = LUDB_COLS[key]
            return value.lower() in ludb[rid][col].lower().replace("-", " ")
        if source == "cinc2021":
            if key not in SNOMED:
                return None
            for line in (d / "cinc2021" / f"{rid}.hea").read_text().splitlines():
                if line.startswith("# Dx:"):
                    return bool(set(line[5:].strip().split(",")) & SNOMED[key])
        if source == "ptbxl":
            return bool(set(ptb[str(int(rid))]) & SCP[key]) if key in SCP else None
        return None
    return says


def test_yes_no_answers_agree_with_the_records_labels(built, shared_data):
    says = _truth(shared_data)
    checked = {"finding_yes": 0, "finding_no": 0}
    for it in built.items:
        meta = it["meta"]
        answers = [t["value"] for t in it["conversations"][1::2]]
        for fact, answer in zip(meta["facts"], answers):
            if fact["kind"] not in checked:
                continue
            assert answer.startswith("Yes" if fact["present"] else "No"), (it["id"], fact, answer)
            keys = [fact["finding"]] if "finding" in fact else fact["findings"]   # a group question
            said = [says(meta["source"], meta["record_id"], k) for k in keys]
            truth = None if None in said else any(said)
            if truth is not None:
                assert truth == fact["present"], (it["id"], fact)
                checked[fact["kind"]] += 1
    assert checked["finding_yes"] >= 150 and checked["finding_no"] >= 150, checked
    # balanced: a record's dialogues hold no more "no" than "yes" turns (at least one "no")
    kinds = [f["kind"] for it in built.items for f in it["meta"]["facts"]]
    n_yes, n_no = kinds.count("finding_yes"), kinds.count("finding_no")
    assert 0.5 * n_yes <= n_no <= 1.5 * n_yes, (n_yes, n_no)


def test_facts_come_from_labels_and_profiles(built):
    for f in built.records:
        assert not set(f.present) & set(f.absent) and not set(f.uncertain) & set(f.absent)
        if f.source == "cinc2021" and f.record_id.startswith("A"):   # CPSC2018: nine classes only
            assert set(f.absent) <= set(PROFILES["challenge-cpsc"])
    ludb1 = next(f for f in built.records if f.source == "ludb" and f.record_id == "1")
    assert ludb1.present == ["sinus_bradycardia", "lvh", "st_t_change", "axis_left"]
    assert "sinus_rhythm" in ludb1.uncertain          # a sinus bradycardia: "no sinus rhythm" unsafe
    assert "ischemia" in ludb1.uncertain              # repolarization abnormalities: no "no ischemia"
    assert "atrial_fibrillation" in ludb1.absent and "rvh" in ludb1.absent


def test_items_are_valid_ecg_instruct_with_provenance(built):
    kinds = {it["meta"]["kind"] for it in built.items}
    assert kinds == {"report", "dialogue"}
    for it in built.items:
        check_conversations(it["conversations"], it["id"])
        m = it["meta"]
        assert {"source", "record_id", "patient", "split", "facts", "record_facts"} <= set(m)
        assert len(m["facts"]) == len(it["conversations"]) // 2
    rep = next(it for it in built.items if it["id"] == "cinc2021/A0689/report")
    assert rep["conversations"][1]["value"] == "Atrial fibrillation."


def test_patient_split_is_disjoint_and_seeded(built, shared_data):
    by_split = {}
    for it in built.items:
        by_split.setdefault(it["meta"]["split"], set()).add(it["meta"]["patient"])
    assert set(by_split) == {"train", "val"}
    assert not by_split["train"] & by_split["val"]
    for src in ("ludb", "cinc2021", "ptbxl"):   # every source on both sides
        assert any(p.startswith(src) for p in by_split["val"]) and any(p.startswith(src) for p in by_split["train"])
    small = build_instruct(_sources(shared_data), seed=3, val_fraction=0.3, measure_method=None)
    again = build_instruct(_sources(shared_data), seed=3, val_fraction=0.3, measure_method=None)
    assert again.items == small.items
    other = build_instruct(_sources(shared_data), seed=4, val_fraction=0.3, measure_method=None)
    assert [it["conversations"] for it in other.items] != [it["conversations"] for it in small.items]


def test_measured_answers_use_measure(shared_data):
    from ecgbatch.io import read_record
    from ecgbatch.signal import measure

    src = [InstructSource(SourceSpec("ludb", str(shared_data / "ludb" / "data"), "header", limit=3))]
    b = build_instruct(src, seed=0, measure_method="multilead", dialogues=6)
    seen = 0
    for f in b.records:
        m = measure(read_record(f.path), method="multilead")
        if "hr_bpm" in f.measurements:
            assert f.measurements["hr_bpm"] == int(round(m.hr_bpm))
        for k in ("pr_ms", "qrs_ms", "qt_ms", "qtc_ms"):
            if k in f.measurements:
                assert f.measurements[k] == int(round(getattr(m, k)))
    for it in b.items:
        for fact, ans in zip(it["meta"]["facts"], [t["value"] for t in it["conversations"][1::2]]):
            if fact["kind"] == "rate":
                assert f"{fact['hr_bpm']} beats per minute" in ans
                seen += 1
            if fact["kind"] == "interval":
                (k, v), = [(k, v) for k, v in fact.items() if k.endswith("_ms")]
                assert f"{v} ms" in ans
                seen += 1
    assert seen > 0


def test_reconcile_drops_contradictions():
    absent, meas = reconcile(["sinus_bradycardia"], ["av_block", "sinus_tachycardia"],
                             {"hr_bpm": 75, "pr_ms": 230})
    assert "hr_bpm" not in meas and meas["pr_ms"] == 230 and absent == ["sinus_tachycardia"]
    absent, meas = reconcile(["av_block"], ["sinus_bradycardia"], {"hr_bpm": 52, "pr_ms": 160})
    assert "pr_ms" not in meas and absent == []


def test_source_options_are_checked():
    with pytest.raises(ValueError, match="annotates"):
        InstructSource.from_dict({"name": "x", "records": "y", "annotates": "everything"})
    with pytest.raises(ValueError, match="unknown findings"):
        InstructSource.from_dict({"name": "x", "records": "y", "annotates": ["afib"]})
    s = InstructSource.from_dict({"name": "x", "records": "y", "annotates": ["atrial_fibrillation"]})
    assert s.annotates == ("atrial_fibrillation",)


def test_a_report_states_the_measured_axis_when_the_labels_state_none(shared_data):
    """Challenge labels never state an axis, LUDB's always do: the first get the measured axis
    (the grounded prompt's convention, marked measured), the second keep their label."""
    from ecgbatch.io import read_record
    from ecgbatch.llava.grounding import GROUND_AXIS_CONVENTION
    from ecgbatch.signal import measure
    from ecgbatch.signal.axis import axis_category
    from ecgbatch.training.instruct import MEASURED_AXIS, MEASURED_LVH

    d = shared_data
    src = [InstructSource(SourceSpec("cinc2021", str(d / "cinc2021"), "header", dx_mapping=str(d / "cinc2021"), limit=4)),
           InstructSource(SourceSpec("ludb", str(d / "ludb" / "data"), "header", limit=2))]
    b = build_instruct(src, seed=0, measure_method="multilead", dialogues=1)
    n_measured = 0
    for f in b.records:
        m = measure(read_record(f.path), method="multilead")
        measured = [s for s in f.statements if s.get("measured") and s["text"] != MEASURED_LVH[1]]
        axis_keys = [k for k in f.present if k.startswith("axis_")]
        if f.source == "ludb":
            assert not measured and "axis" in f.report.lower()   # the label's axis, not the measured one
            continue
        cat = axis_category(m.axis_deg, GROUND_AXIS_CONVENTION)
        if m.quality != "ok" or cat not in MEASURED_AXIS:
            assert not measured
            continue
        key, phrase = MEASURED_AXIS[cat]
        assert measured == [{"text": phrase, "certain": True, "measured": True}] and axis_keys == [key]
        assert f.report.endswith(phrase)      # the axis comes last
        n_measured += 1
    assert n_measured >= 2
    reports = {it["meta"]["record_id"]: it["conversations"][1]["value"] for it in b.items if it["meta"]["kind"] == "report"}
    assert any("axis" in r.lower() for rid, r in reports.items() if rid.startswith(("A", "E", "HR", "JS", "Q")))


def test_a_report_states_lvh_by_voltage_when_the_labels_state_none(shared_data):
    """A record whose QRS voltages meet an LVH criterion and whose labels state no LVH gets
    "left ventricular hypertrophy by voltage criteria" (marked measured; "lvh" present, not
    absent); a record below the criteria, or labelled LVH, gets none. The goals' references drop
    it again (bench/report_goals.labels_only), with the measured axis after it."""
    from helpers.bench import bench_module

    from ecgbatch.io import read_record
    from ecgbatch.signal import measure
    from ecgbatch.text.findings import extract_findings
    from ecgbatch.training.instruct import MEASURED_LVH
    from ecgbatch.training.instruct_questions import report_text

    d = shared_data
    src = [InstructSource(SourceSpec("ptbxl2k", str(d / "ptbxl2k" / "records100"), "ptbxl",
                                     metadata=str(d / "ptbxl2k" / "ptbxl_database.csv"),
                                     statements=str(d / "ptbxl2k" / "scp_statements.csv"), limit=60))]
    b = build_instruct(src, seed=0, measure_method="multilead", dialogues=0)
    goals = bench_module("report_goals")
    n_added = 0
    for f in b.records:
        m = measure(read_record(f.path), method="multilead")
        added = [s for s in f.statements if s.get("measured") and s["text"] == MEASURED_LVH[1]]
        labelled = [s["text"] for s in f.statements if not s.get("measured")]
        lab_lvh = extract_findings(". ".join(labelled)).get("lvh")
        if m.quality == "ok" and m.lvh_voltage and lab_lvh is None:
            assert added == [{"text": MEASURED_LVH[1], "certain": True, "measured": True}]
            assert "lvh" in f.present and "lvh" not in f.absent
            assert extract_findings(f.report).get("lvh") == "present"
            reference = goals.labels_only(report_text(f.report), f.to_dict())
            assert extract_findings(reference).get("lvh") is None and "voltage criteria" not in reference
            n_added += 1
        else:
            assert not added
    assert n_added >= 2
