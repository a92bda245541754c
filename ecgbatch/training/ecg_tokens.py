"""Cache of the frozen ECG tower's output tokens, per record.

While the tower is frozen (both ECG-LLaVA stages) its output for a record never changes, so it
is computed once and CPU epochs cost the language model only. One cache file per (tower
weights, preprocessing) pair: ``<cache_dir>/ecg_tokens-<tower sha>-<preprocess sha>.npz``; inside,
one row per record keyed by its path, size and modification time (a changed file is computed
again). Rows are stored as float16 ([n_tokens, width]); writes are atomic (temp file + rename).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ecgbatch.encoders.checkpoint import tensors_hash


def tower_hash(tower: torch.nn.Module) -> str:
    return tensors_hash({k: v for k, v in tower.state_dict().items()})


def preprocess_hash(config) -> str:
    d = config.preprocess if isinstance(config.preprocess, dict) else config.preprocess.to_dict()
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def record_key(path: str | Path) -> str:
    p = Path(path)
    st = p.stat() if p.is_file() else None
    if st is None:        # WFDB: the .hea names the record, the .dat holds the samples
        parts = [q for q in (p.with_suffix(".hea"), p.with_suffix(".dat"), p.with_suffix(".mat")) if q.is_file()]
        sig = [(q.name, q.stat().st_size, q.stat().st_mtime_ns) for q in parts]
    else:
        sig = [(p.name, st.st_size, st.st_mtime_ns)]
    return f"{p.resolve()}|{sig}"


def cache_file(cache_dir: str | Path, model) -> Path:
    return Path(cache_dir) / f"ecg_tokens-{tower_hash(model.ecg_tower)[:16]}-{preprocess_hash(model.config)}.npz"


def _load(f: Path) -> dict[str, np.ndarray]:
    if not f.is_file():
        return {}
    with np.load(f, allow_pickle=False) as z:
        keys, feats = list(z["keys"]), z["feats"]
    return {str(k): feats[i] for i, k in enumerate(keys)}


def _save(f: Path, rows: dict[str, np.ndarray]) -> None:
    f.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(rows)
    tmp = f.with_name(f".{f.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, keys=np.array(keys), feats=np.stack([rows[k] for k in keys]))
    tmp.replace(f)


def cached_rows(f: Path, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray], batch_size: int = 16,
                what: str = "rows", log=None) -> np.ndarray:
    """Rows of the cache file ``f`` for ``keys`` (``record_key`` of each record), stacked; the
    missing ones are computed in batches by ``compute(indices into keys)`` and the file rewritten
    once (atomically). The ECG-token cache here and the diagnosis-prompt embedding cache use it."""
    rows = _load(f)
    todo = [i for i, k in enumerate(keys) if k not in rows]
    if todo:
        if log:
            log(f"{what}: computing {len(todo)} of {len(keys)} records ({f.name})")
        for s in range(0, len(todo), batch_size):
            idx = todo[s:s + batch_size]
            for j, row in zip(idx, compute(idx)):
                rows[keys[j]] = row
        _save(f, rows)
    return np.stack([rows[k] for k in keys])


def ecg_tokens(model, paths: Sequence[str], read: Callable[[str], np.ndarray], cache_dir: str | Path,
               batch_size: int = 16, log=None) -> torch.Tensor:
    """Tower tokens [len(paths), N, W] (float32) for the records ``paths``; ``read(path)``
    returns the model input (12, samples) of one record. Missing rows are computed and added."""
    tower = model.ecg_tower
    dev = next(tower.parameters()).device

    def compute(idx):
        x = torch.from_numpy(np.stack([read(paths[i]) for i in idx])).to(dev, next(tower.parameters()).dtype)
        with torch.no_grad():
            return tower.transformer_output(x).float().cpu().numpy().astype(np.float16)

    rows = cached_rows(cache_file(cache_dir, model), [record_key(p) for p in paths], compute, batch_size,
                       "ECG tokens (frozen tower)", log)
    return torch.from_numpy(rows.astype(np.float32))
