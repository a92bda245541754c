"""ECG-LLaVA (ECG-Chat's LLaVA stage) as a transformers model: ECG tower -> projector -> causal LM.

Modules: configuration_ecg_llava (EcgLlavaConfig, num_ecg_tokens; no torch), modeling_ecg_llava
(EcgLlavaForCausalLM, splicing), prompting (Vicuna v1 / chat template, <ecg> token ids),
conversation (training labels as ECG-Chat's preprocess_v1), inputs (preprocess_for_model),
loading (load_ecg_llava, strict folder/adapter checks), convert (ECG-Chat LoRA run -> our folder).

Imports torch/transformers/peft only (never vllm or ray), lazily: ``import ecgbatch.llava`` and
the config module build no model. The folder format (what training, evaluation and vLLM read)
is described in ecgbatch/llava/loading.py's docstring.
"""
from __future__ import annotations

from importlib import import_module

_LAZY = {
    "EcgLlavaConfig": "configuration_ecg_llava", "num_ecg_tokens": "configuration_ecg_llava",
    "EcgLlavaForCausalLM": "modeling_ecg_llava", "splice_ecg_embeddings": "modeling_ecg_llava",
    "build_prompt": "prompting", "tokenize_with_ecg": "prompting", "prompt_ids": "prompting",
    "label_vicuna_v1": "conversation",
    "preprocess_for_model": "inputs",
    "load_ecg_llava": "loading", "save_ecg_llava": "loading", "apply_lora": "loading",
    "convert_ecgchat_llava": "convert",
    "EcgLlavaError": "errors", "EcgPromptError": "errors", "ContextLengthError": "errors",
    "ModelFolderError": "errors", "AdapterMismatchError": "errors", "ConversionError": "errors",
    "EcgInputError": "errors",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"ecgbatch.llava.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ecgbatch.llava' has no attribute {name!r}")
