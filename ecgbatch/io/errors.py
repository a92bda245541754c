"""Typed errors for bad input. Every reader raises one of these (never a bare Exception) so
that a scan can record (path, error type, message) and go on."""
from __future__ import annotations

from ecgbatch.errors import EcgbatchError


class EcgReadError(EcgbatchError):
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


class NoPhysiologicalContentError(BadSignalError):
    """A readable signal that carries no ECG (every lead flat, saturated or missing, or an absurd
    amplitude): refused before a model reports on it (``ecgbatch.signal.content``)."""

    kind = "no_physiological_content"


class UnreadableError(EcgReadError):
    """Permission denied, unreadable directory, I/O error."""

    kind = "unreadable"


class MissingLeadError(EcgReadError):
    """The record lacks a lead that the model's PreprocessConfig asks for (missing_leads="error")."""

    kind = "missing_lead"


class UnsafeXmlError(HeaderError):
    """XML with an internal DTD subset or entity declarations (entity-expansion attacks such as
    "billion laughs"): refused before parsing."""

    kind = "unsafe_xml"


class MissingHeaderError(EcgReadError):
    """A signal file (WFDB .dat, Challenge .mat) whose header is missing."""

    kind = "missing_header"


class AmbiguousLayoutError(EcgReadError):
    """An array whose lead axis cannot be told from its sample axis (pass layout=)."""

    kind = "ambiguous_layout"


class LeadMismatchError(EcgReadError):
    """Lead names given (option, sidecar, attrs) do not match the number of channels."""

    kind = "lead_mismatch"


class MissingMetadataError(EcgReadError):
    """Something the reader needs (sampling rate, ...) is in neither the file, a sidecar nor the options."""

    kind = "missing_metadata"


class ReaderCrashError(EcgReadError):
    """A reader failed on this file in a way it did not foresee (an exception from NumPy, h5py,
    zlib, ...; or, in a pipeline, the worker process died while reading it). The message names the
    original exception type; the file is recorded as a failure like any other."""

    kind = "reader_crash"


class RecordIndexError(EcgReadError, ValueError):
    """A multi-record container read without ``index=``, or with an index outside it (also a
    ValueError, which these cases raised before)."""

    kind = "record_index"


class SignalFileOutsideError(EcgReadError):
    """A record names a file (signal file, segment header, sidecar) that resolves, links
    followed, outside the record's own folder (``ecgbatch.io.confine``)."""

    kind = "signal_file_outside"


class RecordTooLargeError(NotAnEcgError):
    """A file declares a record larger than the per-record budget; refused before decoding (a
    NotAnEcgError too, which such files raised before the budget existed)."""

    kind = "record_too_large"


class ReadOptionError(ValueError):
    """A bad argument to a reader (``layout=``, ``waveform=``, ...): the caller's mistake, not the
    file's, so it is raised as is and never turned into a failure of the file."""


def error_class(kind: str) -> type[EcgReadError]:
    """The EcgReadError subclass whose ``kind`` is ``kind`` (EcgReadError itself when unknown);
    used to re-raise an error recorded as (kind, message), e.g. by a deferred scan source."""
    stack = [EcgReadError]
    while stack:
        cls = stack.pop()
        if cls.kind == kind:
            return cls
        stack.extend(cls.__subclasses__())
    return EcgReadError
