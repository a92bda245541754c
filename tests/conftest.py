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
