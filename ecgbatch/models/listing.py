"""What `ecgbatch models list` shows: one row per zoo entry, of every family (no torch)."""
from __future__ import annotations

from typing import Any

from ecgbatch.models import registry


def _coca_details(entry: registry.ZooEntry) -> dict[str, Any]:
    """Architecture columns of an ECG-CoCa entry (from its shipped config)."""
    from ecgbatch.encoders.config import arch_config

    cfg = arch_config(entry.config)
    pre = cfg.preprocess
    return {"embed_dim": cfg.output_dim,
            "ecg_tower": f"{cfg.ecg_cfg.layers}x{cfg.ecg_cfg.width} patch {cfg.ecg_cfg.patch_size}",
            "text_tower": cfg.text_cfg.hf_model_name,
            "preprocess": (f"{pre.fs:g} Hz, {pre.n_samples} samples, bandpass {pre.bandpass}, "
                           f"normalize {pre.normalize}")}


def zoo_row(entry: registry.ZooEntry) -> dict[str, Any]:
    """name, kind, params, size_mb (installed weights on disk), source, installed + weights path,
    and the architecture columns of the entry's family (None where a family has none)."""
    w = registry.find_weights(entry.name)
    row: dict[str, Any] = {
        "name": entry.name, "kind": entry.kind, "params": entry.params,
        "size_mb": round(registry.disk_bytes(w) / 1e6, 1) if w else None,
        "installed": w is not None, "weights": str(w) if w else None,
        "source": entry.source, "install": entry.install or None, "license": entry.license,
        "description": entry.description,
        "embed_dim": None, "ecg_tower": None, "text_tower": None, "preprocess": None,
    }
    if entry.kind == "ecg-coca" and entry.config:
        row.update(_coca_details(entry))
    return row


def zoo_rows() -> list[dict[str, Any]]:
    return [zoo_row(registry.ZOO[n]) for n in registry.names()]
