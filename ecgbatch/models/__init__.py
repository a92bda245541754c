"""The model zoo (names -> config + weights + preprocessing); see ``registry``."""
from ecgbatch.models.registry import ZOO, ZooEntry, find_weights, names, weights_folder

__all__ = ["ZOO", "ZooEntry", "find_weights", "names", "weights_folder"]
