"""The issue-11 rhythm goals computed from report texts (ecgbatch.eval.llava_eval)."""
from __future__ import annotations

import math

from ecgbatch.eval.llava_eval import goal_rows, rhythm_goals


def test_rhythm_goals_on_known_texts():
    refs = ["Sinus rhythm. Normal ECG.", "Atrial fibrillation. Left axis deviation.",
            "Sinus bradycardia.", "Atrial flutter.", "Left bundle branch block."]
    preds = ["Sinus rhythm.", "Atrial fibrillation.", "Atrial fibrillation with rapid response.",
             "Sinus rhythm.", "Sinus rhythm. Left bundle branch block."]
    g = rhythm_goals(preds, refs)
    # AF/flutter: refs 1 and 3 positive; preds 1 and 2 positive -> tp 1, fp 1, fn 1
    assert (g["af_tp"], g["af_fp"], g["af_fn"]) == (1, 1, 1) and math.isclose(g["af_f1"], 0.5)
    # records whose reference states a rhythm: 0..3; correct: 0 and 1 (2 and 3 are wrong)
    assert g["rhythm_n"] == 4 and math.isclose(g["rhythm_correct"], 0.5)
    # sinus references without AF: 0 and 2; record 2 is claimed AF
    assert g["sinus_n"] == 2 and math.isclose(g["false_af_rate"], 0.5)
    rows = {r[0]: r for r in goal_rows({**g, "rouge_l": 31.0})}
    assert rows["af_f1"][3] == "no" and rows["rouge_l"][3] == "yes" and rows["false_af_rate"][3] == "no"


def test_rhythm_goals_perfect_and_negated():
    refs = ["Atrial fibrillation.", "Sinus rhythm. No atrial fibrillation."]
    g = rhythm_goals(list(refs), refs)
    assert g["af_f1"] == 1.0 and g["rhythm_correct"] == 1.0 and g["false_af_rate"] == 0.0
