"""The errors of finding a generative model's folder, raised by the one resolver
(``ecgbatch.models.resolve``) and by ECG-LLaVA's loaders. They live here, below both, so that the
resolver needs no import of ``ecgbatch.llava`` (which imports the resolver);
``ecgbatch.llava.errors`` re-exports them beside ECG-LLaVA's other errors. All are ValueErrors
with a ``kind`` (ecgbatch.errors). An ECG-CoCa name that is not installed stays a
FileNotFoundError (``load_model``'s seeded random fallback relies on it)."""
from __future__ import annotations

from ecgbatch.errors import EcgbatchError


class EcgLlavaError(EcgbatchError, ValueError):
    """Base of ECG-LLaVA's errors (ecgbatch.llava.errors)."""

    kind = "ecg_llava_error"


class ModelFolderError(EcgLlavaError):
    """A model folder lacks a file, or its config/tokenizer are inconsistent."""

    kind = "bad_model_folder"


class ModelNotInstalledError(ModelFolderError):
    """A model name (zoo or $ECGBATCH_MODELS_DIR) whose weights are not on this machine."""

    kind = "model_not_installed"
