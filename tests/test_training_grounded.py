"""Grounded instruction items whose answers their own prompt supports
(ecgbatch.training.instruct_grounded: turn_supported, supported_turns, apply_grounded_prompts with
only_supported): the groundings come from ``ground`` on measurement rows, and from real records
of the sample archive measured with the multilead method; the answers are the instruction
builder's own phrasings."""
from __future__ import annotations

from pathlib import Path

import pytest

from ecgbatch.llava.grounding import ground
from ecgbatch.training.instruct_format import InstructItem
from ecgbatch.training.instruct_grounded import (apply_grounded_prompts, evidence_first, evidence_text,
                                                 evidence_verdict, supported_turns, turn_supported)

LEFT = ground({"hr_bpm": 72, "rr_nrmssd": 0.02, "axis_deg": -20, "qrs_ms": 90})      # LUDB convention: left
NORMAL = ground({"hr_bpm": 72, "rr_nrmssd": 0.02, "axis_deg": 50, "qrs_ms": 90})
GROUP_AXIS = ["axis_left", "axis_right"]


def test_an_axis_answer_must_name_the_prompts_category():
    assert "left axis deviation" in LEFT.text and "normal axis" in NORMAL.text
    yes = {"kind": "finding_yes", "findings": GROUP_AXIS, "present": True}
    no = {"kind": "finding_no", "findings": GROUP_AXIS, "present": False}
    assert turn_supported(yes, "Yes, the ECG shows left axis deviation.", LEFT)
    assert not turn_supported(no, "No, the electrical axis is normal.", LEFT)
    assert turn_supported(no, "No, the electrical axis is normal.", NORMAL)
    assert not turn_supported(yes, "Yes, the ECG shows left axis deviation.", NORMAL)
    assert not turn_supported({"kind": "axis", "finding": "axis_normal"}, "The electrical axis is normal.", LEFT)
    assert turn_supported({"kind": "finding_no", "finding": "axis_right", "present": False},
                          "No, the ECG does not show right axis deviation.", LEFT)
    # a prompt that states no axis does not judge an axis answer
    assert turn_supported(no, "No, the electrical axis is normal.", ground({"hr_bpm": 72}))


def test_other_answers_are_judged_by_the_contradiction_rules():
    af = {"kind": "finding_yes", "finding": "atrial_fibrillation", "present": True}
    assert not turn_supported(af, "Yes, the ECG shows atrial fibrillation.", NORMAL)     # regular RR
    irregular = ground({"hr_bpm": 110, "rr_nrmssd": 0.3, "axis_deg": 50})
    assert turn_supported(af, "Yes, the ECG shows atrial fibrillation.", irregular)
    assert turn_supported({"kind": "rate", "hr_bpm": 72}, "The measured heart rate is about 72 beats per minute.",
                          NORMAL)
    assert not turn_supported({"kind": "rhythm", "findings": ["sinus_bradycardia"]},
                              "The rhythm is sinus bradycardia.", NORMAL)            # 72 bpm


def _item(turns, ecg_first=True, path="x.hea"):
    conv = []
    for j, (q, a, _) in enumerate(turns):
        if j == 0:
            q = f"<ecg>\n{q}" if ecg_first else f"{q}\n<ecg>"
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return InstructItem("r/dialogue0", path, Path(path), conv,
                        {"kind": "dialogue", "facts": [f for _, _, f in turns]})


AXIS_NO = ("Is the electrical axis deviated?", "No, the electrical axis is normal.",
           {"kind": "finding_no", "findings": GROUP_AXIS, "present": False})
RATE = ("What is the heart rate?", "The measured heart rate is about 72 beats per minute.",
        {"kind": "rate", "hr_bpm": 72})
AF_NO = ("Is there atrial fibrillation?", "No, the ECG does not show atrial fibrillation.",
         {"kind": "finding_no", "finding": "atrial_fibrillation", "present": False})


