"""Embed benchmark: the Ray Data pipeline end to end vs the model alone vs a naive per-record loop,
and peak memory at two archive sizes.

    .venv/bin/python bench/embed.py [--sizes 10000 50000] [--naive 300] [--model ecg-coca-mini]
                                    [--batch-size 64] [--encoders 1] [--json bench/results/embed.json]

1. Archives: ../shared/data replicated into bench/_archive_<N>/r<k>/... (git-ignored): real files
   in their native formats (LUDB WFDB .hea+.dat, CinC 2021 .hea+.mat, CPSC2018 .mat, PTB-XL .npy
   with its folder sidecar), byte copies (``--link`` hard-links instead, to save disk).
2. End to end: `ecgbatch embed` (pipelines.embed.run, local Ray, no index, no measurements) on the
   first size, in a fresh process: records/s over the whole command and in steady state.
3. Model only: the same model on pre-loaded, preprocessed tensors (batches of --batch-size, the
   better of 1 and all torch threads): the ceiling. Goal: end-to-end steady state >= 0.8 x this.
4. Naive loop (research-script style): for each LUDB WFDB record, wfdb.rdsamp + preprocess + one
   forward pass of batch 1, single process (better of 1 and all threads). Goal: pipeline >= 5x.
5. Peak RSS (driver + Ray worker processes, sampled every 0.2 s) for every size. Goal: flat
   within 10 % between sizes (memory bounded by the pipeline's buffers, not the archive).
Prints one table; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from ecgbatch._paths import SAMPLE_ARCHIVE, shared_dir  # noqa: E402


# ------------------------------------------------------------------------------ archives
def _unit_records(data: Path) -> list[tuple[str, list[Path]]]:
    """(subfolder, files of one record) for every record of ../shared/data that ecgbatch reads."""
    units = []
    for hea in sorted((data / "ludb" / "data").glob("*.hea")):
        units.append(("ludb", [hea, hea.with_suffix(".dat")]))
    for hea in sorted((data / "cinc2021").glob("*.hea")):
        units.append(("cinc2021", [hea, hea.with_suffix(".mat")]))
    for mat in sorted((data / "cpsc2018").glob("*.mat")):
        units.append(("cpsc2018", [mat]))
    for npy in sorted((data / "ptbxl" / "records").glob("*.npy")):
        units.append(("ptbxl", [npy]))
    return units


def build_archive(data: Path, n: int, out: Path, link: bool = False) -> Path:
    """bench/_archive_<n>: ``n`` records, replicas of the shared data in folders r0000, r0001, ..."""
    done = out / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return out
    if out.exists():
        shutil.rmtree(out)
    units = _unit_records(data)
    sidecar = SAMPLE_ARCHIVE / "ptbxl" / "records" / "ecgbatch.json"  # fs/leads/units of PTB-XL .npy
    written = 0
    rep = 0
    while written < n:
        for sub, files in units:
            if written >= n:
                break
            dst = out / f"r{rep:04d}" / sub
            if not dst.is_dir():
                dst.mkdir(parents=True)
                if sub == "ptbxl":
                    shutil.copyfile(sidecar, dst / "ecgbatch.json")
            for f in files:
                (os.link if link else shutil.copyfile)(f, dst / f.name)
            written += 1
        rep += 1
    done.write_text(str(n))
    return out


# ------------------------------------------------------------------------------ memory sampling
class PeakRss:
    """Peak summed RSS of a process and all its descendants (Ray workers included)."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(pid), every, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run_pipeline(archive: Path, args) -> dict:
    """`pipelines.embed.run` in a fresh process (own local Ray); its summary + peak RSS of the tree."""
    ws = Path(tempfile.mkdtemp(prefix="ecgbatch-bench-ws-"))
    code = ("import json, sys; from ecgbatch.pipelines import embed; "
            "s = embed.run(sys.argv[1], sys.argv[2], sys.argv[3], allow_random_init=True, progress=False, "
            "build_index=False, batch_size=int(sys.argv[4]), encoders=int(sys.argv[5]), "
            "num_cpus=(int(sys.argv[6]) or None)); "
            "print('SUMMARY ' + json.dumps(dict(s.__dict__, records_per_s=s.records_per_s), default=str))")
    cmd = [sys.executable, "-c", code, str(archive), str(ws), args.model, str(args.batch_size),
           str(args.encoders), str(args.num_cpus)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    with PeakRss(proc.pid) as mem:
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    shutil.rmtree(ws, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"embed run failed ({proc.returncode}):\n{err[-3000:]}")
    s = json.loads(next(line for line in out.splitlines() if line.startswith("SUMMARY "))[8:])
    s.update(wall_seconds=wall, peak_rss_mb=mem.peak / 2**20)
    return s


# ------------------------------------------------------------------------------ baselines
def _best_threads(fn) -> tuple[float, int]:
    """(best rate, torch threads) over 1 thread and the default: on a busy machine, thread
    synchronisation can cost more than it gains (batch-1 forwards especially)."""
    import torch

    default = torch.get_num_threads()
    best = (0.0, default)
    for th in sorted({1, default}):
        torch.set_num_threads(th)
        best = max(best, (fn(), th))
    torch.set_num_threads(default)
    return best


def model_only(args, n_records: int = 256, seconds: float = 15.0) -> tuple[float, int]:
    """records/s of model.embed_ecgs on pre-loaded preprocessed real ECGs (best thread count)."""
    import numpy as np

    from ecgbatch.io import list_records
    from ecgbatch.models import load_model
    from ecgbatch.signal import preprocess

    model, _ = load_model(args.model, allow_random_init=True)
    cfg = model.preprocess_config
    xs = []
    for src in list_records(SAMPLE_ARCHIVE):
        if len(xs) >= 64:
            break
        try:
            xs.append(preprocess(src.read(), cfg).x)
        except Exception:  # noqa: BLE001 - the sample archive's bad/ files
            continue
    x = np.stack([xs[i % len(xs)] for i in range(n_records)])
    b = args.batch_size

    def rate() -> float:
        model.embed_ecgs(x[:b])  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for i in range(0, n_records, b):
                model.embed_ecgs(x[i:i + b])
                n += len(x[i:i + b])
        return n / (time.perf_counter() - t0)

    return _best_threads(rate)


def naive_loop(archive: Path, args) -> tuple[float, int]:
    """records/s of the research-script loop: wfdb.rdsamp + preprocess + batch-1 forward (LUDB files)."""
    import numpy as np
    import torch
    import wfdb

    from ecgbatch.io import STANDARD_LEADS, Record
    from ecgbatch.io.leads import canonical_leads
    from ecgbatch.models import load_model
    from ecgbatch.signal import preprocess

    model, _ = load_model(args.model, allow_random_init=True)
    cfg = model.preprocess_config
    heads = sorted(archive.glob("r*/ludb/*.hea"))[: args.naive]  # wfdb.rdsamp reads LUDB as is

    def rate() -> float:
        t0 = time.perf_counter()
        for h in heads:
            sig, fields = wfdb.rdsamp(str(h.with_suffix("")))
            leads = fields["sig_name"]
            rec = Record(np.asarray(sig.T, np.float32), float(fields["fs"]),
                         canonical_leads(leads) if len(leads) == 12 else STANDARD_LEADS)
            x = torch.from_numpy(preprocess(rec, cfg).x[None])
            with torch.no_grad():
                model.encode_ecg(x)
        return len(heads) / (time.perf_counter() - t0)

    return _best_threads(rate)


# ------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--naive", type=int, default=300, help="records timed in the naive loop")
    ap.add_argument("--model", default="ecg-coca-mini")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--encoders", type=int, default=1)
    ap.add_argument("--num-cpus", type=int, default=2, help="local Ray CPUs (0 = all)")
    ap.add_argument("--link", action="store_true", help="hard-link replicas instead of copying bytes")
    ap.add_argument("--data", type=Path, default=None, help="default: ../shared/data")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    data = args.data or (shared_dir() / "data" if shared_dir() else None)
    if data is None or not data.is_dir():
        raise SystemExit("../shared/data not found: pass --data")

    results: dict = {"sizes": {}, "args": {k: str(v) for k, v in vars(args).items()}}
    for n in args.sizes:
        t0 = time.perf_counter()
        arch = build_archive(data, n, REPO / "bench" / f"_archive_{n}", link=args.link)
        print(f"archive {arch} ({n} records) ready in {time.perf_counter() - t0:.0f} s", flush=True)
        s = run_pipeline(arch, args)
        results["sizes"][n] = s
        print(f"  embed: {s['embedded']} ok, {s['failed']} failed, {s['wall_seconds']:.0f} s wall, "
              f"{s['steady_records_per_s']:.1f} rec/s steady, peak RSS {s['peak_rss_mb']:.0f} MiB", flush=True)
    first = REPO / "bench" / f"_archive_{args.sizes[0]}"
    results["model_only_records_per_s"], results["model_only_threads"] = model_only(args)
    print(f"  model only: {results['model_only_records_per_s']:.1f} rec/s "
          f"({results['model_only_threads']} torch threads)", flush=True)
    results["naive_records_per_s"], results["naive_threads"] = naive_loop(first, args)
    print(f"  naive loop: {results['naive_records_per_s']:.1f} rec/s "
          f"({results['naive_threads']} torch threads)", flush=True)

    s0 = results["sizes"][args.sizes[0]]
    e2e = s0["steady_records_per_s"]
    mo, nv = results["model_only_records_per_s"], results["naive_records_per_s"]
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"embed benchmark ({args.model}, batch {args.batch_size}, {args.encoders} encoder(s), "
                    f"{args.num_cpus or 'all'} Ray CPUs)")
    for c in ("measure", "value", "goal", "met"):
        t.add_column(c)
    t.add_row(f"end-to-end steady ({args.sizes[0]} rec)", f"{e2e:.1f} rec/s", "", "")
    t.add_row("end-to-end incl. start-up", f"{s0['records_per_s']:.1f} rec/s", "", "")
    t.add_row(f"model only (pre-loaded tensors, {results['model_only_threads']} thr)", f"{mo:.1f} rec/s", "", "")
    t.add_row(f"naive per-record loop ({results['naive_threads']} thr)", f"{nv:.1f} rec/s", "", "")
    t.add_row("end-to-end / model only", f"{e2e / mo:.2f}", ">= 0.8", str(e2e / mo >= 0.8))
    t.add_row("end-to-end / naive", f"{e2e / nv:.1f}x", ">= 5x", str(e2e / nv >= 5))
    for n, s in results["sizes"].items():
        t.add_row(f"peak RSS at {n} records", f"{s['peak_rss_mb']:.0f} MiB", "", "")
    if len(args.sizes) > 1:
        a, b = (results["sizes"][n]["peak_rss_mb"] for n in (args.sizes[0], args.sizes[-1]))
        t.add_row(f"RSS {args.sizes[-1]} / {args.sizes[0]}", f"{b / a:.3f}", "within 10 %", str(abs(b / a - 1) <= 0.10))
    Console(width=120).print(t)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
