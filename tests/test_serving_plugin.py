"""The vLLM plugin's registration, and the rule that only ecgbatch.serving imports vllm."""
from __future__ import annotations

import re
import tomllib

import pytest

from ecgbatch._paths import PACKAGE_DIR, REPO_ROOT


def test_entry_point_declared():
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"]["vllm.general_plugins"]
    assert "ecgbatch.serving.plugin:register" in eps.values()


def test_only_serving_imports_vllm():
    pattern = re.compile(r"^\s*(from vllm[ .]|import vllm\b)", re.M)
    offenders = [str(p.relative_to(PACKAGE_DIR)) for p in PACKAGE_DIR.rglob("*.py")
                 if "serving" not in p.relative_to(PACKAGE_DIR).parts and pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.vllm
def test_register_is_idempotent_and_names_the_architecture():
    pytest.importorskip("vllm")
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from ecgbatch.serving.plugin import ARCHITECTURE, register

    register()
    register()
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()
    from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfig

    assert AutoConfig.for_model("ecg_llava").__class__ is EcgLlavaConfig


@pytest.mark.parametrize("cpus,env,expected", [
    ({0, 1}, None, "0,1"),                      # a 2-core machine: every core
    ({2, 5, 7, 9}, None, "2,5,7,9"),            # the allowed cores, not 0..n-1
    (set(range(16)), None, None),               # a bigger CPU: vLLM's default (one core reserved)
    ({0, 1}, "0", None),                        # the user's setting wins
])
def test_small_cpu_binds_every_core(monkeypatch, cpus, env, expected):
    from ecgbatch.serving.engine import default_cpu_thread_binding

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: cpus)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)    # the CPU rule, on any machine
    if env is None:
        monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    else:
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", env)
    assert default_cpu_thread_binding() == expected
