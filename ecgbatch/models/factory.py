"""One way to load a model: ``create_model`` dispatches to the model's family, ``load_model`` adds
what commands, pipelines and training jobs share (a name's trained weights by default, a seeded
random initialisation on request, and the exact arguments that rebuild the model elsewhere).

Every command, pipeline and training job loads through these two functions; the families'
factories (``ecgbatch.encoders.factory`` for ECG-CoCa) do the building. Imports nothing heavy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ecgbatch.models import registry
from ecgbatch.models.families import detect_kind, family, kind_of_config
from ecgbatch.models.resolve import model_folder

# Generated weights get a fixed seed: every process (Ray actor, a later `search`) builds the same ones.
RANDOM_INIT: dict[str, Any] = {"pretrained": None, "seed": 0}


def create_model(name_or_path, pretrained: str | Path | None = None, **kwargs):
    """The model ``name_or_path`` names, built by its family's loader (see
    ``ecgbatch.models.families``): a zoo name, a model folder or a training checkpoint holding one,
    or (ECG-CoCa) an architecture name, a JSON config or a CocaConfig. ``pretrained`` and the
    keyword arguments mean what the family's loader says (ECG-CoCa:
    ``ecgbatch.encoders.factory.create_model``)."""
    fam = family(detect_kind(name_or_path))
    loader = fam.load()
    if fam.resolves_names:
        return loader(name_or_path, pretrained=pretrained, **kwargs)
    if pretrained in (None, "default"):
        return loader(model_folder(name_or_path, fam.kind), **kwargs)
    if Path(name_or_path).is_dir():
        raise ValueError(f"{str(name_or_path)!r} is a model folder with its own weights; got pretrained={pretrained!r}")
    if pretrained == "random":
        raise ValueError(f"{str(name_or_path)!r}: this model family has no random initialisation")
    return loader(model_folder(Path(pretrained)), **kwargs)


def is_weights_folder(name_or_path) -> bool:
    """A folder that holds a model of some family (or a training checkpoint that holds one)."""
    if not isinstance(name_or_path, (str, Path)) or not Path(name_or_path).is_dir():
        return False
    try:
        cfg = json.loads((registry.checkpoint_model_folder(name_or_path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and kind_of_config(cfg) is not None


def create_args(name_or_path, pretrained: str | Path | None = None, random_init: bool = False) -> dict[str, Any]:
    """The ``create_model`` arguments for a model a user named.

    ``pretrained=None`` means the trained weights the name carries: a folder's (or training
    checkpoint's) own, a zoo name's installed weights (``"default"``); a name that carries none
    (an architecture name or JSON) is refused. ``random_init``: the seeded random initialisation
    of a name's architecture (pretrained text tower when installed) instead: mechanics only;
    a folder keeps its own weights. ``pretrained="random"`` (everything random) is seeded too."""
    if is_weights_folder(name_or_path):
        return {"pretrained": pretrained}
    if random_init:
        return dict(RANDOM_INIT)
    if pretrained is None:
        if registry.get(str(name_or_path)) is None:
            raise FileNotFoundError(
                f"model {str(name_or_path)!r} is neither a model folder, a training checkpoint nor a zoo "
                f"name ({', '.join(registry.names())}): it names no trained weights")
        pretrained = "default"
    args: dict[str, Any] = {"pretrained": str(pretrained) if isinstance(pretrained, Path) else pretrained}
    if pretrained == "random":
        args["seed"] = RANDOM_INIT["seed"]
    return args


def load_model(name_or_path, pretrained: str | Path | None = None, *, device: str | None = None,
               random_init: bool = False, allow_random_init: bool = False,
               warn: Callable[[str], None] | None = None):
    """(model, the exact ``create_model`` arguments that rebuild it: for Ray actors and tables).

    Arguments as ``create_args``. With ``allow_random_init``, a zoo model whose trained weights
    are not installed falls back to its seeded random initialisation (identical in every
    process), and ``warn`` says so loudly."""
    args = create_args(name_or_path, pretrained, random_init)
    where = {} if device is None else {"device": device}
    try:
        return create_model(name_or_path, **where, **args), args
    except FileNotFoundError as exc:
        if not (allow_random_init and args.get("pretrained") == "default"):
            raise
        if warn is not None:
            warn(f"trained weights for {str(name_or_path)!r} are not available ({exc}); using the model's "
                 f"RANDOM INITIALISATION (seed {RANDOM_INIT['seed']}): embeddings and scores are meaningless")
        args = dict(RANDOM_INIT)
        return create_model(name_or_path, **where, **args), args
