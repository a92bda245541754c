"""The model that wrote a workspace table: its weights' identity, the model itself rebuilt with the
same ``create_model`` arguments (refused when its weights changed since), and the folder of its
weights (where its probes are). Shared by ``embed`` (which records the identity), ``queries``,
``classify`` and ``report_prompts``."""
from __future__ import annotations

from pathlib import Path

from ecgbatch.models import create_model, model_folder
from ecgbatch.pipelines.workspace import ModelTable


def model_weights_hash(model) -> str:
    """The identity of a model's weights (ecgbatch.encoders: sha256 over the sorted state dict)."""
    return str(model.weights_hash)


def load_table_model(table: ModelTable, device: str = "cpu"):
    """The model that wrote ``table`` (same create_model arguments); refuses other weights."""
    meta = table.read_meta()
    model = create_model(meta["model"], device=device, **meta.get("create_args", {}))
    got = model_weights_hash(model)
    if got != meta["weights_hash"]:
        raise ValueError(f"model {meta['model']!r} now has weights {got!r}, but {table.root} was "
                         f"embedded with {meta['weights_hash']!r}: re-run `ecgbatch embed`")
    return model


def table_weights_folder(table: ModelTable) -> Path | None:
    """The folder of the weights that embedded ``table`` (ecgbatch.models.model_folder), where
    its probes live; None for weights that have no folder (random, an ECG-Chat .pt file) or are
    no longer installed. A table that records no create_args was embedded with the name's own
    trained weights (load_model's default)."""
    meta = table.read_meta()
    pretrained = meta.get("create_args", {}).get("pretrained", "default")
    weights = meta["model"] if pretrained in (None, "default") else pretrained
    if pretrained != "default" and not Path(weights).is_dir():
        return None
    try:
        return model_folder(weights, "ecg-coca")
    except (ValueError, FileNotFoundError):
        return None
