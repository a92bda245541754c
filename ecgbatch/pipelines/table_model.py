"""The model that wrote a workspace table: its weights' identity, and the model itself rebuilt
with the same ``create_model`` arguments (refused when its weights changed since). Shared by
``embed`` (which records the identity), ``queries`` and ``classify`` (which reload the model)."""
from __future__ import annotations

from ecgbatch.models import create_model
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
