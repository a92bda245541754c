"""The rhythm channel: an optional part of ecgbatch's own ECG-CoCa variants (not ECG-Chat's).

A small ECG tower trained on a few hundred pairs learns heart rate and RR irregularity poorly
(a frozen-tower probe of ecg-coca-mini regressed the mean RR with a 100 ms error), yet both
are what the texts talk about: "atrial fibrillation" is an irregular rhythm, and ECG-Chat's
measurement suffix (WDE, " RR: 845 PR: ...") states the RR interval. The channel gives the model
the R peaks explicitly, from the same NeuroKit2 chain ECG-Chat's suffix uses (``ecg_clean`` +
``ecg_peaks`` on lead II, about 2 ms per record):

- **learned part**: seven rhythm features (log mean RR, RR coefficient of variation, normalised
  RMSSD, share of successive differences > 50 ms, median successive difference, beat count,
  a valid flag) go through a small MLP whose output is added to the ECG tower's CLS state before
  its projection (zero-initialised: a model starts out as its tower alone). Contrastive
  training decides what they mean ("irregular" -> "atrial fibrillation").
- **matching part** (fixed, not learned): the embedding gains an RR block, a unit vector of
  Gaussian bumps over log RR (``n_bins`` centres from ``rr_min_ms`` to ``rr_max_ms``, width
  ``bandwidth``), so that the inner product of two blocks is a Gaussian kernel of their log-RR
  difference (about exp(-(d/6 %)^2 / 2)). The ECG side fills it from the detected peaks; the
  text side from an RR or heart rate stated in the text ("rr: 845", "RR interval 845 ms",
  "heart rate 71 bpm", "HR: 71"); a text that states none leaves it empty, and an ECG without
  a usable rhythm (fewer than three peaks) puts its weight on one extra "unknown" slot that no
  text uses. Every ECG embedding therefore has unit norm, and texts without numbers rank ECGs
  by the learned part alone.

Embedding = [sqrt(1 - weight) * learned (unit), sqrt(weight) * block]: ``weight`` is the share
of the similarity that a stated RR can contribute. Retrieval of an ECG by its own WDE report is
then largely a match of the stated RR with the measured one (the suffix is computed from the
ECG itself: ecg-chat-reference.md 2.6 notes the same circularity); model cards report
retrieval without the suffix as well.
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import torch
from torch import nn

from ecgbatch.encoders.config import RhythmCfg

N_FEATURES = 7
MIN_PEAKS = 3


def r_peaks(x: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices of one lead: NeuroKit2 ``ecg_clean`` + ``ecg_peaks`` (method
    "neurokit"), the chain ECG-Chat's measurement suffix uses. Empty when detection fails."""
    import neurokit2 as nk

    x = np.asarray(x, dtype=np.float64)
    if x.size < fs or not np.isfinite(x).all() or np.ptp(x) == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            cleaned = nk.ecg_clean(x, sampling_rate=int(round(fs)))
            _, info = nk.ecg_peaks(cleaned, sampling_rate=int(round(fs)), method="neurokit")
        return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
    except Exception:   # NeuroKit2 raises on flat, too short or peakless signals
        return np.zeros(0, dtype=np.int64)


