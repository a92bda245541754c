"""ECG-CoCa (ECG-Chat's ECG-language encoder): configs, factory, towers, losses, tokenizer,
checkpoint loaders and zero-shot classification.

Imports torch/transformers only (never ray, vllm or faiss), and lazily: ``import
ecgbatch.encoders`` and the config dataclasses work without torch.
"""
from __future__ import annotations

from importlib import import_module

from ecgbatch.encoders.config import CocaConfig, EcgCfg, MultimodalCfg, TextCfg

_LAZY = {
    "create_model": "factory", "get_tokenizer": "factory", "list_models": "factory",
    "build_model": "factory", "resolve_config": "factory",
    "load_ecgchat_checkpoint": "checkpoint", "save_pretrained": "checkpoint",
    "load_folder": "checkpoint", "CheckpointError": "checkpoint",
    "CheckpointReadError": "checkpoint", "CheckpointMismatchError": "checkpoint",
    "CoCa": "coca", "EcgTransformer": "ecg_tower", "HFTextEncoder": "text_tower",
    "MultimodalTransformer": "decoder", "HFTokenizer": "tokenizer",
    "ClipLoss": "loss", "CoCaLoss": "loss",
    "ZeroShotClassifier": "zeroshot", "LabelSet": "zeroshot", "load_labelset": "zeroshot",
}

__all__ = ["CocaConfig", "EcgCfg", "MultimodalCfg", "TextCfg", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"ecgbatch.encoders.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ecgbatch.encoders' has no attribute {name!r}")
