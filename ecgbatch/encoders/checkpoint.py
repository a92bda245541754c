"""Weight files: ECG-Chat training checkpoints (.pt) and our own folder format.

Our folder format (what training writes and every loader reads)::

    folder/
      config.json          CocaConfig (arch + preprocess) + format fields
      model.safetensors    every weight of the CoCa model (text tower included)
      text_encoder/        HF config.json + tokenizer files of the text tower (no weights)

Loaders never continue silently: a missing, unexpected or mis-shaped key raises
``CheckpointMismatchError`` listing them; an unreadable file raises ``CheckpointReadError``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ecgbatch.encoders.build import (CHECKPOINT_MODEL_SUBDIR, CONFIG_FILE, FORMAT_NAME, WEIGHTS_FILE,
                                     build_model, checkpoint_model_folder, is_model_folder, read_folder_config,
                                     resolve_config)
from ecgbatch.encoders.config import CocaConfig
from ecgbatch.encoders.ecg_tower import EcgTransformer
from ecgbatch.encoders.errors import CheckpointError, CheckpointMismatchError, CheckpointReadError
from ecgbatch.encoders.strict_load import load_state_dict_strict
from ecgbatch.encoders.tokenizer import HFTokenizer

__all__ = ["CHECKPOINT_MODEL_SUBDIR", "CONFIG_FILE", "FORMAT_NAME", "FORMAT_VERSION", "WEIGHTS_FILE", "TEXT_SUBDIR",
           "CheckpointError", "CheckpointMismatchError", "CheckpointReadError", "is_model_folder",
           "load_ecgchat_checkpoint", "load_folder", "load_state_dict_strict", "checkpoint_model_folder",
           "read_folder_config", "read_torch_checkpoint", "resolve_config", "save_pretrained", "tensors_hash"]

FORMAT_VERSION = 1
TEXT_SUBDIR = "text_encoder"
# Written by transformers < 4.31 and deleted by ECG-Chat's loader too.
_DROP_KEYS = ("text.transformer.embeddings.position_ids",)


# -- ECG-Chat .pt checkpoints -------------------------------------------------------------------
def read_torch_checkpoint(path: str | Path, mmap: bool = True) -> dict[str, torch.Tensor]:
    """State dict of an ECG-Chat checkpoint (``{"state_dict": ...}`` or a raw dict), ``module.``
    stripped, stale ``position_ids`` dropped. weights_only=True; memory-mapped when possible (the
    real 4 GB file holds optimizer state that is never materialised)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointReadError(f"checkpoint file not found: {str(p)!r}")
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "mmap" not in str(exc):
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)  # legacy (non-zip) file
    except Exception as exc:  # torch raises RuntimeError, EOFError, pickle/zip errors, ...
        raise CheckpointReadError(f"cannot read checkpoint {str(p)!r} ({type(exc).__name__}: {exc})") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointReadError(f"{str(p)!r} holds no state dict of tensors "
                                  f"(top-level keys: {sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__})")
    keys = list(sd)
    with_prefix = [k for k in keys if k.startswith("module.")]
    if with_prefix and len(with_prefix) != len(keys):
        raise CheckpointReadError(f"{str(p)!r} mixes keys with and without 'module.' "
                                  f"(e.g. {[k for k in keys if not k.startswith('module.')][:5]})")
    if with_prefix:
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in _DROP_KEYS}


def load_ecgchat_checkpoint(checkpoint: str | Path, model_config: str | Path | CocaConfig = "ecg-coca",
                            text_encoder_dir: str | Path | None = None, ecg_only: bool = False,
                            device: str | torch.device | None = None, mmap: bool = True):
    """Load an ECG-Chat training checkpoint.

    ecg_only=False: the full CoCa (needs the text tower's HF folder for its architecture and
    tokenizer: ``text_encoder_dir``, or a config whose ``hf_model_name`` is a local folder).
    ecg_only=True: only the ``ecg.*`` keys (other keys are ignored, as ECG-Chat's
    ``get_ecg_encoder`` does) into an ``EcgTransformer``, frozen: the LLaVA stage's tower.
    """
    cfg, base = resolve_config(model_config)
    sd = read_torch_checkpoint(checkpoint, mmap=mmap)
    if ecg_only:
        ecg_sd = {k[len("ecg."):]: v for k, v in sd.items() if k.startswith("ecg.")}
        if not ecg_sd:
            raise CheckpointMismatchError(f"{checkpoint} (ecg_only)", ["ecg.*"], sorted(sd)[:20], [])
        tower = EcgTransformer(cfg.ecg_cfg, cfg.embed_dim)
        load_state_dict_strict(tower, ecg_sd, f"{checkpoint} (ecg.*)", prefix="ecg.")
        tower.lock()
        return tower.eval().to(device) if device is not None else tower.eval()
    model = build_model(cfg, text_encoder_dir=text_encoder_dir, base_dir=base, text_weights=False,
                                allow_random_text=True)
    load_state_dict_strict(model, sd, str(checkpoint))
    model.provenance = {"weights": "ecgchat-checkpoint", "checkpoint": str(checkpoint)}
    model.eval()
    return model.to(device) if device is not None else model


