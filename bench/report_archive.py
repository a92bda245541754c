"""`ecgbatch report --input` (Ray Data + vLLM engine actor) against the engine alone and against
the research-script loop, in one run, as ratios.

    .venv/bin/python bench/report_archive.py [--sizes 32 96] [--max-tokens 32] [--batch-size 32]
        [--naive 6] [--work bench/_report_work] [--json bench/results/report_archive.json]

Model: bench/report.py's untrained ECG-LLaVA folder (SmolLM2-135M-Instruct LM, ecg-coca-mini
tower, seeded random projector; built once under --work). Archive: the readable records of
sample_archive/ (+ ../shared/data) linked under new names until it holds N records.
  end to end   pipeline.run at both sizes: read tasks -> one engine actor -> commits; steady
               state = the marginal rate between the sizes (start-up cancels), and the rate
               after the driver's first batch (optimistic when Ray Data buffers outputs)
  engine only  the same model in this process, ECG tensors and prompt ids pre-built, the same
               batches of --batch-size requests, timed after one warm-up call
  naive loop   per record: read, preprocess, HF EcgLlavaForCausalLM.generate alone (--naive
               records; the research-script way)
  peak memory  peak RSS of the driver + every Ray process, sampled every 0.2 s, per archive size
Goals: end to end / engine only >= 0.8; end to end / naive >= 5x; peak memory flat within 10 %.
On a GPU machine the same script runs unchanged (engine actor and engine-only on the GPU).
"""
from __future__ import annotations

import argparse
import json
import os
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

from ecgbatch.io.errors import EcgReadError  # noqa: E402
from ecgbatch.pipelines.report import DEFAULT_QUESTION  # noqa: E402


def make_archive(n: int, dest: Path) -> Path:
    """``n`` records: the readable bench records linked (with their sibling files) into folders."""
    from report import record_paths  # bench/report.py

    from ecgbatch.io import read_record

    srcs = []
    for p in record_paths():
        try:
            read_record(p)
        except Exception:  # noqa: BLE001 - unreadable records are not this bench's subject
            continue
        srcs.append(p)
    dest = dest / f"archive-{n}"
    if dest.is_dir():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(n):                 # a folder per copy: WFDB headers name their signal files
        p = srcs[i % len(srcs)]
        (tmp / f"r{i:06d}").mkdir(exist_ok=True)
        for sib in [*p.parent.glob(p.stem + ".*"), *p.parent.glob("ecgbatch.json")]:  # + folder sidecar
            link = tmp / f"r{i:06d}" / sib.name
            if not link.exists():
                link.symlink_to(sib.resolve())
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
                       work_dir=str(args.work / "vllm"), progress=False)
    # steady state needs results after the first batch: size the archive to several batches
    return {"records": s.reported, "failed": s.failed, "failure_kinds": s.failure_kinds,
            "output_tokens": s.output_tokens, "seconds": s.seconds,
            "start_up_s": s.first_result_s, "steady_records_per_s": s.steady_records_per_s,
            "steady_output_tokens_per_s": s.steady_records_per_s * s.output_tokens / max(1, s.reported),
            "peak_rss_gb": mem.peak / 2**30}


def inputs(archive: Path, config):
    from ecgbatch.io import list_records
    from ecgbatch.llava.inputs import preprocess_for_model

    out = []
    for s in sorted(list_records(str(archive)), key=lambda s: s.key):
        try:       # the records the pipeline reports (its failures are not generated either)
            out.append(preprocess_for_model(s.read(), config, record_id=s.key))
        except (EcgReadError, ValueError):
            continue
    return out


def readable(archive: Path, config) -> list:
    from ecgbatch.io import list_records

    ok = []
    for s in sorted(list_records(str(archive)), key=lambda s: s.key):
        try:
            s.read()
            ok.append(s)
        except (EcgReadError, ValueError):
            continue
    return ok


