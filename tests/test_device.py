"""ecgbatch.device: each platform decision of the engines and the embed path, one branch a test,
on described devices (the decisions are pure functions; only detect() looks at the machine)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ecgbatch import device as dv
from ecgbatch.device import CPU, CUDA, Device, DeviceSettingsError, ModelShape

H100 = Device(CUDA, 79.6, bf16=True, count=1, name="NVIDIA H100 80GB HBM3")
T4 = Device(CUDA, 15.0, bf16=False, count=1, name="Tesla T4")
CPU_DEV = Device()
# SmolLM2-135M (ecg-llava-mini's LM): 30 layers, 9 heads of 64, 3 key/value heads; 2048 context
SMOL = ModelShape(num_layers=30, num_attention_heads=9, num_kv_heads=3, head_dim=64, context=2048,
                  weight_bytes=600 * 2**20)
# Vicuna-7B (ECG-Chat's LM): 32 layers, 32 heads of 128, 4096 context, float16 on disk ~13.5 GB
VICUNA = ModelShape(num_layers=32, num_attention_heads=32, num_kv_heads=32, head_dim=128, context=4096,
                    weight_bytes=27 * 2**30)


# -- dtype ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, want", [(CPU_DEV, "float32"), (H100, "bfloat16"), (T4, "float16")])
def test_auto_dtype_per_platform(device, want):
    assert dv.resolve_dtype("auto", device) == want


def test_explicit_dtype_kept_and_bad_ones_refused():
    assert dv.resolve_dtype("bfloat16", CPU_DEV) == "bfloat16"
    assert dv.resolve_dtype("float32", H100) == "float32"
    with pytest.raises(DeviceSettingsError, match="no bfloat16"):
        dv.resolve_dtype("bfloat16", T4)
    with pytest.raises(DeviceSettingsError, match="dtype must be one of"):
        dv.resolve_dtype("fp8", CPU_DEV)


# -- eager, memory share, tensor parallelism -------------------------------------------------------------
def test_eager_on_cpu_only():
    assert dv.enforce_eager(CPU_DEV) is True
    assert dv.enforce_eager(H100) is False


@pytest.mark.parametrize("gpus, engines, util", [(1.0, 1, 0.9), (0.5, 2, 0.45), (0.25, 4, 0.225),
                                                 (0.3, 3, 0.3), (2.0, 1, 0.9)])
def test_memory_share_split_between_engines_on_one_gpu(gpus, engines, util):
    assert dv.engines_per_gpu(gpus) == engines
    assert dv.gpu_memory_utilization(gpus) == pytest.approx(util)
    # the engines that share a GPU ask for no more than vLLM's one-engine default together
    assert engines * dv.gpu_memory_utilization(gpus) <= dv.GPU_MEMORY_UTILIZATION + 1e-9


def test_tensor_parallel_whole_gpus_only():
    assert dv.tensor_parallel_size(0.5) == 1
    assert dv.tensor_parallel_size(1) == 1
    assert dv.tensor_parallel_size(2.0, VICUNA) == 2
    with pytest.raises(DeviceSettingsError, match="whole GPUs.*give 1 or 2"):
        dv.tensor_parallel_size(1.5)
    with pytest.raises(DeviceSettingsError, match="heads.*divide by 2"):
        dv.tensor_parallel_size(2, SMOL)          # 9 heads, 3 key/value heads


# -- max_num_seqs ------------------------------------------------------------------------------------------
def test_max_num_seqs_cpu_keeps_the_callers_value():
    assert dv.sized_max_num_seqs(CPU_DEV, SMOL, "float32") is None
    assert dv.sized_max_num_seqs(CPU_DEV, SMOL, "float32", requested=32) == 32
    assert dv.sized_max_num_seqs(H100, SMOL, "bfloat16", requested=12) == 12


def test_max_num_seqs_gpu_sized_for_memory_not_the_ray_batch():
    # a small LM on an H100: far more than the Ray batch of 32 fit; capped at vLLM's 256
    assert dv.sized_max_num_seqs(H100, SMOL, "bfloat16") == 256
    # Vicuna-7B: 2 MiB of KV per position -> full 4096-token sequences: (0.9*79.6 - 13.5 - 2) GiB / 2 GiB
    n = dv.sized_max_num_seqs(H100, VICUNA, "bfloat16")
    assert n == int((0.9 * 79.6 - 13.5 - 2) // 2) // 8 * 8 == 24
    # half the GPU for each of two engines: fewer sequences each
    assert dv.sized_max_num_seqs(H100, VICUNA, "bfloat16", 0.5) < n
    # two GPUs of tensor parallelism: more
    assert dv.sized_max_num_seqs(H100, VICUNA, "bfloat16", 2.0) > n


def test_max_num_seqs_refuses_a_share_without_room():
    with pytest.raises(DeviceSettingsError, match="KV cache of 8 sequences"):
        dv.sized_max_num_seqs(T4, VICUNA, "float16", 0.5)


# -- LoRA -------------------------------------------------------------------------------------------------
def test_lora_needs_half_precision_on_gpu_only():
    dv.check_lora(CPU_DEV, "float32")                     # CPU LoRA runs in float32
    dv.check_lora(H100, "bfloat16")
    dv.check_lora(T4, "float16")
    with pytest.raises(DeviceSettingsError, match="Triton LoRA kernels.*--dtype auto"):
        dv.check_lora(H100, "float32")


# -- all of it together: what vLLM gets -----------------------------------------------------------------------
def test_engine_settings_cpu_are_the_measured_cpu_arguments():
    s = dv.engine_settings(CPU_DEV, SMOL, max_num_seqs=32, lora=True)
    assert s.vllm_kwargs() == {"dtype": "float32", "enforce_eager": True, "max_num_seqs": 32}
    assert dv.engine_settings(CPU_DEV, SMOL).vllm_kwargs() == {"dtype": "float32", "enforce_eager": True}


def test_engine_settings_gpu():
    s = dv.engine_settings(H100, SMOL, gpus_per_engine=0.5, lora=True)
    assert s.vllm_kwargs() == {"dtype": "bfloat16", "enforce_eager": False, "gpu_memory_utilization": 0.45,
                               "max_num_seqs": 256, "lora_dtype": "bfloat16"}
    assert "lora_dtype" not in dv.engine_settings(H100, SMOL).vllm_kwargs()
    tp = dv.engine_settings(H100, VICUNA, gpus_per_engine=2).vllm_kwargs()
    assert tp["tensor_parallel_size"] == 2 and tp["gpu_memory_utilization"] == 0.9
    assert dv.engine_settings(H100, SMOL, gpus_per_engine=None).gpu_memory_utilization == 0.9
    with pytest.raises(DeviceSettingsError):
        dv.engine_settings(H100, SMOL, dtype="float32", lora=True)


def test_report_table_dtype_and_batch():
    assert dv.table_dtype("auto", on_gpu=False) == "float32"      # CPU tables keep their key
    assert dv.table_dtype("auto", on_gpu=True) == "bfloat16"
    assert dv.report_batch_size(False, None, 32) == 32
    assert dv.report_batch_size(True, None, 32) == dv.GPU_REPORT_BATCH
    assert dv.report_batch_size(True, 8, 32) == 8


def test_attention_head_sizes():
    assert 16 not in dv.attention_head_sizes(CPU_DEV)              # the tiny fixture is padded on CPU
    assert 16 in dv.attention_head_sizes(H100)                     # FlashAttention runs it as is
    assert 72 in dv.attention_head_sizes(H100) and 72 not in dv.attention_head_sizes(CPU_DEV)


# -- embed path ------------------------------------------------------------------------------------------------
def test_embed_settings():
    assert dv.embed_batch_size(False) == 64 and dv.embed_batch_size(True) == 512
    assert dv.embed_batch_size(True, 100) == 100
    assert not dv.pin_memory(CPU_DEV) and dv.pin_memory(H100)
    assert dv.autocast_dtype(CPU_DEV) is None
    assert dv.autocast_dtype(H100) == "bfloat16" and dv.autocast_dtype(T4) == "float16"
    assert dv.autocast_dtype(H100, "float32") is None


def test_detect_here_and_no_vllm_import():
    code = ("import sys, ecgbatch.device as d; dev = d.detect(); "
            "assert 'vllm' not in sys.modules and 'ray' not in sys.modules; print(dev.kind)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import torch

    assert out.stdout.strip() == (CUDA if torch.cuda.is_available() else CPU)


def test_model_shape_of_a_config(tmp_path):
    from transformers import LlamaConfig

    class Cfg:
        text_config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                  num_hidden_layers=3)

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    m = ModelShape.of(Cfg(), 512, tmp_path)
    assert (m.num_layers, m.num_attention_heads, m.num_kv_heads, m.head_dim, m.context, m.weight_bytes) == \
        (3, 4, 2, 16, 512, 1000)
    assert m.kv_bytes_per_sequence("bfloat16") == 2 * 3 * 2 * 16 * 2 * 512


# -- the engine arguments of a real model folder (no engine started) ---------------------------------------
def test_vllm_engine_args_on_this_cpu_are_unchanged(llava_converted):
    """What vLLM got before ecgbatch.device (float32, eager, the caller's max_num_seqs) is what it
    gets on this CPU with the new defaults; a described H100 gets the GPU settings."""
    from ecgbatch.serving import folder as folders
    from ecgbatch.serving.engine import vllm_engine_args

    cfg = folders.check_model_folder(llava_converted)
    kw = vllm_engine_args(llava_converted, cfg, max_num_seqs=32, lora_rank=8, device=CPU_DEV)
    from ecgbatch.quiet import is_quiet

    assert kw.pop("use_tqdm_on_load") is not is_quiet()      # the loading bar only when not quiet (ecgbatch.quiet)
    assert kw == {"model": str(llava_converted), "dtype": "float32", "max_model_len": cfg.context_length or 2048,
                  "enforce_eager": True, "limit_mm_per_prompt": {"ecg": 1}, "seed": 0, "max_num_seqs": 32,
                  "enable_lora": True, "max_lora_rank": 8, "max_loras": 1}
    import torch

    if not torch.cuda.is_available():
        again = vllm_engine_args(llava_converted, cfg, max_num_seqs=32, lora_rank=8)      # detect(): CPU
        again.pop("use_tqdm_on_load")
        assert again == kw
    g = vllm_engine_args(llava_converted, cfg, lora_rank=8, gpus_per_engine=0.5, device=H100)
    assert (g["dtype"], g["enforce_eager"], g["gpu_memory_utilization"]) == ("bfloat16", False, 0.45)
    assert g["max_num_seqs"] == 256 and g["lora_dtype"] == "bfloat16" and "tensor_parallel_size" not in g
    with pytest.raises(DeviceSettingsError, match="LoRA"):
        vllm_engine_args(llava_converted, cfg, dtype="float32", lora_rank=8, device=H100)
    # head padding only where the attention needs it: the fixture's heads of 16 run as is on CUDA
    assert folders.runnable_model_folder(llava_converted, cfg, device=H100) == llava_converted
    assert folders.target_head_dim(cfg, CPU_DEV) == 32


def test_report_job_refuses_float32_lora_on_gpus_before_ray(llava_converted, sample_archive, tmp_path):
    from ecgbatch.pipelines import report

    with pytest.raises(DeviceSettingsError, match="LoRA"):
        report.run(str(sample_archive), llava_converted, tmp_path / "ws", lora=llava_converted / "lora",
                   gpus_per_engine=1.0, dtype="float32", progress=False)
    with pytest.raises(DeviceSettingsError, match="whole GPUs"):
        report.engine_kwargs(gpus=1.5)
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").rglob("*.parquet"))
