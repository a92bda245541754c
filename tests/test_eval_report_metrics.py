"""Report metrics equal the libraries called directly, and the CE-F1 arithmetic on known texts."""
from __future__ import annotations

import math

import pytest

from ecgbatch.eval import report_metrics as RM

PREDS = ["Sinus rhythm. Left axis deviation. Left ventricular hypertrophy.",
         "Atrial fibrillation with rapid ventricular response, no ST changes.",
         "Sinus bradycardia. Complete right bundle branch block.",
         "Normal ECG."]
REFS = ["sinus rhythm. left axis deviation. left ventricular hypertrophy. non-specific repolarization abnormalities",
        "atrial fibrillation. st segments are depressed in ii, iii, avf",
        "sinus bradycardia. incomplete right bundle branch block",
        "sinus rhythm. normal ecg"]


def test_bleu_equals_sacrebleu():
    import sacrebleu

    lp, lr = [p.lower() for p in PREDS], [r.lower() for r in REFS]
    assert RM.bleu(PREDS, REFS) == pytest.approx(sacrebleu.corpus_bleu(lp, [lr]).score, abs=1e-9)
    b1 = sacrebleu.metrics.BLEU(max_ngram_order=1).corpus_score(lp, [lr]).score
    assert RM.bleu(PREDS, REFS, 1) == pytest.approx(b1, abs=1e-9)
    assert RM.bleu(REFS, REFS) == pytest.approx(100.0)
    assert 0 < RM.bleu(PREDS, REFS) < RM.bleu(PREDS, REFS, 1) < 100


def test_rouge_l_equals_rouge_score():
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    direct = sum(sc.score(r.lower(), p.lower())["rougeL"].fmeasure for p, r in zip(PREDS, REFS)) / len(PREDS)
    assert RM.rouge_l(PREDS, REFS) == pytest.approx(100 * direct, abs=1e-9)


def test_input_checks():
    with pytest.raises(ValueError, match="one reference per prediction"):
        RM.bleu(PREDS, REFS[:2])
    with pytest.raises(ValueError, match="not a string"):
        RM.rouge_l(["a", None], ["a", "b"])


def test_clinical_f1_counts():
    res = RM.clinical_f1(PREDS, REFS)
    per = res["per_finding"]
    # sinus rhythm: predicted in 1 (item 0), referenced in items 0 and 3 -> tp 1, fn 1
    assert (per["sinus_rhythm"]["tp"], per["sinus_rhythm"]["fp"], per["sinus_rhythm"]["fn"]) == (1, 0, 1)
    assert per["sinus_rhythm"]["f1"] == pytest.approx(100 * 2 / 3)
    # RBBB predicted against an *incomplete* RBBB reference: a false positive
    assert (per["rbbb"]["tp"], per["rbbb"]["fp"], per["rbbb"]["fn"]) == (0, 1, 0)
    # "no ST changes" is negated; the reference has ST depression -> a miss
    assert (per["st_t_change"]["tp"], per["st_t_change"]["fn"]) == (0, 2)
    assert per["atrial_fibrillation"]["f1"] == 100.0
    rhythm = ["sinus_rhythm", "sinus_bradycardia", "atrial_fibrillation"]
    assert res["ce_rhythm_findings"] == rhythm
    assert res["ce_rhythm_f1"] == pytest.approx((100 * 2 / 3 + 100 + 100) / 3)
    assert "rbbb" not in res["ce_disease_findings"]        # no reference has it: not averaged
    assert math.isnan(per["rvh"]["f1"])


def test_meteor_equals_nltk():
    try:
        wn = RM.wordnet()
    except RM.MeteorUnavailable as exc:
        pytest.skip(str(exc))
    from nltk.translate.meteor_score import meteor_score

    tok = RM._TOKEN.findall
    direct = sum(meteor_score([tok(r.lower())], tok(p.lower()), wordnet=wn) for p, r in zip(PREDS, REFS)) / len(PREDS)
    assert RM.meteor(PREDS, REFS) == pytest.approx(100 * direct, abs=1e-9)
    assert RM.meteor(REFS, REFS) > 99
    res = RM.report_metrics(PREDS, REFS)
    assert res["meteor"] == pytest.approx(100 * direct, abs=1e-9) and "meteor_skipped" not in res


def test_report_metrics_table_rows():
    res = RM.report_metrics(PREDS, REFS, with_meteor=False)
    assert res["meteor"] is None and res["meteor_skipped"]
    rows = {r[0]: r for r in RM.comparison_rows(res)}
    assert rows["BLEU-4"][2] == "11.19" and rows["ROUGE-L"][2] == "29.93" and rows["METEOR"][2] == "35.10"
    assert rows["CE-Rhythm F1"][2] == "43.39" and rows["METEOR"][1] == "n/a"
    assert rows["BLEU-4"][1] == f"{res['bleu4']:.2f}"



def test_rouge_leaves_the_root_logger_and_stderr_as_they_were():
    """rouge-score logs through absl: its first log call runs logging.basicConfig() on a bare root
    logger (a handler bound to the sys.stderr of that moment), and absl's own handler closes the
    stream it was made with when logging's handlers are shut down (vLLM's dictConfig does) unless
    that is the current sys.stderr: a redirected stderr then dies under its owner."""
    import io
    import logging
    import sys

    from absl import logging as absl_logging

    root = logging.getLogger()
    saved = list(root.handlers)
    for h in saved:
        root.removeHandler(h)
    borrowed, old = io.StringIO(), sys.stderr
    try:
        absl_logging.get_absl_handler().python_handler.setStream(borrowed)   # as if made under a redirect
        RM.rouge_l(["sinus rhythm"], ["sinus rhythm"])
        assert root.handlers == []
        absl_logging.get_absl_handler().python_handler.close()   # as logging.config.dictConfig does
        assert not borrowed.closed
    finally:
        sys.stderr = old
        for h in saved:
            root.addHandler(h)
