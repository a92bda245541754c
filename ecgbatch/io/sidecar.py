"""What an array file does not say about itself: sampling rate, lead names, units, layout.

Looked up, later winning: a directory-level ``ecgbatch.json``, then ``<name>.json`` beside the
file, then the caller's options. Example ``ecgbatch.json``::

    {"fs": 500, "leads": ["I", "II", ...], "units": "normalized", "layout": "samples_first",
     "meta": {"preprocessing": "band-pass 0.5-40 Hz, z-score per lead (by the source)"}}

Also decides which axis of a 2-D array holds the leads.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

from ecgbatch.io.errors import AmbiguousLayoutError, HeaderError, LeadMismatchError

DIR_SIDECAR = "ecgbatch.json"
MAX_LEADS = 16  # more channels than this is not a plausible ECG lead axis (12 + Frank X/Y/Z + 1)
LAYOUTS = ("auto", "leads_first", "samples_first")
_KEYS = {"fs": "fs", "sampling_rate": "fs", "sample_rate": "fs", "frequency": "fs",
         "sampling_frequency": "fs", "leads": "leads", "lead_names": "leads", "units": "units",
         "layout": "layout", "meta": "meta"}


def sidecar_for(path: str) -> dict[str, Any]:
    """Merged sidecar settings for an array file (empty dict when there are none)."""
    folder = os.path.dirname(os.path.abspath(path))
    out: dict[str, Any] = {}
    for cand in (os.path.join(folder, DIR_SIDECAR), os.path.splitext(path)[0] + ".json"):
        try:
            st = os.stat(cand)
        except OSError:
            continue
        out.update(_load(cand, st.st_mtime_ns))
    return out


@lru_cache(maxsize=256)
def _load(path: str, _mtime: int) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"{path}: sidecar is not valid JSON ({exc})", path) from None
    if not isinstance(raw, dict):
        raise HeaderError(f"{path}: sidecar must be a JSON object, got {type(raw).__name__}", path)
    return {_KEYS[k]: v for k, v in raw.items() if k in _KEYS}


def settings(path: str, attrs: dict[str, Any] | None = None, **options) -> dict[str, Any]:
    """attrs stored in the file (HDF5) < dir sidecar < file sidecar < options (None = unset)."""
    out: dict[str, Any] = {}
    for k, v in (attrs or {}).items():
        if k.lower() in _KEYS:
            out[_KEYS[k.lower()]] = v
    out.update(sidecar_for(path))
    out.update({k: v for k, v in options.items() if v is not None})
    return out


def lead_axis(shape: tuple[int, int], layout: str | None, n_leads: int | None, path: str) -> int:
    """Axis (0 or 1) of a 2-D array that holds the leads."""
    layout = layout or "auto"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "leads_first":
        return 0
    if layout == "samples_first":
        return 1
    a, b = shape
    if n_leads is not None:
        if a == n_leads and b != n_leads:
            return 0
        if b == n_leads and a != n_leads:
            return 1
        if a != n_leads and b != n_leads:
            raise LeadMismatchError(f"{path}: {n_leads} lead names given, array shape is {shape}", path)
    elif (a <= MAX_LEADS) != (b <= MAX_LEADS):
        return 0 if a <= MAX_LEADS else 1
    raise AmbiguousLayoutError(
        f"{path}: cannot tell the lead axis of shape {shape}; pass layout='leads_first' or "
        "'samples_first' (option or sidecar)", path)