def rhythm_features(peaks: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
    """(features [N_FEATURES] float32, mean RR in ms or NaN) from R-peak indices."""
    f = np.zeros(N_FEATURES, dtype=np.float32)
    if len(peaks) < MIN_PEAKS:
        return f, math.nan
    rr = np.diff(peaks.astype(np.float64)) / fs            # seconds
    mean = float(rr.mean())
    d = np.abs(np.diff(rr))
    f[0] = math.log(mean) / 0.3                            # 0 at 1 s; +-1 at 0.74 / 1.35 s
    f[1] = 5.0 * float(rr.std() / mean)
    f[2] = 5.0 * float(np.sqrt(np.mean(d ** 2)) / mean) if len(d) else 0.0
    f[3] = float(np.mean(d > 0.05)) if len(d) else 0.0
    f[4] = 10.0 * float(np.median(d) / np.median(rr)) if len(d) else 0.0
    f[5] = len(peaks) / 20.0
    f[6] = 1.0
    return f, mean * 1000.0


def rhythm_inputs(lead: np.ndarray, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """What the channel needs of a batch, from one lead [B, samples] of the preprocessed input:
    (features [B, N_FEATURES] float32, mean RR ms [B] with NaN where no rhythm was found). The
    embed pipeline calls this in its CPU read tasks, so encoder actors (GPUs) never wait on it."""
    lead = np.asarray(lead)
    feats, rr = [], []
    for x in lead:
        f, r = rhythm_features(r_peaks(x, fs), fs)
        feats.append(f)
        rr.append(r)
    return (np.stack(feats) if feats else np.zeros((0, N_FEATURES), np.float32),
            np.asarray(rr, dtype=np.float64))


_NUM = r"(\d+(?:\.\d+)?)"
_RR_RE = re.compile(r"\brr(?:\s*interval)?\s*[:=]?\s*" + _NUM)
_HR_RE = re.compile(r"\b(?:hr|heart\s*rate|ventricular\s*rate|vent\s*\.?\s*rate)\s*(?:of|is)?\s*[:=]?\s*" + _NUM)


def text_rr_ms(text: str) -> float:
    """The RR interval (ms) a text states, or NaN: an "rr" value (ms; ECG-Chat's suffix writes
    "rr: 0" when its measurement failed, which counts as none), else a heart rate in bpm
    ("heart rate 71", "hr: 71 bpm") as 60000 / rate. Works on detokenised text too
    ("rr : 845")."""
    t = text.lower()
    m = _RR_RE.search(t)
    if m:
        v = float(m.group(1))
        return v if v > 0 else math.nan
    m = _HR_RE.search(t)
    if m:
        v = float(m.group(1))
        return 60000.0 / v if 10.0 <= v <= 400.0 else math.nan
    return math.nan


class RhythmChannel(nn.Module):
    def __init__(self, cfg: RhythmCfg, width: int, lead_index: int, fs: float):
        super().__init__()
        self.cfg = cfg
        self.lead_index = int(lead_index)
        self.fs = float(fs)
        self.mlp = nn.Sequential(nn.Linear(N_FEATURES, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, width))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.register_buffer("centers", torch.linspace(math.log(cfg.rr_min_ms), math.log(cfg.rr_max_ms),
                                                       cfg.n_bins, dtype=torch.float64), persistent=False)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def measure(self, ecg: torch.Tensor, given=None) -> tuple[torch.Tensor, np.ndarray]:
        """ECG batch [B, leads, samples] -> (features [B, N_FEATURES] on ecg's device, mean RR ms
        [B] with NaN where no rhythm was found). ``given``: (features, rr) computed earlier by
        ``rhythm_inputs`` on the same input (the embed pipeline's read stage)."""
        if given is None:
            feats, rr = rhythm_inputs(ecg[:, self.lead_index].detach().float().cpu().numpy(), self.fs)
        else:
            feats, rr = np.asarray(given[0], dtype=np.float32), np.asarray(given[1], dtype=np.float64)
            if feats.shape != (ecg.shape[0], N_FEATURES) or rr.shape != (ecg.shape[0],):
                raise ValueError(f"rhythm inputs must be features [{ecg.shape[0]}, {N_FEATURES}] and RR "
                                 f"[{ecg.shape[0]}], got {feats.shape} and {rr.shape}")
        return torch.from_numpy(feats).to(ecg.device), rr

    def cls_bias(self, feats: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(feats.to(self.mlp[0].weight.dtype)).to(dtype)

    def rr_block(self, rr_ms, unknown_slot: bool) -> torch.Tensor:
        """[B, dim] float32: unit Gaussian-bump vectors for valid RR values; for NaN the
        "unknown" slot (``unknown_slot``, ECG side) or zeros (text side)."""
        rr = torch.as_tensor(np.asarray(rr_ms, dtype=np.float64))
        ok = torch.isfinite(rr) & (rr > 0)
        c = self.centers.cpu()
        lr = torch.log(torch.where(ok, rr, torch.ones_like(rr))).clamp(float(c[0]), float(c[-1]))
        g = torch.exp(-0.5 * ((lr[:, None] - c[None, :]) / self.cfg.bandwidth) ** 2)
        g = g / g.norm(dim=1, keepdim=True)
        g = torch.where(ok[:, None], g, torch.zeros_like(g))
        slot = (~ok).to(g.dtype)[:, None] if unknown_slot else torch.zeros(len(rr), 1, dtype=g.dtype)
        return torch.cat([g, slot], dim=1).float()

    def combine(self, learned_unit: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        w = self.cfg.weight
        return torch.cat([math.sqrt(1.0 - w) * learned_unit,
                          math.sqrt(w) * block.to(learned_unit.device, learned_unit.dtype)], dim=-1)