@pytest.mark.parametrize("ecg_first", [True, False])
def test_unsupported_turns_leave_and_the_ecg_moves_to_the_new_first_question(ecg_first):
    item = _item([AXIS_NO, RATE, AF_NO], ecg_first)
    out, n = supported_turns(item, LEFT)
    assert n == 1 and [f["kind"] for f in out.meta["facts"]] == ["rate", "finding_no"]
    first = out.conversations[0]["value"]
    want = "<ecg>\nWhat is the heart rate?" if ecg_first else "What is the heart rate?\n<ecg>"
    assert first == want
    assert [t["value"] for t in out.conversations[1:]] == [RATE[1], AF_NO[0], AF_NO[1]]
    assert sum("<ecg>" in t["value"] for t in out.conversations) == 1
    assert item.conversations[0]["value"].endswith(AXIS_NO[0]) or item.conversations[0]["value"].startswith(AXIS_NO[0])

    same, n = supported_turns(item, NORMAL)
    assert n == 0 and same is item
    gone, n = supported_turns(_item([AXIS_NO]), LEFT)
    assert gone is None and n == 1
    # facts that do not list one fact per turn: kept whole
    odd = _item([AXIS_NO, RATE])
    odd.meta["facts"] = odd.meta["facts"][:1]
    assert supported_turns(odd, LEFT) == (odd, 0)


def test_apply_grounded_prompts_keeps_only_supported_answers_on_real_records(sample_archive):
    """A0689 is atrial fibrillation (irregular RR), HR03961 a sinus rhythm: an item answering
    "atrial fibrillation" for the sinus record loses that turn; the AF record keeps it."""
    from ecgbatch.io import read_record

    af_yes = ("Does this ECG show atrial fibrillation?", "Yes, the ECG shows atrial fibrillation.",
              {"kind": "finding_yes", "finding": "atrial_fibrillation", "present": True})
    items = [_item([RATE, af_yes], path=str(sample_archive / "cinc2021" / f"{rid}.hea"))
             for rid in ("A0689", "HR03961")]
    logs = []
    kept, n = apply_grounded_prompts(items, 1.0, 0, lambda it: read_record(it.ecg_path), log=logs.append,
                                     only_supported=True)
    assert n == 2 and len(kept) == 2
    af, sinus = kept
    assert "irregular RR" in af.conversations[0]["value"] and len(af.conversations) == 4
    assert "regular RR" in sinus.conversations[0]["value"] and len(sinus.conversations) == 2
    assert sinus.conversations[1]["value"].startswith("The measured heart rate")
    assert any("1 turns of the grounded items disagree" in m for m in logs)
    # without only_supported every turn stays
    kept, _ = apply_grounded_prompts(items, 1.0, 0, lambda it: read_record(it.ecg_path), log=logs.append)
    assert [len(k.conversations) for k in kept] == [4, 4]


VOLTAGES = ground({"hr_bpm": 72, "rr_nrmssd": 0.02, "axis_deg": -20, "qrs_ms": 130, "sokolow_lyon_mv": 4.1,
                   "cornell_mv": 2.9})


def test_evidence_text_restates_only_what_the_prompt_says_about_the_finding():
    assert evidence_text(GROUP_AXIS, LEFT) == "Measured: QRS axis -20 degrees (left axis deviation)."
    assert evidence_text(["lvh"], VOLTAGES) == ("Measured: Sokolow-Lyon 4.1 mV, Cornell 2.9 mV "
                                                "(LVH voltage criteria met).")
    assert evidence_text(["rbbb", "lbbb"], VOLTAGES) == "Measured: QRS 130 ms."
    assert evidence_text(["atrial_fibrillation"], LEFT) == "Measured: heart rate 72 bpm (regular RR)."
    # nothing in the prompt about it: no evidence (LEFT has no voltages; no probe speaks of MI)
    assert evidence_text(["lvh"], LEFT) == "" and evidence_text(["infarction"], VOLTAGES) == ""
    # every piece is a piece of the prompt, in its words
    for keys in (GROUP_AXIS, ["lvh"], ["rbbb"], ["atrial_fibrillation"]):
        for part in evidence_text(keys, VOLTAGES).removeprefix("Measured: ").rstrip(".").split("; "):
            assert part in VOLTAGES.text


