"""`ecgbatch report --input` (Ray Data + vLLM engine actor) against the engine alone and against
the research-script loop, in one run, as ratios; then a paper plan of 1M reports on GPUs.

    .venv/bin/python bench/report_archive.py [--sizes 64 192] [--max-tokens 32] [--batch-size 32]
        [--overlap 2] [--naive 8] [--work bench/_report_work] [--json bench/results/report_archive.json]

Model: bench/report.py's untrained ECG-LLaVA folder (SmolLM2-135M-Instruct LM, ecg-coca-mini
tower, seeded random projector; built once under --work). Archive: the readable records of
sample_archive/ (+ ../shared/data) copied under new names until it holds N records (copies: the
readers refuse a signal file that resolves outside the archive, so symlinks fail). Every path
generates greedily with the model's own EOS and at most --max-tokens tokens (the untrained model
rarely stops early, so most reports are --max-tokens long; the token counts are printed).
  end to end   pipeline.run (what `ecgbatch report --input` runs) at both sizes, fresh workspace:
               read tasks -> one engine actor (batches of --batch-size, --overlap of them at
               once: the next batch's requests enter the engine while the last drains; 1: one
               after the other, as before issue 19) -> block commits. 'overlapped' counts the
               records whose batch entered the engine while another batch generated (the
               actor's own count).
               Steady state = the marginal rate between the sizes ((n2 - n1) / (t2 - t1)):
               Ray start, engine start-up and the first batch cancel out.
  engine only  the same engine settings in this process, the larger archive's ECG tensors and
               prompt ids built before the clock starts, the same batches of --batch-size
               requests (one engine call each, as the actor makes), timed after one warm-up call;
               twice: fed as the actor feeds its engine (each batch's call from its own thread,
               --overlap at a time, through the same engine loop: the goal's baseline) and one
               batch at a time (the baseline before issue 19, which the overlapped actor could
               beat: ratios above 1)
  naive loop   per record: read, preprocess, HF EcgLlavaForCausalLM.generate alone (the first
               --naive records; the research-script way); its rate is compared, not its total
  peak memory  peak summed RSS of the driver and every process below it (Ray, the engine
               actor, vLLM's processes), sampled every 0.2 s, per archive size
vLLM's CPU settings come from the environment (VLLM_CPU_OMP_THREADS_BIND, VLLM_CPU_KVCACHE_SPACE,
...) and apply to the engine actor and the engine-only run alike.
Goals (issue 12): end to end / engine only >= 0.8 (issue 19: >= 0.9); end to end / naive >= 5x;
peak memory flat within 10 %. On a GPU machine the same script runs unchanged (engine actor and engine-only on the
GPU); the paper plan needs no GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ecgbatch.device import detect, resolve_dtype  # noqa: E402
from ecgbatch.io.errors import EcgReadError  # noqa: E402
from ecgbatch.pipelines.report import DEFAULT_OVERLAP, DEFAULT_QUESTION  # noqa: E402


def make_archive(n: int, dest: Path) -> Path:
    """``n`` records: the readable bench records copied (with their sibling files) into folders."""
    from report import record_paths  # bench/report.py

    from ecgbatch.io import read_record

    dest = dest / f"archive-{n}"
    if dest.is_dir():
        return dest
    srcs = []
    for p in record_paths():
        try:
            read_record(p)
        except Exception:  # noqa: BLE001 - unreadable records are not this bench's subject
            continue
        srcs.append(p)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(n):                 # a folder per copy: WFDB headers name their signal files
        p = srcs[i % len(srcs)]
        (tmp / f"r{i:06d}").mkdir(exist_ok=True)
        for sib in [*p.parent.glob(p.stem + ".*"), *p.parent.glob("ecgbatch.json")]:  # + folder sidecar
            link = tmp / f"r{i:06d}" / sib.name
            if not link.exists():
                shutil.copyfile(sib.resolve(), link)
    tmp.rename(dest)
    return dest


class PeakRss:
    """Peak summed RSS of this process and all its descendants (the Ray processes it started)."""

    def __init__(self, period: float = 0.2):
        import psutil

        self.proc, self.period, self.peak, self._stop = psutil.Process(), period, 0, threading.Event()

    def _sample(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a process that just ended
                pass
        return total

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.period)

    def __enter__(self):
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def end_to_end(archive: Path, folder: Path, ws: Path, args) -> dict:
    from ecgbatch.pipelines import report

    with PeakRss() as mem:
        s = report.run(str(archive), folder, ws, settings=report.PromptSettings(max_tokens=args.max_tokens),
                       batch_size=args.batch_size, block_size=args.batch_size, dtype=args.dtype,
                       work_dir=str(args.work / "vllm"), progress=False, overlap=args.overlap)
    return {"records": s.reported, "failed": s.failed, "failure_kinds": s.failure_kinds,
            "overlapped_records": s.overlapped_records,
            "output_tokens": s.output_tokens, "prompt_tokens": s.prompt_tokens, "seconds": s.seconds,
            "first_result_s": s.first_result_s, "after_first_batch_records_per_s": s.steady_records_per_s,
            "finish_reasons": s.finish_reasons, "peak_rss_gb": mem.peak / 2**30}


def readable(archive: Path) -> list:
    from ecgbatch.io import list_records

    ok = []
    for s in sorted(list_records(str(archive)), key=lambda s: s.key):
        try:
            s.read()
            ok.append(s)
        except (EcgReadError, ValueError):
            continue
    return ok


def engine_batches(engine, reqs: list, batch_size: int, max_tokens: int, overlap: int) -> dict:
    """``reqs`` in batches of ``batch_size`` (one engine call each), fed as the report actor feeds
    its engine (ReportUDF): each batch's call from a thread of its own, ``overlap`` calls at a
    time, the next one as soon as one returns (1: one after the other). Timed from the first
    call to the last result."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [reqs[i:i + batch_size] for i in range(0, len(reqs), batch_size)]
    stats = engine.loop.stats
    calls0, overlapped0 = stats.calls, stats.overlapped_calls
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=overlap, thread_name_prefix="bench-batch") as pool:
        results = list(pool.map(lambda b: engine.generate(b, max_tokens=max_tokens), batches))
    dt = time.perf_counter() - t0
    n_tok = sum(r.n_output_tokens for res in results for r in res)
    return {"records": len(reqs), "output_tokens": n_tok, "seconds": dt, "overlap": overlap,
            "calls": stats.calls - calls0, "overlapped_calls": stats.overlapped_calls - overlapped0,
            "records_per_s": len(reqs) / dt, "output_tokens_per_s": n_tok / dt}


