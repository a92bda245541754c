"""ECG-CoCa (ECG-Chat size: 12x768 ECG tower) encoding throughput on one CUDA GPU.

bf16 autocast (default) or fp16, batch sizes 64..1024, under torch.inference_mode, random
weights (throughput does not depend on the values). Reports ECG/s (GPU compute only: the batch
is already on the device), ECG/s including the host->device copy of float32 [B, 12, 5000] input,
and peak GPU memory. Also checks that bf16 embeddings agree with float32 ones (cosine).

    .venv/bin/python bench/gpu_encode.py                       # bf16, 64 128 256 512 1024
    .venv/bin/python bench/gpu_encode.py --dtype fp16 --batch-sizes 256 1024 --iters 20
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ecg-coca")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128, 256, 512, 1024])
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from ecgbatch.models import create_model

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_encode.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    dev = torch.device("cuda")
    amp = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    model = create_model(a.model, pretrained="random", seed=0, device=dev)
    tower = model.ecg
    cfg = tower.cfg
    # agreement of autocast with float32 on one batch: the reference in true float32 (TF32 off:
    # TF32 matmuls round inputs to 10 mantissa bits, which would make the "fp32" side low precision)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    x0 = torch.randn(32, cfg.lead_num, cfg.seq_length, device=dev)
    with torch.inference_mode():
        ref = model.encode_ecg(x0).float()
        with torch.autocast("cuda", dtype=amp):
            low = model.encode_ecg(x0).float()
    cos = F.cosine_similarity(ref, low, dim=-1)
    torch.backends.cuda.matmul.allow_tf32 = True    # for any float32 op left outside autocast
    torch.backends.cudnn.allow_tf32 = True

    rows = []
    for bs in a.batch_sizes:
        host = torch.randn(bs, cfg.lead_num, cfg.seq_length).pin_memory()
        x = host.to(dev)
        torch.cuda.reset_peak_memory_stats()
        try:
            with torch.inference_mode(), torch.autocast("cuda", dtype=amp):
                model.encode_ecg(x)  # warm-up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(a.iters):
                    model.encode_ecg(x)
                torch.cuda.synchronize()
                compute = time.perf_counter() - t0
                t0 = time.perf_counter()
                for _ in range(a.iters):
                    model.encode_ecg(host.to(dev, non_blocking=True))
                torch.cuda.synchronize()
                with_copy = time.perf_counter() - t0
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": bs, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        rows.append({"batch": bs, "ecg_per_s": bs * a.iters / compute,
                     "ecg_per_s_with_h2d": bs * a.iters / with_copy,
                     "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30})
    info = {"device": torch.cuda.get_device_name(0), "dtype": a.dtype, "model": a.model,
            "torch": torch.__version__, "cosine_vs_fp32_min": float(cos.min()), "rows": rows}
    if a.json:
        print(json.dumps(info, indent=1))
        return
    print(f"{info['device']}  {a.model}  autocast {a.dtype}  torch {torch.__version__}  "
          f"min cosine vs fp32 {info['cosine_vs_fp32_min']:.5f}")
    print(f"{'batch':>6} {'ECG/s':>10} {'ECG/s+H2D':>10} {'peak GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['batch']:>6} {r['error']}")
        else:
            print(f"{r['batch']:>6} {r['ecg_per_s']:>10.0f} {r['ecg_per_s_with_h2d']:>10.0f} {r['peak_mem_gib']:>9.2f}")


if __name__ == "__main__":
    main()
