"""Stand-in ECG embeddings without a trained model: a fixed random Gaussian projection of real
12-lead signals. Used by the index tests and benchmark to get vectors with the structure of real
ECG data (rhythm, morphology, lead amplitudes) when no encoder weights are at hand.

Recipe: signal [12, 5000] at 500 Hz (cropped/zero-padded), each lead z-scored, averaged over
blocks of ``downsample`` samples -> [12, 500] -> flattened (6000) -> times a fixed Gaussian
matrix [6000, dim] (seeded) -> L2-normalised. Johnson-Lindenstrauss: cosine similarities of the
downsampled signals are approximately preserved.

``real_ecg_table`` reads PTB-XL (``ptbxl/records/*.npy`` + ``ptbxl_database_subset.csv``) and the
PhysioNet/CinC 2021 records (``cinc2021/*.mat`` + ``.hea``) from the shared data folder and
returns a table in the workspace embeddings schema (store.py) with real metadata: age, sex,
diagnoses (report text or SNOMED names) and dx_codes (SCP or SNOMED codes).
"""
from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pyarrow as pa

SAMPLES = 5000
LEADS = 12
MODEL_NAME = "random-projection-ecg"


def project_signals(signals: np.ndarray, dim: int = 256, seed: int = 0, downsample: int = 10) -> np.ndarray:
    """[N, 12, T] signals -> [N, dim] float32 unit vectors (see the module docstring)."""
    x = np.asarray(signals, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != LEADS:
        raise ValueError(f"signals must be [N, 12, T], got shape {x.shape!r}")
    t = x.shape[2]
    if t < SAMPLES:
        x = np.concatenate([x, np.zeros((len(x), LEADS, SAMPLES - t), np.float32)], axis=2)
    x = x[:, :, :SAMPLES]
    mu = x.mean(axis=2, keepdims=True)
    sd = x.std(axis=2, keepdims=True)
    x = (x - mu) / np.where(sd > 0, sd, 1.0)
    x = x.reshape(len(x), LEADS, SAMPLES // downsample, downsample).mean(axis=3).reshape(len(x), -1)
    proj = np.random.default_rng(seed).standard_normal((x.shape[1], dim), dtype=np.float32)
    v = x @ proj
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _ptbxl(data: Path):
    folder = data / "ptbxl"
    rows = {}
    with open(folder / "ptbxl_database_subset.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows[str(int(float(r["ecg_id"])))] = r
    out = []
    for p in sorted((folder / "records").glob("*.npy")):
        r = rows.get(p.stem)
        if r is None:
            continue
        sig = np.load(p).T  # stored (samples, leads)
        codes = ",".join(ast.literal_eval(r["scp_codes"]).keys()) if r["scp_codes"] else None
        age = float(r["age"]) if r["age"] not in ("", None) else None
        sex = {"0": "M", "1": "F", "0.0": "M", "1.0": "F"}.get(r["sex"])
        out.append((f"ptbxl/{p.stem}", "ptbxl", sig, age, sex, r["report"] or None, codes))
    return out


def _cinc(data: Path):
    from scipy.io import loadmat

    folder = data / "cinc2021"
    names = {}
    for fn in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        if (folder / fn).is_file():
            with open(folder / fn, newline="") as f:
                for r in csv.DictReader(f):
                    names[r["SNOMEDCTCode"]] = r["Dx"]
    out = []
    for hea in sorted(folder.glob("*.hea")):
        meta = {}
        for line in hea.read_text().splitlines():
            if line.startswith("#") and ":" in line:
                k, v = line[1:].split(":", 1)
                meta[k.strip().lower()] = v.strip()
        sig = loadmat(hea.with_suffix(".mat"))["val"].astype(np.float32)
        if sig.shape[0] != LEADS:
            continue
        age = float(meta["age"]) if meta.get("age", "").replace(".", "", 1).isdigit() else None
        sex = {"male": "M", "female": "F"}.get(meta.get("sex", "").lower())
        codes = meta.get("dx") or None
        dx = ", ".join(names.get(c, c) for c in codes.split(",")) if codes else None
        out.append((f"cinc2021/{hea.stem}", "cinc2021", sig, age, sex, dx, codes))
    return out


def real_ecg_table(data_dir: str | Path, dim: int = 256, seed: int = 0) -> pa.Table:
    """Embeddings table (workspace schema) of the real PTB-XL + CinC 2021 records in
    ``data_dir`` (the shared data folder), embedded by :func:`project_signals`."""
    data = Path(data_dir)
    recs = _ptbxl(data) + _cinc(data)
    if not recs:
        raise FileNotFoundError(f"no PTB-XL or CinC 2021 records found under {str(data)!r}")
    sigs = np.stack([np.pad(r[2][:, :SAMPLES], ((0, 0), (0, max(0, SAMPLES - r[2].shape[1])))) for r in recs])
    emb = project_signals(sigs, dim=dim, seed=seed)
    n = len(recs)
    return pa.table({
        "record_id": [r[0] for r in recs],
        "source": [r[1] for r in recs],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), dim),
        "model": [MODEL_NAME] * n,
        "weights_hash": [f"gaussian-seed{seed}-dim{dim}"] * n,
        "preprocess_hash": ["zscore-crop5000-mean10"] * n,
        "age": pa.array([r[3] for r in recs], pa.float64()),
        "sex": pa.array([r[4] for r in recs], pa.string()),
        "diagnoses": pa.array([r[5] for r in recs], pa.string()),
        "dx_codes": pa.array([r[6] for r in recs], pa.string()),
    })
