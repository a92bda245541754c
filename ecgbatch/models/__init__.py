"""The model zoo and the one way to load a model (open_clip's ``pretrained.py`` + ``factory.py``).

- ``registry``: zoo names -> family (``kind``), architecture, where the weights come from, where
  they are installed;
- ``families``: which loader builds each family (registered by dotted path, imported on use);
- ``resolve``: the one resolver, name or path -> weights folder for both families
  (``model_folder``), and the runnable ECG-LLaVA folder + its adapter (``llava_model``);
- ``errors``: the typed errors of a model folder that cannot be found or read;
- ``factory``: ``create_model`` (dispatch to the family) and ``load_model`` (what commands,
  pipelines and training jobs share: a name's trained weights, a seeded random init on request,
  the arguments that rebuild the model).

Imports nothing heavy and no family's package: torch and ``ecgbatch.encoders`` /
``ecgbatch.llava`` load with the first model (they import this package, never the reverse).
"""
from ecgbatch.models.factory import RANDOM_INIT, create_args, create_model, is_weights_folder, load_model
from ecgbatch.models.families import FAMILIES, Family, detect_kind, register_family
from ecgbatch.models.registry import (DEFAULT_LLAVA, ZOO, ZooEntry, checkpoint_model_folder, find_weights,
                                      names)
from ecgbatch.models.resolve import llava_model, model_folder

__all__ = ["DEFAULT_LLAVA", "FAMILIES", "RANDOM_INIT", "ZOO", "Family", "ZooEntry", "checkpoint_model_folder",
           "create_args", "create_model", "detect_kind", "find_weights", "is_weights_folder", "llava_model",
           "load_model", "model_folder", "names", "register_family"]
