"""The diagnosis-driven prompt (the paper's "DDP", ECG-Chat; ecg-chat-reference.md section 7): the
labels calibrated classifiers give an ECG are written into the prompt, one sentence each
("The {label} is present."), before the report question. One implementation for every path:
``report RECORD --ddp``, ``report --input ARCHIVE --ddp`` (from the workspace's embeddings),
``eval report --model M --ddp`` and training data (``data.ddp`` of the llava jobs,
ecgbatch.training.instruct_diagnosis_prompt). ``--ddp`` stays the command-line name (the paper's).

The interface (what callers use; the prompt text and the findings rule can change behind it):

- ``FindingsLabeller``: the ECG-CoCa model whose ECG tower an ECG-LLaVA model uses (recorded in
  a trained-only folder's ``base.tower``; for a full folder, the installed zoo encoder whose ECG
  tower weights are the model's) with the probes shipped beside its weights
  (``<weights>/probes/<labelset>.json``, ``ecgbatch train probe``). ``for_model(model)`` /
  ``for_base(base)`` build it; ``findings(x)`` takes ECG arrays preprocessed for the ECG-LLaVA
  model (the same PreprocessConfig as the encoder's, which is checked) and computes the
  encoder's embedding (its rhythm channel included) first; ``describe()`` says which encoder and
  probes. A model without such an encoder or probes raises DiagnosisPromptUnavailableError
  naming what is missing.
- ``findings_from_embeddings(probes, emb)``: the paper's rule on the probes' calibrated
  probabilities: the top label of an exclusive (rhythm) set, every label of a multi-label set
  at or above its cross-validated threshold; a label named by two sets (AFIB, NORM) is said
  once, with the higher probability. (``probe_files`` / ``load_probes``: the probes.)
- ``diagnosis_prompt(question, findings)``: the sentences, with their probabilities, then the
  question: the one place the prompt text is written.

Caveat (honest numbers): ecg-coca-mini's shipped probes were fitted on all 477 records of
../shared/data (ptbxl, cinc2021, ludb), so the findings, and report metrics with the diagnosis
prompt, on those records are optimistic: the probes have seen them. Only records outside that set
measure it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgbatch.encoders.probes import find_probe, LinearProbe, ProbeError
from ecgbatch.encoders.zeroshot import label_text
from ecgbatch.llava.errors import EcgLlavaError, ModelFolderError
from ecgbatch.models import registry
from ecgbatch.models.resolve import model_folder

PROBE_LABELSETS = ("ptbxl-rhythm", "cpsc2018", "ptbxl-super")
PROMPT_INTRO = "Calibrated classifiers of this ECG found:"


class DiagnosisPromptUnavailableError(EcgLlavaError):
    """No diagnosis-driven prompt for this model: its tower's encoder or that encoder's probes
    cannot be found, or do not fit the model's input."""

    kind = "ddp_unavailable"


@dataclass(frozen=True)
class Finding:
    label: str            # the probe's label code, e.g. "AFIB"
    text: str             # what the prompt calls it, e.g. "atrial fibrillation"
    probability: float    # calibrated
    labelset: str         # the probe that found it

    def to_dict(self) -> dict:
        return {"label": self.label, "text": self.text, "probability": round(self.probability, 4),
                "labelset": self.labelset}


def diagnosis_prompt(question: str, findings: list[Finding]) -> str:
    """The question after one sentence per finding (the paper's "The {label} is present.",
    with the calibrated probability). No findings: the question unchanged."""
    if not findings:
        return question
    said = " ".join(f"The {f.text} is present (p={f.probability:.2f})." for f in findings)
    return f"{PROMPT_INTRO} {said}\n{question}"