def engine_only(archive: Path, folder: Path, args) -> dict:
    """The engine alone on pre-built inputs, twice: fed as the actor feeds it (--overlap batches
    at once through the same engine loop: the baseline the goal ratio is against) and one batch
    at a time (the baseline before issue 19's overlap). Each pass (and the warm-up) gets its own
    tiny offset on the ECGs, so vLLM's prefix cache serves no pass from an earlier one."""
    import numpy as np

    from ecgbatch.llava.inputs import preprocess_for_model
    from ecgbatch.pipelines.report import engine_kwargs
    from ecgbatch.serving.engine import EcgLlavaEngine, EcgRequest

    t0 = time.perf_counter()       # the arguments the pipeline's actor gives its engine
    engine = EcgLlavaEngine(folder, **engine_kwargs(dtype=args.dtype, max_num_seqs=args.batch_size,
                                                    work_dir=str(args.work / "vllm")))
    start_s = time.perf_counter() - t0
    try:
        ids = engine.prompt_ids(DEFAULT_QUESTION)
        reqs = [EcgRequest(preprocess_for_model(s.read(), engine.config, record_id=s.key), ids, id=s.key)
                for s in readable(archive)]

        def shifted(k: int) -> list:
            return [EcgRequest(r.ecg + np.float32(1e-5 * k), r.prompt_ids, id=r.id) for r in reqs]

        engine.generate(shifted(0)[:2], max_tokens=4)            # warm-up
        modes = {"overlapped": args.overlap, "sequential": 1} if args.overlap > 1 else {"sequential": 1}
        out = {name: engine_batches(engine, shifted(k), args.batch_size, args.max_tokens, overlap)
               for k, (name, overlap) in enumerate(modes.items(), start=1)}
    finally:
        engine.shutdown()          # now: left to the interpreter's exit, vLLM logs "exited unexpectedly"
    out.setdefault("overlapped", out["sequential"])
    return {**out, "start_up_s": start_s}


