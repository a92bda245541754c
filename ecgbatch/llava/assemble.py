"""ECG-LLaVA models built from parts: a new model for training, and the full folder that vLLM
and ``report`` load, assembled from a small "trained-only" folder.

A trained-only folder (what ``ecgbatch train export`` writes and what ships in
``ecgbatch/models/weights/ecg-llava-mini/``) holds only what training changed:

    config.json          the EcgLlavaConfig + "stored_weights": "trained-only" + "base": where the
                         frozen parts come from ({"lm": base name or folder, "tower": ecg-coca
                         zoo name or folder} or {"folder": a full ECG-LLaVA folder}) and the
                         SHA-256 prefixes of those parts (checked at assembly)
    model.safetensors    projector.* only
    lora/                the peft adapter of the language model (sft stage)

``full_folder(trained_only)`` assembles the full folder (config.json, model.safetensors with the
tower, projector and LM, tokenizer with ``<ecg>``, and lora/) into the cache at first use,
atomically and hash-checked (``ecgbatch.llava.base_models.cached_folder``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from ecgbatch.encoders.checkpoint import load_state_dict_strict, read_folder_config, tensors_hash
from ecgbatch.llava.base_models import base_folder, cache_root, cached_folder
from ecgbatch.llava.convert import build_config, load_base_lm, tokenizer_with_ecg_token
from ecgbatch.llava.errors import ModelFolderError, ModelNotInstalledError
from ecgbatch.llava.loading import load_ecg_llava, save_ecg_llava
from ecgbatch.llava.modeling_ecg_llava import build_ecg_tower, build_projector, EcgLlavaForCausalLM
from ecgbatch.models.resolve import LORA_SUBDIR, model_folder

TRAINED_ONLY = "trained-only"


def _tower_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd = load_file(str(folder / "model.safetensors"))
    return {k[len("ecg."):]: v.float() for k, v in sd.items() if k.startswith("ecg.")}


def new_ecg_llava(lm: str, tower: str, projector_type: str = "mlp2x_gelu", prompt_format: str = "chat_template",
                  max_context_length: int = 2048, seed: int = 0, log=None):
    """(model, tokenizer): the language model ``lm`` (a base name of base_models.BASES or an HF
    folder), the ECG tower of the ECG-CoCa model ``tower`` (zoo name or folder; frozen) and a
    freshly initialised projector (seeded)."""
    lm_dir = base_folder(lm, log)
    try:
        tdir = model_folder(tower, "ecg-coca")
    except (ValueError, FileNotFoundError) as exc:
        raise ModelNotInstalledError(f"the ECG tower {tower!r} is not installed: {exc}") from None
    base_cfg = json.loads((lm_dir / "config.json").read_text())
    config = build_config(base_cfg, {"tokenizer_model_max_length": max_context_length},
                          read_folder_config(tdir), projector_type)
    config.prompt_format = prompt_format
    tokenizer = tokenizer_with_ecg_token(lm_dir, config.ecg_token, {"tokenizer_model_max_length": max_context_length})
    config.ecg_token_id = tokenizer.convert_tokens_to_ids(config.ecg_token)
    with torch.device("meta"):
        model = EcgLlavaForCausalLM(config)
    model.language_model = load_base_lm(lm_dir, torch.float32)
    model.ecg_tower = build_ecg_tower(config)
    load_state_dict_strict(model.ecg_tower, _tower_state(tdir), f"ECG tower of {str(tdir)!r}")
    torch.manual_seed(seed)
    model.projector = build_projector(config)
    return model.eval(), tokenizer


def base_model(base: dict, log=None):
    """(model, tokenizer) for a trained-only folder's ``base`` entry (projector not yet loaded)."""
    if "folder" in base:
        return load_ecg_llava(base["folder"])
    return new_ecg_llava(base["lm"], base["tower"], base.get("projector_type", "mlp2x_gelu"),
                         base.get("prompt_format", "chat_template"), base.get("max_context_length", 2048),
                         log=log)


def _lm_base_state(model) -> dict[str, torch.Tensor]:
    lm = model.language_model
    if hasattr(lm, "peft_config"):
        lm = lm.get_base_model()
    return {k.replace(".base_layer", ""): v for k, v in lm.state_dict().items() if "lora_" not in k}


