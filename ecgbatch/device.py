"""Where ecgbatch's models run, and every setting that follows from it: ONE place for the
platform decisions of the vLLM engines (dtype, eager mode, GPU memory share, tensor parallelism,
batch limit, LoRA, attention head sizes) and of the embed path (batch size, pinned memory,
autocast).

Each decision is a pure function of a :class:`Device` (CPU, or one kind of GPU with its memory),
the GPUs given to one engine and the model's shape (:class:`ModelShape`), so each branch is
tested on a CPU machine. Only :func:`detect` looks at the machine (torch, imported when called).
No vLLM, Ray or CUDA import here.

The rules (vLLM 0.32; sources named where a number comes from):
  * dtype ``auto``: bfloat16 on CUDA (float16 on GPUs without bfloat16, compute capability < 8),
    float32 on CPU (exact, and what every CPU measurement in bench/RESULTS.md used).
  * eager mode on CPU only (start-up ~18 s instead of ~35 s there); CUDA graphs + torch.compile
    on GPU, where they dominate decode speed.
  * ``gpu_memory_utilization`` = 0.90 shared by the engines that Ray packs on one GPU
    (``--gpus-per-engine 0.5``: two engines of 0.45); vLLM refuses to start an engine whose share
    is more than the free memory.
  * tensor parallelism only over whole GPUs (1, 2, 3, ...) and a head count it divides.
  * ``max_num_seqs`` on GPU from the KV cache that fits the engine's share, 8..256; on CPU the
    caller's value (the Ray batch, as measured).
  * LoRA on GPU: vLLM's Triton LoRA kernels (vllm/lora/ops/triton_ops) take float16/bfloat16
    only and vLLM sets the LoRA dtype to the model's: a float32 model with an adapter is refused
    here with the fix, not at the first LoRA step; on GPU the LoRA dtype is passed explicitly
    (the model's half dtype), on CPU left to vLLM (the model's).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ecgbatch.errors import EcgbatchError

CPU, CUDA = "cpu", "cuda"
DTYPES = ("auto", "float32", "bfloat16", "float16")
HALF_DTYPES = ("bfloat16", "float16")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# vllm/v1/attention/backends/cpu_attn.py (vLLM 0.32): the head sizes its CPU kernels are built for.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# FlashAttention (vLLM's default CUDA backend): any multiple of 8 up to 256.
CUDA_HEAD_SIZES = tuple(range(8, 257, 8))

GPU_MEMORY_UTILIZATION = 0.90     # vLLM's default for one engine on a GPU
GPU_MAX_NUM_SEQS = 256            # vLLM's own default ceiling on GPU
GPU_MIN_NUM_SEQS = 8
ACTIVATION_RESERVE_GIB = 2.0      # activations, CUDA graphs, sampler: kept out of the KV estimate
GPU_REPORT_BATCH = 256            # requests per engine call on GPU (Ray batch): fills max_num_seqs
CPU_EMBED_BATCH, GPU_EMBED_BATCH = 64, 512


class DeviceSettingsError(EcgbatchError, ValueError):
    """Settings that cannot work on this device (dtype, GPU share, LoRA, memory)."""

    kind = "device_settings"


@dataclass(frozen=True)
class Device:
    kind: str = CPU               # "cpu" or "cuda"
    memory_gib: float = 0.0       # total memory of ONE GPU (0 on CPU)
    bf16: bool = False            # the GPU computes bfloat16 (compute capability >= 8.0)
    count: int = 0                # visible GPUs
    name: str = "cpu"

    @property
    def cuda(self) -> bool:
        return self.kind == CUDA


def detect() -> Device:
    """This process's device: the first visible CUDA GPU, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return Device()
    p = torch.cuda.get_device_properties(0)
    return Device(CUDA, p.total_memory / 2**30, bool(torch.cuda.is_bf16_supported()),
                  torch.cuda.device_count(), p.name)


