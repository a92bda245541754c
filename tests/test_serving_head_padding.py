"""Head padding (ecgbatch.serving.head_padding): the padded model computes the same function.

Checked on the ecgllava_tiny fixture's real tiny Llama (head 16 -> 32) with and without its LoRA
adapter, through transformers + peft (no vLLM)."""
from __future__ import annotations

import json

import pytest
import torch

from ecgbatch.serving.head_padding import (HeadPaddingError, pad_adapter_folder, pad_model_folder,
                                           padded_head_dim, slot_index)

pytestmark = pytest.mark.shared


def _logits(model_dir, ids, adapter=None):
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, adapter).eval()
    with torch.no_grad():
        return m(input_ids=ids).logits[0]


def test_slot_index_keeps_rope_pairs():
    idx = slot_index(16, 32)
    assert idx.tolist()[:8] == [0, 2, 4, 6, 8, 10, 12, 14]
    assert idx.tolist()[8:] == [16, 18, 20, 22, 24, 26, 28, 30]
    assert padded_head_dim(16) == 32 and padded_head_dim(64) == 64 and padded_head_dim(20) == 80 and padded_head_dim(18) is None
    with pytest.raises(HeadPaddingError):
        slot_index(16, 40)


@pytest.mark.parametrize("with_lora", [False, True])
def test_padded_llama_gives_same_logits(llava_fx, tmp_path, with_lora):
    tiny = llava_fx
    base = tiny / "base_llm"
    ids = torch.tensor([json.loads((tiny / "input_ids.json").read_text())["input_ids"][0]])
    ids = ids.clamp(min=0)                                   # -200 (the ECG) -> an ordinary token
    padded = pad_model_folder(base, tmp_path / "base32")
    assert json.loads((padded / "config.json").read_text())["head_dim"] == 32
    adapter = padded_adapter = None
    if with_lora:
        adapter = tiny / "llava-lora"
        cfg = json.loads((base / "config.json").read_text())
        padded_adapter = pad_adapter_folder(adapter, tmp_path / "lora32", cfg, 32)
    ref = _logits(base, ids, adapter)
    out = _logits(padded, ids, padded_adapter)
    scale = ref.abs().max().item()
    assert torch.allclose(out, ref, rtol=0, atol=1e-6 * max(1.0, scale)), (out - ref).abs().max()
    # the padding really changed the tensors (q scaled, slots moved), not a no-op copy
    from safetensors.torch import load_file

    q = load_file(str(padded / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (128, 64)
