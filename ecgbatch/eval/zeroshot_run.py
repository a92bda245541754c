"""What `ecgbatch eval zeroshot` computes, for a model and its evaluation pairs: the labels (keyword
labels read from the reports, or a CSV), the prompts (built-in or a file), the zero-shot scores
(ECG-Chat's per-class sigmoid, or each label against its counter-prompt with ``contrast``), the
per-class metrics (ecgbatch.eval.zeroshot_eval) and, for a ``query``, the precision of its top-k
ranked as `ecgbatch search` ranks it (ecgbatch.pipelines.queries.text_vector).

Errors in the inputs (an unknown label, a prompt missing, a bad CSV) raise ValueError.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ecgbatch.encoders.zeroshot import LabelSet, ZeroShotClassifier, labelset_from_mapping, load_labelset
from ecgbatch.eval.retrieval import embed_ecgs, precision_at_k, precision_at_k_at_prevalence
from ecgbatch.eval.zeroshot_eval import contrast_scores, keyword_labelset, per_class_metrics
from ecgbatch.pipelines.queries import text_vector
from ecgbatch.text.labels import KEYWORD_COUNTER_PROMPTS, KEYWORD_LABELS, keyword_labels


@dataclass
class ZeroShotRun:
    names: list[str]        # the labels, in column order
    y: np.ndarray           # [N, C] 0/1 truth
    scores: np.ndarray      # [N, C]
    result: dict            # per_class, macro (+ query)


def labels_from_csv(path: Path, pairs) -> tuple[list[str], np.ndarray]:
    """(label names, [N, C] truth) from a CSV with record_id or path + one 0/1 column per label."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"labels CSV {str(path)!r} is empty")
    key = next((c for c in ("record_id", "path") if c in rows[0]), None)
    if key is None:
        raise ValueError(f"labels CSV {str(path)!r} needs a record_id or path column")
    names = [c for c in rows[0] if c != key]
    by_key = {r[key]: r for r in rows}
    y = []
    for rid, p in zip(pairs.record_id, pairs.path):
        r = by_key.get(rid if key == "record_id" else p)
        if r is None:
            raise ValueError(f"record {rid!r} has no row in {str(path)!r}")
        try:
            y.append([int(r[n]) for n in names])
        except ValueError:
            raise ValueError(f"labels CSV {str(path)!r}: row {rid!r} has a non 0/1 value") from None
    return names, np.array(y)


def truth(labels: str, pairs) -> tuple[list[str], np.ndarray]:
    """``labels``: a comma list of keyword labels (read from each pair's text) or a CSV path."""
    if Path(labels).suffix.lower() == ".csv":
        return labels_from_csv(Path(labels), pairs)
    names = [n.strip() for n in labels.split(",") if n.strip()]
    return names, np.array([[keyword_labels(t, names)[n] for n in names] for t in pairs.text])


def prompts_for(names: list[str], prompts: Optional[Path]) -> LabelSet:
    """The label set of ``names``: from a prompts file (JSON/YAML), else the built-in prompts."""
    if prompts is not None:
        ls = load_labelset(prompts)
        missing = [n for n in names if n not in ls.labels]
        if missing:
            raise ValueError(f"prompts file {str(prompts)!r} has no prompt for {missing}")
        return LabelSet(ls.name, tuple(names), tuple(ls.prompts[ls.labels.index(n)] for n in names))
    unknown = [n for n in names if n not in KEYWORD_LABELS]
    if unknown:
        raise ValueError(f"no built-in prompt for {unknown}: pass --prompts")
    return keyword_labelset(names)


def evaluate_zeroshot(model, pairs, labels: str, prompts: Optional[Path] = None, threshold: float = 0.5,
                      contrast: bool = False, query: Optional[str] = None, expand: bool = False, k: int = 8,
                      query_prevalence: Optional[float] = None) -> ZeroShotRun:
    """Zero-shot scores and metrics of ``model`` (an ECG-CoCa) on ``pairs`` (a PairSet); see the
    module doc."""
    names, y = truth(labels, pairs)
    ls = prompts_for(names, prompts)
    emb = embed_ecgs(model, pairs.x)
    zs = ZeroShotClassifier(model, ls, lower=True)
    scores = zs.scores(emb)
    if contrast:
        missing = [n for n in names if n not in KEYWORD_COUNTER_PROMPTS]
        if missing:
            raise ValueError(f"--contrast: no counter-prompt for {missing} (known: {sorted(KEYWORD_COUNTER_PROMPTS)})")
        neg = ZeroShotClassifier(model, labelset_from_mapping("counter", {n: KEYWORD_COUNTER_PROMPTS[n] for n in names}),
                                 lower=True)
        scores = contrast_scores(zs, neg, emb)
    res = per_class_metrics(y, scores, list(names), threshold)
    if query:
        q, qp, _, _ = text_vector(model, query, expand=expand)
        how = f"as `ecgbatch search{' --expand' if expand else ''}` ranks it: {len(qp)} prompt(s)"
        res["query"] = {"text": query, "label": names[0], "k": k, "vector": how,
                        "precision": precision_at_k(q, emb, y[:, 0], k), "prevalence": float(y[:, 0].mean())}
        if query_prevalence:
            res["query"]["at_prevalence"] = {"prevalence": query_prevalence, **precision_at_k_at_prevalence(
                q, emb, y[:, 0], k, query_prevalence)}
    return ZeroShotRun(list(names), y, scores, res)
