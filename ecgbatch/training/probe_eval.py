"""`ecgbatch eval classify`: how right the calibrated labels are, cross-validated by patient.

Nested: each outer fold's probe is fitted (L2 strength and thresholds by its own inner
cross-validation) on the other folds' patients only, and scores its held-out patients; the pooled
held-out answers give per-label AUC, F1 at the probe's own thresholds, top-label accuracy, the
six-rhythm accuracy and sinus vs AF/flutter accuracy of the goals, and a confusion table. The
zero-shot answer (argmax of the label set's prompt scores) on the same records is reported beside
it when given.

Note: the embeddings come from the model given. If that model was trained on the same records
(ecg-coca-mini was trained on all 477 shared pairs), its embeddings have seen their labels'
texts, and these numbers are optimistic for unseen records; MODEL_CARD.md says so.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ecgbatch.encoders import label_sources as LS
from ecgbatch.eval.metrics import f1_at_threshold, roc_auc
from ecgbatch.training.probes import fit_probe, folds_by_patient


def pooled_held_out(data, model_info: dict, folds: int = 5, seed: int = 0):
    """(probabilities [N, C] with NaN where a fold's probe did not train a label, predicted
    label lists, top label per record) of every record, from the probe fitted without its fold."""

    n, c = data.y.shape
    prob = np.full((n, c), np.nan)
    pred: list[list[str]] = [[] for _ in range(n)]
    top: list[str | None] = [None] * n
    for tr, va in folds_by_patient(data, folds, seed + 1):
        probe = fit_probe(data.subset(tr), model_info, folds=folds, seed=seed)
        p = probe.trained_probabilities(data.emb[va])
        prob[np.ix_(va, [data.labels.index(t) for t in probe.trained])] = p
        for i, labs, t in zip(va, probe.predict_trained(p), probe.top(p)):
            pred[i], top[i] = labs, t
    return prob, pred, top


def _per_label(data, prob, pred) -> dict:
    out = {}
    for j, lab in enumerate(data.labels):
        y = data.y[:, j].astype(int)
        r = {"n_pos": int(y.sum()), "trained": bool(np.isfinite(prob[:, j]).any())}
        if r["trained"] and 0 < y.sum() < len(y):
            s = np.nan_to_num(prob[:, j], nan=0.0)
            r["auc"] = round(float(roc_auc(y, s)), 4)
            hit = np.array([lab in p for p in pred], dtype=float)
            r["f1_at_threshold"] = round(float(f1_at_threshold(y, hit, 0.5)), 4)
        out[lab] = r
    return out


def top_metrics(truth: list[str], top: list[str], source: list[str], labelset: str) -> dict:
    spec = LS.labelset_spec(labelset)
    goal = set(spec.get("goal_classes") or [])
    groups = spec.get("binary_groups") or {}
    side = {lab: g for g, labs in groups.items() for lab in labs}

    def acc(mask) -> dict:
        idx = [i for i in range(len(truth)) if mask(i)]
        ok = sum(truth[i] == top[i] for i in idx)
        return {"n": len(idx), "correct": ok, "accuracy": round(ok / len(idx), 4) if idx else None}

    res = {"top1_all": acc(lambda i: True)}
    if goal:
        res["top1_goal_classes"] = {"classes": sorted(goal), **acc(lambda i: truth[i] in goal)}
        res["top1_goal_classes_by_source"] = {s: acc(lambda i, s=s: truth[i] in goal and source[i] == s)
                                              for s in sorted(set(source))}
    if groups:
        idx = [i for i in range(len(truth)) if truth[i] in side]
        ok = sum(side.get(top[i]) == side[truth[i]] for i in idx)
        res["binary_groups"] = {"groups": groups, "n": len(idx), "correct": ok,
                                "accuracy": round(ok / len(idx), 4) if idx else None}
    res["confusion"] = {t: dict(Counter(top[i] for i in range(len(truth)) if truth[i] == t))
                        for t in sorted(set(truth))}
    return res


def evaluate(data, model_info: dict, folds: int = 5, seed: int = 0, zero_shot_scores=None) -> dict:
    """The cross-validated report of ``data`` (ecgbatch.training.probes.ProbeData)."""
    prob, pred, top = pooled_held_out(data, model_info, folds, seed)
    res = {"labelset": data.labelset, "records": len(data.y), "patients": len(set(data.group)),
           "records_by_source": dict(Counter(data.source)), "folds": folds, "seed": seed,
           "per_label": _per_label(data, prob, pred)}
    if LS.is_exclusive(data.labelset):
        truth = [data.labels[j] for j in np.argmax(data.y, axis=1)]
        res["probe"] = top_metrics(truth, top, data.source, data.labelset)
        if zero_shot_scores is not None:
            zs_top = [data.labels[j] for j in np.argmax(np.asarray(zero_shot_scores), axis=1)]
            res["zero_shot"] = top_metrics(truth, zs_top, data.source, data.labelset)
    return res
