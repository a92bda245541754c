"""Attention-head padding: an equivalent copy of a Llama-family model with wider heads.

vLLM's CPU attention supports only some head sizes (32, 64, 80, ...; see CPU_HEAD_SIZES). A model
with narrower heads (the ``ecgllava_tiny`` fixture: hidden 64, 4 heads of 16) fails at its first
generate. Padding every head from d to D = r * d dimensions, with zeros, gives the SAME function:

  * RoPE (HF ``rotate_half`` layout: dim i pairs with i + d/2, frequency theta^(-2i/d)) is kept by
    putting original dim j < d/2 at slot r*j and d/2 + j at D/2 + r*j: slot r*j has frequency
    theta^(-2rj/D) = theta^(-2j/d), and its rotation partner is D/2 + r*j, as before. The other
    slots are zero in q and k, so they add nothing to q.k.
  * the softmax scale 1/sqrt(D) instead of 1/sqrt(d) is undone by scaling q by sqrt(r).
  * v gets the same slots; o_proj reads them (its other input columns are zero).
  * LoRA: lora_B of q/k/v is padded like the rows of the weight (q scaled too); lora_A of o_proj
    like its columns. lora_A of q/k/v and lora_B of o_proj are unchanged.

Pure torch + safetensors, no vLLM: ``pad_model_folder`` writes a padded copy of an ECG-LLaVA (or
plain HF Llama) folder, ``pad_adapter_folder`` of a peft LoRA adapter.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ecgbatch.device import CPU_HEAD_SIZES   # vLLM's CPU attention kernels' head sizes


_ATTN_KEY = re.compile(r"self_attn\.(?P<proj>[qkvo])_proj\.(?P<what>weight|bias|lora_A\.weight|lora_B\.weight)$")


class HeadPaddingError(ValueError):
    kind = "head_padding"


def head_dim_of(text_config: dict) -> int:
    """The attention head size of an HF Llama-style config dict."""
    hd = text_config.get("head_dim")
    return int(hd) if hd else int(text_config["hidden_size"]) // int(text_config["num_attention_heads"])


def padded_head_dim(head_dim: int, supported=CPU_HEAD_SIZES) -> int | None:
    """head_dim itself when supported, else the smallest supported multiple of it (the RoPE map
    needs an integer ratio); None when there is none."""
    if head_dim in supported:
        return head_dim
    for d in sorted(supported):
        if d > head_dim and d % head_dim == 0:
            return d
    return None


def slot_index(head_dim: int, new_head_dim: int) -> torch.Tensor:
    """[head_dim] -> positions in the padded head that keep RoPE's frequencies and pairs."""
    if head_dim % 2 or new_head_dim % head_dim:
        raise HeadPaddingError(f"cannot pad heads of {head_dim} to {new_head_dim}: need an even head "
                               "size and an integer ratio")
    r, half = new_head_dim // head_dim, head_dim // 2
    j = torch.arange(half)
    return torch.cat([r * j, new_head_dim // 2 + r * j])


def _pad_axis(t: torch.Tensor, axis: int, n_heads: int, d: int, D: int, scale: float) -> torch.Tensor:
    """Spread axis ``axis`` (n_heads * d) of t to n_heads * D with zeros (times ``scale``)."""
    if t.shape[axis] != n_heads * d:
        raise HeadPaddingError(f"tensor of shape {tuple(t.shape)}: axis {axis} should be {n_heads} heads "
                               f"x {d} = {n_heads * d}")
    idx = slot_index(d, D)
    cols = (torch.arange(n_heads)[:, None] * D + idx[None, :]).reshape(-1)     # [n_heads * d]
    shape = list(t.shape)
    shape[axis] = n_heads * D
    out = torch.zeros(shape, dtype=t.dtype)
    out.index_copy_(axis, cols, t * scale if scale != 1.0 else t)
    return out


def pad_attention_tensors(tensors: dict[str, torch.Tensor], n_heads: int, n_kv_heads: int,
                          head_dim: int, new_head_dim: int) -> dict[str, torch.Tensor]:
    """A new dict: every self_attn q/k/v/o tensor (weights, biases, LoRA A/B) padded; others as is."""
    q_scale = math.sqrt(new_head_dim / head_dim)
    out = {}
    for name, t in tensors.items():
        m = _ATTN_KEY.search(name)
        if m is None:
            out[name] = t
            continue
        proj, what = m["proj"], m["what"]
        heads = n_heads if proj in "qo" else n_kv_heads
        scale = q_scale if proj == "q" else 1.0
        if proj == "o":      # reads the heads: pad its input columns (weight, lora_A)
            out[name] = (_pad_axis(t, 1, heads, head_dim, new_head_dim, 1.0)
                         if what in ("weight", "lora_A.weight") else t)
        else:                # writes the heads: pad output rows (weight, bias, lora_B)
            out[name] = (_pad_axis(t, 0, heads, head_dim, new_head_dim, scale)
                         if what != "lora_A.weight" else t)
    return out


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadPaddingError(f"cannot read {p}: {exc}") from None


def _text_config(cfg: dict) -> dict:
    """The LM's config dict: ``text_config`` of an ECG-LLaVA folder, or the config itself."""
    return cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg


def _copy_folder(src: Path, dst: Path, skip: set[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name in skip:
            continue
        if f.is_dir():
            shutil.copytree(f, dst / f.name, dirs_exist_ok=True)
        else:
            shutil.copy2(f, dst / f.name)


def _head_shape(text: dict) -> tuple[int, int, int]:
    n_heads = int(text["num_attention_heads"])
    return n_heads, int(text.get("num_key_value_heads") or n_heads), head_dim_of(text)


def pad_model_folder(src: str | Path, dst: str | Path, new_head_dim: int | None = None) -> Path:
    """Write to ``dst`` a copy of the model folder ``src`` (ECG-LLaVA or plain HF Llama,
    ``config.json`` + ``model.safetensors``) whose attention heads are ``new_head_dim`` wide
    (default: the smallest vLLM CPU size that is a multiple of the current one)."""
    src, dst = Path(src), Path(dst)
    cfg = _read_json(src / "config.json")
    text = _text_config(cfg)
    n_heads, n_kv, d = _head_shape(text)
    D = new_head_dim or padded_head_dim(d)
    if D is None:
        raise HeadPaddingError(f"{src}: no supported head size is a multiple of {d}")
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise HeadPaddingError(f"{src} has no model.safetensors")
    tensors = pad_attention_tensors(load_file(str(weights)), n_heads, n_kv, d, D)
    _copy_folder(src, dst, skip={"model.safetensors", "config.json"})
    text["head_dim"] = D
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def pad_adapter_folder(src: str | Path, dst: str | Path, text_config: dict,
                       new_head_dim: int) -> Path:
    """Write to ``dst`` a copy of the peft LoRA adapter ``src`` for the model whose (unpadded) LM
    config is ``text_config``, padded to heads of ``new_head_dim``."""
    src, dst = Path(src), Path(dst)
    weights = src / "adapter_model.safetensors"
    if not weights.is_file():
        raise HeadPaddingError(f"{src} has no adapter_model.safetensors")
    n_heads, n_kv, d = _head_shape(_text_config(text_config))
    tensors = pad_attention_tensors(load_file(str(weights)), n_heads, n_kv, d, new_head_dim)
    _copy_folder(src, dst, skip={"adapter_model.safetensors"})
    save_file(tensors, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    return dst
