"""Splits without leakage, deterministic epoch orders, worker slices, suffix-preserving texts."""
from __future__ import annotations

import numpy as np
import pytest

from ecgbatch.training import data as D


def test_split_by_group_no_leakage_and_every_source_and_label_in_val():
    groups = [f"p{i // 2}" for i in range(40)] + [f"l{i}" for i in range(20)]
    strata = ["ptbxl"] * 40 + ["ludb"] * 20
    labels = [1 if i % 8 < 2 else 0 for i in range(40)] + [1 if i < 3 else 0 for i in range(20)]
    tr, va = D.split_by_group(groups, strata, {"default": 0.2, "ludb": 0.3}, seed=1, labels=labels)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == 60
    assert {groups[i] for i in tr}.isdisjoint({groups[i] for i in va})
    assert {strata[i] for i in va} == {"ptbxl", "ludb"}
    assert {labels[i] for i in va if strata[i] == "ludb"} == {0, 1}
    assert sum(strata[i] == "ludb" for i in va) == 6
    tr2, va2 = D.split_by_group(groups, strata, {"default": 0.2, "ludb": 0.3}, seed=1, labels=labels)
    assert np.array_equal(va, va2)
    with pytest.raises(ValueError, match="two strata"):
        D.split_by_group(["a", "a"], ["x", "y"], 0.5)


def test_kfold_holds_every_record_out_once_without_leakage():
    groups = [f"p{i // 2}" for i in range(40)] + [f"l{i}" for i in range(20)]
    strata = ["ptbxl"] * 40 + ["ludb"] * 20
    labels = [1 if i % 8 < 2 else 0 for i in range(40)] + [1 if i < 5 else 0 for i in range(20)]
    held = []
    for f in range(5):
        tr, va = D.kfold_by_group(groups, strata, 5, f, seed=3, labels=labels)
        assert set(tr).isdisjoint(va) and len(tr) + len(va) == 60
        assert {groups[i] for i in tr}.isdisjoint({groups[i] for i in va})
        assert sum(labels[i] for i in va if strata[i] == "ludb") == 1      # 5 LUDB positives, 1 per fold
        assert 10 <= len(va) <= 14
        held.extend(va.tolist())
    assert sorted(held) == list(range(60))                                 # each record held out once
    again = D.kfold_by_group(groups, strata, 5, 2, seed=3, labels=labels)[1]
    assert np.array_equal(again, D.kfold_by_group(groups, strata, 5, 2, seed=3, labels=labels)[1])
    for bad in [(1, 0), (5, 5), (5, -1)]:
        with pytest.raises(ValueError, match="folds"):
            D.kfold_by_group(groups, strata, *bad)
    from ecgbatch.training.job_config import SplitConfig

    with pytest.raises(ValueError, match="go together"):
        SplitConfig(folds=5)


def test_epoch_order_is_seeded_and_weighted():
    a = D.epoch_order(10, epoch=3, seed=0)
    assert sorted(a.tolist()) == list(range(10)) and np.array_equal(a, D.epoch_order(10, 3, 0))
    assert not np.array_equal(a, D.epoch_order(10, 4, 0))
    w = np.array([0.9] + [0.1 / 9] * 9)
    draw = D.epoch_order(10, 0, 0, weights=w, num_samples=2000)
    assert 0.85 < np.mean(draw == 0) < 0.95


def test_local_slices_cover_the_global_batch():
    parts = [D.local_slice(8, r, 2) for r in range(2)]
    assert [list(range(8))[s] for s in parts] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="divisible"):
        D.local_slice(7, 0, 2)


def test_fit_texts_keeps_the_suffix():
    count = lambda t: len(t.split())  # noqa: E731  (a word "tokenizer")
    base = ["sinus rhythm. left axis deviation. left ventricular hypertrophy. st depression"]
    wave = [" RR: 800 PR: 150 QRS: 90 QT/QTc: 380/420 P/R/T Wave: 1/2/3"]
    out = D.fit_texts(base, wave, count, max_tokens=16)
    assert out[0].endswith("p/r/t wave: 1/2/3") and count(out[0]) <= 16
    assert out[0].startswith("sinus rhythm. left axis deviation")
    assert D.fit_texts(base, None, count, 100) == [base[0]]


def test_text_variants_and_their_seeded_choice():
    base = ["atrial fibrillation. left axis deviation"]
    wave = [" RR: 700 PR: 0 QRS: 90 QT/QTc: 350/418 P/R/T Wave: 0/2500/2600"]
    assert D.variant_texts(base, wave, "first") == (["atrial fibrillation"], None)
    assert D.variant_texts(base, wave, "first_wave") == (["atrial fibrillation"], wave)
    assert D.variant_texts(base, wave, "no_wave") == (base, None)
    with pytest.raises(ValueError, match="text variant"):
        D.variant_texts(base, wave, "shuffled")
    a = D.choose_variants(range(400), seed=0, epoch=2, probs=[0.5, 0.5, 0, 0])
    assert np.array_equal(a, D.choose_variants(range(400), 0, 2, [0.5, 0.5, 0, 0]))
    assert set(a.tolist()) == {0, 1} and 150 < (a == 0).sum() < 250
    assert np.array_equal(a[100:200], D.choose_variants(range(100, 200), 0, 2, [0.5, 0.5, 0, 0]))
