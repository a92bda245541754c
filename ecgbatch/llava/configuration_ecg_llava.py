"""EcgLlavaConfig: ECG tower + projector + causal language model, as one transformers config.

This module imports no torch itself (transformers' PretrainedConfig and ecgbatch's config
dataclasses only; note that transformers 5 imports torch for PretrainedConfig), and builds no
model, so a folder's config can be read, validated and registered with ``AutoConfig`` cheaply,
e.g. in every vLLM worker process. The folder format is described in ``ecgbatch/llava/loading.py``.

Fields (all JSON-serialisable):
  text_config     the language model's HF config (any causal LM; Llama for Vicuna / SmolLM2)
  ecg_config      the ECG tower architecture: an ecgbatch ``EcgCfg`` dict plus ``embed_dim`` (the
                  width of the tower's CLS projection, unused by the LLM but part of the tower's
                  weights, so ECG-CoCa checkpoints load into it strictly)
  preprocess      the tower's ``PreprocessConfig`` dict: how records become model input
  mm_hidden_size  width of the tower tokens fed to the projector (= ecg_config["width"])
  projector_type  "mlp2x_gelu" (Linear, exact GELU, Linear) or "linear" (ECG-Chat's two options)
  ecg_token / ecg_token_id  the placeholder and its id in the saved tokenizer (past the LM's
                  embedding matrix: it is never embedded, the ECG is spliced there)
  num_ecg_tokens  tokens per ECG = the tower's CLS + patches (101 for ECG-Chat); always derived
  prompt_format   "vicuna_v1" (ECG-Chat's conv_vicuna_v1) or "chat_template" (the LM's own)
  max_context_length  context limit used to refuse over-long prompts (ECG-Chat truncates at
                  ``tokenizer_model_max_length`` = 2048 when training)
  prompt          how the model's prompts were built when it was trained, e.g. {"grounded": true}:
                  the grounded prompt (ecgbatch.llava.grounding) before the first question. A
                  model is served with the prompts it was trained on, so this is the default of
                  --grounded/--no-grounded (``grounded_prompt``; default false); "wording": the
                  grounded prompt's words (ecgbatch.llava.grounding.WORDINGS; absent: 1), which
                  every prompt it is served with uses (``grounding_wording``)
"""
from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from ecgbatch.encoders.config import EcgCfg
from ecgbatch.llava.errors import EcgLlavaError
from ecgbatch.signal.config import ECGCHAT, PreprocessConfig

MODEL_TYPE = "ecg_llava"
ARCHITECTURE = "EcgLlavaForConditionalGeneration"
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")
PROMPT_FORMATS = ("vicuna_v1", "chat_template")
DEFAULT_ECG_TOKEN = "<ecg>"
# ECG-Chat's constants.py: the id its tokenizer_ecg_token puts where "<ecg>" was; we accept it too.
ECGCHAT_ECG_TOKEN_INDEX = -200
IGNORE_INDEX = -100


class EcgLlavaConfigError(EcgLlavaError):
    """A config that cannot describe a working model (names the field and the value)."""

    kind = "bad_model_config"


