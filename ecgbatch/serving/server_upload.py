"""``POST /v1/ecg/preview`` (ecgbatch's extension for the web page): uploaded ECG files -> the
record's samples as an inline ECG part, a summary, and the standard 12-lead plot (PNG).

Body: {"files": [{"name": "A0689.hea", "data": "<base64>"}, {"name": "A0689.dat", ...}]}; the
first file that names a record (a .hea, .xml, .mat, .npy, .h5) is read with ecgbatch's readers.
Uploaded files go to a fresh temporary folder under their base names only, and a WFDB header may
only refer to signal files uploaded with it (never to a file elsewhere on the server; the readers'
own rule, ``ecgbatch.io.confine``, holds too). The record is read with the request's decoded-size
budget (``Limits.max_decoded_bytes``): a compressed upload that declares more (an HDF5 or .npz
bomb, a zlib MAT element) is refused with 413 before anything is inflated. Messages never show
the server's temporary folder.
"""
from __future__ import annotations

import base64
import binascii
import re
import tempfile
from pathlib import Path

import numpy as np

from ecgbatch.io import read_record
from ecgbatch.io.errors import EcgReadError
from ecgbatch.io.wfdb_reader import signal_file_names
from ecgbatch.serving.chat_request import Limits, RequestError, public_message

RECORD_SUFFIXES = (".hea", ".xml", ".mat", ".npy", ".h5", ".hdf5")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _files(body) -> list[tuple[str, bytes]]:
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, list) or not 1 <= len(files) <= 8:
        raise RequestError("'files' must be a list of 1 to 8 {name, data} objects")
    out = []
    for i, f in enumerate(files):
        name = f.get("name") if isinstance(f, dict) else None
        if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
            raise RequestError(f"files[{i}].name must be a plain file name (letters, digits, . _ -), got {name!r}")
        try:
            out.append((name, base64.b64decode(f.get("data") or "", validate=True)))
        except (binascii.Error, ValueError, TypeError):
            raise RequestError(f"files[{i}] ({name}): data is not valid base64") from None
    if len({n for n, _ in out}) != len(out):
        raise RequestError("two uploaded files have the same name")
    return out


def _unreadable(name: str, exc, folder: Path) -> RequestError:
    """A reader's error as the client sees it: its kind, and its message without the folder."""
    kind = getattr(exc, "kind", type(exc).__name__)
    status = 413 if kind == "record_too_large" else 422
    return RequestError(f"{name} cannot be read ({kind}): {public_message(str(exc), folder)}", status,
                        "too_large" if status == 413 else "unreadable_ecg")


def _record_file(folder: Path, names: list[str]) -> Path:
    for hea in [n for n in names if n.lower().endswith(".hea")]:      # every header, whichever is read
        try:
            refs = signal_file_names(str(folder / hea))
        except EcgReadError as exc:
            raise _unreadable(hea, exc, folder) from None
        bad = [r for r in refs if r not in names]
        if bad:
            raise RequestError(f"{hea} refers to signal files that were not uploaded with it: "
                               f"{', '.join(bad)}", 422, "unreadable_ecg")
    for name in sorted(names, key=lambda n: not n.lower().endswith(".hea")):
        if name.lower().endswith(RECORD_SUFFIXES):
            return folder / name
    raise RequestError(f"none of the uploaded files names a record ({', '.join(RECORD_SUFFIXES)})",
                       422, "unreadable_ecg")


def preview(body, limits: Limits) -> dict:
    """Read the uploaded record; returns {"ecg": inline part spec, "summary": ..., "plot_png": b64}."""
    from ecgbatch.signal.plot import plot_ecg

    files = _files(body)
    with tempfile.TemporaryDirectory(prefix="ecgbatch-upload-") as tmp:
        folder = Path(tmp)
        for name, data in files:
            (folder / name).write_bytes(data)
        path = _record_file(folder, [n for n, _ in files])
        try:
            rec = read_record(str(path), max_bytes=limits.max_decoded_bytes)
        except EcgReadError as exc:
            raise _unreadable(path.name, exc, folder) from None
        except (OSError, ValueError) as exc:
            raise RequestError(f"{path.name} cannot be read: {type(exc).__name__}", 422, "unreadable_ecg") from None
        if rec.n_samples > limits.max_samples or rec.n_leads > limits.max_leads:
            raise RequestError(f"{path.name}: {rec.n_leads} leads x {rec.n_samples} samples is more than the "
                               f"limits ({limits.max_leads} x {limits.max_samples})", 413, "too_large")
        try:
            png = plot_ecg(rec, folder / "plot.png", dpi=80).read_bytes()
        except ValueError as exc:
            raise RequestError(f"{path.name} cannot be plotted: {public_message(str(exc), folder)}", 422,
                               "unreadable_ecg") from None
    return {"ecg": inline_spec(rec), "summary": summary(rec, path.name),
            "plot_png": base64.b64encode(png).decode()}


def inline_spec(rec) -> dict:
    """A Record as the inline ECG part of a chat request (float32 lead-major, base64)."""
    x = np.ascontiguousarray(np.nan_to_num(np.asarray(rec.signal, dtype="<f4")))
    return {"data": base64.b64encode(x.tobytes()).decode(), "fs": float(rec.fs), "leads": list(rec.leads),
            "units": str(rec.units or "mV")}


def summary(rec, name: str) -> dict:
    """What a person wants to see first (no patient identifiers: Record.meta never holds them)."""
    meta = {k: rec.meta[k] for k in ("age", "sex", "dx_names") if k in (rec.meta or {})}
    return {"name": name, "fs": float(rec.fs), "leads": list(rec.leads), "n_samples": rec.n_samples,
            "duration_s": round(rec.n_samples / float(rec.fs), 2), "units": str(rec.units),
            **{k: (v if isinstance(v, (str, int, float)) else str(v)) for k, v in meta.items()}}
