"""Zero-shot ECG classification with an ECG-CoCa (ECG-Chat's protocol, plus prompt ensembles).

Built-in label sets (``ptbxl-super``, ``ptbxl-sub``, ``ptbxl-form``, ``ptbxl-rhythm``,
``cpsc2018``) take one CKEPE prompt per class, looked up with key = label with ``_`` and ``(s)``
removed, as ECG-Chat does. User label sets come from JSON/YAML files mapping each label to one
prompt or a list of prompts; several prompts are ensembled as the mean of their L2-normalised
text embeddings, renormalised (with one prompt this is exactly ECG-Chat's class embedding).

Scores: ECG-Chat's independent per-class ``sigmoid(exp(logit_scale) * cos)`` (multi-label), or a
softmax over classes (single-label) on the same scaled cosines.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

LABELS_DIR = Path(__file__).resolve().parent / "labels"
BUILTIN = ("ptbxl-super", "ptbxl-sub", "ptbxl-form", "ptbxl-rhythm", "cpsc2018")
ECGCHAT_ALIASES = {"ptbxl_super_class": "ptbxl-super", "ptbxl_sub_class": "ptbxl-sub",
                    "ptbxl_form": "ptbxl-form", "ptbxl_rhythm": "ptbxl-rhythm"}


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]   # one or more prompts per label, same order

    def __post_init__(self):
        if not self.labels:
            raise ValueError(f"label set {self.name!r} is empty")
        if len(self.labels) != len(self.prompts):
            raise ValueError(f"label set {self.name!r}: {len(self.labels)} labels but {len(self.prompts)} prompt lists")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"label set {self.name!r} has duplicate labels")
        for lab, ps in zip(self.labels, self.prompts):
            if not ps or not all(isinstance(p, str) and p.strip() for p in ps):
                raise ValueError(f"label {lab!r} in {self.name!r} needs one or more non-empty prompt strings, got {ps!r}")

    def __len__(self) -> int:
        return len(self.labels)


@lru_cache(maxsize=1)
def ckepe_prompts() -> dict[str, str]:
    return json.loads((LABELS_DIR / "CKEPE_prompt.json").read_text())


def ckepe_key(label: str) -> str:
    """ECG-Chat's look-up rule: remove "_" and "(s)" (so "PRC(S)" keeps its upper-case "(S)")."""
    return label.replace("_", "").replace("(s)", "")


# What a sentence about a label calls it (diagnosis-driven prompts, ecgbatch.llava.diagnosis_prompt): words
# the report findings matcher (ecgbatch.text.findings) also reads. Others: the first CKEPE phrase.
LABEL_TEXT = {
    "AFIB": "atrial fibrillation", "AFLT": "atrial flutter", "SR": "sinus rhythm",
    "SBRAD": "sinus bradycardia", "STACH": "sinus tachycardia", "SARRH": "sinus arrhythmia",
    "BIGU": "bigeminal pattern", "TRIGU": "trigeminal pattern", "PACE": "paced rhythm",
    "PSVT": "paroxysmal supraventricular tachycardia", "SVTAC": "supraventricular tachycardia",
    "SVARR": "supraventricular arrhythmia",
    "NORM": "normal ECG", "1AVB": "first degree AV block", "LBBB": "left bundle branch block",
    "RBBB": "right bundle branch block", "PAC": "premature atrial contraction",
    "PVC": "premature ventricular contraction", "STD": "ST depression", "STE": "ST elevation",
    "CD": "conduction disturbance", "HYP": "ventricular hypertrophy", "MI": "myocardial infarction",
    "STTC": "ST-T change",
}


def label_text(label: str) -> str:
    """A short clinical name of a label-set code (``AFIB`` -> "atrial fibrillation")."""
    if label in LABEL_TEXT:
        return LABEL_TEXT[label]
    prompt = ckepe_prompts().get(ckepe_key(label))
    return prompt.split(",")[0].strip().rstrip(".") if prompt else label


