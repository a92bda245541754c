"""ECG-Chat LoRA fine-tuning output -> one ECG-LLaVA model folder (+ a peft adapter folder).

Inputs, as ECG-Chat's train.py leaves them (reference §3.3, §6.1):
  base_dir   the base LLM (Vicuna): HF folder with config, weights, tokenizer
  lora_dir   config.json (model_type "llava_llama", mm_* fields), adapter_config.json,
             adapter_model.safetensors|bin, non_lora_trainables.bin (the projector)
  ecg_coca   the ECG-CoCa training checkpoint; its ``module.ecg.*`` keys are the tower

Output ``out_dir``: config.json + model.safetensors (tower + projector + base LM) + tokenizer
with <ecg>; the adapter in ``out_dir/lora`` (keys for the bare LlamaForCausalLM, which are
ECG-Chat's own since LlavaLlamaForCausalLM keeps its LM at ``model.``), or merged into the LM
weights with ``merge_lora`` (then no adapter is written).

ECG-Chat quirks handled: the projector type is read from ``mm_projector_type`` (LLaVA's default
"linear" when absent) and checked against the tensors in non_lora_trainables.bin (a "linear"
projector is a bare Linear there, ``mm_projector.weight``); ``mm_hidden_size`` (hard-coded 768 by
ECG-Chat) must equal the tower width; ``mm_use_ecg_start_end`` / ``mm_use_ecg_patch_token`` add
tokens and resize embeddings, which this format does not represent, so True is refused; the
-200 placeholder becomes the tokenizer's <ecg> id (the model accepts -200 as well). The tower is
read from the ECG-CoCa checkpoint after the LLM is built (never from the base's weights, which
is how ECG-Chat's own builder ends up re-initialising it). All .bin files load weights_only.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ecgbatch.encoders.checkpoint import (CheckpointError, load_ecgchat_checkpoint, load_state_dict_strict,
                                          resolve_config)
from ecgbatch.llava.configuration_ecg_llava import PROJECTOR_TYPES, EcgLlavaConfig
from ecgbatch.llava.errors import ConversionError
from ecgbatch.llava.loading import apply_lora, check_adapter, read_adapter, save_ecg_llava
from ecgbatch.llava.modeling_ecg_llava import build_projector, EcgLlavaForCausalLM

LORA_SUBDIR = "lora"
NON_LORA = "non_lora_trainables.bin"
# LLaMA fields a LoRA config copies from its base: they must agree, or the adapter is for another base.
_BASE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size")


def _read_json(p: Path, what: str) -> dict:
    if not p.is_file():
        raise ConversionError(f"{what} not found: {str(p)!r}")
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read {what} {str(p)!r}: {exc}") from None


def read_llava_config(lora_dir: Path, base_cfg: dict) -> dict:
    """ECG-Chat's LlavaConfig, checked: model_type llava_*, flags we can represent, same base."""
    cfg = _read_json(lora_dir / "config.json", "ECG-Chat LLaVA config")
    if not str(cfg.get("model_type", "")).startswith("llava"):
        raise ConversionError(f"{str(lora_dir / 'config.json')!r} has model_type {cfg.get('model_type')!r}; "
                              "expected ECG-Chat's 'llava_llama'")
    flags = [f for f in ("mm_use_ecg_start_end", "mm_use_ecg_patch_token") if cfg.get(f)]
    if flags:
        raise ConversionError(f"{flags} are True in {str(lora_dir / 'config.json')!r}: those add <ecg_start>/"
                              "<ecg_end>/<ecg_patch> tokens and resize the embeddings, which ECG-Chat's "
                              "released scripts never do; not supported")
    differ = [f"{k}: LoRA config {cfg[k]!r} vs base {base_cfg[k]!r}" for k in _BASE_FIELDS
              if k in cfg and k in base_cfg and cfg[k] != base_cfg[k]]
    if differ:
        raise ConversionError(f"the LoRA run was not made on this base model ({'; '.join(differ)})")
    return cfg


