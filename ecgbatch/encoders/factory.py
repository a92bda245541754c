"""One factory family (open_clip habit): ``create_model``, ``get_tokenizer``, ``list_models``.

Names: an architecture / zoo name (``ecg-coca``, ``ecg-coca-mini``), one of our model folders
(or a training checkpoint holding one), an open_clip-style JSON config path or a CocaConfig.
``pretrained``:

- ``None``: fresh CoCa weights (ECG tower, decoder, temperature); the text tower gets its HF
  pretrained weights when the folder is available locally (open_clip's ``pretrained_hf``), else a
  random tower of the configured shape (recorded in ``model.provenance["text"]``).
- ``"random"``: everything random, text tower included (benchmarks).
- ``"default"``: the zoo's weights for that name (``ecgbatch.models``); raises when absent.
- a path: one of our folders (or a training checkpoint) or an ECG-Chat ``.pt`` checkpoint.

The zoo beside it (``ecgbatch.models.registry``, open_clip's ``pretrained.py``) says where a name's
weights are; ``ecgbatch.models.create_model`` dispatches a name to this factory or to another model
family's loader.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ecgbatch.encoders.build import (build_model, checkpoint_model_folder, is_model_folder, local_text_encoder,
                                    resolve_config, resolve_text_source)
from ecgbatch.encoders.config import CocaConfig, list_arch_configs
from ecgbatch.models import registry
from ecgbatch.models.resolve import model_folder

__all__ = ["build_model", "create_model", "get_tokenizer", "list_models", "local_text_encoder",
           "resolve_config", "resolve_text_source"]

log = logging.getLogger(__name__)


def create_model(name_or_path: str | Path | CocaConfig, pretrained: str | Path | None = None, device=None,
                 dtype: torch.dtype | None = None, text_encoder_dir=None, seed: int | None = None):
    """Build (and optionally load) an ECG-CoCa; returns it in eval mode. ``dtype`` casts the
    weights (e.g. torch.bfloat16 on GPU); default float32. A training checkpoint directory loads
    the model folder it holds."""
    from ecgbatch.encoders import checkpoint as ck

    if isinstance(name_or_path, CocaConfig):
        name, folder = name_or_path.name, None
    else:
        name = str(name_or_path)
        # one of our folders (or a checkpoint holding one); another directory is still loaded (and
        # fails with the reason) unless the name is also an architecture or zoo name
        folder = checkpoint_model_folder(name) if Path(name).is_dir() else None
        if folder is not None and not is_model_folder(folder) and (registry.get(name) is not None
                                                                   or name in list_arch_configs()):
            folder = None
    if folder is not None:
        if pretrained not in (None, "default"):
            raise ValueError(f"{name!r} is a model folder with its own weights; got pretrained={pretrained!r}")
        model = ck.load_folder(folder)
    elif pretrained == "default":
        model = ck.load_folder(model_folder(name, "ecg-coca"))
    elif pretrained in (None, "random"):
        cfg, base = resolve_config(name_or_path)
        model = build_model(cfg, text_encoder_dir=text_encoder_dir, base_dir=base,
                            text_weights=pretrained is None, seed=seed)
        if model.provenance["text"] == "random" and pretrained is None:
            log.info("text tower %s not available locally: random text weights", cfg.text_cfg.hf_model_name)
    else:
        p = Path(pretrained)
        if ck.is_model_folder(checkpoint_model_folder(p)):
            model = ck.load_folder(checkpoint_model_folder(p))
            want, _ = resolve_config(name_or_path)
            if want.to_dict() | {"name": ""} != model.cfg.to_dict() | {"name": ""}:
                raise ValueError(f"weights folder {str(p)!r} holds a different architecture than {name!r}")
        else:
            cfg, _ = resolve_config(name_or_path)
            model = ck.load_ecgchat_checkpoint(p, cfg, text_encoder_dir=text_encoder_dir)
    model.eval()
    if dtype is not None:
        model.to(dtype=dtype)
    if device is not None:
        model.to(device)
    return model


def get_tokenizer(name_or_path: str | Path, context_length: int | None = None, text_encoder_dir=None):
    """HFTokenizer for a tokenizer folder, one of our model folders, or an arch/zoo name."""
    from ecgbatch.encoders import checkpoint as ck
    from ecgbatch.encoders.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

    p = Path(name_or_path)
    if ck.is_model_folder(checkpoint_model_folder(p)):
        cfg = ck.read_folder_config(checkpoint_model_folder(p))
        return HFTokenizer(checkpoint_model_folder(p) / ck.TEXT_SUBDIR, context_length or cfg.text_cfg.context_length)
    if p.is_dir():
        return HFTokenizer(p, context_length or DEFAULT_CONTEXT_LENGTH)
    cfg, base = resolve_config(str(name_or_path))
    src = resolve_text_source(cfg, text_encoder_dir, base)
    if src is None:
        raise FileNotFoundError(f"tokenizer {cfg.text_cfg.tokenizer_name!r} is not available locally "
                                "(HF hub is offline): pass text_encoder_dir=<local folder>")
    return HFTokenizer(src, context_length or cfg.text_cfg.context_length)


def list_models() -> list[str]:
    """Architecture names with a shipped config (zoo names are the same set)."""
    return list_arch_configs()