def builtin_labelset(name: str) -> LabelSet:
    name = ECGCHAT_ALIASES.get(name, name)
    sets = json.loads((LABELS_DIR / "labelsets.json").read_text())
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in label set {name!r}; known: {list(BUILTIN)}")
    prompts = ckepe_prompts()
    labels = tuple(sets[name])
    missing = [lab for lab in labels if ckepe_key(lab) not in prompts]
    if missing:
        raise ValueError(f"CKEPE prompts lack keys for {missing}")
    return LabelSet(name, labels, tuple((prompts[ckepe_key(lab)],) for lab in labels))


def labelset_from_mapping(name: str, mapping: dict) -> LabelSet:
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"label set {name!r} must map label -> prompt(s), got {type(mapping).__name__}")
    labels, prompts = [], []
    for lab, ps in mapping.items():
        if isinstance(ps, str):
            ps = [ps]
        if not isinstance(ps, (list, tuple)):
            raise ValueError(f"label {lab!r}: prompts must be a string or a list of strings, got {ps!r}")
        labels.append(str(lab))
        prompts.append(tuple(ps))
    return LabelSet(name, tuple(labels), tuple(prompts))


def load_labelset(name_or_path: str | Path | LabelSet) -> LabelSet:
    """A built-in set by name, or a JSON/YAML file {label: prompt | [prompts]}."""
    if isinstance(name_or_path, LabelSet):
        return name_or_path
    s = str(name_or_path)
    if s in BUILTIN or s in ECGCHAT_ALIASES:
        return builtin_labelset(s)
    p = Path(s)
    if not p.is_file():
        raise ValueError(f"label set {s!r} is neither a built-in ({list(BUILTIN)}) nor a file")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise ValueError(f"cannot parse label set file {s!r}: {exc}") from None
    return labelset_from_mapping(p.stem, data)


class ZeroShotClassifier:
    """Class embeddings of a label set under one model; scores for ECG embeddings."""

    def __init__(self, model, labelset: str | Path | LabelSet, tokenizer=None, lower: bool = False):
        import torch
        import torch.nn.functional as F

        self.labelset = load_labelset(labelset)
        tok = tokenizer or model.tokenizer
        if tok is None:
            raise ValueError("zero-shot needs a tokenizer: the model has none attached, pass tokenizer=")
        dev = next(model.parameters()).device
        flat = [p for ps in self.labelset.prompts for p in ps]
        ids = tok(flat, lower=lower).to(dev)
        with torch.inference_mode():
            emb = model.encode_text(ids, normalize=True).float()
            owner = torch.tensor([i for i, ps in enumerate(self.labelset.prompts) for _ in ps], device=dev)
            sums = torch.zeros(len(self.labelset), emb.shape[1], device=dev).index_add_(0, owner, emb)
            counts = torch.bincount(owner, minlength=len(self.labelset)).unsqueeze(1).float()
            self.class_embeddings = F.normalize(sums / counts, dim=-1).cpu().numpy()   # [C, D]
            self.logit_scale = float(model.logit_scale.detach().exp().float().cpu())
        self.model = model

    @property
    def labels(self) -> tuple[str, ...]:
        return self.labelset.labels

    def logits(self, ecg_features) -> np.ndarray:
        """exp(logit_scale) * cosine, [N, C]; ecg_features [N, D] (renormalised here)."""
        f = np.asarray(ecg_features, dtype=np.float32)
        if f.ndim != 2 or f.shape[1] != self.class_embeddings.shape[1]:
            raise ValueError(f"ecg_features must be [N, {self.class_embeddings.shape[1]}], got {f.shape!r}")
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return self.logit_scale * f @ self.class_embeddings.T

    def scores(self, ecg_features, softmax: bool = False) -> np.ndarray:
        """[N, C] per-class probabilities: sigmoid (ECG-Chat, multi-label) or softmax over classes."""
        z = self.logits(ecg_features).astype(np.float64)
        if softmax:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def classify(self, x, softmax: bool = False) -> np.ndarray:
        """Preprocessed signals [N, leads, samples] -> scores [N, C]."""
        return self.scores(self.model.embed_ecgs(x), softmax=softmax)

    def ranked(self, scores_row) -> list[tuple[str, float]]:
        order = np.argsort(-np.asarray(scores_row), kind="stable")
        return [(self.labels[i], float(scores_row[i])) for i in order]