def read_projector(lora_dir: Path, projector_type: str) -> dict[str, torch.Tensor]:
    """non_lora_trainables.bin -> {"0.weight", "0.bias"[, "2.weight", "2.bias"]} (our Sequential
    names). ECG-Chat's loader strips "base_model." then "model." when keys start "model.model."."""
    f = lora_dir / NON_LORA
    if not f.is_file():
        raise ConversionError(f"{str(f)!r} not found: ECG-Chat's LoRA output keeps the projector there")
    try:
        raw = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip/torch errors of a bad file
        raise ConversionError(f"cannot read {str(f)!r} ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConversionError(f"{str(f)!r} is not a dict of tensors")
    sd = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in raw.items()}
    if any(k.startswith("model.model.") for k in sd):
        sd = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in sd.items()}
    prefix = "model.mm_projector."
    proj = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    others = sorted(k for k in sd if not k.startswith(prefix))
    if others:
        raise ConversionError(f"{str(f)!r} holds trainables other than the projector, which this converter "
                              f"does not place: {others[:10]}")
    if not proj:
        raise ConversionError(f"{str(f)!r} holds no mm_projector tensors (keys: {sorted(raw)[:10]})")
    if projector_type == "linear" and set(proj) == {"weight", "bias"}:
        proj = {f"0.{k}": v for k, v in proj.items()}
    want = {"0.weight", "0.bias"} | ({"2.weight", "2.bias"} if projector_type == "mlp2x_gelu" else set())
    if set(proj) != want:
        raise ConversionError(f"mm_projector_type is {projector_type!r} but {str(f)!r} holds projector tensors "
                              f"{sorted(proj)} (expected {sorted(want)}); the config and the weights disagree "
                              "(ECG-Chat's stage 1 trains 'linear' unless told otherwise)")
    return proj


def resolve_ecg_config(ecg_coca_ckpt: Path, llava_cfg: dict, ecg_config=None):
    """The ECG-CoCa config for the tower: given explicitly (arch name, JSON, folder), else the
    checkpoint's neighbour ``<open_clip_config>.json`` / ``model_config.json``."""
    if ecg_config is not None:
        try:
            return resolve_config(ecg_config)[0]
        except ValueError as exc:
            raise ConversionError(f"ECG-CoCa config {str(ecg_config)!r}: {exc}") from None
    name = llava_cfg.get("open_clip_config")
    for cand in ([ecg_coca_ckpt.parent / f"{name}.json"] if name else []) + [ecg_coca_ckpt.parent / "model_config.json"]:
        if cand.is_file():
            return resolve_config(cand)[0]
    raise ConversionError(f"no ECG-CoCa model config found for {str(ecg_coca_ckpt)!r} (open_clip_config "
                          f"{name!r}); pass ecg_config (an architecture name such as 'ecg-coca', or the "
                          "open_clip JSON)")


def build_config(base_cfg: dict, llava_cfg: dict, coca_cfg, projector_type: str) -> EcgLlavaConfig:
    tower = coca_cfg.ecg_cfg
    mm_hidden = llava_cfg.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != tower.width:
        raise ConversionError(f"mm_hidden_size is {mm_hidden} in the LLaVA config but the ECG tower is "
                              f"{tower.width} wide (ECG-Chat hard-codes 768); the projector was trained for "
                              "another tower")
    text = {k: v for k, v in base_cfg.items() if k not in ("architectures", "_name_or_path", "transformers_version")}
    return EcgLlavaConfig(text_config=text, ecg_config={**asdict(tower), "embed_dim": coca_cfg.embed_dim},
                          preprocess=coca_cfg.preprocess.to_dict(), projector_type=projector_type,
                          prompt_format="vicuna_v1", max_context_length=llava_cfg.get("tokenizer_model_max_length"),
                          tie_word_embeddings=bool(base_cfg.get("tie_word_embeddings", False)))