def test_evidence_first_puts_the_prompts_facts_before_the_labels_verdict():
    lvh_yes = ("Is there left ventricular hypertrophy?", "Yes, the ECG shows left ventricular hypertrophy.",
               {"kind": "finding_yes", "finding": "lvh", "present": True})
    item = _item([AXIS_NO, RATE, lvh_yes, AF_NO])
    out, n = evidence_first(item, VOLTAGES)
    answers = [t["value"] for t in out.conversations[1::2]]
    assert n == 3
    # the verdict stays the labels' even where the prompt's axis says otherwise
    assert answers[0] == "Measured: QRS axis -20 degrees (left axis deviation). No, the electrical axis is normal."
    assert answers[1] == RATE[1]                                  # not a yes/no turn
    assert answers[2].endswith(" Yes, the ECG shows left ventricular hypertrophy.")
    assert answers[2].startswith("Measured: Sokolow-Lyon 4.1 mV")
    assert answers[3] == "Measured: heart rate 72 bpm (regular RR). No, the ECG does not show atrial fibrillation."
    assert [t["value"] for t in out.conversations[0::2]] == [t["value"] for t in item.conversations[0::2]]
    # the evidence never reads as a yes or a no: the bench's yes/no reading still gets the verdict
    import re
    for a, want in zip(answers, ("no", None, "yes", "no")):
        if want:
            assert bool(re.search(r"\byes\b", a.lower())) == (want == "yes")
            assert bool(re.search(r"\bno\b|\bnot\b", a.lower())) == (want == "no")
    # a prompt with nothing on any of its findings changes nothing
    assert evidence_first(_item([lvh_yes]), LEFT) == (_item([lvh_yes]), 0)


def test_evidence_first_on_real_records_through_apply_grounded_prompts(sample_archive):
    from ecgbatch.io import read_record

    items = [_item([AF_NO, RATE], path=str(sample_archive / "cinc2021" / f"{rid}.hea")) for rid in ("A0689", "HR03961")]
    logs = []
    kept, n = apply_grounded_prompts(items, 1.0, 0, lambda it: read_record(it.ecg_path), log=logs.append,
                                     evidence=True)
    assert n == 2
    af, sinus = (k.conversations[1]["value"] for k in kept)
    assert "irregular RR" in af and af.endswith(AF_NO[1]) and af.startswith("Measured: heart rate")
    assert "(regular RR)" in sinus and sinus.endswith(AF_NO[1])
    assert any("evidence first: 2 yes/no answers" in m for m in logs)


def test_evidence_first_needs_the_grounded_prompt():
    from ecgbatch.training.llava_config import LlavaDataConfig, LlavaJobConfig

    with pytest.raises(ValueError, match="evidence_first .* needs data.grounded"):
        LlavaJobConfig(name="x", data=LlavaDataConfig(evidence_first=True))
    assert LlavaJobConfig(name="x", data=LlavaDataConfig(evidence_first=True, grounded=0.9)).data.evidence_first


def test_evidence_verdict_decides_only_where_the_prompts_facts_do():
    assert evidence_verdict(GROUP_AXIS, LEFT) is True and evidence_verdict(GROUP_AXIS, NORMAL) is False
    assert evidence_verdict(["axis_normal"], NORMAL) is True and evidence_verdict(["axis_right"], LEFT) is False
    assert evidence_verdict(GROUP_AXIS, ground({"hr_bpm": 72})) is None            # no axis measured
    assert evidence_verdict(["lvh"], VOLTAGES) is True                              # criterion met
    not_met = ground({"hr_bpm": 72, "sokolow_lyon_mv": 1.2, "cornell_mv": 0.8})
    assert evidence_verdict(["lvh"], not_met) is None                               # not met: undecided
    assert evidence_verdict(["atrial_fibrillation"], LEFT) is False                 # regular RR, no probe
    assert evidence_verdict(["atrial_fibrillation"], ground({"hr_bpm": 110, "rr_nrmssd": 0.3})) is None
    assert evidence_verdict(["rbbb", "lbbb"], LEFT) is False                        # QRS 90 ms
    assert evidence_verdict(["rbbb", "lbbb"], VOLTAGES) is None                     # QRS 130 ms, no probe
    assert evidence_verdict(["sinus_bradycardia"], ground({"hr_bpm": 48})) is True
    assert evidence_verdict(["sinus_bradycardia"], LEFT) is False
    assert evidence_verdict(["infarction"], VOLTAGES) is None


