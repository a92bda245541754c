"""What one CoCa training step computes, as a module DDP can wrap: ECG features, text features
(from the text tower, or from cached pooled outputs of a fully frozen tower) and, when the
caption loss is on, the decoder's logits. Plus the recipe's parameter freezing and AdamW
parameter groups (ECG-Chat / open_clip: ecg-chat-reference.md 2.3, 2.7).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pooled_text_states(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The text tower's masked-mean pooled hidden state (before ``text.proj``) and its token
    states: what ``HFTextEncoder.forward`` computes on the way to its projection."""
    text = model.text
    mask = (ids != text.pad_token_id).long()
    hidden = text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / mask.sum(-1, keepdim=True).to(hidden.dtype), hidden


@torch.no_grad()
def cache_text_features(model, ids: torch.Tensor, with_states: bool, batch_size: int = 64):
    """Pooled (and optionally token) states of a frozen text tower for all ``ids`` [N, L]."""
    was = model.text.training
    model.text.eval()
    pooled, states = [], []
    for s in range(0, len(ids), batch_size):
        p, h = pooled_text_states(model, ids[s:s + batch_size])
        pooled.append(p)
        if with_states:
            states.append(h)
    model.text.train(was)
    return torch.cat(pooled), (torch.cat(states) if with_states else None)


def configure_trainable(model, lock_text: bool, freeze_layer_norm: bool, use_decoder: bool) -> None:
    """ECG-Chat's --lock-text (all text-transformer weights frozen except LayerNorms unless
    ``freeze_layer_norm``; the projection stays trainable); without the caption loss the
    decoder is frozen too (it would receive no gradient)."""
    for p in model.parameters():
        p.requires_grad = True
    if lock_text:
        model.lock_text_tower(freeze_layer_norm=freeze_layer_norm)
    if not use_decoder:
        for p in model.text_decoder.parameters():
            p.requires_grad = False


def text_tower_frozen(model) -> bool:
    return not any(p.requires_grad for p in model.text.transformer.parameters())


def param_groups(model, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay for < 2-D tensors and for names with bn/ln/bias/
    logit_scale; only trainable parameters."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if excluded else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def clamp_logit_scale(model, max_scale: float) -> None:
    """After each step: logit_scale in [0, ln(max_scale)] (exp(scale) <= 100 in ECG-Chat)."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(max_scale))


class CocaTask(nn.Module):
    """forward(ecg, ids, pooled=None, states=None) -> the dict CoCaLoss/ClipLoss take."""

    def __init__(self, model, use_decoder: bool):
        super().__init__()
        self.model = model
        self.use_decoder = use_decoder

    def forward(self, ecg: torch.Tensor, ids: torch.Tensor, pooled: torch.Tensor | None = None,
                states: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        m = self.model
        if pooled is not None:   # frozen tower: only the projection runs
            text_features = m.text_output(m.text.proj(pooled), ids)
        else:
            text_features, states = m._encode_text(ids)
        ecg_features, ecg_tokens = m._encode_ecg(ecg)
        out = {"ecg_features": ecg_features, "text_features": text_features,
               "logit_scale": m.logit_scale.exp()}
        if self.use_decoder:
            if states is None:
                raise ValueError("the caption loss needs the text token states")
            out["logits"] = m.text_decoder(ecg_tokens, states[:, :-1])
            out["labels"] = ids[:, 1:]
        return out