def naive(archive: Path, folder: Path, args) -> dict:
    import torch

    from ecgbatch.llava import load_ecg_llava
    from ecgbatch.llava.inputs import preprocess_for_model
    from ecgbatch.llava.prompting import prompt_ids

    t0 = time.perf_counter()
    model, tok = load_ecg_llava(folder, dtype=getattr(torch, args.dtype), attn_implementation="sdpa")
    start_s = time.perf_counter() - t0
    srcs = readable(archive)[:args.naive]
    ids = torch.tensor([prompt_ids(tok, DEFAULT_QUESTION, model.config)])
    eos = tok.eos_token_id
    with torch.inference_mode():                       # warm-up (first-call allocations)
        model.generate(ids, ecgs=torch.from_numpy(preprocess_for_model(srcs[0].read(), model.config))[None],
                       max_new_tokens=2, do_sample=False, pad_token_id=eos)
    t0, n_tok = time.perf_counter(), 0
    with torch.inference_mode():
        for s in srcs:
            x = torch.from_numpy(preprocess_for_model(s.read(), model.config, record_id=s.key))[None]
            out = model.generate(ids, ecgs=x, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=eos)
            n_tok += out.shape[1]          # new tokens only (the prompt goes in as embeddings), EOS included
    dt = time.perf_counter() - t0
    return {"records": len(srcs), "seconds": dt, "start_up_s": start_s, "records_per_s": len(srcs) / dt,
            "output_tokens": n_tok, "output_tokens_per_s": n_tok / dt}


