"""Read and write ECG-LLaVA model folders, and apply LoRA adapters.

    folder/config.json          EcgLlavaConfig: model_type "ecg_llava", architectures
                                ["EcgLlavaForConditionalGeneration"] (the name vLLM registers),
                                text_config (the LM's HF config), ecg_config (EcgCfg + embed_dim),
                                preprocess, mm_hidden_size, projector_type, ecg_token(_id),
                                num_ecg_tokens, prompt_format, max_context_length
    folder/model.safetensors    ecg_tower.<EcgTransformer names> + projector.0.* (+ projector.2.*)
                                + language_model.<HF causal-LM names> (or sharded + index)
    folder/tokenizer files      the LM's tokenizer with <ecg> added as a special token, its id
                                past the embedding matrix (never embedded: the ECG goes there)
    adapter/                    a LoRA adapter: a peft folder whose keys are those peft writes for
                                the bare LM (base_model.model.model.layers.0...lora_A.weight)

Every load is strict and explained: before transformers reads a byte of weights, the tensor
names and shapes in the safetensors headers are compared with the model the config describes
(CheckpointMismatchError lists missing, unexpected and mis-shaped tensors); an adapter is
compared with the language model's Linear layers (AdapterMismatchError: "made for another
base"); the tokenizer must map ecg_token to ecg_token_id.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ecgbatch.encoders.checkpoint import CheckpointMismatchError, CheckpointReadError
from ecgbatch.llava.configuration_ecg_llava import (ARCHITECTURE, MODEL_TYPE, EcgLlavaConfig,
                                                    EcgLlavaConfigError)
from ecgbatch.llava.errors import AdapterMismatchError, ModelFolderError
from ecgbatch.llava.modeling_ecg_llava import EcgLlavaForCausalLM

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_[AB]|lora_embedding_[AB]|"
                       r"lora_magnitude_vector)(?:\.[^.]+)?\.weight$")


# -- config and folder checks --------------------------------------------------------------------
def read_config(path: str | Path) -> EcgLlavaConfig:
    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ModelFolderError(f"{str(p)!r} is not an ECG-LLaVA model folder: no config.json")
    try:
        d = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot read {str(cfg_file)!r}: {exc}") from None
    if d.get("model_type") != MODEL_TYPE:
        raise ModelFolderError(f"{str(cfg_file)!r} has model_type {d.get('model_type')!r}, not {MODEL_TYPE!r}"
                               + (" (an ECG-Chat checkpoint: convert it with `ecgbatch models "
                                  "convert-ecgchat-llava`)" if str(d.get("model_type", "")).startswith("llava")
                                  else ""))
    try:
        return EcgLlavaConfig.from_dict(d)
    except EcgLlavaConfigError as exc:
        raise ModelFolderError(f"{str(cfg_file)!r}: {exc}") from None


def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the safetensors headers (single file or sharded), no data read."""
    from safetensors import SafetensorError, safe_open

    files: list[Path]
    if (path / WEIGHTS).is_file():
        files = [path / WEIGHTS]
    elif (path / WEIGHTS_INDEX).is_file():
        try:
            index = json.loads((path / WEIGHTS_INDEX).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointReadError(f"cannot read {str(path / WEIGHTS_INDEX)!r}: {exc}") from None
        files = sorted({path / f for f in index.get("weight_map", {}).values()})
    else:
        raise ModelFolderError(f"{str(path)!r} has no {WEIGHTS} (nor {WEIGHTS_INDEX})")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    shapes[k] = tuple(fh.get_slice(k).get_shape())
        except (SafetensorError, OSError) as exc:
            raise CheckpointReadError(f"cannot read {str(f)!r}: {exc}") from None
    return shapes


def expected_shapes(config: EcgLlavaConfig) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """(name -> shape of every tensor the model holds, names that may be absent because tied)."""
    with torch.device("meta"):
        model = EcgLlavaForCausalLM(config)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, tied


def check_weights(path: str | Path, config: EcgLlavaConfig | None = None) -> None:
    """Raise CheckpointMismatchError unless the folder's tensors are exactly the model's."""
    p = Path(path)
    config = config or read_config(p)
    want, tied = expected_shapes(config)
    have = stored_shapes(p)
    missing = sorted(k for k in want if k not in have and k not in tied)
    unexpected = sorted(k for k in have if k not in want)
    mismatched = [(k, have[k], want[k]) for k in want if k in have and have[k] != want[k]]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(f"{p} (model folder for {config.text_config.model_type} hidden "
                                      f"{config.hidden_size}, tower width {config.mm_hidden_size}, "
                                      f"projector {config.projector_type})", missing, unexpected, mismatched)


# -- LoRA adapters -------------------------------------------------------------------------------
def read_adapter(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config dict, tensors) of a peft adapter folder (safetensors, or a .bin read with
    weights_only=True)."""
    p = Path(path)
    if not (p / ADAPTER_CONFIG).is_file():
        raise AdapterMismatchError(f"{str(p)!r} is not a LoRA adapter folder: no {ADAPTER_CONFIG}")
    try:
        cfg = json.loads((p / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterMismatchError(f"cannot read {str(p / ADAPTER_CONFIG)!r}: {exc}") from None
    for name in ADAPTER_WEIGHTS:
        f = p / name
        if not f.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return cfg, load_file(str(f))
            return cfg, torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # safetensors/torch raise several types for a bad file
            raise CheckpointReadError(f"cannot read adapter weights {str(f)!r} ({type(exc).__name__}: {exc})") from None
    raise AdapterMismatchError(f"{str(p)!r} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")


def check_adapter(lm: torch.nn.Module, adapter_cfg: dict, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Every LoRA tensor must target a Linear of ``lm`` with matching in/out features (A is
    [r, in], B is [out, r]); raises AdapterMismatchError naming each problem."""
    if str(adapter_cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterMismatchError(f"{where}: peft_type {adapter_cfg.get('peft_type')!r} is not LORA")
    modules = dict(lm.named_modules())
    problems: list[str] = []
    for key, t in tensors.items():
        m = _LORA_KEY.match(key)
        if m is None:
            problems.append(f"{key}: not a LoRA tensor name")
            continue
        name, part = m.group("module"), m.group("part")
        mod = modules.get(name)
        if mod is None:
            problems.append(f"{key}: the language model has no module {name!r}")
            continue
        inf, outf = getattr(mod, "in_features", None), getattr(mod, "out_features", None)
        if part == "lora_A" and inf is not None and t.shape[1] != inf:
            problems.append(f"{key}: A is {tuple(t.shape)}, {name} takes {inf} inputs")
        if part == "lora_B" and outf is not None and t.shape[0] != outf:
            problems.append(f"{key}: B is {tuple(t.shape)}, {name} gives {outf} outputs")
    targets = adapter_cfg.get("target_modules") or []
    if isinstance(targets, str):   # peft: a regex over full module names ("all-linear" is special)
        if targets != "all-linear" and not any(re.fullmatch(targets, n) for n in modules):
            problems.append(f"target_modules {targets!r} matches no module of the language model")
    else:
        names = {n.rsplit(".", 1)[-1] for n in modules}
        absent = sorted(t for t in targets if t not in names)
        if absent:
            problems.append(f"target_modules {absent} do not exist in the language model")
    if not tensors:
        problems.append("the adapter holds no tensors")
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise AdapterMismatchError(f"LoRA adapter {where} does not fit this model's language model "
                                   f"(made for another base?):\n  " + "\n  ".join(shown))


def apply_lora(model: EcgLlavaForCausalLM, lora: str | Path, merge: bool = False) -> EcgLlavaForCausalLM:
    """Wrap ``model.language_model`` with the peft adapter in ``lora`` (checked first); with
    ``merge`` fold it into the weights (W + scale * B @ A) and drop the wrapper."""
    from peft import PeftModel

    adapter_cfg, tensors = read_adapter(lora)
    check_adapter(model.language_model, adapter_cfg, tensors, repr(str(lora)))
    peft_model = PeftModel.from_pretrained(model.language_model, str(lora), is_trainable=False)
    model.language_model = peft_model.merge_and_unload() if merge else peft_model
    model.lora = {"path": str(lora), "merged": bool(merge)}
    return model


# -- load / save -------------------------------------------------------------------------------
def load_tokenizer(path: str | Path, config: EcgLlavaConfig):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"cannot load the tokenizer of {str(path)!r}: {exc}") from None
    got = tok.convert_tokens_to_ids(config.ecg_token)
    if config.ecg_token_id is None or got != config.ecg_token_id:
        raise ModelFolderError(f"{str(path)!r}: the tokenizer maps {config.ecg_token!r} to {got!r} but the "
                               f"config says ecg_token_id={config.ecg_token_id!r}")
    return tok


def load_ecg_llava(path: str | Path, lora: str | Path | None = None, merge_lora: bool = False,
                   dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
                   attn_implementation: str | None = None):
    """(model, tokenizer) from an ECG-LLaVA folder, in eval mode. ``lora``: a peft adapter folder
    applied to the language model (kept separate, or merged with ``merge_lora``)."""
    p = Path(path)
    config = read_config(p)
    check_weights(p, config)
    tokenizer = load_tokenizer(p, config)
    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model, info = EcgLlavaForCausalLM.from_pretrained(str(p), config=config, output_loading_info=True, **kwargs)
    bad = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:   # check_weights should have caught it; never continue on a partial load
        raise CheckpointMismatchError(str(p), bad.get("missing_keys", []), bad.get("unexpected_keys", []),
                                      bad.get("mismatched_keys", []))
    if lora is not None:
        model = apply_lora(model, lora, merge=merge_lora)
    model.eval()
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def save_ecg_llava(model: EcgLlavaForCausalLM, tokenizer, out: str | Path) -> Path:
    """Write the folder (config.json, model.safetensors, tokenizer files). The language model
    must be plain (no peft wrapper): save adapters with ``model.language_model.save_pretrained``."""
    o = Path(out)
    if hasattr(model.language_model, "peft_config"):
        raise ModelFolderError("save_ecg_llava needs a plain language model; merge the LoRA adapter "
                               "(merge_lora=True) or save it separately")
    o.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(o), safe_serialization=True)
    tokenizer.save_pretrained(str(o))
    # transformers writes the class name; the folder names the architecture vLLM registers
    cfg_file = o / "config.json"
    d = json.loads(cfg_file.read_text())
    d["architectures"] = [ARCHITECTURE]
    tmp = cfg_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    tmp.replace(cfg_file)
    return o
