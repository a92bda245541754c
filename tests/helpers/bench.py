"""The bench scripts (bench/*.py are scripts, not a package) as modules, for tests of their pure parts."""
from __future__ import annotations

import importlib.util
from types import ModuleType

from ecgbatch._paths import REPO_ROOT


def bench_module(name: str) -> ModuleType:
    """bench/NAME.py loaded as a module (its main() is not run)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