def base_hashes(model) -> dict[str, str]:
    return {"language_model": tensors_hash(_lm_base_state(model)),
            "ecg_tower": tensors_hash(model.ecg_tower.state_dict())}


def save_trained_only(model, folder: str | Path, base: dict, extra: dict | None = None) -> Path:
    """Write projector + LoRA adapter + config (see module doc) into ``folder``."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg.update(stored_weights=TRAINED_ONLY, base=dict(base), base_sha256_16=base_hashes(model), **(extra or {}))
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    proj = {f"projector.{k}": v.detach().float().cpu().contiguous() for k, v in model.projector.state_dict().items()}
    save_file(proj, str(out / "model.safetensors"), metadata={"format": "pt", "stored_weights": TRAINED_ONLY})
    lm = model.language_model
    if hasattr(lm, "peft_config"):
        lm.save_pretrained(str(out / LORA_SUBDIR), safe_serialization=True)
        acfg = out / LORA_SUBDIR / "adapter_config.json"
        d = json.loads(acfg.read_text())
        d.update(base_model_name_or_path=None, inference_mode=True)
        acfg.write_text(json.dumps(d, indent=2) + "\n")
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    return out


def is_trained_only(folder: str | Path) -> bool:
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("stored_weights") == TRAINED_ONLY
    except (OSError, json.JSONDecodeError):
        return False


def load_projector(model, folder: str | Path) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(Path(folder) / "model.safetensors"))
    sd = {k[len("projector."):] if k.startswith("projector.") else k: v.float() for k, v in sd.items()}
    load_state_dict_strict(model.projector, sd, f"projector of {str(folder)!r}", prefix="projector.")


def load_trained_only(folder: str | Path, log=None):
    """(model, tokenizer) of a trained-only folder: frozen parts rebuilt and hash-checked, the
    projector loaded; the adapter (lora/) is NOT applied (``apply_lora`` / vLLM do that)."""
    p = Path(folder)
    cfg = json.loads((p / "config.json").read_text())
    model, tok = base_model(cfg["base"], log)
    got, want = base_hashes(model), cfg.get("base_sha256_16", {})
    bad = {k: (want.get(k), v) for k, v in got.items() if want.get(k) not in (None, v)}
    if bad:
        raise ModelFolderError(f"{str(p)!r} was trained on other base weights than the installed ones "
                               f"(sha256 prefixes stored vs installed: {bad}); reinstall the base packages "
                               "named in its MODEL_CARD")
    load_projector(model, p)
    model.config.prompt = dict(cfg.get("prompt") or {})   # how it was trained to be asked (grounded, ...)
    model.config.generation = dict(cfg.get("generation") or {})   # its decoding defaults
    return model, tok


ASSEMBLY_VERSION = b"3"   # 2: the full folder keeps the trained-only config's "prompt"; 3: and "generation"


def _folder_key(folder: Path) -> str:
    h = hashlib.sha256(ASSEMBLY_VERSION)
    for f in sorted(q for q in folder.rglob("*") if q.is_file() and q.suffix in (".json", ".safetensors")):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def full_folder(trained_only: str | Path, name: str | None = None, log=None) -> Path:
    """The full ECG-LLaVA folder (+ lora/) of a trained-only folder, assembled into the cache at
    first use (``$ECGBATCH_CACHE/models/<name>-<sha of the trained-only files>/``)."""
    src = Path(trained_only)
    if not is_trained_only(src):
        raise ModelFolderError(f"{str(src)!r} is not a trained-only ECG-LLaVA folder")
    dest = cache_root() / "models" / f"{name or src.name}-{_folder_key(src)}"

    def write(tmp: Path) -> None:
        model, tok = load_trained_only(src, log)
        save_ecg_llava(model, tok, tmp)
        if (src / LORA_SUBDIR).is_dir():
            shutil.copytree(src / LORA_SUBDIR, tmp / LORA_SUBDIR)

    return cached_folder(dest, write, f"the full ECG-LLaVA folder of {name or src.name}", log)


def runnable_folder(folder: str | Path, name: str | None = None, log=None) -> Path:
    """The folder vLLM and ``report`` load for a folder the resolver found: a trained-only folder
    assembled into the cache at first use (``full_folder``), any other folder as it is. The ECG-LLaVA
    family's plug-in for ``ecgbatch.models.llava_model``."""
    return full_folder(folder, name, log) if is_trained_only(folder) else Path(folder)
