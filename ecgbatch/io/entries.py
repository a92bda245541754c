"""Light-weight things a scan yields besides full Records: header-only entries, record sources
(what to read, cheap to list and to ship to Ray workers) and failures."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ecgbatch.io.errors import EcgReadError, error_class
from ecgbatch.io.leads import canonical_leads
from ecgbatch.io.quality import canonical_units


@dataclass
class RecordHeader:
    """Everything a manifest needs about a record, without decoding its signal."""

    record_id: str
    source: str
    format: str
    fs: float
    leads: tuple[str, ...]
    n_samples: int
    units: str = "mV"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_leads(self) -> int:
        return len(self.leads)

    @property
    def duration_s(self) -> float:
        return self.n_samples / float(self.fs) if self.fs else float("nan")

    def finalize(self, target_units: str | None = "mV", leads=None) -> "RecordHeader":
        """Same naming rules as ``quality.finalize`` (canonical leads, target units)."""
        if leads is not None:
            self.leads = tuple(leads)
        self.leads = canonical_leads(self.leads)
        src, to_mv = canonical_units(self.units)
        if target_units is not None:
            want, want_to_mv = canonical_units(target_units)
            if to_mv is not None and want_to_mv is not None and want != src:
                self.meta["source_units"] = src
                src = want
        self.units = src
        return self


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
        from ecgbatch.io.api import read_record

        self.raise_error()
        return read_record(self.path, format=self.format, index=self.index, **options)

    def read_header(self, **options):
        from ecgbatch.io.api import read_header

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