@dataclass(frozen=True)
class ModelShape:
    """What the engine settings need to know of a language model."""

    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    context: int                  # the engine's max_model_len
    weight_bytes: int = 0         # on disk (an upper bound of the weights in a half dtype)

    @classmethod
    def of(cls, config, context: int, folder: str | os.PathLike | None = None) -> "ModelShape":
        """From an ECG-LLaVA config (its ``text_config``) and, when given, the folder's weights."""
        t = config.text_config
        heads = int(t.num_attention_heads)
        hd = getattr(t, "head_dim", None) or int(t.hidden_size) // heads
        size = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) if folder else 0
        return cls(int(t.num_hidden_layers), heads, int(getattr(t, "num_key_value_heads", None) or heads),
                   int(hd), int(context), int(size))

    def kv_bytes_per_sequence(self, dtype: str) -> int:
        """K and V of every layer for one sequence of the full context."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * DTYPE_BYTES[dtype] * self.context


# -- the vLLM engine ---------------------------------------------------------------------------------
def resolve_dtype(dtype: str, device: Device) -> str:
    """The model dtype vLLM gets: ``auto`` -> bfloat16 / float16 on CUDA, float32 on CPU."""
    if dtype not in DTYPES:
        raise DeviceSettingsError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return ("bfloat16" if device.bf16 else "float16") if device.cuda else "float32"
    if dtype == "bfloat16" and device.cuda and not device.bf16:
        raise DeviceSettingsError(f"{device.name} has no bfloat16 (compute capability < 8.0): "
                                  "use --dtype float16 or auto")
    return dtype


def enforce_eager(device: Device) -> bool:
    """Eager mode (no CUDA graphs, no torch.compile) on CPU only."""
    return not device.cuda


def engines_per_gpu(gpus_per_engine: float) -> int:
    """How many engines Ray packs on one GPU for this share (1 for whole GPUs)."""
    if gpus_per_engine <= 0 or gpus_per_engine >= 1:
        return 1
    return int(math.floor(1 / gpus_per_engine + 1e-9))


def tensor_parallel_size(gpus_per_engine: float, model: ModelShape | None = None) -> int:
    """GPUs one engine spans: 1 for a share of one GPU (<= 1), the whole number above that."""
    if gpus_per_engine < 0:
        raise DeviceSettingsError(f"--gpus-per-engine must be >= 0, got {gpus_per_engine!r}")
    if gpus_per_engine <= 1:
        return 1
    if gpus_per_engine != int(gpus_per_engine):
        raise DeviceSettingsError(
            f"--gpus-per-engine {gpus_per_engine:g}: above 1 an engine splits the model over whole GPUs "
            f"(tensor parallelism); give {math.floor(gpus_per_engine)} or {math.ceil(gpus_per_engine)}, "
            "or a fraction of one GPU (0.5, 0.25) to share it between engines")
    tp = int(gpus_per_engine)
    if model is not None and (model.num_attention_heads % tp or model.num_kv_heads % tp):
        raise DeviceSettingsError(
            f"--gpus-per-engine {tp}: tensor parallelism needs the attention heads "
            f"({model.num_attention_heads}, {model.num_kv_heads} key/value) to divide by {tp}; "
            "use fewer GPUs per engine and more engines")
    return tp


def gpu_memory_utilization(gpus_per_engine: float) -> float:
    """Each engine's share of its GPU's memory: 0.90 split between the engines on one GPU."""
    return round(GPU_MEMORY_UTILIZATION / engines_per_gpu(gpus_per_engine), 4)


def sized_max_num_seqs(device: Device, model: ModelShape, dtype: str, gpus_per_engine: float = 1.0,
                 requested: int | None = None) -> int | None:
    """vLLM's limit of sequences in flight. ``requested`` wins. On CPU None (the caller's own
    choice stands: the Ray batch, or vLLM's default). On GPU: the full-context sequences whose
    KV cache fits the engine's memory share after the weights, 8..256 in steps of 8; refused
    when not even 8 fit."""
    if requested:
        return int(requested)
    if not device.cuda:
        return None
    share = gpu_memory_utilization(gpus_per_engine) * device.memory_gib * tensor_parallel_size(gpus_per_engine)
    weights = model.weight_bytes * DTYPE_BYTES[dtype] / 4 / 2**30   # stored float32 at most
    free = (share - weights - ACTIVATION_RESERVE_GIB) * 2**30
    n = int(free // model.kv_bytes_per_sequence(dtype)) // 8 * 8
    if n < GPU_MIN_NUM_SEQS:
        raise DeviceSettingsError(
            f"{share:.1f} GiB of {device.name} for this engine hold the weights (~{weights:.1f} GiB) but not "
            f"the KV cache of {GPU_MIN_NUM_SEQS} sequences of {model.context} positions: give the engine "
            "more of the GPU (--gpus-per-engine), or a shorter context (max_model_len)")
    return min(n, GPU_MAX_NUM_SEQS)


def check_lora(device: Device, dtype: str) -> None:
    """vLLM's GPU LoRA kernels take half precision only (dtype: the resolved model dtype)."""
    if device.cuda and dtype not in HALF_DTYPES:
        raise DeviceSettingsError(
            f"LoRA on {device.name} needs a bfloat16 or float16 model (vLLM's Triton LoRA kernels); got "
            f"--dtype {dtype}: use --dtype auto (or bfloat16/float16), or merge the adapter into the model")


