"""Multi-label classification metrics for zero-shot / linear-probe evaluation (numpy only).

Arrays: ``y_true`` [N, C] in {0, 1}, ``y_score`` [N, C] (higher = more likely). A single class may
be passed as 1-D arrays. ECG-Chat's protocol (``training/evaluation/metrics.py``): macro AUC,
macro best-threshold F1 and accuracy at that threshold, all over classes.
"""
from __future__ import annotations

import numpy as np


def _as_2d(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None] if s.ndim == 1 else s
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"y_true and y_score must have the same [N, C] shape, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(s).all():
        raise ValueError("y_score must be finite")
    return y.astype(bool), s


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve of one class (Mann-Whitney U with average ranks for ties).
    NaN when the class has no positives or no negatives (AUC is undefined)."""
    y, s = _as_2d(y_true, y_score)
    y, s = y[:, 0], s[:, 0]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over tied groups (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def per_class_auc(y_true, y_score) -> np.ndarray:
    y, s = _as_2d(y_true, y_score)
    return np.array([roc_auc(y[:, c], s[:, c]) for c in range(y.shape[1])])


def macro_auc(y_true, y_score) -> float:
    """Mean per-class AUC over the classes where it is defined (both labels present). sklearn's
    roc_auc_score, which ECG-Chat calls per class, raises on such classes instead; here they are
    skipped, and per_class_auc shows them as NaN. Raises if no class has an AUC."""
    a = per_class_auc(y_true, y_score)
    if np.isnan(a).all():
        raise ValueError("no class has both positive and negative examples: AUC undefined")
    return float(np.nanmean(a))


def _f1(tp, fp, fn):
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def best_f1_threshold(y_true, y_score) -> tuple[float, float]:
    """(best F1, its threshold) of one class over every threshold of the precision-recall curve
    (prediction = score >= threshold; thresholds = the distinct scores). This is an ORACLE when
    applied to the test set (ECG-Chat's reported F1): the threshold is tuned on the very labels
    it is scored on, so it overstates deployable performance. A class without positives gives
    (0.0, inf)."""
    y, s = _as_2d(y_true, y_score)
    y, s = y[:, 0], s[:, 0]
    n_pos = int(y.sum())
    if n_pos == 0:
        return 0.0, float("inf")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]   # last index of each distinct score
    f1 = _f1(tp[last], fp[last], n_pos - tp[last])
    i = int(np.argmax(f1))
    return float(f1[i]), float(s_sorted[last[i]])


def f1_at_threshold(y_true, y_score, threshold: float) -> float:
    y, s = _as_2d(y_true, y_score)
    pred = s[:, 0] >= threshold
    yy = y[:, 0]
    return float(_f1(np.sum(pred & yy), np.sum(pred & ~yy), np.sum(~pred & yy)))


def best_f1_per_class(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """Per-class oracle best F1 and thresholds (see best_f1_threshold's warning)."""
    y, s = _as_2d(y_true, y_score)
    res = [best_f1_threshold(y[:, c], s[:, c]) for c in range(y.shape[1])]
    return np.array([r[0] for r in res]), np.array([r[1] for r in res])


def macro_best_f1(y_true, y_score) -> float:
    """ECG-Chat's F1: the macro mean of per-class oracle best-threshold F1 (optimistic)."""
    return float(best_f1_per_class(y_true, y_score)[0].mean())


def accuracy_at_best_f1(y_true, y_score) -> float:
    """ECG-Chat's accuracy: macro mean of per-class accuracy of ``score > best-F1 threshold``
    (strict ">" as in ECG-Chat's metrics.py)."""
    y, s = _as_2d(y_true, y_score)
    _, thr = best_f1_per_class(y, s)
    return float(np.mean([np.mean((s[:, c] > thr[c]) == y[:, c]) for c in range(y.shape[1])]))


def choose_thresholds(y_val, s_val) -> np.ndarray:
    """Per-class thresholds maximising F1 on a VALIDATION set (use with f1_at_fixed_thresholds on
    the test set for an honest F1)."""
    return best_f1_per_class(y_val, s_val)[1]


def f1_at_fixed_thresholds(y_true, y_score, thresholds) -> np.ndarray:
    """Per-class F1 on (test) data at thresholds fixed beforehand (e.g. choose_thresholds on val)."""
    y, s = _as_2d(y_true, y_score)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if t.shape[0] != y.shape[1]:
        raise ValueError(f"need one threshold per class ({y.shape[1]}), got {t.shape[0]}")
    return np.array([f1_at_threshold(y[:, c], s[:, c], t[c]) for c in range(y.shape[1])])


def macro_f1_val_threshold(y_val, s_val, y_test, s_test) -> float:
    """Macro F1 on the test set at per-class thresholds chosen on the validation set."""
    return float(f1_at_fixed_thresholds(y_test, s_test, choose_thresholds(y_val, s_val)).mean())
