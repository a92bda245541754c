"""Typed weight-loading errors of ``ecgbatch.encoders`` (a ValueError, as the API promised).

Loaders never continue silently: a missing, unexpected or mis-shaped key raises
``CheckpointMismatchError`` listing them; an unreadable file raises ``CheckpointReadError``.
"""
from __future__ import annotations

from ecgbatch.errors import EcgbatchError


class CheckpointError(EcgbatchError, ValueError):
    """Base class of weight-loading errors."""

    kind = "checkpoint_error"


class CheckpointReadError(CheckpointError):
    """The file cannot be read (missing, truncated, not a checkpoint)."""

    kind = "checkpoint_unreadable"


class CheckpointMismatchError(CheckpointError):
    """Keys or shapes of a checkpoint do not match the model."""

    kind = "checkpoint_mismatch"

    def __init__(self, where: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = [f"checkpoint does not match the model ({where}):"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
        if mismatched:
            parts.append(f"  shape mismatches ({len(mismatched)}): "
                         + ", ".join(f"{k}: checkpoint {c} vs model {m}" for k, c, m in mismatched))
        super().__init__("\n".join(parts))
