"""Pooled held-out scores of a k-fold cross-validation (``split.folds`` training runs): each
run's model scores the records its own split held out, and the scores are pooled, so every
record is scored once by a model that never trained on it. Gives zero-shot AUC and text-query
precision on far more held-out positives than one validation split has (the pooled scores come
from k models, so a pooled AUC is, if anything, pessimistic), and the mean per-fold retrieval.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgbatch.encoders.zeroshot import ZeroShotClassifier
from ecgbatch.eval.metrics import roc_auc
from ecgbatch.eval.retrieval import embed_ecgs, embed_texts, precision_at_k_at_prevalence, retrieval_metrics
from ecgbatch.eval.zeroshot_eval import keyword_labelset
from ecgbatch.models import load_model
from ecgbatch.pipelines.queries import text_vector
from ecgbatch.text.labels import keyword_labels
from ecgbatch.training.checkpointing import latest_checkpoint
from ecgbatch.training.data import fit_texts, token_counter


@dataclass
class FoldScores:
    run: str
    n: int
    retrieval_r10: float          # ECG -> own text R@10 among this fold's held-out pairs (with WDE)
    retrieval_r10_no_wde: float


@dataclass
class CrossValScores:
    label: str
    query: str
    y: np.ndarray                 # [N] label of each held-out record
    prompt_score: np.ndarray      # ECG-Chat's per-class sigmoid of the label prompt
    query_score: np.ndarray       # inner product with the query vector `ecgbatch search [--expand]` uses
    source: list[str]
    path: list[str]
    folds: list[FoldScores] = field(default_factory=list)


def run_model_and_split(run: str | Path):
    """(model of the run's latest checkpoint, held-out paths) of one training run folder."""
    run = Path(run)
    ck = latest_checkpoint(run)
    if ck is None:
        raise FileNotFoundError(f"run {str(run)!r} has no complete checkpoint")
    split = run / "split.json"
    if not split.is_file():
        raise FileNotFoundError(f"run {str(run)!r} has no split.json")
    val = json.loads(split.read_text())["val"]
    if not val:
        raise ValueError(f"run {str(run)!r} held nothing out (val_fraction 0?)")
    return load_model(ck)[0], val


def crossval_scores(runs, pairs, label: str = "af", query: str = "atrial fibrillation",
                    expand: bool = False) -> CrossValScores:
    """Score every pair held out by one of ``runs`` with that run's model. ``pairs``: the
    PairSet the runs trained on (their pair cache). A record held out by two runs is refused."""
    where = {p: i for i, p in enumerate(pairs.path)}
    seen: set[str] = set()
    ys, ps, qs, src, paths, folds = [], [], [], [], [], []
    for run in runs:
        model, val = run_model_and_split(run)
        dup = seen.intersection(val)
        if dup:
            raise ValueError(f"{sorted(dup)[0]!r} is held out by two runs: these are not folds of one split")
        seen.update(val)
        missing = [p for p in val if p not in where]
        if missing:
            raise ValueError(f"run {str(run)!r} held out {missing[0]!r}, which is not in the pair data")
        sub = pairs.subset([where[p] for p in val])
        emb = embed_ecgs(model, sub.x)
        zs = ZeroShotClassifier(model, keyword_labelset([label]), lower=True)
        ps.append(zs.scores(emb)[:, 0])
        qs.append(emb @ text_vector(model, query, expand=expand)[0])
        ys.append([keyword_labels(t, [label])[label] for t in sub.text])
        src += list(sub.source)
        paths += list(sub.path)
        count, ctx = token_counter(model.tokenizer), model.cfg.text_cfg.context_length
        r = {}
        for wde in (True, False):
            texts = fit_texts(sub.text, sub.wave if wde else None, count, ctx)
            r[wde] = retrieval_metrics(emb, embed_texts(model, model.tokenizer, texts))["ecg_to_text"]["R@10"]
        folds.append(FoldScores(str(run), len(sub), r[True], r[False]))
    return CrossValScores(label, query, np.concatenate(ys).astype(int), np.concatenate(ps),
                          np.concatenate(qs), src, paths, folds)


def summary(cv: CrossValScores, k: int = 8, prevalence: float = 0.08, pool: int | None = 100,
            by_source: bool = True) -> dict:
    """AUCs, and the top-k precision of the query on random pools of ``pool`` records of which
    ``prevalence`` hold the label (e.g. 8 of 100: the judged use; None = all negatives), overall
    and per source. A part with fewer records gets pools of all its negatives (the size is in
    the result's "pool"); one with too few positives reports why."""

    def part(mask) -> dict:
        y = cv.y[mask]
        out = {"n": int(mask.sum()), "n_pos": int(y.sum())}
        if 0 < y.sum() < len(y):
            out["auc_prompt"] = float(roc_auc(y, cv.prompt_score[mask]))
            out["auc_query"] = float(roc_auc(y, cv.query_score[mask]))
            key = f"query_p@{k}_at_{prevalence:g}"
            q = cv.query_score[mask, None].astype(np.float32)
            try:
                out[key] = precision_at_k_at_prevalence(np.ones(1, np.float32), q, y, k, prevalence, n=pool)
            except ValueError:   # fewer records than a pool: pools of all its negatives instead
                try:
                    out[key] = precision_at_k_at_prevalence(np.ones(1, np.float32), q, y, k, prevalence)
                except ValueError as exc:
                    out[key] = {"error": str(exc)}
        return out

    src = np.asarray(cv.source)
    res = {"label": cv.label, "query": cv.query, "all": part(np.ones(len(cv.y), bool))}
    if by_source:
        res["by_source"] = {s: part(src == s) for s in sorted(set(cv.source))}
    res["folds"] = [vars(f) for f in cv.folds]
    res["retrieval_r10_mean"] = float(np.mean([f.retrieval_r10 for f in cv.folds]))
    res["retrieval_r10_no_wde_mean"] = float(np.mean([f.retrieval_r10_no_wde for f in cv.folds]))
    return res
