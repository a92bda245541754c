"""Model folders and LoRA adapters, checked and made vLLM-runnable before an engine starts.

- ``check_model_folder`` / ``check_adapter``: ecgbatch.llava's strict checks (tensor names and
  shapes against the model built on the meta device, tokenizer <-> ecg_token_id, adapter A/B
  shapes against the language model), plus the LoRA ranks vLLM serves.
- ``runnable_model_folder`` / ``runnable_adapter``: when the LM's head size is not one vLLM's
  attention supports on the device (ecgbatch.device.attention_head_sizes: the CPU kernels' list,
  FlashAttention's multiples of 8 on CUDA), an equivalent head-padded copy
  (ecgbatch.serving.head_padding) cached under a work folder; otherwise the folder itself.
No vLLM import here (torch, safetensors, transformers only).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ecgbatch.device import Device, attention_head_sizes, detect
from ecgbatch.llava.loading import (check_adapter as check_fits, check_weights, load_tokenizer, read_adapter,
                                    read_config)
from ecgbatch.serving import head_padding
from ecgbatch.serving.errors import AdapterMismatchError, ModelFolderError, UnsupportedLoraRankError

# vllm/config/lora.py MaxLoRARanks (vLLM 0.32)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def check_model_folder(folder: str | Path):
    """Check config, weights (names and shapes, from the safetensors headers) and tokenizer of an
    ECG-LLaVA folder with ecgbatch.llava's strict checks; returns its config."""
    p = Path(folder)
    config = read_config(p)
    check_weights(p, config)
    load_tokenizer(p, config)
    return config


# -- LoRA adapters ---------------------------------------------------------------------------------
def check_rank(rank: int, max_lora_rank: int | None, where: str) -> None:
    if rank not in VLLM_LORA_RANKS:
        raise UnsupportedLoraRankError(f"{where}: LoRA rank {rank} is not one vLLM serves "
                                       f"(allowed: {', '.join(map(str, VLLM_LORA_RANKS))}); retrain with one "
                                       "of those, or merge the adapter into the model folder")
    if max_lora_rank is not None and rank > max_lora_rank:
        raise UnsupportedLoraRankError(f"{where}: LoRA rank {rank} exceeds the engine's max_lora_rank "
                                       f"{max_lora_rank}; start the engine with max_lora_rank>={rank}")


def check_adapter(adapter: str | Path, config, max_lora_rank: int | None = None) -> int:
    """A peft adapter for THIS model's language model (ecgbatch.llava's check, against the LM
    built on the meta device) with a rank vLLM serves; returns the rank."""
    from transformers import AutoModelForCausalLM

    adapter_cfg, tensors = read_adapter(adapter)
    rank = int(adapter_cfg.get("r", 0))
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config.text_config)
    check_fits(lm, adapter_cfg, tensors, repr(str(adapter)))
    check_rank(rank, max_lora_rank, str(adapter))
    if not (Path(adapter) / "adapter_model.safetensors").is_file():
        raise AdapterMismatchError(f"{adapter}: vLLM reads adapter_model.safetensors; re-save this adapter "
                                   "(peft save_pretrained(safe_serialization=True))")
    return rank


def served_adapter(adapter: str | Path, config, max_lora_rank: int | None = None,
                   work_dir=None, device: Device | None = None) -> tuple[int, Path]:
    """(rank, folder vLLM loads) for a peft adapter of this model: ``check_adapter``, then the
    adapter itself or its head-padded copy (``runnable_adapter``). Both engines (offline and
    async) build their LoRARequests from this."""
    rank = check_adapter(adapter, config, max_lora_rank)
    return rank, runnable_adapter(adapter, config, work_dir, device)


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


def target_head_dim(config, device: Device | None = None) -> int:
    """The head size vLLM runs this model with on ``device`` (default: this process's)."""
    device = device or detect()
    text = config.text_config.to_dict()
    d = head_padding.head_dim_of(text)
    D = head_padding.padded_head_dim(d, attention_head_sizes(device))
    if D is None:
        raise ModelFolderError(f"the language model's head size {d} is not supported by vLLM's {device.kind} "
                               f"attention ({attention_head_sizes(device)}) and cannot be padded to one of them")
    return D


def runnable_model_folder(folder: str | Path, config, work_dir=None, device: Device | None = None) -> Path:
    """``folder`` itself, or its head-padded copy when vLLM cannot run its head size on ``device``."""
    p = Path(folder)
    D = target_head_dim(config, device)
    if D == head_padding.head_dim_of(config.text_config.to_dict()):
        return p
    return _cached_copy(p, work_dir, lambda s, d: head_padding.pad_model_folder(s, d, D))


def runnable_adapter(adapter: str | Path, config, work_dir=None, device: Device | None = None) -> Path:
    p = Path(adapter)
    D = target_head_dim(config, device)
    text = config.text_config.to_dict()
    if D == head_padding.head_dim_of(text):
        return p
    return _cached_copy(p, work_dir, lambda s, d: head_padding.pad_adapter_folder(s, d, text, D))
