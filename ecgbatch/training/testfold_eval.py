"""`ecgbatch eval testfold` (in training/: it reads training's pair sets and probes): an encoder's figures on the fixed test fold (``ecgbatch.testfold``),
each with a bootstrap 95 % interval (``ecgbatch.eval.bootstrap``, patients resampled):

- ECG -> report R@1 (ECG-Chat's protocol, ``ecgbatch.eval.retrieval``; reports with the
  measurement suffix): the gallery is the whole test fold; the interval resamples the queries;
- zero-shot AUC per keyword label (e.g. "af"), scored as ``ecgbatch eval zeroshot`` scores it;
- per probe label set: top-1 accuracy of the probe shipped beside the model's weights against
  each record's own labels (exclusive sets, e.g. ptbxl-rhythm; also the goal classes), macro AUC
  over the probe's trained labels (multi-label sets, e.g. ptbxl-super).

Figures of a model that was trained on test-fold records are training-set figures; the caller
says which (``trained_on_test`` in the output).
"""
from __future__ import annotations

import numpy as np

from ecgbatch.encoders import label_sources as LS
from ecgbatch.encoders.probes import model_probe
from ecgbatch.encoders.zeroshot import ZeroShotClassifier
from ecgbatch.eval.bootstrap import DEFAULT_REPS, bootstrap_ci
from ecgbatch.eval.metrics import per_class_auc, roc_auc
from ecgbatch.eval.retrieval import embed_ecgs, embed_texts, rank_metrics, true_ranks
from ecgbatch.eval.zeroshot_eval import keyword_labelset
from ecgbatch.text.labels import keyword_labels
from ecgbatch.training.data import fit_texts, token_counter
from ecgbatch.training.probe_eval import top_metrics
from ecgbatch.training.probes import truth_matrix


def _hit_rate(hit) -> float:
    return float(np.mean(hit))


def _auc(y, s) -> float:
    return roc_auc(y, s)


def _macro_auc(y, s) -> float:
    a = per_class_auc(y, s)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def retrieval_ci(model, pairs, emb, wde: bool = True, reps: int = DEFAULT_REPS, seed: int = 0) -> dict:
    texts = fit_texts(pairs.text, pairs.wave if wde else None, token_counter(model.tokenizer),
                      model.cfg.text_cfg.context_length)
    ranks = true_ranks(emb, embed_texts(model, model.tokenizer, texts))
    return {"n": len(ranks), "wde": wde, "metrics": rank_metrics(ranks),
            "R@1": bootstrap_ci(lambda r: _hit_rate(r < 1), ranks, reps=reps, seed=seed, groups=pairs.group)}


def zero_shot_ci(model, pairs, emb, names=("af",), reps: int = DEFAULT_REPS, seed: int = 0) -> dict:
    names = list(names)
    y = np.array([[keyword_labels(t, names)[n] for n in names] for t in pairs.text])
    s = ZeroShotClassifier(model, keyword_labelset(names), lower=True).scores(emb)
    return {n: {"n": len(y), "n_pos": int(y[:, j].sum()),
                "auc": bootstrap_ci(_auc, y[:, j], s[:, j], reps=reps, seed=seed, groups=pairs.group)}
            for j, n in enumerate(names)}


def probe_ci(model, pairs, specs, emb, labelset: str, reps: int = DEFAULT_REPS, seed: int = 0) -> dict:
    probe = model_probe(model, labelset)
    if probe is None:
        return {"error": f"no {labelset!r} probe beside the model's weights"}
    y, keep, left_out = truth_matrix(pairs, specs, labelset)
    idx = np.flatnonzero(keep)
    p = probe.trained_probabilities(emb[idx])
    groups = np.asarray(pairs.group)[idx]
    out = {"records": int(len(idx)), "no_label_by_source": left_out, "trained": list(probe.trained),
           "probe_fitted_on": probe.info.get("records_by_source")}
    cols = [probe.labels.index(t) for t in probe.trained]
    yt = y[idx][:, cols]
    out["macro_auc_trained"] = bootstrap_ci(_macro_auc, yt, p, reps=reps, seed=seed, groups=groups)
    if LS.is_exclusive(labelset):
        truth = [probe.labels[j] for j in np.argmax(y[idx], axis=1)]
        top = probe.top(p)
        hit = np.array([a == b for a, b in zip(truth, top)], dtype=float)
        out["top1"] = bootstrap_ci(_hit_rate, hit, reps=reps, seed=seed, groups=groups)
        out["detail"] = top_metrics(truth, top, [pairs.source[i] for i in idx], labelset)
        goal = set((LS.labelset_spec(labelset).get("goal_classes") or []))
        if goal:
            g = np.array([t in goal for t in truth])
            out["top1_goal_classes"] = bootstrap_ci(_hit_rate, hit[g], reps=reps, seed=seed, groups=groups[g])
    return out


def evaluate_test_fold(model, pairs, specs, labelsets=("ptbxl-rhythm",), zero_shot=("af",),
                       reps: int = DEFAULT_REPS, seed: int = 0) -> dict:

    emb = embed_ecgs(model, pairs.x)
    return {"records": len(pairs), "patients": len(set(pairs.group)),
            "records_by_source": {s: pairs.source.count(s) for s in sorted(set(pairs.source))},
            "retrieval": retrieval_ci(model, pairs, emb, reps=reps, seed=seed),
            "zero_shot": zero_shot_ci(model, pairs, emb, zero_shot, reps=reps, seed=seed),
            "probes": {ls: probe_ci(model, pairs, specs, emb, ls, reps=reps, seed=seed) for ls in labelsets}}