def ecg_tower_cfg(ecg_config: dict[str, Any]) -> tuple[EcgCfg, int]:
    """(EcgCfg, embed_dim) from the ``ecg_config`` dict (raises EcgLlavaConfigError)."""
    if not isinstance(ecg_config, dict):
        raise EcgLlavaConfigError(f"ecg_config must be a dict, got {type(ecg_config).__name__}")
    d = dict(ecg_config)
    embed_dim = d.pop("embed_dim", None)
    if not isinstance(embed_dim, int) or embed_dim <= 0:
        raise EcgLlavaConfigError(f"ecg_config.embed_dim must be a positive int, got {embed_dim!r}")
    known = set(EcgCfg.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise EcgLlavaConfigError(f"unknown ecg_config keys: {unknown}")
    try:
        return EcgCfg(**d), embed_dim
    except (TypeError, ValueError) as exc:
        raise EcgLlavaConfigError(f"bad ecg_config: {exc}") from None


def num_ecg_tokens(config: "EcgLlavaConfig | dict[str, Any]") -> int:
    """THE helper for the number of LLM positions one ECG occupies (tower CLS + patches).
    Prompt expansion (vLLM), splicing and the config all use it, so they cannot disagree."""
    ecg = config.get("ecg_config") if isinstance(config, dict) else config.ecg_config
    return ecg_tower_cfg(ecg)[0].n_tokens


class EcgLlavaConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    sub_configs = {"text_config": AutoConfig}

    def __init__(self, text_config: dict[str, Any] | PretrainedConfig | None = None,
                 ecg_config: dict[str, Any] | None = None,
                 preprocess: dict[str, Any] | None = None,
                 mm_hidden_size: int | None = None,
                 projector_type: str = "mlp2x_gelu",
                 ecg_token: str = DEFAULT_ECG_TOKEN,
                 ecg_token_id: int | None = None,
                 num_ecg_tokens: int | None = None,
                 prompt_format: str = "vicuna_v1",
                 max_context_length: int | None = None,
                 prompt: dict[str, Any] | None = None,
                 generation: dict[str, Any] | None = None,
                 **kwargs):
        self.text_config = _text_config(text_config)
        if ecg_config is None:   # ECG-Chat's tower (12 x 768, 101 tokens) with a 512-d CLS projection
            from dataclasses import asdict

            ecg_config = {**asdict(EcgCfg()), "embed_dim": 512}
        tower, _ = ecg_tower_cfg(ecg_config)
        self.ecg_config = dict(ecg_config)
        pre = PreprocessConfig.from_dict(preprocess) if preprocess is not None else ECGCHAT
        self.preprocess = pre.to_dict()
        self.mm_hidden_size = int(mm_hidden_size if mm_hidden_size is not None else tower.width)
        self.projector_type = projector_type
        self.ecg_token = ecg_token
        self.ecg_token_id = ecg_token_id
        self.num_ecg_tokens = tower.n_tokens
        self.prompt_format = prompt_format
        self.max_context_length = max_context_length
        self.prompt = dict(prompt or {})
        self.generation = dict(generation or {})   # decoding defaults, e.g. {"repetition_penalty": 1.1}
        kwargs.setdefault("architectures", [ARCHITECTURE])
        kwargs.setdefault("tie_word_embeddings", bool(getattr(self.text_config, "tie_word_embeddings", False)))
        super().__init__(**kwargs)
        self._validate(tower, pre, num_ecg_tokens)

    def _validate(self, tower: EcgCfg, pre: PreprocessConfig, declared_tokens: int | None) -> None:
        if self.projector_type not in PROJECTOR_TYPES:
            raise EcgLlavaConfigError(f"projector_type must be one of {PROJECTOR_TYPES}, got "
                                      f"{self.projector_type!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise EcgLlavaConfigError(f"prompt_format must be one of {PROMPT_FORMATS}, got "
                                      f"{self.prompt_format!r}")
        if self.mm_hidden_size != tower.width:
            raise EcgLlavaConfigError(f"mm_hidden_size ({self.mm_hidden_size}) must equal the ECG tower "
                                      f"width ecg_config.width ({tower.width}); ECG-Chat configs hard-code "
                                      "768, set it to the tower's width")
        if declared_tokens is not None and int(declared_tokens) != tower.n_tokens:
            raise EcgLlavaConfigError(f"num_ecg_tokens ({declared_tokens}) disagrees with the ECG tower "
                                      f"({tower.n_tokens} = seq_length/patch_size + 1)")
        if len(pre.leads) != tower.lead_num:
            raise EcgLlavaConfigError(f"preprocess.leads has {len(pre.leads)} leads, the ECG tower expects "
                                      f"lead_num={tower.lead_num}")
        if pre.n_samples is not None and pre.n_samples != tower.seq_length:
            raise EcgLlavaConfigError(f"preprocess.n_samples ({pre.n_samples}) must equal "
                                      f"ecg_config.seq_length ({tower.seq_length})")
        if not isinstance(self.prompt.get("grounded", False), bool):
            raise EcgLlavaConfigError(f"prompt.grounded must be true or false, got {self.prompt.get('grounded')!r}")
        if "wording" in self.prompt:
            from ecgbatch.llava.grounding import check_wording

            try:
                check_wording(self.prompt["wording"])
            except ValueError as exc:
                raise EcgLlavaConfigError(f"prompt.wording: {exc}") from None
        rp = self.generation.get("repetition_penalty", 1.0)
        if isinstance(rp, bool) or not isinstance(rp, (int, float)) or not 0.0 < rp <= 10.0:
            raise EcgLlavaConfigError(f"generation.repetition_penalty must be a number in (0, 10], got {rp!r}")
        if not isinstance(self.ecg_token, str) or not self.ecg_token:
            raise EcgLlavaConfigError(f"ecg_token must be a non-empty string, got {self.ecg_token!r}")

    # -- convenience views (not serialised) ----------------------------------------------------
    @property
    def tower_cfg(self) -> EcgCfg:
        return ecg_tower_cfg(self.ecg_config)[0]

    @property
    def tower_embed_dim(self) -> int:
        return ecg_tower_cfg(self.ecg_config)[1]

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess)

    @property
    def grounded_prompt(self) -> bool:
        """Whether the model was trained (so is served) with the grounded prompt."""
        return bool(self.prompt.get("grounded", False))

    @property
    def grounding_wording(self) -> int:
        """The grounded prompt's words it was trained (so is served) with: prompt.wording, else 1
        (ecgbatch.llava.grounding.WORDINGS; every model from before the versions)."""
        from ecgbatch.llava.grounding import LEGACY_WORDING

        return int(self.prompt.get("wording", LEGACY_WORDING))

    @property
    def default_repetition_penalty(self) -> float:
        """The decoding default the model ships with (vLLM's repetition_penalty; 1.0 = none). Not
        named ``repetition_penalty``: transformers refuses to save a config holding generation
        parameters."""
        return float(self.generation.get("repetition_penalty", 1.0))

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def context_length(self) -> int | None:
        """Longest sequence (after splicing) the model accepts: the smaller of max_context_length
        (ECG-Chat's tokenizer_model_max_length) and the LM's max_position_embeddings."""
        limits = [v for v in (self.max_context_length, getattr(self.text_config, "max_position_embeddings", None))
                  if v]
        return min(limits) if limits else None


def _text_config(text_config) -> PretrainedConfig:
    if text_config is None:
        from transformers import LlamaConfig

        return LlamaConfig()
    if isinstance(text_config, PretrainedConfig):
        return text_config
    if not isinstance(text_config, dict):
        raise EcgLlavaConfigError(f"text_config must be a dict or a PretrainedConfig, got "
                                  f"{type(text_config).__name__}")
    d = dict(text_config)
    model_type = d.pop("model_type", None)
    if not model_type:
        raise EcgLlavaConfigError("text_config lacks model_type (e.g. 'llama')")
    try:
        return AutoConfig.for_model(model_type, **d)
    except ValueError as exc:
        raise EcgLlavaConfigError(f"text_config: unknown model_type {model_type!r} ({exc})") from None


def register_auto_config() -> None:
    """Register model_type "ecg_llava" with AutoConfig (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, EcgLlavaConfig)
    except ValueError:   # already registered (re-import, or another process state)
        pass


register_auto_config()
