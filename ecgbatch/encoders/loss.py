"""CoCa losses, outside the model (open_clip 2.24 ``ClipLoss`` / ``CoCaLoss`` semantics).

Contrastive: symmetric InfoNCE over L2-normalised features scaled by ``exp(logit_scale)``.
With world_size > 1 the features of all ranks are all-gathered (``torch.distributed``); by default
without grad, the local shard put back in place so gradients flow for this rank (open_clip's
``local_loss=False, gather_with_grad=False``, ECG-Chat's setting). Caption: cross-entropy of the
decoder logits against ``labels`` (= ids[:, 1:]) with ``ignore_index = pad_id``.
Total = clip_loss_weight * contrastive + caption_loss_weight * caption (ECG-Chat: 1.0 and 2.0);
``forward(..., output_dict=True)`` returns both weighted terms; their sum is the training loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gather_features(ecg_features: torch.Tensor, text_features: torch.Tensor, local_loss: bool = False,
                    gather_with_grad: bool = False, rank: int = 0, world_size: int = 1):
    """All ranks' features concatenated in rank order ([world_size * B, D] each)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"ClipLoss(world_size={world_size}) needs torch.distributed to be initialised")
    if gather_with_grad:
        import torch.distributed.nn as dist_nn

        return (torch.cat(dist_nn.all_gather(ecg_features), dim=0),
                torch.cat(dist_nn.all_gather(text_features), dim=0))
    g_ecg = [torch.zeros_like(ecg_features) for _ in range(world_size)]
    g_txt = [torch.zeros_like(text_features) for _ in range(world_size)]
    dist.all_gather(g_ecg, ecg_features.contiguous())
    dist.all_gather(g_txt, text_features.contiguous())
    if not local_loss:   # gathered copies carry no grad: substitute the local shard
        g_ecg[rank] = ecg_features
        g_txt[rank] = text_features
    return torch.cat(g_ecg, dim=0), torch.cat(g_txt, dim=0)


class ClipLoss(nn.Module):
    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.cache_labels, self.rank, self.world_size = cache_labels, rank, world_size
        self.prev_num_logits = 0
        self.labels: dict = {}

    def get_ground_truth(self, device, num_logits: int) -> torch.Tensor:
        if self.prev_num_logits != num_logits or device not in self.labels:
            labels = torch.arange(num_logits, device=device, dtype=torch.long)
            if self.world_size > 1 and self.local_loss:
                labels = labels + num_logits * self.rank
            if self.cache_labels:
                self.labels[device] = labels
                self.prev_num_logits = num_logits
            return labels
        return self.labels[device]

    def get_logits(self, ecg_features, text_features, logit_scale):
        if self.world_size > 1:
            all_ecg, all_txt = gather_features(ecg_features, text_features, self.local_loss,
                                               self.gather_with_grad, self.rank, self.world_size)
            if self.local_loss:
                return logit_scale * ecg_features @ all_txt.T, logit_scale * text_features @ all_ecg.T
            logits_per_ecg = logit_scale * all_ecg @ all_txt.T
            return logits_per_ecg, logits_per_ecg.T
        return logit_scale * ecg_features @ text_features.T, logit_scale * text_features @ ecg_features.T

    def forward(self, ecg_features, text_features, logit_scale, output_dict: bool = False):
        logits_per_ecg, logits_per_text = self.get_logits(ecg_features, text_features, logit_scale)
        labels = self.get_ground_truth(ecg_features.device, logits_per_ecg.shape[0])
        loss = (F.cross_entropy(logits_per_ecg, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return {"contrastive_loss": loss} if output_dict else loss


class CoCaLoss(ClipLoss):
    def __init__(self, caption_loss_weight: float = 2.0, clip_loss_weight: float = 1.0, pad_id: int = 0,
                 local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1):
        super().__init__(local_loss, gather_with_grad, cache_labels, rank, world_size)
        self.caption_loss_weight = caption_loss_weight
        self.clip_loss_weight = clip_loss_weight
        self.pad_id = pad_id
        self.caption_loss = nn.CrossEntropyLoss(ignore_index=pad_id)

    def forward(self, ecg_features, text_features, logits, labels, logit_scale, output_dict: bool = False):
        """Takes ``**model(ecg, text)``: logits [B, T, V], labels [B, T]."""
        if self.clip_loss_weight:
            clip_loss = self.clip_loss_weight * super().forward(ecg_features, text_features, logit_scale)
        else:
            clip_loss = torch.zeros((), device=logits.device)
        caption_loss = self.caption_loss_weight * self.caption_loss(logits.permute(0, 2, 1).float(), labels)
        if output_dict:
            return {"contrastive_loss": clip_loss, "caption_loss": caption_loss}
        return clip_loss, caption_loss
