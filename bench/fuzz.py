"""Fuzz every reader with N mutated real records (default 10,000) and print the counts table:
per format, how many cases gave a valid record (ok), a typed error (typed; by kind below),
an unforeseen exception converted at read_record (reader_crash), a "good" record with bad values
(bad_value), an untyped exception, a crash of the process, or a hang.

    .venv/bin/python bench/fuzz.py [-n 10000] [--seed 0] [--jobs 2] [--timeout 30] [--json out.json]
    make fuzz

Cases run in child processes of ``--chunk`` cases each (``ecgbatch.io.fuzz.run_isolated``): a
segfault or a hang is counted against its case and a new child goes on. ``--jobs`` runs that
many children at a time over disjoint case ranges. Seeds: ``ecgbatch.io.fuzz.seeds``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ecgbatch.io.fuzz import build_seeds, counts_table, run_isolated  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0, help="base seed (case i uses Random(f'{seed}:{i}'))")
    ap.add_argument("--jobs", type=int, default=2, help="child processes at a time")
    ap.add_argument("--chunk", type=int, default=500, help="cases per child process")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a case is a hang")
    ap.add_argument("--json", type=Path, help="write the counts and the bad cases here")
    ap.add_argument("--show", type=int, default=20, help="list this many non-ok/typed cases")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ecgbatch-fuzz-") as tmp:
        seeds = build_seeds(Path(tmp) / "seeds")
        t0 = time.perf_counter()
        ranges = _split(a.cases, a.jobs)
        with ThreadPoolExecutor(len(ranges)) as pool:
            parts = pool.map(lambda job: run_isolated(
                seeds, job[1] - job[0], a.seed, Path(tmp) / f"work{job[0]}", start=job[0],
                timeout_s=a.timeout, chunk=a.chunk), ranges)
            results = sorted((r for part in parts for r in part), key=lambda r: r.case)
        wall = time.perf_counter() - t0
    table, counts = counts_table(results)
    print(f"{len(results)} cases, {len(seeds)} seeds, base seed {a.seed}, {a.jobs} jobs: "
          f"{wall:.0f} s wall ({len(results) / wall:.1f} cases/s)\n")
    print(table)
    worst = [r for r in results if r.column not in ("ok", "typed")]
    if worst:
        print(f"\nnot ok and not typed ({len(worst)}):")
        for r in worst[:a.show]:
            print(f"  case {r.case} {r.seed}: {r.outcome} after {r.mutations}")
    if a.json:
        a.json.write_text(json.dumps({"cases": len(results), "seed": a.seed, "wall_s": wall, **counts,
                                      "not_ok": [vars(r) for r in worst]}, indent=1))
    return 1 if any(r.column in ("untyped", "crash", "hang", "bad_value") for r in results) else 0


def _split(n: int, jobs: int) -> list[tuple[int, int]]:
    step = -(-n // max(1, jobs))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


if __name__ == "__main__":
    raise SystemExit(main())