def findings_from_embeddings(probes, emb) -> list[list[Finding]]:
    """Per row of ``emb`` [N, D] (the encoder's embeddings): its findings, in probe order,
    most probable first within a probe (see the module doc for the rule)."""
    emb = np.asarray(emb)
    out: list[list[Finding]] = [[] for _ in range(len(emb))]
    for pr in probes:
        p = pr.trained_probabilities(emb)
        for row, probs in enumerate(p):
            order = np.argsort(-probs, kind="stable")
            keep = order[:1] if pr.exclusive else [j for j in order if probs[j] >= pr.thresholds[j]]
            for j in keep:
                lab = pr.trained[int(j)]
                out[row].append(Finding(lab, label_text(lab), float(probs[j]), pr.labelset))
    return [_once(fs) for fs in out]


def _once(findings: list[Finding]) -> list[Finding]:
    best: dict[str, Finding] = {}
    for f in findings:
        if f.text not in best or f.probability > best[f.text].probability:
            best[f.text] = f
    return [f for f in findings if best[f.text] is f]


def probe_files(weights_folder, encoder: str) -> list[Path]:
    """The DDP label sets' probe files beside an encoder's weights (DiagnosisPromptUnavailableError if none)."""
    paths = [p for p in (find_probe(weights_folder, ls) for ls in PROBE_LABELSETS) if p is not None]
    if not paths:
        raise DiagnosisPromptUnavailableError(
            f"--ddp needs calibrated probes beside the weights of the encoder {encoder!r} "
            f"({Path(weights_folder or '?') / 'probes'}/{{{','.join(PROBE_LABELSETS)}}}.json); none is there: "
            f"fit them with `ecgbatch train probe --model {encoder} --labels ptbxl-rhythm` (and the other sets)")
    return paths


def load_probes(weights_folder, weights_hash: str, encoder: str) -> list:
    """The DDP probes beside an encoder's weights, checked against its weights."""
    try:
        probes = [LinearProbe.load(p) for p in probe_files(weights_folder, encoder)]
        for pr in probes:
            pr.check_model(weights_hash, what=f"the embeddings of {encoder!r}")
    except ProbeError as exc:
        raise DiagnosisPromptUnavailableError(f"--ddp: {exc}") from None
    return probes


# --- which encoder an ECG-LLaVA model's tower comes from ------------------------------------

def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    if index.is_file():
        return sorted({folder / f for f in json.loads(index.read_text()).get("weight_map", {}).values()})
    return []


def _tower_hash(folder: Path, prefix: str) -> str | None:
    """tensors_hash of the ECG tower stored in ``folder`` under ``prefix`` (``ecg_tower.`` in an
    ECG-LLaVA folder, ``ecg.`` in an ECG-CoCa folder), or None when it holds none."""
    from safetensors import safe_open

    from ecgbatch.encoders.checkpoint import tensors_hash

    tensors = {}
    for f in _weight_files(folder):
        with safe_open(str(f), framework="pt") as fh:
            tensors.update({k[len(prefix):]: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)})
    return tensors_hash(tensors) if tensors else None


def tower_encoder(model: str | Path) -> tuple[str, str | None]:
    """(ECG-CoCa zoo name or folder, the tower's weights hash if recorded) of an ECG-LLaVA model
    given as a zoo name, a trained-only folder (``base.tower``, or ``base.folder`` followed) or a
    full folder (its tower's weights matched against the installed zoo encoders). The folders are
    found as every command finds them (ecgbatch.models.model_folder; a trained-only folder stays
    un-assembled: its config names the tower)."""
    try:
        folder = model_folder(model, "ecg-llava")
        for _ in range(4):
            cfg = json.loads((folder / "config.json").read_text())
            base = cfg.get("base") or {}
            if base.get("tower"):
                return str(base["tower"]), (cfg.get("base_sha256_16") or {}).get("ecg_tower")
            if not base.get("folder"):
                break
            folder = model_folder(base["folder"], "ecg-llava")
    except ModelFolderError as exc:
        raise DiagnosisPromptUnavailableError(f"--ddp: {exc}") from None

    got = _tower_hash(folder, "ecg_tower.")
    looked = []
    for name in registry.names("ecg-coca"):
        w = registry.find_weights(name)
        looked.append(f"{name} ({'installed' if w is not None else 'not installed'})")
        if got is not None and w is not None and _tower_hash(w, "ecg.") == got:
            return name, got
    raise DiagnosisPromptUnavailableError(
        f"--ddp needs the ECG-CoCa encoder whose ECG tower {str(folder)!r} uses, with calibrated probes "
        f"beside its weights: the folder records no tower source (config.json 'base.tower') and its tower "
        f"weights match none of the zoo encoders ({', '.join(looked)})")


