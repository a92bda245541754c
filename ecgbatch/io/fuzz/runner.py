"""Run fuzz cases and classify each one.

A case is a mutated copy of one seed record in its own folder (``make_case``; deterministic in
the base seed and the case number). ``check_case`` lists the folder as a scan does and reads every
record found, header-only and in full, and returns the worst outcome:

    ok                 every read gave a record that satisfies the invariants (``record_problem``)
    typed:<kind>       an EcgReadError with that kind (``typed:reader_crash`` = an unforeseen
                       exception that the guard at read_record converted; counted apart)
    bad_value:<what>   a "good" record with inf samples, a bad rate, an empty signal, ...
    untyped:<Type>     any other exception escaped
    crash:<signal>     the process died (``run_isolated`` only)
    hang               no answer within the time limit (``run_isolated`` only)

``run_isolated`` runs cases in child processes (``python -m ecgbatch.io.fuzz.runner``), one
chunk per child; a segfault or a hang costs that child, is counted against the case it was on,
and a new child goes on with the next case.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ecgbatch.io import list_records
from ecgbatch.io.errors import EcgReadError
from ecgbatch.io.fuzz.mutate import mutate_case
from ecgbatch.io.fuzz.seeds import Seed
from ecgbatch.io.hdf5 import close_files
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.record import Record

MAX_SOURCES = 8          # records read per case (a container yields several)
_RANK = {"ok": 0, "typed": 1, "bad_value": 3, "untyped": 4}
COLUMNS = ("ok", "typed", "reader_crash", "bad_value", "untyped", "crash", "hang")


@dataclass
class CaseResult:
    case: int
    seed: str
    format: str
    outcome: str
    mutations: str = ""

    @property
    def column(self) -> str:
        if self.outcome == "typed:reader_crash":
            return "reader_crash"
        return self.outcome.split(":", 1)[0]


def make_case(seeds: list[Seed], i: int, base_seed: int, work) -> tuple[Seed, Path, list[str]]:
    """Copy seed ``i % len(seeds)`` to ``work/case<i>`` and mutate it with Random(f"{base_seed}:{i}")."""
    seed = seeds[i % len(seeds)]
    d = Path(work) / f"case{i}"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(seed.folder, d)
    return seed, d, mutate_case(random.Random(f"{base_seed}:{i}"), d, seed.dims)


def record_problem(rec) -> str | None:
    """Why a returned Record is one no model should see (None when it is fine). Independent of
    ecgbatch.io.validate on purpose: this is the oracle that checks it."""

    if not isinstance(rec, Record):
        return f"returned {type(rec).__name__}"
    x = rec.signal
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.float32:
        return "signal is not a 2-D float32 array"
    if x.shape[0] < 1 or x.shape[1] < 1:
        return "empty signal"
    if np.isinf(x).any():
        return "inf samples"
    if len(rec.leads) != x.shape[0]:
        return "lead names do not match the rows"
    return _rate_problem(rec.fs)


def header_problem(h) -> str | None:
    if not isinstance(h, RecordHeader):
        return f"returned {type(h).__name__}"
    if not isinstance(h.n_samples, (int, np.integer)) or h.n_samples < 1 or len(h.leads) < 1:
        return "empty header"
    return _rate_problem(h.fs)


def _rate_problem(fs) -> str | None:
    if not isinstance(fs, (float, int)) or not math.isfinite(fs) or fs <= 0:
        return "bad sampling rate"
    return None


def check_case(folder) -> str:
    """The worst outcome over every record of ``folder`` (see the module docstring)."""

    try:
        sources = list(list_records(str(folder)))
    except Exception as exc:  # noqa: BLE001 - exactly what the fuzzer looks for
        return f"untyped:{type(exc).__name__}"
    results = []
    try:
        for src in sources[:MAX_SOURCES]:
            for header in (True, False):
                try:
                    item = src.read_header() if header else src.read()
                except EcgReadError as exc:
                    results.append(f"typed:{exc.kind}")
                    continue
                except Exception as exc:  # noqa: BLE001
                    results.append(f"untyped:{type(exc).__name__}")
                    continue
                bad = header_problem(item) if header else record_problem(item)
                results.append(f"bad_value:{bad}" if bad else "ok")
    finally:
        close_files()
    if not results:
        return "typed:no_record"  # only files a scan ignores are left (e.g. the array was deleted)
    return max(results, key=lambda r: _RANK[r.split(":", 1)[0]] + (r == "typed:reader_crash"))


# ---- isolation: one child process per chunk --------------------------------------------------

def run_isolated(seeds: list[Seed], n: int, base_seed: int, work, *, start: int = 0,
                 timeout_s: float = 30.0, chunk: int = 500, progress=None) -> list[CaseResult]:
    """Cases start..start+n-1, each in a child process, crashes and hangs included in the results."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    seeds_file = work / "seeds.json"
    seeds_file.write_text(json.dumps([asdict(s) for s in seeds]))
    results: list[CaseResult] = []
    i, end = start, start + n
    while i < end:
        before = i
        for r in _run_child(seeds_file, i, min(end, i + chunk), base_seed, work, timeout_s, seeds):
            results.append(r)
            i = r.case + 1
            if progress is not None:
                progress(r)
        if i == before:
            raise RuntimeError(f"fuzz child made no progress at case {i}; see {work / 'child-stderr.log'}")
    return results


