"""Typed errors of the ECG-LLaVA package. All are ValueErrors with a ``kind`` (the house style of
ecgbatch.io.errors), so callers can record (kind, message) and CLI commands print the message
instead of a traceback. Weight-file problems reuse ecgbatch.encoders' CheckpointMismatchError /
CheckpointReadError (missing, unexpected and mis-shaped tensors listed by name)."""
from __future__ import annotations

from ecgbatch.errors import EcgbatchError


class EcgLlavaError(EcgbatchError, ValueError):
    kind = "ecg_llava_error"


class EcgPromptError(EcgLlavaError):
    """The number of <ecg> placeholders in a prompt does not match the ECGs given."""

    kind = "bad_prompt"


class ContextLengthError(EcgLlavaError):
    """A prompt (after splicing the ECG tokens) is longer than the model's context."""

    kind = "context_too_long"


class ModelFolderError(EcgLlavaError):
    """A model folder lacks a file, or its config/tokenizer are inconsistent."""

    kind = "bad_model_folder"


class ModelNotInstalledError(ModelFolderError):
    """A model name (zoo or $ECGBATCH_MODELS_DIR) whose weights are not on this machine."""

    kind = "model_not_installed"


class AdapterMismatchError(EcgLlavaError):
    """A LoRA adapter that does not fit the model's language model (another base)."""

    kind = "adapter_mismatch"


class ConversionError(EcgLlavaError):
    """An ECG-Chat LLaVA checkpoint that cannot be converted (missing or mis-shaped parts)."""

    kind = "bad_ecgchat_checkpoint"


class EcgInputError(EcgLlavaError):
    """An ECG (record or array) that cannot be brought to the model's input."""

    kind = "bad_ecg_input"
