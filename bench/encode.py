"""ECG encoding throughput on CPU: ECG/s per batch size for ecg-coca (random weights) and
ecg-coca-mini, float32, under torch.inference_mode (what `ecgbatch encode` and the embed pipeline
run). Inputs are real PTB-XL records from ../shared/data (tiled), falling back to random arrays.

    .venv/bin/python bench/encode.py                      # both models, batch 1 8 32 128
    .venv/bin/python bench/encode.py --models ecg-coca-mini --batch-sizes 1 8 32 128 256 --seconds 5
    .venv/bin/python bench/encode.py --models ecg-coca-mini ecg-coca-mini:no-rhythm   # the rhythm channel's cost

A name ending in ":no-rhythm" is that architecture without its rhythm channel (R-peak detection
+ rhythm MLP + RR block); when both are run, a last table gives the ratio at each batch size.

Prints one table per model: batch size, ECG/s, ms per ECG, speed-up vs batch 1. Timing starts
after one warm-up call per batch size; each point runs until --seconds have passed (at least one
call). The machine's other load shows up in the wall-clock numbers: run it on a quiet machine.
"ECG per CPU-s" counts this process's CPU time (all its threads), so it is robust to other load:
with T threads fully busy, uncontended ECG/s is about T x that figure.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def real_inputs(n_leads: int, n_samples: int, k: int = 16) -> np.ndarray:
    from ecgbatch._paths import shared_dir

    sd = shared_dir()
    files = sorted((sd / "data" / "ptbxl" / "records").glob("*.npy"))[:k] if sd else []
    if not files:
        return np.random.default_rng(0).standard_normal((k, n_leads, n_samples)).astype(np.float32)
    arr = np.stack([np.load(f).T[:n_leads, :n_samples] for f in files]).astype(np.float32)
    return np.ascontiguousarray(arr)


def bench_model(name: str, batch_sizes: list[int], seconds: float) -> list[dict]:
    import torch

    from ecgbatch.encoders.factory import resolve_config
    from ecgbatch.models import create_model

    if name.endswith(":no-rhythm"):
        cfg, _ = resolve_config(name.rsplit(":", 1)[0])
        cfg.rhythm_cfg = None
        model = create_model(cfg, seed=0)
    else:
        model = create_model(name, pretrained="random", seed=0)
    ecfg = model.cfg.ecg_cfg
    pool = real_inputs(ecfg.lead_num, ecfg.seq_length)
    n_params = sum(p.numel() for p in model.ecg.parameters())
    rows = []
    for bs in batch_sizes:
        reps = int(np.ceil(bs / len(pool)))
        x = torch.from_numpy(np.concatenate([pool] * reps)[:bs])
        with torch.inference_mode():
            model.encode_ecg(x)  # warm-up
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while True:
                model.encode_ecg(x)
                n += 1
                el = time.perf_counter() - t0
                if el >= seconds:
                    break
            cpu = time.process_time() - c0
        rows.append({"model": name, "batch": bs, "ecg_per_s": n * bs / el, "ms_per_ecg": 1000 * el / (n * bs),
                     "ecg_per_cpu_s": n * bs / cpu, "calls": n, "ecg_tower_params_M": n_params / 1e6})
    base = rows[0]["ecg_per_s"]
    for r in rows:
        r["vs_batch_1"] = r["ecg_per_s"] / base
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ecg-coca-mini", "ecg-coca"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32, 128])
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per point")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of tables")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for m in a.models:
        rows += bench_model(m, a.batch_sizes, a.seconds)
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"CPU float32, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for m in a.models:
        mr = [r for r in rows if r["model"] == m]
        t = Table(title=f"{m} (ECG tower {mr[0]['ecg_tower_params_M']:.1f} M params, random weights)")
        for col in ("batch", "ECG/s", "ms/ECG", "vs batch 1", "ECG per CPU-s", "calls"):
            t.add_column(col, justify="right")
        for r in mr:
            t.add_row(str(r["batch"]), f"{r['ecg_per_s']:.1f}", f"{r['ms_per_ecg']:.2f}",
                      f"{r['vs_batch_1']:.2f}x", f"{r['ecg_per_cpu_s']:.1f}", str(r["calls"]))
        con.print(t)
    for m in a.models:
        base = [r for r in rows if r["model"] == f"{m}:no-rhythm"]
        if not base:
            continue
        t = Table(title=f"{m}: with its rhythm channel vs without (same run)")
        for col in ("batch", "ECG/s with", "ECG/s without", "ratio", "ms/ECG added"):
            t.add_column(col, justify="right")
        for r, b in zip([r for r in rows if r["model"] == m], base):
            t.add_row(str(r["batch"]), f"{r['ecg_per_s']:.1f}", f"{b['ecg_per_s']:.1f}",
                      f"{r['ecg_per_s'] / b['ecg_per_s']:.2f}x", f"{r['ms_per_ecg'] - b['ms_per_ecg']:.2f}")
        con.print(t)


if __name__ == "__main__":
    main()