def load_base_lm(base_dir: Path, dtype):
    """The base language model of a folder (transformers), refusing missing or mis-shaped tensors."""
    from transformers import AutoModelForCausalLM

    try:
        lm, info = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConversionError(f"cannot load the base model {str(base_dir)!r}: {exc}") from None
    bad = {k: sorted(v)[:10] for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad:
        raise ConversionError(f"base model {str(base_dir)!r} did not load completely: {bad}")
    return lm


def tokenizer_with_ecg_token(base_dir: Path, ecg_token: str, llava_cfg: dict):
    """The base model's tokenizer with ``ecg_token`` added, padded and sized as ECG-Chat trains."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(base_dir))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot load the tokenizer of {str(base_dir)!r}: {exc}") from None
    tok.add_special_tokens({"additional_special_tokens": [ecg_token]})
    if tok.pad_token is None and tok.unk_token is not None:
        tok.pad_token = tok.unk_token          # ECG-Chat's train.py for conversation version v1
    if llava_cfg.get("tokenizer_model_max_length"):
        tok.model_max_length = int(llava_cfg["tokenizer_model_max_length"])
    tok.padding_side = llava_cfg.get("tokenizer_padding_side", "right")
    return tok


def convert_ecgchat_llava(base_dir, lora_dir, ecg_coca_ckpt, out_dir, merge_lora: bool = False,
                          ecg_config=None, dtype=torch.float32) -> Path:
    """Convert (see module docstring). Returns ``out_dir``. Raises ConversionError /
    CheckpointError / AdapterMismatchError naming what is missing or mis-shaped."""
    base_dir, lora_dir, ckpt, out = Path(base_dir), Path(lora_dir), Path(ecg_coca_ckpt), Path(out_dir)
    base_cfg = _read_json(base_dir / "config.json", "base model config")
    llava_cfg = read_llava_config(lora_dir, base_cfg)
    projector_type = llava_cfg.get("mm_projector_type") or "linear"   # LLaVA's default
    if projector_type not in PROJECTOR_TYPES:
        raise ConversionError(f"mm_projector_type {projector_type!r} is not supported (ECG-Chat uses one of "
                              f"{PROJECTOR_TYPES})")
    projector = read_projector(lora_dir, projector_type)
    coca_cfg = resolve_ecg_config(ckpt, llava_cfg, ecg_config)
    adapter_cfg, adapter = read_adapter(lora_dir)
    config = build_config(base_cfg, llava_cfg, coca_cfg, projector_type)

    lm = load_base_lm(base_dir, dtype)
    check_adapter(lm, adapter_cfg, adapter, repr(str(lora_dir)))
    try:
        tower = load_ecgchat_checkpoint(ckpt, coca_cfg, ecg_only=True)
    except CheckpointError as exc:
        raise ConversionError(f"ECG tower from {str(ckpt)!r}: {exc}") from None
    tokenizer = tokenizer_with_ecg_token(base_dir, config.ecg_token, llava_cfg)
    config.ecg_token_id = tokenizer.convert_tokens_to_ids(config.ecg_token)

    with torch.device("meta"):
        model = EcgLlavaForCausalLM(config)
    model.language_model = lm
    model.ecg_tower = tower.to(dtype)
    model.projector = _projector_module(config, projector, dtype)
    if merge_lora:
        model = apply_lora(model, lora_dir, merge=True)
    return _write_atomically(out, lambda tmp: _write_outputs(model, tokenizer, tmp, None if merge_lora else
                                                             (lora_dir, adapter_cfg, adapter)))


def _write_outputs(model, tokenizer, folder: Path, adapter) -> None:
    save_ecg_llava(model, tokenizer, folder)
    if adapter is not None:
        write_adapter(*adapter, folder / LORA_SUBDIR)


def _write_atomically(out: Path, write) -> Path:
    """Write into a temporary sibling, then rename it to ``out``: a failed or interrupted
    conversion never leaves a half-written model folder. An existing non-empty ``out`` is refused."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"output {str(out)!r} already exists and is not empty; remove it or choose another")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if out.exists():
            out.rmdir()                       # empty, checked above
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _projector_module(config: EcgLlavaConfig, tensors: dict[str, torch.Tensor], dtype) -> torch.nn.Module:
    proj = build_projector(config).to(dtype)
    try:
        load_state_dict_strict(proj, {k: v.to(dtype) for k, v in tensors.items()}, f"{NON_LORA} (mm_projector)",
                               prefix="mm_projector.")
    except CheckpointError as exc:
        raise ConversionError(f"projector: {exc}") from None
    return proj


def write_adapter(lora_dir: Path, adapter_cfg: dict, tensors: dict[str, torch.Tensor], dest: Path) -> Path:
    """The adapter as a peft folder for the bare LM: adapter_config.json + adapter_model.safetensors.
    ECG-Chat's keys (base_model.model.model.layers...) already name the bare LlamaForCausalLM's
    modules, since LlavaLlamaForCausalLM keeps its LM at ``model.`` and ``lm_head``."""
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    cfg = dict(adapter_cfg, base_model_name_or_path=None, inference_mode=True)
    (dest / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    readme = lora_dir / "README.md"
    if readme.is_file():
        shutil.copyfile(readme, dest / "README.md")
    return dest