def ray_data_llm(archive: Path, folder: Path, args) -> dict:
    """The same pre-built inputs through ray.data.llm's vLLM processor (Ray 2.60), one engine on a
    placement group of this machine's device (a CPU bundle here, one GPU bundle per tensor-parallel
    rank on a GPU machine; the engine settings from ecgbatch.device as our actor's), our plugin's "ecg" modality passed
    as ``multimodal_data``, prompt ids as ``tokenized_prompt`` (its chat-template and tokenize
    stages off). Timed from the first output batch to the last (engine start-up, the first batch
    and Ray start cancel out), as the end to end run's after-first-batch rate."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from ecgbatch.llava.inputs import preprocess_for_model
    from ecgbatch.llava.loading import load_tokenizer
    from ecgbatch.llava.prompting import prompt_ids
    from ecgbatch.pipelines.report import engine_kwargs
    from ecgbatch.serving import folder as folders
    from ecgbatch.serving.engine import default_cpu_thread_binding, vllm_engine_args

    # the arguments the pipeline's actor gives its engine, turned into vLLM's by the same function
    dev = detect()
    kw = engine_kwargs(dtype=args.dtype, max_num_seqs=None if dev.cuda else args.batch_size,
                       gpus=1.0 if dev.cuda else 0.0, work_dir=str(args.work / "vllm"))
    cfg = folders.check_model_folder(folder)
    served = folders.runnable_model_folder(folder, cfg, kw["work_dir"], dev)
    ekw = vllm_engine_args(served, cfg, dtype=kw["dtype"], max_model_len=kw["max_model_len"],
                           max_num_seqs=kw["max_num_seqs"], lora_rank=kw["lora_rank"],
                           gpus_per_engine=kw["gpus_per_engine"], device=dev, **kw["llm_kwargs"])
    ekw.pop("model")                         # ray.data.llm takes it as model_source
    bundles = [{"CPU": 1, "GPU": 1} if dev.cuda else {"CPU": 1}] * ekw.get("tensor_parallel_size", 1)
    ids = [int(i) for i in prompt_ids(load_tokenizer(folder, cfg), DEFAULT_QUESTION, cfg)]
    items = [{"record_id": s.key, "ecg": preprocess_for_model(s.read(), cfg, record_id=s.key)} for s in readable(archive)]

    bind = default_cpu_thread_binding()      # the thread binding our engine actor gets
    env = {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}
    if bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    try:
        proc = build_processor(
            vLLMEngineProcessorConfig(
                model_source=str(served), engine_kwargs=ekw, batch_size=args.batch_size, concurrency=1,
                runtime_env={"env_vars": env},
                log_engine_metrics=False,    # its default needs ray[serve] (vLLM's Ray metrics import it)
                placement_group_config={"bundles": bundles}, chat_template_stage=False,
                tokenize_stage=False, detokenize_stage=False, prepare_multimodal_stage=False),
            preprocess=lambda r: {"record_id": r["record_id"], "tokenized_prompt": ids,
                                  "multimodal_data": {"ecg": r["ecg"]},
                                  "sampling_params": {"temperature": 0.0, "max_tokens": args.max_tokens}},
            postprocess=lambda r: {"record_id": r["record_id"], "n_out": len(r["generated_tokens"])})
        t0, stamps = time.perf_counter(), []
        for b in proc(ray.data.from_items(items)).iter_batches(batch_size=None):
            stamps.append((time.perf_counter(), len(b["record_id"]), int(sum(b["n_out"]))))
    finally:
        ray.shutdown()
    n = sum(s[1] for s in stamps)
    tok = sum(s[2] for s in stamps)
    first_t, first_n, first_tok = stamps[0]
    dt = stamps[-1][0] - first_t
    return {"records": n, "output_tokens": tok, "seconds": stamps[-1][0] - t0, "first_result_s": first_t - t0,
            "after_first_batch_records_per_s": (n - first_n) / dt if dt > 0 else float("nan"),
            "after_first_batch_output_tokens_per_s": (tok - first_tok) / dt if dt > 0 else float("nan")}


# ---------------------------------------------------------------------------- GPU paper plan
# Public datasheet figures (dense BF16 tensor TFLOP/s without sparsity, HBM TB/s, GB) and an
# assumed on-demand cloud price per GPU-hour (USD; varies by provider: edit to taste).
GPUS = {"A100-80GB SXM": (312, 2.04, 80, 2.0), "H100 SXM": (989, 3.35, 80, 3.0),
        "H200 SXM": (989, 4.8, 141, 4.0)}
# (parameters, layers, KV heads x head dim, prompt positions) of the LMs; the ECG tower
# (ecg-coca-mini's, ~1e8 FLOP per ECG) is negligible beside either.
MODELS = {"SmolLM2-135M (this bench)": (0.135e9, 30, 3 * 64, None),
          "Vicuna-13B (ECG-Chat)": (13.0e9, 40, 40 * 128, 101 + 60)}


def gpu_plan(prompt_tokens: float, out_lens=(25, 128), reports: int = 1_000_000, mfu: float = 0.4,
             bw_eff: float = 0.7, batch: int = 256) -> list[dict]:
    """Per report: prefill compute 2*P*params, decode compute 2*O*params (both at ``mfu`` of the
    dense BF16 peak); decode memory traffic per token = weights / batch + its KV context, at
    ``bw_eff`` of the HBM bandwidth; decode time = max(compute, memory). BF16 weights and KV, one
    GPU per engine (13B fits in 80 GB); concurrent sequences = min(batch, what the KV cache holds)."""
    rows = []
    for model, (params, layers, kv_dim, p_model) in MODELS.items():
        P = p_model or prompt_tokens
        kv_per_tok = 2 * layers * kv_dim * 2                      # K and V, bf16 bytes
        for O in out_lens:
            for gpu, (tflops, tbps, mem_gb, price) in GPUS.items():
                free = mem_gb * 1e9 * 0.9 - 2 * params
                b = int(max(1, min(batch, free / (kv_per_tok * (P + O)))))   # concurrent sequences
                flop_s = tflops * 1e12 * mfu
                prefill = 2 * params * P / flop_s
                dec_compute = 2 * params * O / flop_s
                dec_mem = O * (2 * params / b + kv_per_tok * (P + O / 2)) / (tbps * 1e12 * bw_eff)
                per_report = prefill + max(dec_compute, dec_mem)
                gpu_h = reports * per_report / 3600
                rows.append({"model": model, "gpu": gpu, "prompt": P, "output": O, "batch": b,
                             "reports_per_s": 1 / per_report, "output_tok_s": O / per_report,
                             "gpu_hours": gpu_h, "usd": gpu_h * price, "usd_per_h": price,
                             "bound": "compute" if dec_compute >= dec_mem else "memory"})
    return rows


def print_plan(rows, cpu_reports_per_s: float | None) -> None:
    print("\nPaper plan: 1,000,000 reports on one GPU per engine (vLLM, BF16, continuous batching; "
          "compute at 40 % of dense BF16 peak, memory at 70 % of HBM bandwidth; a model, not a measurement)")
    print(f"{'model':<26} {'GPU':<14} {'P+O':>8} {'batch':>5} {'reports/s':>9} {'out tok/s':>9} "
          f"{'GPU-h':>8} {'USD':>8} {'decode':>7}")
    for r in rows:
        print(f"{r['model']:<26} {r['gpu']:<14} {r['prompt']:>4.0f}+{r['output']:<3} {r['batch']:>5} "
              f"{r['reports_per_s']:>9.1f} {r['output_tok_s']:>9.0f} {r['gpu_hours']:>8.2f} {r['usd']:>8.2f} "
              f"{r['bound']:>7}")
    print("USD at " + ", ".join(f"{g} ${p:.2f}/h" for g, (_, _, _, p) in GPUS.items())
          + " (assumed on-demand prices). Reading 1M 12-lead 10 s records (~120 GB as int16/float32 "
          "files) is minutes of disk time, spread over the read tasks; the ECG tower is negligible.")
    if cpu_reports_per_s:
        print(f"For scale: this machine's measured end-to-end rate ({cpu_reports_per_s:.2f} reports/s on "
              f"{os.cpu_count()} cores, SmolLM2) needs {1e6 / cpu_reports_per_s / 3600:.0f} hours for 1M reports.")


# ---------------------------------------------------------------------------- main
def print_tables(out: dict, args) -> None:
    (n1, r1), (n2, r2) = sorted(out["end_to_end"].items())
    eo, nv = out["engine_only"], out["naive"]
    m = out["marginal"]
    print(f"\nreport --input vs engine only vs naive loop; max_tokens {args.max_tokens}, batch {args.batch_size}, "
          f"overlap {args.overlap}, {args.dtype}, {os.cpu_count()} CPUs")
    print(f"{'path':<34} {'records':>7} {'seconds':>8} {'reports/s':>9} {'out tok/s':>9} {'tok/report':>10} "
          f"{'start s':>7} {'peak RSS GiB':>12}")

    def row(name, rec, sec, tok, start, rss):
        print(f"{name:<34} {rec:>7} {sec:>8.1f} {rec / sec:>9.2f} {tok / sec:>9.1f} {tok / max(1, rec):>10.1f} "
              f"{start:>7} {rss:>12}")

    row(f"end to end, {n1} records (whole run)", r1["records"], r1["seconds"], r1["output_tokens"],
        f"{r1['first_result_s']:.0f}", f"{r1['peak_rss_gb']:.2f}")
    row(f"end to end, {n2} records (whole run)", r2["records"], r2["seconds"], r2["output_tokens"],
        f"{r2['first_result_s']:.0f}", f"{r2['peak_rss_gb']:.2f}")
    row(f"end to end, steady ({n2} - {n1})", m["records"], m["seconds"], m["output_tokens"], "-", "-")
    ov, sq = eo["overlapped"], eo["sequential"]
    row(f"engine only, overlap {ov['overlap']} (pre-built)", ov["records"], ov["seconds"], ov["output_tokens"],
        f"{eo['start_up_s']:.0f}", "-")
    if ov is not sq:
        row("engine only, one batch at a time", sq["records"], sq["seconds"], sq["output_tokens"], "-", "-")
    row("naive HF loop (one at a time)", nv["records"], nv["seconds"], nv["output_tokens"],
        f"{nv['start_up_s']:.0f}", "-")
    print("('start s': end to end = seconds to the first result; engine only / naive = engine start-up / "
          "model load, not in their seconds)")
    r = out["ratios"]
    print(f"\nend to end steady / engine only (overlap {ov['overlap']})   {r['end_to_end_over_engine_only']:.2f}   "
          "(goal >= 0.9: against the engine fed as the actor feeds it)")
    print(f"  (the {n2}-record run after its first batch / engine only   {r['after_first_batch_over_engine_only']:.2f})")
    print(f"end to end steady / engine only, one batch at a time   {r['end_to_end_over_engine_only_sequential']:.2f}   "
          "(the baseline before issue 19's overlap)")
    print(f"(engine only, overlap {ov['overlap']}: {ov['overlapped_calls']} of {ov['calls']} calls entered an engine "
          "busy with another call)")
    print(f"end to end steady / naive loop    {r['end_to_end_over_naive']:.1f}x  (goal >= 5x; reports/s)")
    print(f"peak memory {n2} / {n1} records     {r['peak_rss_large_over_small']:.3f}  (goal <= 1.10)")
    print(f"(after-first-batch rate of the {n2}-record run: {r2['after_first_batch_records_per_s']:.2f} reports/s; "
          f"finish reasons {r2['finish_reasons']}; failures {r2['failed']})")
    print("(records whose batch entered the engine while another batch generated: "
          + ", ".join(f"{r['overlapped_records']} of {r['records']}" for _, r in sorted(out["end_to_end"].items()))
          + ")")
    rd = out.get("ray_data_llm")
    if rd and "error" not in rd:
        print(f"ray.data.llm (pre-built inputs), after-first-batch: {rd['after_first_batch_records_per_s']:.2f} "
              f"reports/s vs ours end to end {r2['after_first_batch_records_per_s']:.2f} "
              f"(ratio ours / ray.data.llm {r2['after_first_batch_records_per_s'] / rd['after_first_batch_records_per_s']:.2f}); "
              f"first result after {rd['first_result_s']:.0f} s")
    elif rd:
        print(f"ray.data.llm: did not run: {rd['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[64, 192])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                    help="batches in the engine actor at once (1: one after the other, the pre-issue-19 way)")
    ap.add_argument("--naive", type=int, default=8)
    ap.add_argument("--dtype", default="auto", help="auto: float32 on CPU, bfloat16 on GPU (ecgbatch.device)")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "_report_work")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plan-only", action="store_true", help="print the GPU paper plan and exit")
    ap.add_argument("--ray-data-llm", action="store_true",
                    help="also run the larger archive's inputs through ray.data.llm's vLLM processor")
    args = ap.parse_args()
    args.dtype = resolve_dtype(args.dtype, detect())     # the naive HF loop needs a torch dtype
    if args.plan_only:
        print_plan(gpu_plan(131), None)
        return
    if args.sizes[0] >= args.sizes[1]:
        raise SystemExit("--sizes: give a smaller and a larger archive size")
    from report import FOLDER_NAME, build_folder  # bench/report.py

    folder = build_folder(args.work / FOLDER_NAME)
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "end_to_end": {},
                 "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "OMP_"))}}
    t_all = time.perf_counter()
    for n in args.sizes:
        arc = make_archive(n, args.work)
        ws = args.work / f"ws-{n}"
        shutil.rmtree(ws, ignore_errors=True)              # a fresh table: the whole archive is work
        out["end_to_end"][n] = e2e = end_to_end(arc, folder, ws, args)
        print(f"end to end, {n} records: {json.dumps(e2e)}", flush=True)
    big = make_archive(args.sizes[1], args.work)
    out["engine_only"] = engine_only(big, folder, args)
    print(f"engine only: {json.dumps(out['engine_only'])}", flush=True)
    out["naive"] = naive(big, folder, args)
    print(f"naive loop: {json.dumps(out['naive'])}", flush=True)
    if args.ray_data_llm:
        try:
            out["ray_data_llm"] = ray_data_llm(big, folder, args)
        except Exception as exc:  # noqa: BLE001 - reported, the rest of the bench stands
            out["ray_data_llm"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(f"ray.data.llm: {json.dumps(out['ray_data_llm'])}", flush=True)
    (n1, r1), (n2, r2) = sorted(out["end_to_end"].items())
    # the marginal rate between the two sizes cancels start-up (Ray, engine, first batch)
    m = {k: r2[k] - r1[k] for k in ("records", "seconds", "output_tokens")}
    out["marginal"] = m
    marginal = m["records"] / max(1e-9, m["seconds"])
    out["ratios"] = {
        # against the engine fed as the actor feeds it (--overlap batches at once): the goal's ratio
        "end_to_end_over_engine_only": marginal / out["engine_only"]["overlapped"]["records_per_s"],
        # the larger run alone, from its first result to its last (start-up excluded within one run;
        # steadier than the marginal rate when the archives are small)
        "after_first_batch_over_engine_only":
            r2["after_first_batch_records_per_s"] / out["engine_only"]["overlapped"]["records_per_s"],
        "end_to_end_over_engine_only_sequential": marginal / out["engine_only"]["sequential"]["records_per_s"],
        "end_to_end_over_naive": marginal / out["naive"]["records_per_s"],
        "peak_rss_large_over_small": r2["peak_rss_gb"] / r1["peak_rss_gb"]}
    print_tables(out, args)
    prompt_pos = r2["prompt_tokens"] / max(1, r2["records"])
    out["gpu_plan"] = gpu_plan(prompt_pos)
    print_plan(out["gpu_plan"], marginal)
    print(f"\nbench wall time {time.perf_counter() - t_all:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
