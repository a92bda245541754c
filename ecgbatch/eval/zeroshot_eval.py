"""Zero-shot classification evaluation: per-class AUC, best-threshold F1 (ECG-Chat's oracle
threshold over the precision-recall curve), F1 at a fixed threshold, their macro means over the
classes that have both positives and negatives, and ROC curves saved as PNG.

Scores come from ``ecgbatch.encoders.ZeroShotClassifier`` (ECG-Chat's per-class sigmoid of
the scaled cosine); the metric definitions live in ``ecgbatch.eval.metrics``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgbatch.encoders.zeroshot import labelset_from_mapping
from ecgbatch.eval import metrics
from ecgbatch.text.labels import label_prompts


def _metrics():
    return metrics


def keyword_labelset(names):
    """The zero-shot label set of KEYWORD_LABELS labels (``ecgbatch.text.labels``)."""
    return labelset_from_mapping("keywords", {n: label_prompts(n) for n in names})


def per_class_metrics(y_true, scores, labels, threshold: float = 0.5) -> dict:
    """{"per_class": {label: {auc, f1_best, threshold_best, f1_fixed, n_pos, n}}, "macro": {...}}.
    A class without both positives and negatives gets None for AUC and best F1 (and is left out
    of the macro means, whose ``n_classes`` says how many classes counted)."""
    M = _metrics()
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.shape != s.shape or y.shape[1] != len(labels):
        raise ValueError(f"y_true {y.shape!r}, scores {s.shape!r} and {len(labels)} labels disagree")
    per, aucs, f1b, f1f = {}, [], [], []
    for j, lab in enumerate(labels):
        yj, sj = y[:, j], s[:, j]
        both = 0 < yj.sum() < len(yj)
        auc = float(M.roc_auc(yj, sj)) if both else None
        best = M.best_f1_threshold(yj, sj) if both else None
        fixed = float(M.f1_at_threshold(yj, sj, threshold))
        per[lab] = {"auc": auc, "f1_best": None if best is None else float(best[0]),
                    "threshold_best": None if best is None else float(best[1]),
                    "f1_fixed": fixed, "n_pos": int(yj.sum()), "n": int(len(yj))}
        if both:
            aucs.append(auc)
            f1b.append(per[lab]["f1_best"])
        f1f.append(fixed)
    macro = {"auc": float(np.mean(aucs)) if aucs else None, "f1_best": float(np.mean(f1b)) if f1b else None,
             "f1_fixed": float(np.mean(f1f)), "n_classes": len(aucs), "threshold": threshold}
    return {"per_class": per, "macro": macro}


def contrast_scores(classifier, counter, ecg_emb) -> np.ndarray:
    """Binary zero-shot scores against counter-prompts: sigmoid(scale * (cos(ECG, class) -
    cos(ECG, counter class))), [N, C]. ``classifier`` and ``counter`` are ZeroShotClassifiers
    over the same labels (the second built from the counter-prompts)."""
    z = classifier.logits(ecg_emb).astype(np.float64) - counter.logits(ecg_emb).astype(np.float64)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def roc_points(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score (descending), from (0,0) to (1,1)."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]   # end of each run of equal scores
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    P, N = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    return np.r_[0.0, fp / N], np.r_[0.0, tp / P]


def save_roc_png(y_true, scores, labels, path: str | Path, title: str = "zero-shot ROC") -> Path:
    """One ROC curve per class (classes with both outcomes) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    M = _metrics()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for j, lab in enumerate(labels):
        if 0 < y[:, j].sum() < len(y):
            fpr, tpr = roc_points(y[:, j], s[:, j])
            ax.plot(fpr, tpr, label=f"{lab} (AUC {M.roc_auc(y[:, j], s[:, j]):.3f}, n+={int(y[:, j].sum())})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p)
    plt.close(fig)
    return p
