"""Bootstrap intervals: deterministic in the seed, cover the value, shrink with more data, keep
a patient's records together, and skip resamples where the statistic is undefined."""
from __future__ import annotations

import numpy as np
import pytest

from ecgbatch.eval.bootstrap import bootstrap_ci, fmt_ci
from ecgbatch.eval.metrics import roc_auc


def test_mean_interval():
    hit = np.r_[np.ones(80), np.zeros(20)]
    a = bootstrap_ci(np.mean, hit, reps=500, seed=1)
    assert a == bootstrap_ci(np.mean, hit, reps=500, seed=1)
    assert a["value"] == 0.8 and a["lo"] < 0.8 < a["hi"]
    assert 0.70 <= a["lo"] <= 0.74 and 0.86 <= a["hi"] <= 0.90      # ~ 0.8 +- 1.96 * 0.04
    big = bootstrap_ci(np.mean, np.tile(hit, 10), reps=500, seed=1)
    assert big["hi"] - big["lo"] < (a["hi"] - a["lo"]) / 2
    assert fmt_ci(a).startswith("0.800 (")


def test_groups_resample_patients():
    # 10 patients with 10 identical records each: by patient the interval is as wide as 10 draws
    hit = np.repeat(np.r_[np.ones(5), np.zeros(5)], 10)
    groups = np.repeat(np.arange(10), 10)
    by_rec = bootstrap_ci(np.mean, hit, reps=500, seed=0)
    by_pat = bootstrap_ci(np.mean, hit, reps=500, seed=0, groups=groups)
    assert by_pat["unit"] == "patient" and by_pat["hi"] - by_pat["lo"] > 2 * (by_rec["hi"] - by_rec["lo"])


def test_undefined_resamples_are_counted():
    y = np.r_[1, np.zeros(9)]
    s = np.linspace(1, 0, 10)
    r = bootstrap_ci(roc_auc, y, s, reps=300, seed=0)
    assert r["value"] == 1.0 and 0 < r["undefined"] < 300       # draws without the positive
    with pytest.raises(ValueError):
        bootstrap_ci(np.mean, np.ones(3), np.ones(4))
