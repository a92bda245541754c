"""What `ecgbatch models list` shows: one row per zoo entry, of every family (no torch)."""
from __future__ import annotations

from typing import Any

from ecgbatch.models import registry
from ecgbatch.models.families import family


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
    row.update(family(entry.kind).zoo_details(entry))
    return row


def zoo_rows() -> list[dict[str, Any]]:
    return [zoo_row(registry.ZOO[n]) for n in registry.names()]
