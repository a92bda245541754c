"""ECG tower: ECG-Chat's ``EcgTransformer`` (a 1-D ViT over all leads at once).

conv1 (Conv1d leads->width, kernel = stride = patch, no bias) -> CLS + learnable positions ->
ln_pre -> pre-LN blocks -> ln_post -> CLS @ proj. Parameter names are ECG-Chat's, so the
``ecg.*`` part of an ECG-Chat checkpoint loads into this module unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ecgbatch.encoders.blocks import LayerNorm, Transformer
from ecgbatch.encoders.config import EcgCfg


class EcgTransformer(nn.Module):
    def __init__(self, cfg: EcgCfg, output_dim: int):
        super().__init__()
        self.cfg = cfg
        width = cfg.width
        self.conv1 = nn.Conv1d(cfg.lead_num, width, kernel_size=cfg.patch_size,
                               stride=cfg.patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.n_tokens, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1] != self.cfg.lead_num or x.shape[2] != self.cfg.seq_length:
            raise ValueError(f"ECG input must be [batch, {self.cfg.lead_num}, {self.cfg.seq_length}] "
                             f"(leads x samples), got {tuple(x.shape)!r}")

    def transformer_output(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's output, before ln_post: [B, 1 + n_patches, width], CLS first.
        This is what ECG-Chat's LLaVA stage consumes (``output_last_transformer_layer=True``)."""
        self._check_input(x)
        x = x.to(self.conv1.weight.dtype)   # fp32 input into fp16/bf16 weights; autocast decides the rest
        x = self.conv1(x)                    # [B, width, n_patches]
        x = x.permute(0, 2, 1)               # [B, n_patches, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)       # [B, n_tokens, width]
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        return self.transformer(x)

    def forward(self, x: torch.Tensor, output_last_transformer_layer: bool = False,
                cls_bias: torch.Tensor | None = None):
        """x: [B, leads, samples] -> (pooled [B, embed] = CLS@proj, tokens [B, n_patches, width])
        with tokens after ln_post and without CLS (what the caption decoder attends to).
        ``cls_bias`` [B, width] is added to the CLS state before the projection (the rhythm
        channel of ecgbatch's own variants; None for ECG-Chat's model)."""
        x = self.transformer_output(x)
        if output_last_transformer_layer:
            return x
        x = self.ln_post(x)
        pooled, tokens = x[:, 0], x[:, 1:]
        if cls_bias is not None:
            pooled = pooled + cls_bias.to(pooled.dtype)
        return pooled @ self.proj, tokens

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def lock(self) -> None:
        """Freeze every parameter (ECG-Chat's LLaVA stage keeps the tower frozen)."""
        for p in self.parameters():
            p.requires_grad = False
