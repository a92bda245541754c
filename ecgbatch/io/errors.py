"""Typed errors for bad input. Every reader raises one of these (never a bare Exception) so
that a scan can record (path, error type, message) and go on."""
from __future__ import annotations


class EcgReadError(Exception):
    """Base class: a file or record that could not be read as an ECG."""

    kind = "read_error"

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class UnknownFormatError(EcgReadError):
    kind = "unknown_format"


class EmptyFileError(EcgReadError):
    kind = "empty_file"


class MissingSignalFileError(EcgReadError):
    kind = "missing_signal_file"


class TruncatedSignalError(EcgReadError):
    kind = "truncated_signal"


class LengthMismatchError(EcgReadError):
    kind = "length_mismatch"


class HeaderError(EcgReadError):
    kind = "bad_header"


class NotAnEcgError(EcgReadError):
    kind = "not_an_ecg"


class TooFewLeadsError(EcgReadError):
    kind = "too_few_leads"


class UnknownLeadError(EcgReadError):
    kind = "unknown_lead"


class BadSignalError(EcgReadError):
    """All-NaN, flat, or physically absurd signal (when the caller asks for strict checks)."""

    kind = "bad_signal"


class UnreadableError(EcgReadError):
    """Permission denied, unreadable directory, I/O error."""

    kind = "unreadable"
