"""Model folders and LoRA adapters, checked and made vLLM-runnable before an engine starts.

- ``check_model_folder``: config.json parses as an EcgLlavaConfig, the tokenizer knows the <ecg>
  token, and model.safetensors holds exactly the tensors (names and shapes) the model has
  (compared with the model built on the meta device: nothing is loaded).
- ``check_adapter``: a peft LoRA adapter for THIS language model (every target module exists and
  every A/B shape fits it) with a rank vLLM serves.
- ``runnable_model_folder`` / ``runnable_adapter``: when the LM's head size is not one vLLM's CPU
  attention supports, an equivalent head-padded copy (ecgbatch.serving.head_padding) cached
  under a work folder; otherwise the folder itself.
No vLLM import here (torch, safetensors, transformers only).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open

from ecgbatch.encoders.checkpoint import CheckpointMismatchError
from ecgbatch.serving import head_padding
from ecgbatch.serving.errors import AdapterMismatchError, ModelFolderError, UnsupportedLoraRankError

# vllm/config/lora.py MaxLoRARanks (vLLM 0.32)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:   # safetensors raises its own error types for a bad header
        raise ModelFolderError(f"{path}: not a readable safetensors file ({exc})") from None


def load_config(folder: str | Path):
    """The folder's EcgLlavaConfig (ModelFolderError naming the folder when it cannot be read)."""
    from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfig

    p = Path(folder)
    if not (p / "config.json").is_file():
        raise ModelFolderError(f"{p} is not an ECG-LLaVA model folder: no config.json")
    try:
        cfg = EcgLlavaConfig.from_pretrained(str(p))
    except (ValueError, OSError, TypeError) as exc:
        raise ModelFolderError(f"{p}/config.json is not a valid ECG-LLaVA config: {exc}") from None
    if cfg.ecg_token_id is None:
        raise ModelFolderError(f"{p}/config.json has no ecg_token_id (the id of {cfg.ecg_token} in the tokenizer)")
    return cfg


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the HF EcgLlavaForCausalLM for ``config`` (meta device)."""
    from ecgbatch.llava.modeling_ecg_llava import EcgLlavaForCausalLM

    with torch.device("meta"):
        model = EcgLlavaForCausalLM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_model_folder(folder: str | Path):
    """Check config, tokenizer and weights of an ECG-LLaVA folder; returns its config."""
    p = Path(folder)
    cfg = load_config(p)
    weights = p / "model.safetensors"
    if not weights.is_file():
        raise ModelFolderError(f"{p} has no model.safetensors")
    have, want = _safetensors_shapes(weights), expected_shapes(cfg)
    if getattr(cfg, "tie_word_embeddings", False) or getattr(cfg.text_config, "tie_word_embeddings", False):
        want.pop("language_model.lm_head.weight", None)
        have.pop("language_model.lm_head.weight", None)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    mismatched = [(k, have[k], want[k]) for k in sorted(want) if k in have and have[k] != want[k]]
    if missing or unexpected or mismatched:
        raise ModelFolderError(str(CheckpointMismatchError(str(weights), missing, unexpected, mismatched)))
    _check_tokenizer(p, cfg)
    return cfg


def _check_tokenizer(p: Path, cfg) -> None:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{p}: the tokenizer files cannot be loaded ({exc})") from None
    tid = tok.convert_tokens_to_ids(cfg.ecg_token)
    if tid != cfg.ecg_token_id:
        raise ModelFolderError(f"{p}: the tokenizer maps {cfg.ecg_token!r} to {tid!r}, config.json says "
                               f"ecg_token_id={cfg.ecg_token_id}")


# -- LoRA adapters ---------------------------------------------------------------------------------
def adapter_rank(adapter: str | Path) -> int:
    p = Path(adapter)
    try:
        ac = json.loads((p / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterMismatchError(f"{p} is not a peft LoRA adapter: adapter_config.json unreadable ({exc})") from None
    if ac.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatchError(f"{p}: peft_type {ac.get('peft_type')!r}, only LORA adapters are served")
    return int(ac.get("r", 0))


def check_rank(rank: int, max_lora_rank: int | None, where: str) -> None:
    if rank not in VLLM_LORA_RANKS:
        raise UnsupportedLoraRankError(f"{where}: LoRA rank {rank} is not one vLLM serves "
                                       f"(allowed: {', '.join(map(str, VLLM_LORA_RANKS))}); retrain or "
                                       "merge the adapter (ecgbatch.llava.load_ecg_llava(merge_lora=True))")
    if max_lora_rank is not None and rank > max_lora_rank:
        raise UnsupportedLoraRankError(f"{where}: LoRA rank {rank} exceeds the engine's max_lora_rank "
                                       f"{max_lora_rank}; start the engine with max_lora_rank>={rank}")


def check_adapter(adapter: str | Path, config, max_lora_rank: int | None = None) -> int:
    """Check a peft adapter against the model's LM (unpadded config); returns its rank."""
    p = Path(adapter)
    rank = adapter_rank(p)
    check_rank(rank, max_lora_rank, str(p))
    weights = p / "adapter_model.safetensors"
    if not weights.is_file():
        raise AdapterMismatchError(f"{p} has no adapter_model.safetensors (an adapter_model.bin must be "
                                   "re-saved as safetensors)")
    lm = {k[len("language_model."):]: s for k, s in expected_shapes(config).items()
          if k.startswith("language_model.")}
    problems = []
    for key, shape in _safetensors_shapes(weights).items():
        m = _LORA_KEY.match(key)
        if m is None:
            problems.append(f"{key}: not a LoRA A/B tensor of the language model")
            continue
        base = lm.get(m["module"] + ".weight")
        if base is None:
            problems.append(f"{key}: the model has no module {m['module']}")
            continue
        out_f, in_f = base
        want = (rank, in_f) if m["ab"] == "A" else (out_f, rank)
        if shape != want:
            problems.append(f"{key}: shape {shape}, this model needs {want}")
    if problems:
        raise AdapterMismatchError(f"LoRA adapter {p} does not fit this model (trained for another base?): "
                                   + "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    return rank


# -- head padding cache -----------------------------------------------------------------------------
def _work_dir(work_dir: str | Path | None) -> Path:
    base = work_dir or os.environ.get("ECGBATCH_CACHE") or (Path.home() / ".cache" / "ecgbatch")
    return Path(base) / "vllm-padded"


def _stamp(folder: Path) -> str:
    h = hashlib.sha256(str(folder.resolve()).encode())
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _cached_copy(src: Path, work_dir, make) -> Path:
    dst = _work_dir(work_dir) / f"{src.name}-{_stamp(src)}"
    if (dst / ".complete").is_file():
        return dst
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    make(src, tmp)
    (tmp / ".complete").write_text("ok\n")
    try:
        tmp.rename(dst)
    except OSError:   # another process made it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def target_head_dim(config) -> int:
    text = config.text_config.to_dict()
    d = head_padding.head_dim_of(text)
    D = head_padding.padded_head_dim(d)
    if D is None:
        raise ModelFolderError(f"the language model's head size {d} is not supported by vLLM's CPU attention "
                               f"({head_padding.CPU_HEAD_SIZES}) and cannot be padded to one of them")
    return D


def runnable_model_folder(folder: str | Path, config, work_dir=None) -> Path:
    """``folder`` itself, or its head-padded copy when vLLM cannot run its head size."""
    p = Path(folder)
    D = target_head_dim(config)
    if D == head_padding.head_dim_of(config.text_config.to_dict()):
        return p
    return _cached_copy(p, work_dir, lambda s, d: head_padding.pad_model_folder(s, d, D))


def runnable_adapter(adapter: str | Path, config, work_dir=None) -> Path:
    p = Path(adapter)
    D = target_head_dim(config)
    text = config.text_config.to_dict()
    if D == head_padding.head_dim_of(text):
        return p
    return _cached_copy(p, work_dir, lambda s, d: head_padding.pad_adapter_folder(s, d, text, D))
