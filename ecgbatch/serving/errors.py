"""Typed errors of the serving side. They extend ecgbatch.llava's errors (all ValueErrors with a
``kind``) so a caller catches one family for the HF and the vLLM paths alike."""
from __future__ import annotations

from ecgbatch.llava.errors import (AdapterMismatchError, ContextLengthError, EcgInputError,
                                   EcgLlavaError, EcgPromptError, ModelFolderError, ModelNotInstalledError)

__all__ = ["AdapterMismatchError", "ContextLengthError", "EcgInputError", "EcgLlavaError",
           "EcgPromptError", "ModelFolderError", "UnsupportedLoraRankError", "ModelNotInstalledError"]


class UnsupportedLoraRankError(AdapterMismatchError):
    """A LoRA rank that vLLM cannot serve (not one of its allowed ranks, or above max_lora_rank)."""

    kind = "unsupported_lora_rank"
