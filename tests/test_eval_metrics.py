"""Metrics against hand-computed small cases (and sklearn, when it is installed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ecgbatch.eval import metrics as M


def test_auc_hand_cases():
    # 4 pos-neg pairs: (0.35 vs 0.1 ok, 0.35 vs 0.4 wrong, 0.8 vs both ok) -> 3/4
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half: (1 + 0.5 + 2) / 4
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)
    assert M.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.roc_auc([1, 1, 0], [0.9, 0.8, 0.1]) == pytest.approx(1.0)
    assert M.roc_auc([1, 1, 0], [0.1, 0.2, 0.9]) == pytest.approx(0.0)
    assert math.isnan(M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_macro_auc_skips_undefined_classes():
    y = np.array([[0, 1], [0, 1], [1, 1], [1, 1]])
    s = np.array([[0.1, 0.3], [0.4, 0.2], [0.35, 0.1], [0.8, 0.9]])
    per = M.per_class_auc(y, s)
    assert per[0] == pytest.approx(0.75) and math.isnan(per[1])
    assert M.macro_auc(y, s) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="AUC undefined"):
        M.macro_auc(y[:, 1:], s[:, 1:])


def test_best_f1_hand_case():
    y = [1, 0, 1, 0, 1]
    s = [0.9, 0.8, 0.7, 0.3, 0.2]
    # thresholds 0.9: F1 .5, 0.8: .4, 0.7: 2/3, 0.3: 4/7, 0.2: (tp 3, fp 2) 6/8
    f1, thr = M.best_f1_threshold(y, s)
    assert f1 == pytest.approx(0.75) and thr == pytest.approx(0.2)
    assert M.f1_at_threshold(y, s, 0.7) == pytest.approx(2 / 3)
    assert M.f1_at_threshold(y, s, 0.95) == 0.0
    # ECG-Chat's accuracy uses score > threshold: preds [1,1,1,1,0] -> 2 of 5 right
    assert M.accuracy_at_best_f1(np.array(y)[:, None], np.array(s)[:, None]) == pytest.approx(0.4)


def test_best_f1_with_tied_scores():
    # 0.5 is one threshold for both tied samples: tp 1, fp 1 -> .5; at 0.1: tp 2, fp 1 -> .8
    f1, thr = M.best_f1_threshold([1, 0, 1], [0.5, 0.5, 0.1])
    assert f1 == pytest.approx(0.8) and thr == pytest.approx(0.1)
    assert M.best_f1_threshold([0, 0], [0.1, 0.2]) == (0.0, float("inf"))


def test_fixed_threshold_from_validation():
    y_val = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s_val = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.7], [0.1, 0.1]])
    thr = M.choose_thresholds(y_val, s_val)
    assert thr.tolist() == pytest.approx([0.6, 0.7])
    y_test = np.array([[1, 1], [0, 0], [1, 0]])
    s_test = np.array([[0.65, 0.75], [0.61, 0.2], [0.5, 0.9]])
    # class 0 at 0.6: preds [1,1,0] vs [1,0,1] -> tp1 fp1 fn1 = .5; class 1 at .7: [1,0,1] vs [1,0,0] -> 2/3
    f1 = M.f1_at_fixed_thresholds(y_test, s_test, thr)
    assert f1.tolist() == pytest.approx([0.5, 2 / 3])
    assert M.macro_f1_val_threshold(y_val, s_val, y_test, s_test) == pytest.approx((0.5 + 2 / 3) / 2)
    # the oracle on the same test set can only be as good or better
    assert M.macro_best_f1(y_test, s_test) >= M.macro_f1_val_threshold(y_val, s_val, y_test, s_test)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same"):
        M.macro_auc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0 and 1"):
        M.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        M.roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="one threshold per class"):
        M.f1_at_fixed_thresholds(np.zeros((2, 2)), np.zeros((2, 2)), [0.5])


def test_agrees_with_sklearn_on_random_data():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(200, 5))
    s = np.round(rng.random((200, 5)) + 0.3 * y, 2)  # rounding makes ties
    for c in range(5):
        assert M.roc_auc(y[:, c], s[:, c]) == pytest.approx(sk.roc_auc_score(y[:, c], s[:, c]))
        p, r, _ = sk.precision_recall_curve(y[:, c], s[:, c])
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * p * r / (p + r))
        assert M.best_f1_threshold(y[:, c], s[:, c])[0] == pytest.approx(f1.max())
