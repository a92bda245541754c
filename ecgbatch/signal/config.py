"""PreprocessConfig: how a model wants its ECGs. One belongs to every model (it is stored in
the model's config JSON under "preprocess"), so embeddings are always computed the way the
model was trained. Imports nothing heavy (no torch)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ecgbatch.io.record import STANDARD_LEADS


@dataclass(frozen=True)
class PreprocessConfig:
    # Leads the model expects, in this order; mapped from the record BY NAME (ECG-Chat's own data
    # mixes aVL/aVF orders between MIMIC and the rest, so position is not to be trusted).
    leads: tuple[str, ...] = STANDARD_LEADS
    # "error": a record lacking a target lead raises; "zero": the lead is zero-filled and the
    # fill is recorded in the result's ``missing_leads``.
    missing_leads: str = "error"
    # Target sampling rate in Hz; records at another rate are resampled (polyphase).
    fs: float = 500.0
    # Target length in samples (duration x fs). None keeps the record's own length.
    n_samples: int | None = 5000
    # How to fit n_samples: "start" keeps the first n samples / zero-pads at the end (ECG-Chat);
    # "center" takes the middle window / pads both sides.
    crop: str = "start"
    pad: str = "end"
    # Optional filters (None = off): band-pass (low_hz, high_hz), notch mains frequency,
    # baseline removal (median-filter based).
    bandpass: tuple[float, float] | None = None
    notch_hz: float | None = None
    remove_baseline: bool = False
    # NaN/inf handling: "zero" (ECG-Chat), "interpolate", or "error".
    nan_policy: str = "zero"
    # Normalisation: "none" (ECG-Chat: raw mV), "zscore" (per lead), "scale" (multiply by
    # ``scale``).
    normalize: str = "none"
    scale: float = 1.0
    # Units the model wants its input in (records are converted when they say otherwise).
    units: str = "mV"
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "leads", tuple(self.leads))
        if self.bandpass is not None:
            object.__setattr__(self, "bandpass", tuple(float(v) for v in self.bandpass))
        for name, allowed in (("missing_leads", ("error", "zero")), ("crop", ("start", "center")),
                              ("pad", ("end", "both")), ("nan_policy", ("zero", "interpolate", "error")),
                              ("normalize", ("none", "zscore", "scale")),
                              ("dtype", ("float32", "float16", "bfloat16", "float64"))):
            v = getattr(self, name)
            if v not in allowed:
                raise ValueError(f"PreprocessConfig.{name} must be one of {allowed}, got {v!r}")
        if self.fs <= 0:
            raise ValueError(f"PreprocessConfig.fs must be > 0, got {self.fs!r}")
        if self.n_samples is not None and self.n_samples <= 0:
            raise ValueError(f"PreprocessConfig.n_samples must be > 0 or None, got {self.n_samples!r}")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["leads"] = list(self.leads)
        if self.bandpass is not None:
            d["bandpass"] = list(self.bandpass)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PreprocessConfig keys: {sorted(unknown)}")
        return cls(**d)

    def hash(self) -> str:
        """Stable short hash, stored next to every embedding (never mix configs)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def duration_s(self) -> float | None:
        return None if self.n_samples is None else self.n_samples / self.fs


# ECG-Chat exactly: 500 Hz, 10 s = 5000 samples, mV, NaN/inf -> 0, keep the first 5000 samples or
# zero-pad at the end, no filter, no normalisation (ecg-chat-reference.md 4.1). Lead order: the
# standard one (ECG-Chat trained on native file order; PTB-XL/CPSC/SPH/CSN use this order).
ECGCHAT = PreprocessConfig()
