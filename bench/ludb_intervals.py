"""Waveform measurements vs LUDB's cardiologist delineation (lead II annotations).

For every LUDB record in ../shared/data/ludb/data: reference PR (P onset -> QRS onset), QRS
duration, QT (QRS onset -> T offset), RR and HR from the lead-II annotation file (median over
annotated beats), against ecgbatch.signal.measure(record, method=...) for each method. Prints
mean absolute error, median signed error (method - reference) and count per interval, plus
records/s.

    .venv/bin/python bench/ludb_intervals.py [--methods ecgchat,multilead] [--limit N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

INTERVALS = ("hr_bpm", "rr_ms", "pr_ms", "qrs_ms", "qt_ms")


def ludb_dir() -> Path:
    from ecgbatch._paths import shared_dir

    s = shared_dir()
    if s is None or not (s / "data" / "ludb" / "data").is_dir():
        raise FileNotFoundError("LUDB not found under ../shared/data/ludb/data")
    return s / "data" / "ludb" / "data"


def load_record(path_no_ext: Path):
    """LUDB record -> ecgbatch Record (via wfdb directly, so this bench needs only wfdb)."""
    import wfdb

    from ecgbatch.io.record import Record

    sig, fields = wfdb.rdsamp(str(path_no_ext))
    return Record(signal=sig.T.astype(np.float32), fs=float(fields["fs"]),
                  leads=tuple(fields["sig_name"]), units=fields["units"][0],
                  record_id=path_no_ext.name, source="ludb")


def waves_from_annotation(ann) -> dict[str, list[tuple[int, int, int]]]:
    """LUDB annotation -> {'p'|'N'|'t': [(onset, peak, offset), ...]} ('(' sym ')' triplets)."""
    out: dict[str, list[tuple[int, int, int]]] = {"p": [], "N": [], "t": []}
    sym, smp = ann.symbol, ann.sample
    for k, s in enumerate(sym):
        if s in out and 0 < k < len(sym) - 1 and sym[k - 1] == "(" and sym[k + 1] == ")":
            out[s].append((int(smp[k - 1]), int(smp[k]), int(smp[k + 1])))
    return out


def reference_intervals(path_no_ext: Path, lead: str = "ii", fs: float = 500.0) -> dict[str, float]:
    """Per-record reference intervals in ms (median over annotated beats); NaN when absent
    (e.g. PR in atrial fibrillation)."""
    import wfdb

    w = waves_from_annotation(wfdb.rdann(str(path_no_ext), lead))
    qrs = sorted(w["N"])
    ps, ts = sorted(w["p"]), sorted(w["t"])
    pr, qd, qt, rr = [], [], [], []
    for j, (on, pk, off) in enumerate(qrs):
        qd.append(off - on)
        prev_peak = qrs[j - 1][1] if j > 0 else -10**9
        next_on = qrs[j + 1][0] if j + 1 < len(qrs) else 10**9
        p = [p for p in ps if prev_peak < p[1] < on and p[2] <= on]
        if p:
            pr.append(on - p[-1][0])
        t = [t for t in ts if pk < t[1] < next_on]
        if t:
            qt.append(t[0][2] - on)
        if j > 0 and qrs[j - 1][1] > 0:
            rr.append(pk - qrs[j - 1][1])
    ms = 1000.0 / fs

    def med(v):
        return float(np.median(v)) * ms if v else float("nan")

    ref = {"rr_ms": med(rr), "pr_ms": med(pr), "qrs_ms": med(qd), "qt_ms": med(qt)}
    ref["hr_bpm"] = 60000.0 / ref["rr_ms"] if ref["rr_ms"] > 0 else float("nan")
    return ref


def evaluate(methods=("ecgchat", "multilead"), limit: int | None = None) -> dict:
    """-> {"n_records", "seconds": {method: s}, "errors": {method: {interval: [method - ref]}},
    "quality": {method: {flag: count}}}. Failed/unusable measurements (0 or NaN) are not
    errors of 0: they are counted per interval as missing and excluded from the error lists."""
    from ecgbatch.signal.measure import measure

    d = ludb_dir()
    paths = sorted((p.with_suffix("") for p in d.glob("*.hea")), key=lambda p: int(p.name))
    if limit:
        paths = paths[:limit]
    recs = [load_record(p) for p in paths]
    refs = [reference_intervals(p) for p in paths]
    res = {"n_records": len(paths), "seconds": {}, "errors": {}, "missing": {}, "quality": {}}
    for m in methods:
        t0 = time.perf_counter()
        meas = [measure(r, method=m) for r in recs]
        res["seconds"][m] = time.perf_counter() - t0
        errs = {k: [] for k in INTERVALS}
        pos = {k: [] for k in INTERVALS}
        miss = {k: 0 for k in INTERVALS}
        q: dict[str, int] = {}
        no_p = [ms for ms, ref in zip(meas, refs) if not np.isfinite(ref["pr_ms"])]
        res.setdefault("pr_withheld", {})[m] = (
            sum(1 for ms in no_p if not (np.isfinite(ms.pr_ms) and ms.pr_ms != 0)), len(no_p))
        for i, (ms, ref) in enumerate(zip(meas, refs)):
            q[ms.quality] = q.get(ms.quality, 0) + 1
            for k in INTERVALS:
                v, r = getattr(ms, k), ref[k]
                if not np.isfinite(r):
                    continue
                if v is None or not np.isfinite(v) or v == 0:
                    miss[k] += 1
                    continue
                errs[k].append(float(v) - r)
                pos[k].append(i)
        res["errors"][m], res["missing"][m], res["quality"][m] = errs, miss, q
        res.setdefault("positions", {})[m] = pos
    return res


def summary(res: dict, half: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {interval: {"mae", "median", "n", "missing"}}}; half=0/1 keeps the records at
    even/odd positions of the sorted list only (the multilead thresholds were chosen on half 0)."""
    out = {}
    for m, errs in res["errors"].items():
        if half is not None:
            errs = {k: [e for e, i in zip(v, res["positions"][m][k]) if i % 2 == half]
                    for k, v in errs.items()}
        out[m] = {k: {"mae": float(np.mean(np.abs(e))) if e else float("nan"),
                      "median": float(np.median(e)) if e else float("nan"),
                      "n": len(e), "missing": res["missing"][m][k]} for k, e in errs.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ecgchat,multilead")
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)
    res = evaluate(tuple(a.methods.split(",")), a.limit)
    s, held = summary(res), summary(res, half=1)
    print(f"LUDB lead-II reference, {res['n_records']} records; error = method - reference "
          f"(HR in bpm, intervals in ms); 'held-out' = the half not used to choose thresholds")
    print(f"{'method':<10} {'interval':<8} {'MAE':>7} {'median':>7} {'n':>4} {'missing':>7} "
          f"{'held-out MAE':>13}")
    for m, rows in s.items():
        for k, r in rows.items():
            print(f"{m:<10} {k:<8} {r['mae']:7.1f} {r['median']:7.1f} {r['n']:4d} {r['missing']:7d} "
                  f"{held[m][k]['mae']:13.1f}")
        w, n = res["pr_withheld"][m]
        print(f"{m:<10} PR withheld on {w} of the {n} records without annotated P waves (AF, flutter)")
        print(f"{m:<10} speed    {res['n_records'] / res['seconds'][m]:7.1f} records/s (1 process); "
              f"quality {res['quality'][m]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