class FindingsLabeller:
    """An ECG-CoCa encoder + its shipped probes: ECG arrays -> DDP findings."""

    def __init__(self, encoder: str | Path, preprocess: dict | None = None, tower_hash: str | None = None,
                 batch_size: int = 32):
        from ecgbatch.encoders import create_model
        from ecgbatch.encoders.checkpoint import CheckpointError

        self.encoder = str(encoder)
        try:
            self.model = create_model(self.encoder, pretrained="default")
        except (CheckpointError, FileNotFoundError, ValueError) as exc:
            raise DiagnosisPromptUnavailableError(f"--ddp: cannot load the tower's encoder {self.encoder!r}: {exc}") from None
        self.weights_hash = str(self.model.weights_hash)
        if tower_hash is not None:
            from ecgbatch.encoders.checkpoint import tensors_hash

            got = tensors_hash(self.model.ecg.state_dict())
            if got != tower_hash:
                raise DiagnosisPromptUnavailableError(f"--ddp: the installed encoder {self.encoder!r} has ECG tower weights "
                                          f"{got}, the model was built with {tower_hash}")
        pre = self.model.preprocess_config.to_dict()
        if preprocess is not None and dict(preprocess) != pre:
            raise DiagnosisPromptUnavailableError(f"--ddp: the model's input preprocessing differs from that of its tower's "
                                      f"encoder {self.encoder!r} ({preprocess} vs {pre})")
        folder = (self.model.provenance or {}).get("folder")
        self.probes = load_probes(folder, self.weights_hash, self.encoder)
        self.batch_size = int(batch_size)

    @classmethod
    def for_model(cls, model: str | Path, **kw) -> "FindingsLabeller":
        """The labeller of an ECG-LLaVA model (zoo name, trained-only or full folder)."""
        encoder, tower_hash = tower_encoder(model)
        cfg = json.loads((model_folder(model, "ecg-llava") / "config.json").read_text())   # tower_encoder found it
        return cls(encoder, cfg.get("preprocess"), tower_hash, **kw)

    @classmethod
    def for_base(cls, base: dict, preprocess: dict | None = None, **kw) -> "FindingsLabeller":
        """The labeller of a training job's ``model.base()`` ({"tower": ...} or {"folder": ...})."""
        if base.get("tower"):
            return cls(base["tower"], preprocess, **kw)
        if base.get("folder"):
            return cls.for_model(base["folder"], **kw)
        raise DiagnosisPromptUnavailableError(f"--ddp: the model spec {base!r} names no ECG tower")

    def describe(self) -> dict:
        return {"encoder": self.encoder, "weights_hash": self.weights_hash,
                "probes": [p.labelset for p in self.probes]}

    def embed(self, x) -> np.ndarray:
        """[N, leads, samples] (preprocessed for the model) -> the encoder's embeddings [N, D]."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3:
            raise ValueError(f"DDP takes ECGs [N, leads, samples], got shape {x.shape}")
        return np.concatenate([self.model.embed_ecgs(x[s:s + self.batch_size])
                               for s in range(0, len(x), self.batch_size)])

    def findings(self, x) -> list[list[Finding]]:
        """Per ECG of ``x`` [N, leads, samples]: its DDP findings."""
        return findings_from_embeddings(self.probes, self.embed(x)) if len(x) else []
