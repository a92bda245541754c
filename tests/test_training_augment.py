"""Augmentation: deterministic under a seed, each transform really changes what it should."""
from __future__ import annotations

import numpy as np
import pytest

from ecgbatch.training import augment as A


def _ecg(seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(5000) / 500
    return (np.sin(2 * np.pi * 1.2 * t)[None] * rng.uniform(0.5, 1.5, (12, 1))).astype(np.float32)


def test_same_seed_same_output_different_epoch_differs():
    x, cfg = _ecg(), A.AugmentConfig()
    a = A.augment(x, 500, cfg, A.sample_rng(3, 1, 17))
    b = A.augment(x, 500, cfg, A.sample_rng(3, 1, 17))
    c = A.augment(x, 500, cfg, A.sample_rng(3, 2, 17))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert np.array_equal(x, _ecg())  # input untouched


def test_each_transform():
    x, rng = _ecg().astype(np.float64), np.random.default_rng(0)
    s = A.time_shift(x, rng, 250)
    assert s.shape == x.shape and (np.all(s[:, :1] == 0) or np.all(s[:, -1:] == 0) or np.array_equal(s, x))
    d = A.lead_dropout(x, np.random.default_rng(1), 0.99)
    assert (np.abs(d).sum(1) > 0).sum() == 2  # at least two leads survive
    w = A.baseline_wander(x, 500, rng, 0.5, 0.2, 3) - x
    # one slow waveform (< 0.2 Hz: changes little in 20 ms) scaled per lead
    sv = np.linalg.svd(w, compute_uv=False)
    assert sv[1] < 1e-9 * sv[0]
    assert np.abs(np.diff(w, axis=1)).max() < 0.05 * max(np.abs(w).max(), 1e-9) + 1e-6
    g = (A.amplitude_scale(x, rng, 1.25) / x)[:, 1:]
    assert np.all((g > 0.79) & (g < 1.26))
    n = A.gaussian_noise(x, rng, 0.05) - x
    assert 0 < n.std() < 0.06


def test_disabled_is_identity_and_bad_config_raises():
    x = _ecg()
    assert np.array_equal(A.augment(x, 500, A.AugmentConfig(enabled=False), A.sample_rng(0, 0, 0)), x)
    with pytest.raises(ValueError, match="probability"):
        A.AugmentConfig(p_noise=1.5)
    with pytest.raises(ValueError, match="unknown augmentation keys"):
        A.AugmentConfig.from_dict({"p_flip": 0.5})
