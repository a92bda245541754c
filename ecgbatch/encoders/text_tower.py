"""Text tower: ECG-Chat's ``HFTextEncoder`` (an HF BERT + masked mean pooling + linear proj).

``transformer`` is an HF ``BertModel`` built with ``add_pooling_layer=False``; the attention mask is
``ids != pad_token_id``; the pooled feature is the mean of ``last_hidden_state`` over non-pad
positions, then ``proj`` (Linear, no bias). The tokens handed to the caption decoder are the full
``last_hidden_state`` (CLS and pads included), as with open_clip's mean pooler.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecgbatch.encoders.config import TextCfg
from ecgbatch.encoders.errors import CheckpointReadError
from ecgbatch.encoders.strict_load import load_state_dict_strict


def build_hf_transformer(source: str | Path | None, hf_config: dict[str, Any] | None,
                         load_weights: bool) -> nn.Module:
    """An HF encoder without pooler, from a local folder (weights optional) or a config dict."""
    from transformers import AutoConfig, AutoModel, BertConfig

    if source is not None:
        source = Path(source)
        if not (source / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {str(source)!r} has no config.json")
        config = AutoConfig.from_pretrained(str(source))
    elif hf_config is not None:
        config = BertConfig(**hf_config)
    else:
        raise ValueError("text tower needs a local HF folder or text_cfg.hf_config, got neither")
    model = AutoModel.from_config(config, add_pooling_layer=False)
    if source is not None and load_weights:
        load_hf_weights(model, source)
    return model


def load_hf_weights(model: nn.Module, folder: Path) -> None:
    """The folder's encoder weights, strictly: only the pooler (ECG-Chat builds BERT without it)
    and the legacy position_ids buffer are skipped; any other difference raises."""
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    try:
        if st.is_file():
            from safetensors.torch import load_file

            sd = load_file(str(st))
        elif pt.is_file():
            sd = torch.load(pt, map_location="cpu", weights_only=True)
        else:
            raise CheckpointReadError(f"text encoder folder {str(folder)!r} has no model.safetensors "
                                      "or pytorch_model.bin")
    except CheckpointReadError:
        raise
    except Exception as exc:
        raise CheckpointReadError(f"cannot read text encoder weights in {str(folder)!r}: {exc}") from None
    prefix = getattr(model, "base_model_prefix", "") + "."
    if prefix != "." and all(k.startswith(prefix) for k in sd):   # e.g. "bert.embeddings..."
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items()
          if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    load_state_dict_strict(model, sd, f"text encoder {folder}")


class HFTextEncoder(nn.Module):
    def __init__(self, cfg: TextCfg, output_dim: int, transformer: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.transformer = transformer
        self.config = transformer.config
        hidden = int(self.config.hidden_size)
        if hidden != cfg.width:
            raise ValueError(f"text encoder hidden size {hidden} differs from text_cfg.width {cfg.width!r}")
        self.proj = nn.Linear(hidden, output_dim, bias=False)

    @property
    def pad_token_id(self) -> int:
        pid = getattr(self.config, "pad_token_id", None)
        return self.cfg.pad_id if pid is None else int(pid)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L] -> (projected mean-pooled [B, embed], last_hidden_state [B, L, width])."""
        if ids.ndim != 2:
            raise ValueError(f"token ids must be [batch, length], got {tuple(ids.shape)!r}")
        if ids.numel() and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}) for this text encoder, got "
                             f"range [{int(ids.min())}, {int(ids.max())}] (added tokens such as <s> have "
                             "no embedding row, as in ECG-Chat)")
        mask = (ids != self.pad_token_id).long()
        hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(dim=1) / mask.sum(-1, keepdim=True).to(hidden.dtype)
        return self.proj(pooled), hidden

    def lock(self, freeze_layer_norm: bool = False) -> None:
        """ECG-Chat's ``--lock-text``: freeze BERT, except parameters whose name has a
        ``LayerNorm`` component unless ``freeze_layer_norm``; ``proj`` stays trainable."""
        for name, p in self.transformer.named_parameters():
            p.requires_grad = (not freeze_layer_norm) and ("LayerNorm" in name.split("."))
