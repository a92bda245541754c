"""Model families: which loader builds a model, found from a zoo entry or a folder's config.json.

A family is registered by dotted path (``"package.module:function"``) and imported only when one
of its models is loaded, so ``ecgbatch.models`` stays light, imports no family's package (the
families' packages import ``ecgbatch.models``' resolver, never the reverse) and a new family
plugs in here without touching another family's factory.

- ``ecg-coca`` (ECG-CoCa encoders): ``ecgbatch.encoders.factory:create_model``, called as
  ``create_model(name_or_path, pretrained=..., **kw)``: it resolves names, folders and configs
  itself. Its folders say ``"format": "ecgbatch-coca"``.
- ``ecg-llava`` (generative ECG-LLaVA): ``ecgbatch.llava:load_ecg_llava``, called as
  ``load_ecg_llava(folder, **kw)`` on the folder a zoo name or path stands for. Its folders say
  ``"model_type": "ecg_llava"``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Callable

from ecgbatch.models import registry

DEFAULT_KIND = "ecg-coca"


@dataclass(frozen=True)
class Family:
    kind: str                    # the zoo's ``kind``
    loader: str                  # "package.module:function", imported on first use
    marker: tuple[str, str]      # (config.json key, value) that identifies this family's folders
    resolves_names: bool         # True: the loader takes (name_or_path, pretrained=..., **kw);
                                 # False: it takes (folder, **kw) and the zoo resolves names
    description: str = ""
    runnable: str = ""           # "module:function" folder -> the folder engines load (ECG-LLaVA:
                                 # a trained-only folder assembled into the cache); "" = as found
    details: str = ""            # "module:function" ZooEntry -> extra `models list` columns

    def load(self) -> Callable:
        return _imported(self.loader)

    def runnable_folder(self, folder: Path, name: str, log=None) -> Path:
        return _imported(self.runnable)(folder, name, log) if self.runnable else folder

    def zoo_details(self, entry) -> dict:
        return _imported(self.details)(entry) if self.details else {}


def _imported(dotted: str) -> Callable:
    """A family's plug-in function, imported on first use (families load with their first model)."""
    module, _, func = dotted.partition(":")
    return getattr(import_module(module), func)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.kind in FAMILIES and FAMILIES[family.kind] != family:
        raise ValueError(f"model family {family.kind!r} is already registered")
    FAMILIES[family.kind] = family
    return family


register_family(Family("ecg-coca", "ecgbatch.encoders.factory:create_model", ("format", "ecgbatch-coca"),
                       resolves_names=True, description="ECG-CoCa ECG-language encoder",
                       details="ecgbatch.encoders.config:zoo_details"))
register_family(Family("ecg-llava", "ecgbatch.llava:load_ecg_llava", ("model_type", "ecg_llava"),
                       resolves_names=False, description="ECG-LLaVA generative model",
                       runnable="ecgbatch.llava.assemble:runnable_folder"))


def family(kind: str) -> Family:
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ValueError(f"unknown model family {kind!r}; known: {sorted(FAMILIES)}") from None


def _config_of(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return d if isinstance(d, dict) else None


def kind_of_config(config: dict) -> str | None:
    """The family whose marker a config.json dict carries, or None."""
    for fam in FAMILIES.values():
        key, value = fam.marker
        if config.get(key) == value:
            return fam.kind
    return None


def detect_kind(name_or_path) -> str:
    """The family of a model folder (or a training checkpoint holding one) or of a zoo name;
    anything else (an architecture name or JSON, a CocaConfig) is an ECG-CoCa."""
    if not isinstance(name_or_path, (str, Path)):
        return DEFAULT_KIND
    p = Path(name_or_path)
    if p.is_dir():
        kind = kind_of_config(_config_of(registry.checkpoint_model_folder(p) / "config.json") or {})
        if kind is not None:
            return kind
    entry = registry.get(str(name_or_path))
    return entry.kind if entry is not None else DEFAULT_KIND