# -- our folder format --------------------------------------------------------------------------
def save_pretrained(model, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as config.json + model.safetensors + text_encoder/ (config + tokenizer).
    ``dtype`` (e.g. torch.float16) casts floating tensors on the way out."""
    from safetensors.torch import save_file

    out = Path(folder)
    (out / TEXT_SUBDIR).mkdir(parents=True, exist_ok=True)
    sd = {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        sd[k] = t.contiguous()
    save_file(sd, str(out / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})
    model.text.transformer.config.save_pretrained(str(out / TEXT_SUBDIR))
    for junk in ("model.safetensors", "pytorch_model.bin"):  # weights live in the top file only
        (out / TEXT_SUBDIR / junk).unlink(missing_ok=True)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out / TEXT_SUBDIR)
    d = model.cfg.to_dict()
    d.update(format=FORMAT_NAME, format_version=FORMAT_VERSION,
             dtype=str(dtype or next(model.parameters()).dtype).replace("torch.", ""),
             weights_hash=model.weights_hash)
    (out / CONFIG_FILE).write_text(json.dumps(d, indent=2) + "\n")
    return out


TRAINED_ONLY = "trained-only"


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 prefix over (name, shape, float32 bytes) in sorted order: identifies base weights
    independently of their storage dtype (same rule as ecgbatch.training's trained-only folders)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().float().contiguous()
        h.update(f"{k}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def load_folder(folder: str | Path, device=None, text_encoder_dir=None):
    """The CoCa model stored in one of our folders (strict), in float32 unless cast later.

    A "trained-only" folder (config ``stored_weights: "trained-only"``, written by
    ecgbatch.training) stores only the tensors training changed: the frozen text transformer comes
    from the locally installed text encoder (its hash must match ``base_weights``) and modules
    under ``omitted`` keep a fixed-seed initialisation, so ``weights_hash`` stays stable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(folder)
    if not is_model_folder(p):
        raise CheckpointReadError(f"{str(p)!r} is not a model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    cfg = read_folder_config(p)
    meta = json.loads((p / CONFIG_FILE).read_text())
    try:
        sd = load_file(str(p / WEIGHTS_FILE))
    except (SafetensorError, OSError) as exc:
        raise CheckpointReadError(f"cannot read {str(p / WEIGHTS_FILE)!r}: {exc}") from None
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    if meta.get("stored_weights") == TRAINED_ONLY:
        model = _load_trained_only(p, cfg, meta, sd, text_encoder_dir)
    else:
        model = build_model(cfg, text_encoder_dir=p / TEXT_SUBDIR, text_weights=False)
        load_state_dict_strict(model, sd, str(p / WEIGHTS_FILE))
        model.provenance = {"weights": "folder", "folder": str(p)}
    model.eval()
    return model.to(device) if device is not None else model


def _load_trained_only(p: Path, cfg: CocaConfig, meta: dict, stored: dict, text_encoder_dir):
    base = meta.get("base_weights") or {}
    omitted = tuple(meta.get("omitted") or ())
    model = build_model(cfg, text_encoder_dir=text_encoder_dir, text_weights=True,
                                allow_random_text=False, seed=0)
    if model.provenance.get("text") != "pretrained":
        raise CheckpointReadError(f"{str(p)!r} needs the text encoder {cfg.text_cfg.hf_model_name!r} installed")
    if (p / TEXT_SUBDIR / "tokenizer_config.json").is_file() and model.tokenizer is None:
        model.tokenizer = HFTokenizer(p / TEXT_SUBDIR, cfg.text_cfg.context_length)
    own = model.state_dict()
    for prefix, info in base.items():
        got = tensors_hash({k: v for k, v in own.items() if k.startswith(prefix)})
        if got != info.get("sha256_16"):
            raise CheckpointMismatchError(
                f"{p}: installed base weights {prefix}* (hash {got}) differ from the ones it was trained "
                f"with ({info.get('sha256_16')})", [], [], [])
    covered = tuple(base) + omitted
    missing = sorted(k for k in own if k not in stored and not k.startswith(covered))
    unexpected = sorted(set(stored) - set(own))
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in stored.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(str(p / WEIGHTS_FILE), missing, unexpected, mismatched)
    model.load_state_dict(stored, strict=False)
    model.provenance = {"weights": TRAINED_ONLY, "folder": str(p), "omitted": list(omitted)}
    return model