def _run_child(seeds_file: Path, start: int, stop: int, base_seed: int, work: Path,
               timeout_s: float, seeds: list[Seed]):
    """Yield CaseResults of one child; the case it died or hung on is yielded as crash/hang."""
    cmd = [sys.executable, "-m", "ecgbatch.io.fuzz.runner", "--child", str(seeds_file),
           "--start", str(start), "--stop", str(stop), "--seed", str(base_seed), "--work", str(work)]
    with open(work / "child-stderr.log", "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf, current, deadline = b"", None, time.monotonic() + timeout_s + 30  # +30 s: imports
    try:
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                if current is not None:  # the case in progress did not finish in time
                    yield _lost(seeds, current, "hang")
                return
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                code = proc.wait()
                if current is not None:
                    yield _lost(seeds, current, f"crash:{_signal_name(code)}")
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                parts = line.decode("utf-8", "replace").split("\t")
                if parts[0] == "S":
                    current, deadline = int(parts[1]), time.monotonic() + timeout_s
                elif parts[0] == "R":
                    current = None
                    yield CaseResult(int(parts[1]), parts[2], parts[3], parts[4],
                                     parts[5] if len(parts) > 5 else "")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        sel.close()


def _lost(seeds: list[Seed], i: int, outcome: str) -> CaseResult:
    seed = seeds[i % len(seeds)]
    return CaseResult(i, seed.name, seed.format, outcome, "")


def _signal_name(code: int) -> str:
    if code < 0:
        import signal

        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def counts_table(results: list[CaseResult]) -> tuple[str, dict]:
    """A text table (one row per format, one column per outcome) and the same numbers as a dict."""
    formats = sorted({r.format for r in results})
    table = {f: Counter(r.column for r in results if r.format == f) for f in formats}
    kinds = {f: Counter(r.outcome.split(":", 1)[1] for r in results
                        if r.format == f and r.column == "typed") for f in formats}
    width = max([len(f) for f in formats] + [6])
    lines = [f"{'format':<{width}} " + " ".join(f"{c:>12}" for c in COLUMNS) + f" {'total':>7}"]
    for f in formats + ["total"]:
        row = table[f] if f != "total" else sum(table.values(), Counter())
        lines.append(f"{f:<{width}} " + " ".join(f"{row.get(c, 0):>12}" for c in COLUMNS)
                     + f" {sum(row.values()):>7}")
    lines.append("")
    lines.append("typed errors by kind:")
    for f in formats:
        lines.append(f"  {f}: " + ", ".join(f"{k} {v}" for k, v in kinds[f].most_common()))
    return "\n".join(lines), {"by_format": {f: dict(table[f]) for f in formats},
                              "typed_kinds": {f: dict(kinds[f]) for f in formats}}


def _child(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True)
    ap.add_argument("--start", type=int, required=True)
    ap.add_argument("--stop", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args(argv)
    seeds = [Seed(d["name"], d["format"], d["folder"], tuple(d["dims"]))
             for d in json.loads(Path(a.child).read_text())]
    out = sys.stdout
    for i in range(a.start, a.stop):
        out.write(f"S\t{i}\n")
        out.flush()
        seed, d, ops = make_case(seeds, i, a.seed, a.work)
        outcome = check_case(d)
        shutil.rmtree(d, ignore_errors=True)
        out.write(f"R\t{i}\t{seed.name}\t{seed.format}\t{outcome}\t{'; '.join(ops)}\n")
        out.flush()


if __name__ == "__main__":
    _child(sys.argv[1:])
