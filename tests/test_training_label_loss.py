"""Multi-positive (keyword-label) contrastive loss: targets and reduction to ECG-Chat's InfoNCE."""
import pytest
import torch

from ecgbatch.encoders.loss import ClipLoss
from ecgbatch.training.job_config import LossConfig
from ecgbatch.training.label_loss import multi_positive_clip_loss, soft_targets


def test_soft_targets_rows_sum_to_one_and_share_mass_within_label():
    labels = torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0]])
    t = soft_targets(labels, 0.6)
    assert torch.allclose(t.sum(1), torch.ones(5))
    assert t[0, 0] == pytest.approx(0.4 + 0.6 / 3)
    assert t[0, 2] == pytest.approx(0.6 / 3) and t[0, 1] == 0
    assert t[1, 1] == pytest.approx(1.0) and t[1, 4] == 0     # no positive label: one-hot


def test_zero_weight_equals_clip_loss_and_positive_weight_rewards_same_label_match():
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(6, 16), dim=1)
    x = torch.nn.functional.normalize(torch.randn(6, 16), dim=1)
    labels = torch.tensor([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0]])
    scale = torch.tensor(20.0)
    assert multi_positive_clip_loss(e, x, scale, labels, 0.0).item() == pytest.approx(
        ClipLoss()(e, x, scale).item(), rel=1e-5)
    # ECGs 0-2 matched to a permutation of the AF texts: soft targets forgive it, InfoNCE does not
    x_perm = e[[1, 2, 0, 3, 4, 5]]
    hard = multi_positive_clip_loss(e, x_perm, scale, labels, 0.0)
    soft = multi_positive_clip_loss(e, x_perm, scale, labels, 0.8)
    assert soft < hard


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="label_weight"):
        LossConfig(caption_weight=0.0, label_weight=1.5, label_positives=["af"])
    with pytest.raises(ValueError, match="label_positives"):
        LossConfig(caption_weight=0.0, label_weight=0.5)
    with pytest.raises(ValueError, match="contrastive-only"):
        LossConfig(caption_weight=2.0, label_weight=0.5, label_positives=["af"])
