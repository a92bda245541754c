"""Transformer pieces shared by the ECG tower and the caption decoder (open_clip 2.24 layout).

Parameter names follow open_clip's ``ResidualAttentionBlock`` (ln_1, attn.in_proj_weight,
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj, and ln_1_kv for cross-attention) so that ECG-Chat
state dicts load as they are. open_clip 2.24 runs the blocks sequence-first (LND); we run
batch-first (``nn.MultiheadAttention(batch_first=True)``): the same parameters, the same maths.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (open_clip's LayerNormFp32: safe under
    fp16/bf16 weights or autocast; identical in float32). eps = 1e-5 (torch default)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig = x.dtype
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(orig)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)[, ln_1_kv(kv)]) then x + mlp(ln_2(x)); GELU (erf)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, is_cross_attention: bool = False):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        if is_cross_attention:
            self.ln_1_kv = LayerNorm(width)
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", nn.GELU()),  # exact erf GELU, not QuickGELU
            ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, T, D] queries; kv: [B, S, D] keys/values for cross-attention (None = self)
        q = self.ln_1(x)
        if kv is not None:
            if not hasattr(self, "ln_1_kv"):
                raise ValueError("kv given to a self-attention block (built without ln_1_kv)")
            kv = self.ln_1_kv(kv)
        else:
            kv = q
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        x = x + self.attn(q, kv, kv, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of self-attention blocks (``resblocks.N``)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for blk in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(blk, x, None, attn_mask, use_reentrant=False)
            else:
                x = blk(x, attn_mask=attn_mask)
        return x
