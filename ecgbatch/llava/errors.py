"""Typed errors of the ECG-LLaVA package. All are ValueErrors with a ``kind`` (the house style of
ecgbatch.io.errors), so callers can record (kind, message) and CLI commands print the message
instead of a traceback. Weight-file problems reuse ecgbatch.encoders' CheckpointMismatchError /
CheckpointReadError (missing, unexpected and mis-shaped tensors listed by name)."""
from __future__ import annotations

# the base and the folder errors are shared with the model resolver (ecgbatch.models.errors)
from ecgbatch.models.errors import EcgLlavaError, ModelFolderError, ModelNotInstalledError

__all__ = ["AdapterMismatchError", "ContextLengthError", "ConversionError", "EcgInputError", "EcgLlavaError",
           "EcgPromptError", "ModelFolderError", "ModelNotInstalledError"]


class EcgPromptError(EcgLlavaError):
    """The number of <ecg> placeholders in a prompt does not match the ECGs given."""

    kind = "bad_prompt"


class ContextLengthError(EcgLlavaError):
    """A prompt (after splicing the ECG tokens) is longer than the model's context."""

    kind = "context_too_long"


class AdapterMismatchError(EcgLlavaError):
    """A LoRA adapter that does not fit the model's language model (another base)."""

    kind = "adapter_mismatch"


class ConversionError(EcgLlavaError):
    """An ECG-Chat LLaVA checkpoint that cannot be converted (missing or mis-shaped parts)."""

    kind = "bad_ecgchat_checkpoint"


class EcgInputError(EcgLlavaError):
    """An ECG (record or array) that cannot be brought to the model's input."""

    kind = "bad_ecg_input"
