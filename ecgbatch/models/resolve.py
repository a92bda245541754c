"""The one resolver: a model name or path -> the folder its weights are in, for both families.

- ``model_folder(name_or_path, kind=None)``: a folder (or a training checkpoint holding one in
  ``model/``) is itself; a zoo name is its installed weights (``$ECGBATCH_MODELS_DIR/<name>/``,
  then the package's ``ecgbatch/models/weights/<name>/``); for ``kind="ecg-llava"`` any other
  name found as ``$ECGBATCH_MODELS_DIR/<name>/`` too. Errors say where it looked and how to
  install: ECG-LLaVA raises ModelNotInstalledError / ModelFolderError (ecgbatch.models.errors),
  ECG-CoCa FileNotFoundError (not installed) / ValueError (unknown name).
- ``llava_model(name_or_path, lora=None)``: (the full folder engines load, the LoRA adapter): a
  trained-only folder (``ecgbatch train export``, what ships as ecg-llava-mini) is assembled into
  the cache at first use by its family's plug-in (ecgbatch.llava.assemble); the adapter is
  ``lora`` when given, else the model's own ``lora/``.

Every command, pipeline, training job and loader resolves names here. Imports nothing heavy and
no family's package (they import this module).
"""
from __future__ import annotations

import os
from pathlib import Path

from ecgbatch.models import registry
from ecgbatch.models.errors import ModelFolderError, ModelNotInstalledError
from ecgbatch.models.families import family

LLAVA = "ecg-llava"
LORA_SUBDIR = "lora"        # a generative model's own adapter (peft folder) inside its folder
CONVERT_HINT = ("pass --model FOLDER, e.g. an ECG-Chat LLaVA run converted with `ecgbatch models "
                "convert-ecgchat-llava --base VICUNA --lora RUN --ecg-coca CKPT -o FOLDER`")


def _is_path(name: str) -> bool:
    return Path(name).exists() or os.sep in name or bool(os.altsep and os.altsep in name)


def model_folder(name_or_path: str | Path, kind: str | None = None) -> Path:
    """The folder the model ``name_or_path`` loads from (see the module doc). ``kind`` (a family)
    refuses a zoo name of another family."""
    name = str(name_or_path)
    p = Path(name_or_path)
    if p.is_dir() and (registry.checkpoint_model_folder(p) / "config.json").is_file():
        return registry.checkpoint_model_folder(p)
    if kind == LLAVA and _is_path(name):
        raise ModelFolderError(f"{name!r} is not an ECG-LLaVA model folder (no config.json)")
    entry = registry.get(name)
    if entry is not None and kind is not None and entry.kind != kind:
        what = "ECG-LLaVA" if kind == LLAVA else kind
        raise ModelFolderError(f"{name!r} is an {entry.kind} model, not an {what} model (the zoo's "
                               f"{what} models: {', '.join(registry.names(kind))})")
    found = registry.find_weights(name) if entry is not None else None
    if found is not None:
        return found
    if kind == LLAVA:
        return _llava_elsewhere(name, entry)
    if entry is None:
        raise ValueError(f"unknown model {name!r}; the zoo has {registry.names()}")
    looked = ", ".join(str(c) for c in registry.candidates(name))
    how = f"; {entry.install}" if entry.install else ""
    raise FileNotFoundError(f"no weights for {name!r} (looked in {looked}); source: {entry.source}{how}")


def _llava_elsewhere(name: str, entry) -> Path:
    """An ECG-LLaVA name without installed zoo weights: $ECGBATCH_MODELS_DIR/<name>, else the error."""
    env = os.environ.get(registry.ENV_DIR)
    if entry is None and env and (Path(env) / name / "config.json").is_file():
        return Path(env) / name
    if entry is not None:
        looked = ", ".join(str(c) for c in registry.candidates(name))
        how = f"{entry.install}; or {CONVERT_HINT}" if entry.install else CONVERT_HINT
        raise ModelNotInstalledError(f"{name} is not installed (looked in {looked}): {how}")
    looked = f"${registry.ENV_DIR}/{name} (${registry.ENV_DIR}={env or '<unset>'})"
    raise ModelNotInstalledError(f"{name!r} is neither an ECG-LLaVA model folder nor an installed model "
                                 f"(looked in {looked}; the zoo's ECG-LLaVA models: "
                                 f"{', '.join(registry.names(LLAVA))}): {CONVERT_HINT}, or put the folder "
                                 f"at ${registry.ENV_DIR}/{name}")


def llava_model(name_or_path: str | Path, lora: str | Path | None = None, log=None) -> tuple[Path, Path | None]:
    """(full ECG-LLaVA folder, LoRA adapter or None) for --model and --lora: the folder
    ``model_folder(name_or_path, "ecg-llava")`` finds, assembled into the cache at first use when
    it is trained-only (saying so through ``log``); the adapter is ``lora`` when given, else the
    model's own ``lora/`` folder (the one every generative command applies unless told)."""
    found = model_folder(name_or_path, LLAVA)
    name = str(name_or_path) if found != Path(name_or_path) else found.name
    folder = family(LLAVA).runnable_folder(found, name, log)
    if lora is not None:
        return folder, Path(lora)
    own = folder / LORA_SUBDIR
    return folder, (own if (own / "adapter_config.json").is_file() else None)
