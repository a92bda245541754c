"""Where things are: the repository root, the bundled sample archive, ../shared and the default
workspace."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SAMPLE_ARCHIVE = REPO_ROOT / "sample_archive"


def shared_dir() -> Path | None:
    """../shared beside the checkout (or $ECGBATCH_SHARED); None when absent."""
    env = os.environ.get("ECGBATCH_SHARED")
    cands = [Path(env)] if env else []
    cands += [REPO_ROOT.parent / "shared"]
    for c in cands:
        if c.is_dir():
            return c
    return None


def default_workspace() -> Path:
    """$ECGBATCH_WORKSPACE when set, else ~/.ecgbatch/workspace."""
    env = os.environ.get("ECGBATCH_WORKSPACE")
    return Path(env).expanduser() if env else Path.home() / ".ecgbatch" / "workspace"
