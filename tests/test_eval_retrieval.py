"""Retrieval metrics against hand-computed small cases."""
from __future__ import annotations

import numpy as np
import pytest

from ecgbatch.eval import retrieval as R


def test_perfect_and_hand_computed_ranks():
    e = np.eye(4)
    m = R.retrieval_metrics(e, e)
    assert m["ecg_to_text"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mean_rank": 1.0, "median_rank": 1.0}
    # text i is closest to ECG (i+1) % 3; its own ECG comes second
    ecg = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    txt = np.array([[0.6, 0.8, 0], [0, 0.6, 0.8], [0.8, 0, 0.6]])
    ranks = R.true_ranks(ecg, txt)       # ecg 0: sims to texts = [0.6, 0, 0.8] -> own rank 1
    assert ranks.tolist() == [1, 1, 1]
    m = R.retrieval_metrics(ecg, txt, ks=(1, 2))
    assert m["ecg_to_text"]["R@1"] == 0.0 and m["ecg_to_text"]["R@2"] == 1.0
    assert m["ecg_to_text"]["mean_rank"] == 2.0 and m["ecg_to_text"]["median_rank"] == 2.0
    assert R.true_ranks(txt, ecg).tolist() == [1, 1, 1]


def test_ties_rank_like_stable_argsort_and_chunking():
    ecg = np.ones((3, 2))                 # all identical: every similarity ties
    txt = np.ones((3, 2))
    assert R.true_ranks(ecg, txt).tolist() == [0, 1, 2]
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    sim = a @ b.T
    ref = [int(np.where(np.argsort(-sim[i], kind="stable") == i)[0][0]) for i in range(50)]
    assert R.true_ranks(a, b, chunk=7).tolist() == ref


def test_topk_precision_and_errors():
    keys = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.7, 0.3]])
    assert R.top_k([1.0, 0], keys, 2).tolist() == [0, 1]
    assert R.precision_at_k([1.0, 0], keys, [1, 0, 0, 1], 2) == 0.5
    with pytest.raises(ValueError, match="same shape"):
        R.true_ranks(np.ones((2, 3)), np.ones((3, 3)))
    flat = R.flat_metrics(R.retrieval_metrics(np.eye(2), np.eye(2)), "val/")
    assert flat["val/text_to_ecg/R@1"] == 1.0


def test_precision_at_prevalence_pools():
    keys = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 20)
    rel = [1] * 5 + [0] * 20
    r = R.precision_at_k_at_prevalence([1.0, 0.0], keys, rel, k=2, prevalence=0.1, trials=20)
    assert r["pool"] == 22 and r["relevant_in_pool"] == 2 and r["mean"] == 1.0 and r["min"] == 1.0
    r = R.precision_at_k_at_prevalence([0.0, 1.0], keys, rel, k=4, prevalence=0.1, trials=5)
    assert r["mean"] == 0.0
    with pytest.raises(ValueError, match="need"):
        R.precision_at_k_at_prevalence([1.0, 0.0], keys, rel, k=2, prevalence=0.5)
