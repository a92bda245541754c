"""What an array file does not say about itself: sampling rate, lead names, units, layout.

Looked up, later winning: a directory-level ``ecgbatch.json``, then ``<name>.json`` beside the
file, then the caller's options. Example ``ecgbatch.json``::

    {"fs": 500, "leads": ["I", "II", ...], "units": "normalized", "layout": "samples_first",
     "meta": {"preprocessing": "band-pass 0.5-40 Hz, z-score per lead (by the source)"}}

A sidecar, like any file a record names, must resolve (links followed) inside the array file's
folder (``confine.confined``). Also decides which axis of a 2-D array holds the leads.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

from ecgbatch.io.confine import confined
from ecgbatch.io.errors import AmbiguousLayoutError, HeaderError, LeadMismatchError, ReadOptionError
from ecgbatch.io.validate import check_rate

DIR_SIDECAR = "ecgbatch.json"
MAX_LEADS = 16  # more channels than this is not a plausible ECG lead axis (12 + Frank X/Y/Z + 1)
LAYOUTS = ("auto", "leads_first", "samples_first")
MAX_SIDECAR_BYTES = 1 << 20
MAX_LEAD_NAMES = 4096
_KEYS = {"fs": "fs", "sampling_rate": "fs", "sample_rate": "fs", "frequency": "fs",
         "sampling_frequency": "fs", "leads": "leads", "lead_names": "leads", "units": "units",
         "layout": "layout", "meta": "meta"}


def sidecar_for(path: str) -> dict[str, Any]:
    """Merged sidecar settings for an array file (empty dict when there are none)."""
    folder = os.path.dirname(os.path.abspath(path))
    out: dict[str, Any] = {}
    stem = os.path.splitext(os.path.basename(path))[0]
    for name in (DIR_SIDECAR, stem + ".json"):
        cand = os.path.join(folder, name)
        try:
            st = os.stat(cand)
        except OSError:
            continue
        out.update(_load(confined(folder, name, path), st.st_mtime_ns))
    return out


@lru_cache(maxsize=256)
def _load(path: str, _mtime: int) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SIDECAR_BYTES + 1)
        if len(data) > MAX_SIDECAR_BYTES:
            raise HeaderError(f"{path}: sidecar is larger than {MAX_SIDECAR_BYTES} bytes", path)
        raw = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise HeaderError(f"{path}: sidecar is not valid JSON ({type(exc).__name__}: {exc})",
                          path) from None
    if not isinstance(raw, dict):
        raise HeaderError(f"{path}: sidecar must be a JSON object, got {type(raw).__name__}", path)
    return {_KEYS[k]: v for k, v in raw.items() if k in _KEYS}


def settings(path: str, attrs: dict[str, Any] | None = None, **options) -> dict[str, Any]:
    """attrs stored in the file (HDF5) < dir sidecar < file sidecar < options (None = unset);
    each value checked (``_checked``): a wrong type or value is a HeaderError naming the file."""
    out: dict[str, Any] = {}
    for k, v in (attrs or {}).items():
        if str(k).lower() in _KEYS:
            out[_KEYS[str(k).lower()]] = v
    out.update(sidecar_for(path))
    out.update({k: v for k, v in options.items() if v is not None})
    return _checked(out, path)


def _checked(cfg: dict[str, Any], path: str) -> dict[str, Any]:
    """fs a plausible rate, leads a list of names, units a short string, layout one of LAYOUTS,
    meta a dict; values read from files are untrusted and reach float()/list() otherwise."""
    where = "(file attribute, sidecar or option)"
    if cfg.get("fs") is not None:
        cfg["fs"] = check_rate(_scalar(cfg["fs"]), path, f"sampling rate {where}")
    if cfg.get("leads") is not None:
        cfg["leads"] = _lead_names(cfg["leads"], path, where)
    if cfg.get("units") is not None:
        units = _scalar(cfg["units"])
        if not isinstance(units, str) or len(units) > 64:
            raise HeaderError(f"{path}: units {where} must be a short string, got {str(units)[:40]!r}",
                              path)
        cfg["units"] = units
    if cfg.get("layout") is not None and cfg["layout"] not in LAYOUTS:
        raise HeaderError(f"{path}: layout {where} must be one of {LAYOUTS}, got "
                          f"{str(cfg['layout'])[:40]!r}", path)
    if cfg.get("meta") is not None and not isinstance(cfg["meta"], dict):
        raise HeaderError(f"{path}: meta {where} must be an object, got {type(cfg['meta']).__name__}",
                          path)
    return cfg


def _scalar(value):
    """A one-element list/array (HDF5 attributes, .npz entries) -> its element."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    return value


def _lead_names(value, path: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if not isinstance(value, (list, tuple)) or not value or len(value) > MAX_LEAD_NAMES or not all(
            isinstance(v, str) and 0 < len(v) <= 64 for v in value):
        raise HeaderError(f"{path}: lead names {where} must be a list of 1 to {MAX_LEAD_NAMES} "
                          f"short strings, got {str(value)[:60]!r}", path)
    return list(value)


def lead_axis(shape: tuple[int, int], layout: str | None, n_leads: int | None, path: str) -> int:
    """Axis (0 or 1) of a 2-D array that holds the leads."""
    layout = layout or "auto"
    if layout not in LAYOUTS:
        raise ReadOptionError(f"layout must be one of {LAYOUTS}, got {layout!r}")
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
