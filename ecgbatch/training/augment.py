"""Train-time ECG augmentation, applied on the fly to preprocessed signals [leads, samples].

Deterministic under a seed: every sample draws from its own generator seeded by
(seed, epoch, sample index), so the same run gives the same augmented batches whatever the
number of workers, the data order or a resume in the middle of an epoch.

Amplitudes are in the units of the preprocessed signal (mV for ECG-Chat's config, standard
deviations for a z-scored config), so the YAML states them for its PreprocessConfig.

ECG-Chat's own pipeline effectively applies only baseline wander (its CutMix and masking are
no-ops at batch size 1: ecg-chat-reference.md Q2); the others here are the usual ones for small
data sets.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    # Baseline wander: sum of ``wander_components`` cosines, frequency U(0.01, wander_max_hz),
    # random phase, amplitude U(0, wander_amplitude), per-lead gain N(1, 0.5) (ECG-Chat's).
    p_wander: float = 0.5
    wander_amplitude: float = 0.5
    wander_max_hz: float = 0.2
    wander_components: int = 3
    # Amplitude scale: one factor per lead, log-uniform in [1/scale_max, scale_max].
    p_scale: float = 0.5
    scale_max: float = 1.25
    # Time shift: the signal moves by up to shift_max_s seconds either way, zero-filled.
    p_shift: float = 0.5
    shift_max_s: float = 1.0
    # Lead dropout: each lead zeroed with probability lead_drop (at most all but two leads).
    p_lead_drop: float = 0.3
    lead_drop: float = 0.15
    # Gaussian noise with standard deviation U(0, noise_std).
    p_noise: float = 0.5
    noise_std: float = 0.05

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= v <= 1.0:
                raise ValueError(f"AugmentConfig.{f.name} must be a probability in [0, 1], got {v!r}")
        if self.scale_max < 1.0:
            raise ValueError(f"AugmentConfig.scale_max must be >= 1, got {self.scale_max!r}")
        if not 0.0 <= self.lead_drop < 1.0:
            raise ValueError(f"AugmentConfig.lead_drop must be in [0, 1), got {self.lead_drop!r}")
        for name in ("wander_amplitude", "wander_max_hz", "shift_max_s", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentConfig":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown augmentation keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample of one epoch (independent of order and worker)."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def baseline_wander(x: np.ndarray, fs: float, rng: np.random.Generator, amplitude: float,
                    max_hz: float, components: int) -> np.ndarray:
    L, T = x.shape  # leads, samples
    t = np.arange(T) / fs
    wander = np.zeros(T)
    for _ in range(components):
        f = rng.uniform(0.01, max(max_hz, 0.01))
        wander += rng.uniform(0, amplitude) * np.cos(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    gain = rng.normal(1.0, 0.5, size=(L, 1))
    return x + gain * wander[None, :]


def amplitude_scale(x: np.ndarray, rng: np.random.Generator, scale_max: float) -> np.ndarray:
    log_s = rng.uniform(-np.log(scale_max), np.log(scale_max), size=(x.shape[0], 1))
    return x * np.exp(log_s)


def time_shift(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    if max_shift <= 0:
        return x
    s = int(rng.integers(-max_shift, max_shift + 1))
    out = np.zeros_like(x)
    if s > 0:
        out[:, s:] = x[:, :-s]
    elif s < 0:
        out[:, :s] = x[:, -s:]
    else:
        out[:] = x
    return out


def lead_dropout(x: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    L = x.shape[0]
    drop = rng.random(L) < p
    if drop.sum() > L - 2:  # keep at least two leads
        keep = rng.choice(np.flatnonzero(drop), size=2, replace=False)
        drop[keep] = False
    out = x.copy()
    out[drop] = 0.0
    return out


def gaussian_noise(x: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    return x + rng.normal(0.0, rng.uniform(0, std), size=x.shape)


def augment(x: np.ndarray, fs: float, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of ``x`` [leads, samples]; ``x`` itself is not modified. The random
    draws happen in a fixed order, so a given generator state always gives the same output."""
    if x.ndim != 2:
        raise ValueError(f"augment expects [leads, samples], got shape {x.shape!r}")
    if not cfg.enabled:
        return x.copy()
    dtype = x.dtype
    y = x.astype(np.float64, copy=True)
    # Each step draws its coin first, then (only if applied) its parameters.
    if rng.random() < cfg.p_wander:
        y = baseline_wander(y, fs, rng, cfg.wander_amplitude, cfg.wander_max_hz, cfg.wander_components)
    if rng.random() < cfg.p_scale:
        y = amplitude_scale(y, rng, cfg.scale_max)
    if rng.random() < cfg.p_shift:
        y = time_shift(y, rng, int(round(cfg.shift_max_s * fs)))
    if rng.random() < cfg.p_lead_drop:
        y = lead_dropout(y, rng, cfg.lead_drop)
    if rng.random() < cfg.p_noise:
        y = gaussian_noise(y, rng, cfg.noise_std)
    return y.astype(dtype)
