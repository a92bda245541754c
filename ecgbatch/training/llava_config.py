"""The ECG-LLaVA training jobs' configuration (configs/llava-*.yaml) -> LlavaJobConfig.

Same rules as the CoCa job (``ecgbatch.training.job_config``): small dataclasses with ECG-Chat's
defaults where it has them (ecg-chat-reference.md 6.2), unknown keys raise, dotted overrides.
Imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ecgbatch.training.job_config import OptimConfig, apply_overrides, build_section, read_job_yaml
from ecgbatch.training.pairs import resolve_path

STAGES = ("align", "sft")


@dataclass
class ModelSpec:
    # Either a full ECG-LLaVA folder (``folder``; e.g. a converted ECG-Chat model) or the parts:
    # a language model (base name such as smollm2-135m-instruct, or an HF folder) + the ECG tower
    # of an ECG-CoCa model (zoo name or folder) + a new projector.
    folder: str | None = None
    lm: str | None = "smollm2-135m-instruct"
    tower: str | None = "ecg-coca-mini"
    projector_type: str = "mlp2x_gelu"
    prompt_format: str = "chat_template"
    max_context_length: int = 2048

    def base(self) -> dict:
        if self.folder:
            return {"folder": str(resolve_path(self.folder))}
        return {"lm": self.lm, "tower": self.tower, "projector_type": self.projector_type,
                "prompt_format": self.prompt_format, "max_context_length": self.max_context_length}


@dataclass
class LlavaDataConfig:
    instruct: str = ".ecgbatch/instruct/shared.jsonl"   # `ecgbatch data instruct` output
    root: str | None = None           # resolves relative ``ecg`` paths
    split: str | None = "train"       # meta.split of the items to train on (None: all)
    kinds: list[str] | None = None    # meta.kind filter (report, dialogue); None: all
    max_items: int | dict | None = None   # a seeded subset (smoke runs, CPU budgets); {kind: n}: per kind
    repeat: dict = field(default_factory=dict)   # {finding key: k}: report items whose answer states
                                      # the finding (negation-aware, ecgbatch.text.findings) are seen
                                      # k times per epoch (after max_items): a rare statement the model
                                      # must learn to make, e.g. {lvh: 3}
    repeat_grounded: dict = field(default_factory=dict)   # {finding key: k}: with grounded, items (any
                                      # kind) whose grounded prompt states the finding and whose answers
                                      # state it too are seen k times (llava_job.repeat_grounded_items):
                                      # the prompt -> answer link, without raising the finding's rate
                                      # where the prompt is silent. Presences only: a yes/no
                                      # question's "yes" rises with it (v10, bench/RESULTS.md)
    drop_disagreeing: list = field(default_factory=list)   # with grounded: names of llava_job.
                                      # AGREE_FINDINGS (af, lvh, bbb, axis); grounded items whose
                                      # answers disagree with their own prompt on one are left out
                                      # (llava_job.disagreements), so the answers follow the prompt
    max_length: int = 2048            # positions incl. ECG tokens (tail cut, as ECG-Chat)
    cache_dir: str = ".ecgbatch/cache"   # ECG-token cache (ecgbatch.training.ecg_tokens)
    diagnosis_prompt: float = 0.0     # seeded fraction of report items asked with the diagnosis-driven
                                      # prompt (ecgbatch.training.instruct_diagnosis_prompt; needs the
                                      # probes of the tower's encoder). YAML: data.diagnosis_prompt, or
                                      # data.ddp (the paper's name, "DDP")
    grounded: float = 0.0             # seeded fraction of items (every kind) asked with the grounded prompt
                                      # (ecgbatch.training.instruct_grounded; the serving prompt of
                                      # --grounded); not with diagnosis_prompt
    wording: int = 1                  # with grounded: the grounded prompt's words (ecgbatch.llava.grounding.
                                      # WORDINGS), recorded in the model config's prompt.wording so
                                      # that it is served in the same words; 2 states a met LVH voltage
                                      # criterion in the training reports' words (v12, bench/RESULTS.md)
    only_supported: bool = False      # with grounded: a grounded item's turns whose answer disagrees
                                      # with its own prompt (instruct_grounded.turn_supported) are
                                      # left out, so the model learns that its prompt can be read
    yes_no: dict = field(default_factory=dict)   # {af|lvh|bbb|axis: n}: n one-question items answered
                                      # "yes" and n answered "no" by the labels, besides max_items
                                      # (llava_job.yes_no_items)
    evidence_first: bool | str = False     # with grounded: a grounded item's yes/no answers begin with what
                                      # its prompt states about the finding, in the prompt's words
                                      # (instruct_grounded.evidence_first), then the labels' yes or no;
                                      # "consistent": turns whose verdict the facts contradict are left out
    read_options: dict = field(default_factory=dict)   # {source name: reader options}

    @property
    def ddp(self) -> float:
        """``diagnosis_prompt`` under the paper's name (configs and callers that say data.ddp)."""
        return self.diagnosis_prompt


@dataclass
class LoraSection:
    r: int = 64                       # ECG-Chat: TrainingArguments defaults r=64, alpha=16
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"])