@pytest.mark.parametrize("ecg_first", [True, False])
def test_consistent_evidence_first_leaves_out_verdicts_the_facts_contradict(ecg_first):
    lvh_no = ("Is there left ventricular hypertrophy?", "No, the ECG does not show left ventricular hypertrophy.",
              {"kind": "finding_no", "finding": "lvh", "present": False})
    item = _item([AXIS_NO, RATE, lvh_no, AF_NO], ecg_first)
    out, n = evidence_first(item, VOLTAGES, consistent=True)
    # the axis "no" (prompt: left axis deviation) and the LVH "no" (criterion met) leave; AF "no" stays
    assert [f["kind"] for f in out.meta["facts"]] == ["rate", "finding_no"] and n == 1
    assert out.conversations[0]["value"] == ("<ecg>\n" + RATE[0] if ecg_first else RATE[0] + "\n<ecg>")
    assert out.conversations[3]["value"].startswith("Measured: heart rate 72 bpm (regular RR). No,")
    assert evidence_first(item, VOLTAGES)[0].meta["facts"] == item.meta["facts"]    # not consistent: all stay
    gone, _ = evidence_first(_item([AXIS_NO]), LEFT, consistent=True)
    assert gone is None
    kept, n = evidence_first(_item([AXIS_NO]), NORMAL, consistent=True)
    assert n == 1 and kept.conversations[1]["value"].startswith("Measured: QRS axis 50 degrees (normal axis). No,")
    from ecgbatch.training.llava_config import LlavaDataConfig, LlavaJobConfig

    with pytest.raises(ValueError, match="true, false or consistent"):
        LlavaJobConfig(name="x", data=LlavaDataConfig(evidence_first="always", grounded=0.9))


def test_yes_no_items_draw_as_many_yes_as_no_answers_per_question():
    """data.yes_no: one-question items on AF, LVH, bundle branch block and axis deviation, n answered
    "yes" and n "no" by the labels of the report items' records; seeded; unknown names refused."""
    from ecgbatch.training.llava_config import LlavaDataConfig, LlavaJobConfig
    from ecgbatch.training.llava_job import yes_no_items

    def report(i, present, absent):
        return InstructItem(f"src/{i}/report", f"{i}.hea", Path(f"{i}.hea"),
                            [{"from": "human", "value": "<ecg>\nReport?"}, {"from": "gpt", "value": "x."}],
                            {"kind": "report", "patient": f"p{i}", "facts": [{"kind": "report"}],
                             "record_facts": {"present": present, "absent": absent}})

    items = ([report(i, ["lvh", "axis_left"], ["rbbb", "lbbb", "atrial_fibrillation"]) for i in range(5)]
             + [report(i, ["axis_normal"], ["lvh", "rbbb", "lbbb", "atrial_fibrillation"]) for i in range(5, 12)]
             + [report(12, ["rbbb"], [])])
    out = yes_no_items(items, {"lvh": 3, "bbb": 2, "axis": 4}, seed=1)
    got = {}
    for it in out:
        (fact,) = it.meta["facts"]
        name = it.id.split("yes_no-")[1]
        got.setdefault(name, []).append(fact["present"])
        assert it.meta["kind"] == "dialogue" and len(it.conversations) == 2
        assert it.conversations[0]["value"].startswith("<ecg>\n")
        assert it.conversations[1]["value"].startswith("Yes," if fact["present"] else "No,")
    assert sorted(got["lvh"]) == [False] * 3 + [True] * 3
    assert sorted(got["bbb"]) == [False, False, True]                    # one record has a BBB
    assert sorted(got["axis"]) == [False] * 4 + [True] * 4
    assert [it.id for it in yes_no_items(items, {"lvh": 3}, seed=1)] == \
        [it.id for it in yes_no_items(items, {"lvh": 3}, seed=1)]
    with pytest.raises(ValueError, match="data.yes_no"):
        LlavaJobConfig(name="x", data=LlavaDataConfig(yes_no={"rhythm": 3}))
    with pytest.raises(ValueError, match="data.yes_no"):
        LlavaJobConfig(name="x", data=LlavaDataConfig(yes_no={"lvh": 0}))