def engine_only(archive: Path, folder: Path, args) -> dict:
    from ecgbatch.serving.engine import EcgLlavaEngine, EcgRequest

    engine = EcgLlavaEngine(folder, dtype=args.dtype, max_num_seqs=args.batch_size, work_dir=str(args.work / "vllm"))
    ids = engine.prompt_ids(DEFAULT_QUESTION)
    reqs = [EcgRequest(x, ids) for x in inputs(archive, engine.config)]
    engine.generate(reqs[:2], max_tokens=4)            # warm-up
    t0, n_tok = time.perf_counter(), 0
    for i in range(0, len(reqs), args.batch_size):
        n_tok += sum(r.n_output_tokens for r in engine.generate(reqs[i:i + args.batch_size],
                                                                  max_tokens=args.max_tokens))
    dt = time.perf_counter() - t0
    return {"records": len(reqs), "output_tokens": n_tok, "seconds": dt, "records_per_s": len(reqs) / dt,
            "output_tokens_per_s": n_tok / dt}


def naive(archive: Path, folder: Path, args) -> dict:
    import torch

    from ecgbatch.llava import load_ecg_llava
    from ecgbatch.llava.inputs import preprocess_for_model
    from ecgbatch.llava.prompting import prompt_ids

    model, tok = load_ecg_llava(folder)
    srcs = readable(archive, model.config)[:args.naive]
    ids = torch.tensor([prompt_ids(tok, DEFAULT_QUESTION, model.config)])
    t0, n_tok = time.perf_counter(), 0
    with torch.inference_mode():
        for s in srcs:
            x = torch.from_numpy(preprocess_for_model(s.read(), model.config, record_id=s.key))[None]
            out = model.generate(ids, ecgs=x, max_new_tokens=args.max_tokens, do_sample=False)
            n_tok += out.shape[1]          # new tokens only (the prompt goes in as embeddings)
    dt = time.perf_counter() - t0
    return {"records": len(srcs), "seconds": dt, "records_per_s": len(srcs) / dt, "output_tokens": n_tok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[32, 96])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--naive", type=int, default=6)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "_report_work")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from report import build_folder  # bench/report.py

    import shutil

    folder = build_folder(args.work / "smollm2-ecg-llava")
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "end_to_end": {}}
    for n in sorted(args.sizes):
        arc = make_archive(n, args.work)
        ws = args.work / f"ws-{n}"
        shutil.rmtree(ws, ignore_errors=True)              # a fresh table: the whole archive is work
        out["end_to_end"][n] = e2e = end_to_end(arc, folder, ws, args)
        print(f"end to end, {n} records: {json.dumps(e2e)}", flush=True)
    big = make_archive(max(args.sizes), args.work)
    out["naive"] = naive(big, folder, args)
    print(f"naive loop: {json.dumps(out['naive'])}", flush=True)
    out["engine_only"] = engine_only(big, folder, args)
    print(f"engine only: {json.dumps(out['engine_only'])}", flush=True)
    e2e = out["end_to_end"][max(args.sizes)]
    small, large = (out["end_to_end"][n]["peak_rss_gb"] for n in sorted(args.sizes))
    # the marginal rate between the two sizes cancels start-up (Ray, engine) without relying on
    # when the driver saw its first batch (Ray Data may buffer outputs)
    (n1, r1), (n2, r2) = sorted(out["end_to_end"].items())
    marginal = (r2["records"] - r1["records"]) / max(1e-9, r2["seconds"] - r1["seconds"])
    out["end_to_end_marginal_records_per_s"] = marginal
    out["ratios"] = {
        "end_to_end_marginal_over_engine_only": marginal / out["engine_only"]["records_per_s"],
        "end_to_end_over_engine_only": e2e["steady_records_per_s"] / out["engine_only"]["records_per_s"],
        "end_to_end_over_naive": e2e["steady_records_per_s"] / out["naive"]["records_per_s"],
        "peak_rss_large_over_small": large / small}
    print(json.dumps(out["ratios"], indent=2))
    print("goals: end_to_end/engine_only >= 0.8, end_to_end/naive >= 5, peak memory ratio within 1.10")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
