"""Shared test helpers: where the real data is, and skips that say why."""
from __future__ import annotations

import os

import pytest

from ecgbatch._paths import SAMPLE_ARCHIVE, shared_dir

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHARED = shared_dir()


@pytest.fixture(scope="session")
def shared():
    """Path to ../shared; skips (with the reason) when it is not beside the checkout."""
    if SHARED is None:
        pytest.skip("../shared is not present on this machine: full-data tests skipped")
    return SHARED


@pytest.fixture(scope="session")
def shared_data(shared):
    return shared / "data"


@pytest.fixture(scope="session")
def fixtures_dir(shared):
    return shared / "fixtures"


@pytest.fixture(scope="session")
def sample_archive():
    assert SAMPLE_ARCHIVE.is_dir(), f"bundled sample archive missing at {SAMPLE_ARCHIVE}"
    return SAMPLE_ARCHIVE


# --- the ecgcoca_tiny reference fixture (ECG-Chat's own outputs), shared by encoder tests ----

@pytest.fixture(scope="session")
def ecgcoca_dir(fixtures_dir):
    d = fixtures_dir / "ecgcoca_tiny"
    if not d.is_dir():
        pytest.skip(f"fixture folder missing: {d}")
    return d


@pytest.fixture(scope="session")
def ecgcoca_model(ecgcoca_dir):
    from ecgbatch.encoders import load_ecgchat_checkpoint

    d = ecgcoca_dir
    return load_ecgchat_checkpoint(d / "checkpoint.pt", d / "model_config.json", d / "text_encoder")


@pytest.fixture(scope="session")
def ecgcoca_inputs(ecgcoca_dir):
    import numpy as np
    import torch

    return (torch.from_numpy(np.load(ecgcoca_dir / "inputs_ecg.npy")),
            torch.from_numpy(np.load(ecgcoca_dir / "inputs_text_ids.npy")))