@dataclass
class LlavaJobConfig:
    name: str
    stage: str = "sft"
    model: ModelSpec = field(default_factory=ModelSpec)
    init: str | None = None           # trained-only folder / checkpoint to start from (align -> sft)
    seed: int = 0
    run_dir: str = ".ecgbatch/runs"
    amp: str = "auto"
    threads_per_worker: int | None = None
    keep_checkpoints: int | None = 2
    data: LlavaDataConfig = field(default_factory=LlavaDataConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=1, batch_size=16, lr=2e-4,
                                                                   weight_decay=0.0, warmup_steps=0,
                                                                   grad_clip_norm=1.0))
    warmup_ratio: float = 0.03        # ECG-Chat: 0.03 (used when optim.warmup_steps is 0)
    fail_after_steps: int | None = None   # tests only

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be auto|off|bf16|fp16, got {self.amp!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a plain run name, got {self.name!r}")
        if not 0.0 <= self.data.diagnosis_prompt <= 1.0:
            raise ValueError(f"data.diagnosis_prompt (data.ddp) must be a fraction in [0, 1], got "
                             f"{self.data.diagnosis_prompt!r}")
        if not 0.0 <= self.data.grounded <= 1.0:
            raise ValueError(f"data.grounded must be a fraction in [0, 1], got {self.data.grounded!r}")
        if self.data.repeat_grounded and not self.data.grounded:
            raise ValueError("data.repeat_grounded repeats items by what their grounded prompt states: it needs "
                             "data.grounded > 0")
        if isinstance(self.data.drop_disagreeing, str):       # YAML "drop_disagreeing: lvh"
            self.data.drop_disagreeing = [self.data.drop_disagreeing]
        if self.data.drop_disagreeing and not self.data.grounded:
            raise ValueError("data.drop_disagreeing compares answers with their grounded prompt: it needs "
                             "data.grounded > 0")
        if self.data.yes_no:
            from ecgbatch.training.instruct_questions import FOCUS_QUESTIONS

            bad = {k: n for k, n in self.data.yes_no.items()
                   if k not in FOCUS_QUESTIONS or isinstance(n, bool) or not isinstance(n, int) or n < 1}
            if bad:
                raise ValueError(f"data.yes_no wants {{question: n >= 1}} with questions of "
                                 f"{sorted(FOCUS_QUESTIONS)}, got {bad!r}")
        if self.data.evidence_first not in (False, True, "consistent"):
            raise ValueError(f"data.evidence_first is true, false or consistent, got {self.data.evidence_first!r}")
        if self.data.evidence_first and not self.data.grounded:
            raise ValueError("data.evidence_first restates the grounded prompt in yes/no answers: it needs "
                             "data.grounded > 0")
        from ecgbatch.llava.grounding import LEGACY_WORDING, check_wording

        try:
            self.data.wording = check_wording(self.data.wording)
        except ValueError as exc:
            raise ValueError(f"data.wording: {exc}") from None
        if self.data.wording != LEGACY_WORDING and not self.data.grounded:
            raise ValueError("data.wording chooses the grounded prompt's words: it needs data.grounded > 0")
        if self.data.grounded and self.data.diagnosis_prompt:
            raise ValueError("give data.grounded or data.diagnosis_prompt (data.ddp), not both: both state the "
                             "probes' findings before the question")
        if self.data.max_length < 8:
            raise ValueError(f"data.max_length must be >= 8, got {self.data.max_length!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "LlavaJobConfig":
        d = dict(d)
        optim = {"epochs": 1, "batch_size": 16, "lr": 2e-4, "weight_decay": 0.0, "warmup_steps": 0,
                 "grad_clip_norm": 1.0, **(d.pop("optim", None) or {})}
        data = dict(d.pop("data", None) or {})
        if "ddp" in data:                 # the paper's name for the diagnosis-driven prompt
            if "diagnosis_prompt" in data:
                raise ValueError("give data.diagnosis_prompt or its alias data.ddp, not both")
            data["diagnosis_prompt"] = data.pop("ddp")
        built = {"model": build_section(ModelSpec, d.pop("model", None), "model"),
                 "data": build_section(LlavaDataConfig, data, "data"),
                 "lora": build_section(LoraSection, d.pop("lora", None), "lora"),
                 "optim": build_section(OptimConfig, optim, "optim")}
        if "name" not in d:
            raise ValueError("job config needs a 'name'")
        return build_section(cls, {**d, **built}, "job config")

    def to_dict(self) -> dict:
        return asdict(self)

    def run_path(self) -> Path:
        base = Path(self.run_dir)
        return (base if base.is_absolute() else Path.cwd() / base).resolve() / self.name


def load_llava_job(path: str | Path, overrides: dict | None = None, stage: str | None = None) -> LlavaJobConfig:
    """YAML -> LlavaJobConfig (``stage`` given by the command must match the file's, if any)."""
    d = read_job_yaml(path)
    if stage is not None:
        if d.get("stage", stage) != stage:
            raise ValueError(f"{str(path)!r} is a {d.get('stage')!r} config, not {stage!r}")
        d["stage"] = stage
    return LlavaJobConfig.from_dict(apply_overrides(d, overrides))