@dataclass(frozen=True)
class EngineSettings:
    dtype: str
    enforce_eager: bool
    tensor_parallel_size: int
    gpu_memory_utilization: float | None   # None on CPU (vLLM's CPU KV space: VLLM_CPU_KVCACHE_SPACE)
    max_num_seqs: int | None
    lora_dtype: str | None = None          # set on GPU with LoRA: the model's half dtype, explicitly

    def vllm_kwargs(self) -> dict:
        kw = {"dtype": self.dtype, "enforce_eager": self.enforce_eager}
        if self.tensor_parallel_size > 1:
            kw["tensor_parallel_size"] = self.tensor_parallel_size
        if self.gpu_memory_utilization is not None:
            kw["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.max_num_seqs:
            kw["max_num_seqs"] = self.max_num_seqs
        if self.lora_dtype:
            kw["lora_dtype"] = self.lora_dtype
        return kw


def engine_settings(device: Device, model: ModelShape, *, dtype: str = "auto", gpus_per_engine: float | None = None,
                    max_num_seqs: int | None = None, lora: bool = False,
                    eager: bool | None = None) -> EngineSettings:
    """Every platform setting of one vLLM engine. ``gpus_per_engine`` None: 1 on CUDA, 0 on CPU;
    ``eager`` None: the platform's (:func:`enforce_eager`)."""
    resolved = resolve_dtype(dtype, device)
    if lora:
        check_lora(device, resolved)
    if not device.cuda:
        return EngineSettings(resolved, enforce_eager(device) if eager is None else eager, 1, None, max_num_seqs)
    gpus = 1.0 if gpus_per_engine is None or gpus_per_engine <= 0 else float(gpus_per_engine)
    seqs = sized_max_num_seqs(device, model, resolved, gpus, max_num_seqs)
    return EngineSettings(resolved, enforce_eager(device) if eager is None else eager,
                          tensor_parallel_size(gpus, model), gpu_memory_utilization(gpus), seqs,
                          resolved if lora else None)


def table_dtype(dtype: str, on_gpu: bool) -> str:
    """The dtype a report table is keyed by, decided on the driver (the engines resolve ``auto``
    on their own device): float32 on CPU, bfloat16 for ``auto`` on GPU."""
    return resolve_dtype(dtype, Device(CUDA, bf16=True) if on_gpu else Device())


def report_batch_size(on_gpu: bool, requested: int | None, cpu_default: int) -> int:
    """Requests per engine call (the Ray batch): the caller's, else ``cpu_default`` on CPU and
    GPU_REPORT_BATCH on GPU (enough to keep max_num_seqs sequences in flight while the longest
    reports of a call finish)."""
    if requested:
        return int(requested)
    return GPU_REPORT_BATCH if on_gpu else cpu_default


def attention_head_sizes(device: Device) -> tuple[int, ...]:
    """The LM head sizes vLLM's attention runs on this platform (others are padded to one)."""
    return CUDA_HEAD_SIZES if device.cuda else CPU_HEAD_SIZES


# -- the embed path (ECG-CoCa on torch) ----------------------------------------------------------------
def embed_batch_size(on_gpu: bool, requested: int | None = None) -> int:
    """ECGs per encoder forward: 64 on CPU (bench/embed.py), 512 on a GPU (bench/gpu_check.sh
    sweeps it)."""
    return int(requested) if requested else (GPU_EMBED_BATCH if on_gpu else CPU_EMBED_BATCH)


def pin_memory(device: Device) -> bool:
    """Page-locked host buffers for host-to-device copies (asynchronous, ~2x faster) on CUDA only."""
    return device.cuda


def autocast_dtype(device: Device, requested: str = "auto") -> str | None:
    """The autocast dtype of the encoder's forward: bf16 (fp16 without it) on CUDA for ``auto``,
    none (float32) on CPU; ``float32`` turns it off."""
    if requested == "float32":
        return None
    d = resolve_dtype(requested, device)
    return None if d == "float32" else d
