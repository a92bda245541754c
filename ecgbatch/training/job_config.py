"""The CoCa training job's configuration: one YAML (configs/*.yaml) -> CocaJobConfig.

Every section is a small dataclass with the recipe's defaults (ECG-Chat's where it has one:
ecg-chat-reference.md 2.5 and 2.7); unknown keys raise, so a typo never silently falls back to
a default. Imports nothing heavy.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ecgbatch.training.augment import AugmentConfig
from ecgbatch.training.data import TEXT_VARIANTS
from ecgbatch.training.pairs import SourceSpec


def build_section(cls, d: dict | None, where: str):
    """The dataclass ``cls`` from a job YAML section; unknown keys raise, naming ``where``."""
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in {where}: {sorted(unknown)} (known: {sorted(known)})")
    return cls(**d)


@dataclass
class OptimConfig:
    epochs: int = 20
    batch_size: int = 32            # GLOBAL batch (split evenly over workers)
    lr: float = 1e-4
    weight_decay: float = 0.1       # on >= 2-D weights only (not norms, biases, logit_scale)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 10000       # linear warmup, then cosine to 0 over all steps
    grad_clip_norm: float | None = 0.5
    max_logit_scale: float = 100.0  # exp(logit_scale) clamped to [1, this] after each step
    max_steps_per_epoch: int | None = None   # cap (tests, smoke runs)
    # also checkpoint every N steps within an epoch (long epochs on a CPU: --resume continues
    # from the last one with the weights an uninterrupted run would have); None: epoch ends only
    checkpoint_every_steps: int | None = None

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        if self.checkpoint_every_steps is not None and int(self.checkpoint_every_steps) < 1:
            raise ValueError(f"optim.checkpoint_every_steps must be >= 1 or null, got {self.checkpoint_every_steps!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"optim.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError(f"optim.lr must be > 0 and warmup_steps >= 0, got {self.lr!r}, {self.warmup_steps!r}")


@dataclass
class LossConfig:
    clip_weight: float = 1.0        # ECG-Chat: 1.0
    caption_weight: float = 2.0     # ECG-Chat: 2.0; 0 skips the decoder (and does not train it)
    # Ours (training/label_loss.py): pairs whose texts share one of these keyword labels are
    # soft positives with total target mass label_weight (0 = ECG-Chat's InfoNCE).
    label_positives: list[str] = field(default_factory=list)
    label_weight: float = 0.0

    def __post_init__(self):
        if not 0.0 <= float(self.label_weight) <= 1.0:
            raise ValueError(f"loss.label_weight must be in [0, 1], got {self.label_weight!r}")
        if self.label_weight > 0 and not self.label_positives:
            raise ValueError("loss.label_weight > 0 needs loss.label_positives (e.g. [af])")
        if self.label_weight > 0 and self.caption_weight > 0:
            raise ValueError("loss.label_weight is implemented for the contrastive-only loss "
                             f"(caption_weight 0), got caption_weight={self.caption_weight!r}")


@dataclass
class TextTowerConfig:
    lock: bool = True               # ECG-Chat's --lock-text
    freeze_layer_norm: bool = False  # ECG-Chat default False: LayerNorms stay trainable
    # With the whole tower frozen (lock and freeze_layer_norm) its pooled outputs never change:
    # compute them once per text instead of every step (same numbers, much less CPU).
    cache_frozen_features: bool = True


@dataclass
class SplitConfig:
    val_fraction: Any = 0.2         # float, or {source: fraction, default: fraction}
    seed: int = 0
    # k-fold cross-validation by patient instead of val_fraction: hold out fold ``fold`` of
    # ``folds`` (run each fold as its own job; over all folds every record is held out once).
    folds: int | None = None
    fold: int | None = None

    def __post_init__(self):
        if (self.folds is None) != (self.fold is None):
            raise ValueError(f"split.folds and split.fold go together, got folds={self.folds!r}, fold={self.fold!r}")
        if self.folds is not None and not (int(self.folds) >= 2 and 0 <= int(self.fold) < int(self.folds)):
            raise ValueError(f"split needs folds >= 2 and 0 <= fold < folds, got {self.folds!r}, {self.fold!r}")


@dataclass
class SamplingConfig:
    # Sampling weights: product of inverse frequencies of these keys ("source" and/or a
    # KEYWORD_LABELS name such as "af"); [] = plain shuffled epochs.
    balance: list[str] = field(default_factory=list)
    samples_per_epoch: int | None = None   # default: the number of training pairs


@dataclass
class ValConfig:
    labels: list[str] = field(default_factory=lambda: ["af"])   # KEYWORD_LABELS for zero-shot AUC
    query: str | None = "atrial fibrillation"   # text query whose top-k precision is logged
    query_label: str = "af"
    query_k: int = 8
    every: int = 1                  # validate every N epochs (and always after the last)


@dataclass
class DataConfig:
    sources: list[SourceSpec] = field(default_factory=list)
    cache_dir: str = ".ecgbatch/cache"
    wde: bool = True                # append ECG-Chat's measurement suffix to every text
    # Training-text variants and their probabilities (ecgbatch.training.data.TEXT_VARIANTS):
    # full (ECG-Chat: always), no_wave, first, first_wave. Validation always uses "full".
    text_variants: dict = field(default_factory=lambda: {"full": 1.0})
    measure_method: str = "ecgchat"
    on_error: str = "raise"         # "skip": leave unreadable/textless records out (listed)


@dataclass
class CocaJobConfig:
    name: str
    model: str = "ecg-coca-mini"    # architecture / zoo name or a model folder
    init: str | None = None         # start from these weights (a model folder or ECG-Chat .pt)
    seed: int = 0
    run_dir: str = ".ecgbatch/runs"
    amp: str = "auto"               # auto (bf16/fp16 on GPU, off on CPU) | off | bf16 | fp16
    threads_per_worker: int | None = None
    keep_checkpoints: int | None = 2
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    text_tower: TextTowerConfig = field(default_factory=TextTowerConfig)
    val: ValConfig = field(default_factory=ValConfig)
    # Tests only: raise after this many global steps (simulates a crash/kill).
    fail_after_steps: int | None = None

    def __post_init__(self):
        bad = [k for k in self.data.text_variants if k not in TEXT_VARIANTS]
        if bad or not self.data.text_variants:
            raise ValueError(f"data.text_variants keys must be among {TEXT_VARIANTS}, got "
                             f"{sorted(self.data.text_variants)!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be auto|off|bf16|fp16, got {self.amp!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a plain run name, got {self.name!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "CocaJobConfig":
        d = dict(d)
        data = dict(d.pop("data", {}) or {})
        data["sources"] = [s if isinstance(s, SourceSpec) else SourceSpec.from_dict(s)
                           for s in data.get("sources", [])]
        sections = {"data": (DataConfig, data), "split": (SplitConfig, d.pop("split", None)),
                    "sampling": (SamplingConfig, d.pop("sampling", None)),
                    "optim": (OptimConfig, d.pop("optim", None)), "loss": (LossConfig, d.pop("loss", None)),
                    "text_tower": (TextTowerConfig, d.pop("text_tower", None)),
                    "val": (ValConfig, d.pop("val", None))}
        built = {k: build_section(c, v, k) for k, (c, v) in sections.items()}
        built["augment"] = AugmentConfig.from_dict(d.pop("augment", None))
        if "name" not in d:
            raise ValueError("job config needs a 'name'")
        return build_section(cls, {**d, **built}, "job config")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    def run_path(self) -> Path:
        base = Path(self.run_dir)
        return (base if base.is_absolute() else Path.cwd() / base).resolve() / self.name


def read_job_yaml(path: str | Path) -> dict:
    """A job YAML file as a mapping; unreadable or non-mapping files raise ValueError."""
    import yaml

    p = Path(path)
    try:
        d = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read job config {str(p)!r}: {exc}") from None
    if not isinstance(d, dict):
        raise ValueError(f"job config {str(p)!r} must be a mapping, got {type(d).__name__}")
    return d


def apply_overrides(d: dict, overrides: dict | None) -> dict:
    """Set dotted keys ("optim.epochs": 3) in a job mapping, creating sections as needed."""
    for key, value in (overrides or {}).items():
        node = d
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    return d


def load_job_config(path: str | Path, overrides: dict | None = None) -> CocaJobConfig:
    """YAML file -> CocaJobConfig; ``overrides`` are dotted keys ("optim.epochs": 3)."""
    return CocaJobConfig.from_dict(apply_overrides(read_job_yaml(path), overrides))


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """open_clip's cosine_lr: linear warmup base_lr*(step+1)/warmup, then cosine to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    e, es = step - warmup_steps, max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr
