"""Light-weight things a scan yields besides full Records: record sources (what to read, cheap to
list and to ship to Ray workers) and failures. Header-only entries: ``ecgbatch.io.header``."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ecgbatch.io.api import read_header, read_record
from ecgbatch.io.errors import EcgReadError, error_class


@dataclass
class RecordSource:
    """One record to read: a path (the header for WFDB), its format, every file that belongs to it,
    and for containers with many records (CODE-15 HDF5, 3-D .npy) the position inside. ``error``
    carries a problem found while grouping files (orphan .dat, unreadable directory): reading the
    source raises it as the matching typed error, so nothing is dropped between listing and reading.
    Plain strings and ints only: cheap to pickle into a Ray dataset (``to_dict``)."""

    path: str
    format: str
    files: tuple[str, ...] = ()
    index: int | None = None
    key: str = ""
    error_kind: str | None = None
    error_message: str | None = None

    def __post_init__(self):
        if not self.key:
            self.key = self.path if self.index is None else f"{self.path}#{self.index}"

    def raise_error(self) -> None:
        if self.error_kind is not None:
            raise error_class(self.error_kind)(self.error_message or self.error_kind, self.path)

    def read(self, **options):
        self.raise_error()
        return read_record(self.path, format=self.format, index=self.index, **options)

    def read_header(self, **options):
        self.raise_error()
        return read_header(self.path, format=self.format, index=self.index, **options)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = list(self.files)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RecordSource":
        """Inverse of ``to_dict`` (e.g. a Ray Data row; missing/None fields take their defaults)."""
        index = d.get("index")
        return cls(str(d["path"]), str(d["format"]), tuple(d.get("files") or ()),
                   None if index is None or index != index else int(index),  # NaN from pandas
                   str(d.get("key") or ""), d.get("error_kind") or None, d.get("error_message") or None)


@dataclass
class Failure:
    """A record (or file, or directory) that could not be read: where, which typed error, why."""

    path: str
    error_type: str
    message: str
    format: str = ""
    files: tuple[str, ...] = ()
    key: str = ""

    @classmethod
    def from_error(cls, src: RecordSource, exc: EcgReadError) -> "Failure":
        return cls(src.path, exc.kind, str(exc), src.format, src.files, src.key)
