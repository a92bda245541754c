"""The header-only view of a record: everything a manifest needs, without decoding the
signal. Every reader returns one when asked for ``header_only``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
