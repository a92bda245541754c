"""``load_state_dict_strict``: the one way a state dict enters a module here (every key and
shape checked first, all differences listed in one ``CheckpointMismatchError``). Its own low
module, so the text tower and the checkpoint loaders share it without importing each other."""
from __future__ import annotations

import torch
from torch import nn

from ecgbatch.encoders.errors import CheckpointMismatchError


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], where: str,
                           prefix: str = "") -> None:
    """Copy ``state_dict`` into ``module`` after checking every key and shape (raises with lists;
    key names in the error carry ``prefix``, e.g. "ecg." for the tower alone)."""
    own = module.state_dict()
    missing = sorted(prefix + k for k in set(own) - set(state_dict))
    unexpected = sorted(prefix + k for k in set(state_dict) - set(own))
    mismatched = [(prefix + k, tuple(state_dict[k].shape), tuple(own[k].shape))
                  for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(where, missing, unexpected, mismatched)
    module.load_state_dict(state_dict, strict=True)
