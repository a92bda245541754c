"""Evaluation of ECG-language models.

- ``retrieval``: ECG <-> report retrieval (ECG-Chat's full-matrix protocol): R@1/5/10 both
  directions, mean and median rank; top-k precision of a text query.
- ``zeroshot_eval``: zero-shot classification metrics per class (AUC, oracle best-threshold F1,
  fixed-threshold F1) and ROC curves as PNG.
- ``metrics``: the metric definitions (macro AUC, best-threshold F1, ...), numpy only.
- findings in report text: ``ecgbatch.text.findings`` (negation-aware keyword table).
- ``report_metrics``: report generation: BLEU-1/4, ROUGE-L, METEOR, clinical-efficacy F1.

Command line: ``ecgbatch eval retrieval|zeroshot|report ...``.
Imports nothing heavy here; torch loads only inside the embedding helpers.
"""
from ecgbatch.eval.retrieval import precision_at_k, rank_metrics, retrieval_metrics, top_k, true_ranks

__all__ = ["retrieval_metrics", "rank_metrics", "true_ranks", "top_k", "precision_at_k"]
