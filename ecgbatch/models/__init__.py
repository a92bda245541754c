"""The model zoo and the one way to load a model (open_clip's ``pretrained.py`` + ``factory.py``).

- ``registry``: zoo names -> family (``kind``), architecture, where the weights come from, where
  they are installed;
- ``families``: which loader builds each family (registered by dotted path, imported on use);
- ``factory``: ``create_model`` (dispatch to the family) and ``load_model`` (what commands,
  pipelines and training jobs share: a name's trained weights, a seeded random init on request,
  the arguments that rebuild the model).

Imports nothing heavy: torch and the families' packages load with the first model.
"""
from ecgbatch.models.factory import RANDOM_INIT, create_args, create_model, is_weights_folder, load_model
from ecgbatch.models.families import FAMILIES, Family, detect_kind, register_family
from ecgbatch.models.registry import ZOO, ZooEntry, find_weights, names, weights_folder

__all__ = ["FAMILIES", "RANDOM_INIT", "ZOO", "Family", "ZooEntry", "create_args", "create_model", "detect_kind",
           "find_weights", "is_weights_folder", "load_model", "names", "register_family", "weights_folder"]
