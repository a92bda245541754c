"""Supervised multi-positive contrastive loss (ours, not ECG-Chat's): InfoNCE with soft targets.

ECG-Chat's InfoNCE treats every other pair in the batch as a negative, even when two reports say
the same thing ("atrial fibrillation ..."). With class-balanced sampling about half a batch is
AF/flutter, so the plain loss spends much of its gradient pushing AF ECGs away from other AF
reports. Here pairs whose texts share a positive keyword label (``ecgbatch.text.labels.keyword_labels``, e.g.
``af``) also count as positives: the target row is

    (1 - label_weight) * one_hot(own pair) + label_weight * uniform(pairs sharing a label, self included)

and the loss is the symmetric soft-target cross-entropy. ``label_weight = 0`` (or a pair with
no positive label) gives exactly ECG-Chat's InfoNCE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ecgbatch.encoders.loss import gather_features


def soft_targets(labels: torch.Tensor, label_weight: float) -> torch.Tensor:
    """[N, K] 0/1 labels -> [N, N] row-stochastic targets (see module doc)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be [N, K], got shape {tuple(labels.shape)!r}")
    if not 0.0 <= label_weight <= 1.0:
        raise ValueError(f"label_weight must be in [0, 1], got {label_weight!r}")
    n = labels.shape[0]
    eye = torch.eye(n, device=labels.device)
    lab = labels.float()
    share = ((lab @ lab.T) > 0).float()
    share = torch.maximum(share, eye)                  # self always counts
    return (1.0 - label_weight) * eye + label_weight * share / share.sum(dim=1, keepdim=True)


def _gather_labels(labels: torch.Tensor, world_size: int) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"world_size={world_size} needs torch.distributed to be initialised")
    out = [torch.zeros_like(labels) for _ in range(world_size)]
    dist.all_gather(out, labels.contiguous())
    return torch.cat(out, dim=0)


def multi_positive_clip_loss(ecg_features: torch.Tensor, text_features: torch.Tensor,
                             logit_scale: torch.Tensor, labels: torch.Tensor, label_weight: float,
                             rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Symmetric soft-target InfoNCE over (all ranks') normalised features; labels [B_local, K]."""
    if labels.shape[0] != ecg_features.shape[0]:
        raise ValueError(f"need one label row per pair, got {labels.shape[0]} for {ecg_features.shape[0]}")
    if world_size > 1:
        ecg_features, text_features = gather_features(ecg_features, text_features, rank=rank,
                                                      world_size=world_size)
        labels = _gather_labels(labels, world_size)
    logits = logit_scale * ecg_features @ text_features.T
    t = soft_targets(labels, label_weight).to(logits.dtype)
    # the targets are symmetric, so the same matrix serves both directions
    return (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2
