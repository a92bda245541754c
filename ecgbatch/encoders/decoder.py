"""Caption decoder: ECG-Chat's ``MultimodalTransformer``.

Per layer i: ``resblocks[i]`` (causal self-attention over the text states, additive -inf mask of
size context_length) then ``cross_attn[i]`` (queries ln_1(text), keys/values ln_1_kv(ECG tokens)).
Then ``ln_final`` and ``@ text_projection`` [width, vocab]. The text states are BERT's
(bidirectional) hidden states, so the caption loss is partly a copy task (quirk Q1): kept, because
ECG-Chat's decoder weights mean exactly this.
"""
from __future__ import annotations

import torch
from torch import nn

from ecgbatch.encoders.blocks import LayerNorm, ResidualAttentionBlock, Transformer
from ecgbatch.encoders.config import MultimodalCfg


def causal_mask(n: int) -> torch.Tensor:
    """[n, n] additive mask: 0 on and below the diagonal, -inf above (open_clip)."""
    return torch.full((n, n), float("-inf")).triu_(1)


class MultimodalTransformer(Transformer):
    def __init__(self, cfg: MultimodalCfg, output_dim: int):
        super().__init__(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.context_length = cfg.context_length
        self.cross_attn = nn.ModuleList([
            ResidualAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio, is_cross_attention=True)
            for _ in range(cfg.layers)])
        self.register_buffer("attn_mask", causal_mask(cfg.context_length), persistent=False)
        self.ln_final = LayerNorm(cfg.width)
        # ECG-Chat creates this with torch.empty and never initialises it; we use the std its
        # (uncalled) init_parameters intends, so a fresh model is well defined.
        self.text_projection = nn.Parameter(torch.randn(cfg.width, output_dim) * cfg.width ** -0.5)

    def forward(self, ecg_tokens: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        """ecg_tokens [B, S, width] (post-ln_post, no CLS); text_states [B, T, width] with
        T <= context_length -> logits [B, T, vocab]."""
        T = text_states.shape[1]
        if T > self.context_length:
            raise ValueError(f"decoder context is {self.context_length} positions, got {T}")
        mask = self.attn_mask[:T, :T]
        x = text_states
        for blk, xattn in zip(self.resblocks, self.cross_attn):
            x = blk(x, attn_mask=mask)
            x = xattn(x, kv=ecg_tokens)
        x = self.ln_final(x)
        return x @ self.text_projection.to(x.dtype)
