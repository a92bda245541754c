"""The one in-memory type every reader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Canonical 12-lead names, in the standard clinical order (also ECG-Chat's PTB-XL/CPSC order).
STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)


@dataclass
class Record:
    """One ECG recording.

    signal: float32 [leads, samples] in physical units (``units``, mV unless the source says
    otherwise); leads: canonical names (see ``ecgbatch.io.leads.canonical_lead``); meta: whatever
    the format carries (age, sex, diagnoses text, label codes, acquisition date, ...). Patient
    identifiers are never put into ``meta``.
    """

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    units: str = "mV"
    record_id: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_leads(self) -> int:
        return int(self.signal.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / float(self.fs) if self.fs else float("nan")

    def lead(self, name: str) -> np.ndarray:
        try:
            return self.signal[self.leads.index(name)]
        except ValueError:
            raise KeyError(f"lead {name!r} not in record {self.record_id!r} (has {self.leads})") from None

    def __repr__(self) -> str:  # never dump the signal or meta values
        return (f"Record(record_id={self.record_id!r}, fs={self.fs}, leads={len(self.leads)}, "
                f"samples={self.signal.shape[-1] if self.signal.ndim == 2 else '?'}, units={self.units!r})")
