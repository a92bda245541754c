"""Validation of an ECG-CoCa on held-out pairs, with the eval code: retrieval R@1/5/10 both
directions (ECG-Chat's protocol, texts with the measurement suffix when WDE is on), zero-shot
AUC for keyword labels read from the reports, and the precision of the top-k ECGs for a text
query ("atrial fibrillation": the judged use)."""
from __future__ import annotations

import numpy as np

from ecgbatch.encoders.zeroshot import ZeroShotClassifier, labelset_from_mapping
from ecgbatch.eval import metrics as M
from ecgbatch.eval.retrieval import embed_ecgs, embed_texts, flat_metrics, precision_at_k, retrieval_metrics
from ecgbatch.eval.zeroshot_eval import contrast_scores, keyword_labelset
from ecgbatch.text.labels import KEYWORD_COUNTER_PROMPTS, keyword_labels


def validate(model, x: np.ndarray, texts: list[str], base_texts: list[str], labels=("af",),
             query: str | None = "atrial fibrillation", query_label: str = "af", query_k: int = 8,
             tokenizer=None, device: str = "cpu") -> dict[str, float]:
    """Flat metrics dict ("val/ecg_to_text/R@1", "val/zeroshot/af/auc", "val/query/p@8", ...).
    ``texts``: what the model is trained to match (with the WDE suffix); ``base_texts``: the
    diagnosis statements only, where labels are read."""
    tok = tokenizer or model.tokenizer
    e = embed_ecgs(model, x, device=device)
    t = embed_texts(model, tok, texts, device=device)
    out = flat_metrics(retrieval_metrics(e, t), "val/")
    out["val/n"] = float(len(texts))
    names = [n for n in labels]
    if names:
        y = np.array([[keyword_labels(b, names)[n] for n in names] for b in base_texts])
        zs = ZeroShotClassifier(model, keyword_labelset(names), tokenizer=tok, lower=True)
        s = zs.scores(e)
        for j, n in enumerate(names):
            out[f"val/zeroshot/{n}/auc"] = float(M.roc_auc(y[:, j], s[:, j]))
            out[f"val/zeroshot/{n}/n_pos"] = float(y[:, j].sum())
        with_counter = [n for n in names if n in KEYWORD_COUNTER_PROMPTS]
        if with_counter:
            cols = [names.index(n) for n in with_counter]
            pos = ZeroShotClassifier(model, keyword_labelset(with_counter), tokenizer=tok, lower=True)
            neg = ZeroShotClassifier(model, labelset_from_mapping(
                "counter", {n: KEYWORD_COUNTER_PROMPTS[n] for n in with_counter}), tokenizer=tok, lower=True)
            sc = contrast_scores(pos, neg, e)
            for j, n in zip(cols, with_counter):
                out[f"val/zeroshot/{n}/auc_contrast"] = float(M.roc_auc(y[:, j], sc[:, with_counter.index(n)]))
    if query:
        q = embed_texts(model, tok, [query], device=device)[0]
        rel = [keyword_labels(b, [query_label])[query_label] for b in base_texts]
        out[f"val/query/p@{query_k}"] = precision_at_k(q, e, rel, query_k)
    return out
