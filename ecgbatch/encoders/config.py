"""ECG-CoCa configuration: dataclasses that import without torch.

The JSON layout is ECG-Chat's open_clip model config (``embed_dim``, ``ecg_cfg``, ``text_cfg``,
``multimodal_cfg``) plus two fields of ours: ``arch`` (always "ecg-coca" for now; the factory
dispatches on it) and ``preprocess`` (a PreprocessConfig dict: how the model wants its ECGs).
An ECG-Chat JSON without those two fields parses too (arch defaults to "ecg-coca", preprocess to
ECG-Chat's raw-mV pipeline), so the reference configs load unchanged.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ecgbatch.signal.config import ECGCHAT, PreprocessConfig

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
KNOWN_ARCHS = ("ecg-coca",)


def _from_known(cls, d: dict[str, Any], where: str, ignore: tuple[str, ...] = ()):
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known - set(ignore)
    if unknown:
        raise ValueError(f"unknown {where} keys: {sorted(unknown)}")
    return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class RhythmCfg:
    """The rhythm channel (``ecgbatch.encoders.rhythm``) of our own ECG-CoCa variants."""

    lead: str = "II"
    weight: float = 0.5          # share of the squared norm (and of the similarity) of the RR block
    rr_min_ms: float = 200.0
    rr_max_ms: float = 3000.0
    n_bins: int = 95             # + 1 "unknown" slot: 96 extra dimensions
    bandwidth: float = 0.042     # Gaussian width of a bin in log RR (kernel width sqrt(2) x this)
    hidden: int = 64

    def __post_init__(self):
        if not 0.0 < self.weight < 1.0:
            raise ValueError(f"rhythm_cfg.weight must be in (0, 1), got {self.weight!r}")
        if not 0 < self.rr_min_ms < self.rr_max_ms:
            raise ValueError(f"rhythm_cfg needs 0 < rr_min_ms < rr_max_ms, got {self.rr_min_ms!r}, "
                             f"{self.rr_max_ms!r}")
        if self.n_bins < 2 or self.bandwidth <= 0 or self.hidden < 1:
            raise ValueError("rhythm_cfg.n_bins must be >= 2, bandwidth > 0 and hidden >= 1, got "
                             f"{self.n_bins!r}, {self.bandwidth!r}, {self.hidden!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "RhythmCfg":
        return _from_known(cls, d, "rhythm_cfg")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def dim(self) -> int:
        return self.n_bins + 1


@dataclass
class EcgCfg:
    """1-D ViT over all leads at once (ECG-Chat ``CLIPEcgCfg``; defaults = ECG-Chat's)."""

    seq_length: int = 5000     # samples per lead (10 s at 500 Hz)
    lead_num: int = 12         # input channels of the patch Conv1d
    layers: int = 12
    width: int = 768
    head_width: int = 64       # heads = width // head_width (12 for ECG-Chat)
    mlp_ratio: float = 4.0
    patch_size: int = 50       # 100 ms patches -> 100 tokens + CLS = 101
    output_tokens: bool = True  # kept for JSON compatibility; the model always returns tokens
    pool_type: str = "tok"     # only "tok" (CLS) is used by ECG-Chat

    def __post_init__(self):
        if self.seq_length % self.patch_size:
            raise ValueError(f"ecg_cfg.seq_length must be a multiple of patch_size, got "
                             f"{self.seq_length!r} and {self.patch_size!r}")
        if self.width % self.head_width:
            raise ValueError(f"ecg_cfg.width must be a multiple of head_width, got {self.width!r} "
                             f"and {self.head_width!r}")
        if self.pool_type != "tok":
            raise ValueError(f"ecg_cfg.pool_type: only 'tok' is implemented, got {self.pool_type!r}")

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def n_patches(self) -> int:
        return self.seq_length // self.patch_size

    @property
    def n_tokens(self) -> int:
        """Tokens out of the tower (CLS + patches): what an LLM projector receives."""
        return self.n_patches + 1


@dataclass
class TextCfg:
    """HF text tower (ECG-Chat ``CLIPTextCfg`` with hf_* fields)."""

    hf_model_name: str = "ncbi/MedCPT-Query-Encoder"
    hf_tokenizer_name: str | None = None
    hf_proj_type: str = "linear"
    hf_pooler_type: str = "mean_pooler"
    width: int = 768
    context_length: int = 77     # tokenizer length (open_clip DEFAULT_CONTEXT_LENGTH)
    vocab_size: int = 49408      # DECODER output size: CLIP default, kept (quirk Q3)
    pad_id: int = 0
    output_tokens: bool = True
    # BertConfig fields used to build a random-init tower when no weights folder is available
    # (benchmarks; or checkpoints that carry the text weights themselves).
    hf_config: dict[str, Any] | None = None

    def __post_init__(self):
        if self.hf_proj_type != "linear":
            raise ValueError(f"text_cfg.hf_proj_type: only 'linear' is implemented, got {self.hf_proj_type!r}")
        if self.hf_pooler_type != "mean_pooler":
            raise ValueError(f"text_cfg.hf_pooler_type: only 'mean_pooler' is implemented, got "
                             f"{self.hf_pooler_type!r}")

    @property
    def tokenizer_name(self) -> str:
        return self.hf_tokenizer_name or self.hf_model_name


@dataclass
class MultimodalCfg:
    """Caption decoder (ECG-Chat ``MultimodalCfg``)."""

    context_length: int = 76   # causal-mask size: text length 77 minus the last position
    width: int = 768
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0


@dataclass
class CocaConfig:
    arch: str = "ecg-coca"
    embed_dim: int = 512
    ecg_cfg: EcgCfg = field(default_factory=EcgCfg)
    text_cfg: TextCfg = field(default_factory=TextCfg)
    multimodal_cfg: MultimodalCfg = field(default_factory=MultimodalCfg)
    init_logit_scale: float = math.log(1 / 0.07)
    preprocess: PreprocessConfig = ECGCHAT
    name: str = ""             # free label (architecture name or checkpoint name)
    # ecgbatch's optional rhythm channel (ecgbatch.encoders.rhythm); None = ECG-Chat's model.
    rhythm_cfg: Any = None

    def __post_init__(self):
        if self.arch not in KNOWN_ARCHS:
            raise ValueError(f"arch must be one of {KNOWN_ARCHS}, got {self.arch!r}")
        w = self.multimodal_cfg.width
        if not (self.ecg_cfg.width == self.text_cfg.width == w):
            # open_clip's cross-attention has kdim = vdim = width: text tokens (queries), ECG
            # tokens (keys/values) and the decoder must share one width.
            raise ValueError("ecg_cfg.width, text_cfg.width and multimodal_cfg.width must be equal "
                             f"(CoCa cross-attention), got {self.ecg_cfg.width!r}, "
                             f"{self.text_cfg.width!r}, {w!r}")
        if self.multimodal_cfg.context_length != self.text_cfg.context_length - 1:
            raise ValueError("multimodal_cfg.context_length must be text context_length - 1, got "
                             f"{self.multimodal_cfg.context_length!r} and {self.text_cfg.context_length!r}")
        if self.preprocess.n_samples is not None and self.preprocess.n_samples != self.ecg_cfg.seq_length:
            raise ValueError(f"preprocess.n_samples ({self.preprocess.n_samples!r}) must equal "
                             f"ecg_cfg.seq_length ({self.ecg_cfg.seq_length!r})")
        if self.rhythm_cfg is not None and self.rhythm_cfg.lead not in self.preprocess.leads:
            raise ValueError(f"rhythm_cfg.lead {self.rhythm_cfg.lead!r} is not among preprocess.leads "
                             f"{list(self.preprocess.leads)}")
        if len(self.preprocess.leads) != self.ecg_cfg.lead_num:
            raise ValueError(f"preprocess.leads has {len(self.preprocess.leads)} leads, the ECG tower "
                             f"expects lead_num={self.ecg_cfg.lead_num!r}")

    @property
    def output_dim(self) -> int:
        """Embedding width: embed_dim plus the rhythm channel's RR block when there is one."""
        return self.embed_dim + (self.rhythm_cfg.dim if self.rhythm_cfg is not None else 0)

    # -- (de)serialisation ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CocaConfig":
        if not isinstance(d, dict):
            raise ValueError(f"model config must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("embed_dim", "ecg_cfg", "text_cfg", "multimodal_cfg") if k not in d]
        if missing:
            raise ValueError(f"model config lacks {missing} (need embed_dim, ecg_cfg, text_cfg, "
                             "multimodal_cfg)")
        pre = d.get("preprocess")
        rhythm = d.get("rhythm_cfg")
        if rhythm is not None:
            rhythm = RhythmCfg.from_dict(rhythm)
        return cls(
            arch=d.get("arch", "ecg-coca"),
            embed_dim=int(d["embed_dim"]),
            ecg_cfg=_from_known(EcgCfg, d["ecg_cfg"], "ecg_cfg"),
            # ECG-Chat JSONs may carry open_clip text keys we do not use; they change nothing here.
            text_cfg=_from_known(TextCfg, d["text_cfg"], "text_cfg"),
            multimodal_cfg=_from_known(MultimodalCfg, d["multimodal_cfg"], "multimodal_cfg"),
            init_logit_scale=float(d.get("init_logit_scale", math.log(1 / 0.07))),
            preprocess=ECGCHAT if pre is None else PreprocessConfig.from_dict(pre),
            name=str(d.get("name", "")),
            rhythm_cfg=rhythm,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "name": self.name,
            "embed_dim": self.embed_dim,
            "ecg_cfg": asdict(self.ecg_cfg),
            "text_cfg": asdict(self.text_cfg),
            "multimodal_cfg": asdict(self.multimodal_cfg),
            "init_logit_scale": self.init_logit_scale,
            "preprocess": self.preprocess.to_dict(),
            **({"rhythm_cfg": self.rhythm_cfg.to_dict()} if self.rhythm_cfg is not None else {}),
            # "custom_text" is what ECG-Chat's factory expects for an HF text tower
            "custom_text": True,
        }

    @classmethod
    def from_json(cls, path: str | Path) -> "CocaConfig":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"model config {str(p)!r} is not valid JSON: {exc}") from None
        d.pop("custom_text", None)
        return cls.from_dict(d)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def list_arch_configs() -> list[str]:
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def arch_config(name: str) -> CocaConfig:
    """The shipped config for an architecture name (``ecg-coca``, ``ecg-coca-mini``)."""
    p = MODEL_CONFIG_DIR / f"{name}.json"
    if not p.is_file():
        raise ValueError(f"unknown model config {name!r}; known: {list_arch_configs()}")
    cfg = CocaConfig.from_json(p)
    if not cfg.name:
        cfg.name = name
    return cfg


def zoo_details(entry) -> dict:
    """The `ecgbatch models list` columns of an ECG-CoCa zoo entry (from its shipped config)."""
    if not entry.config:
        return {}
    cfg = arch_config(entry.config)
    pre = cfg.preprocess
    return {"embed_dim": cfg.output_dim,
            "ecg_tower": f"{cfg.ecg_cfg.layers}x{cfg.ecg_cfg.width} patch {cfg.ecg_cfg.patch_size}",
            "text_tower": cfg.text_cfg.hf_model_name,
            "preprocess": (f"{pre.fs:g} Hz, {pre.n_samples} samples, bandpass {pre.bandpass}, "
                           f"normalize {pre.normalize}")}
