"""Reading speed per format, one process on one core: ecgbatch.io.read_record against the
reference reader on the same files in the same run (wfdb.rdsamp for WFDB, scipy.io.loadmat for
CPSC .mat, np.load for .npy, h5py for HDF5), with a value check (max |diff| in the record's units).

    .venv/bin/python bench/read.py [--data ../shared/data] [--seconds 2] [--json out.json]

WFDB formats 212/24/32/80 are written from real LUDB records with wfdb.wrsamp into a temporary
directory first. Rates are records per second, best of 3 rounds (each round reads every file once,
repeating until --seconds have passed), after one warm-up pass, so the page cache is warm for both
readers alike.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ecgbatch._paths import SAMPLE_ARCHIVE, shared_dir  # noqa: E402
from ecgbatch.io import read_header, read_record  # noqa: E402


def rate(fn, items, seconds: float) -> float:
    for it in items:  # warm-up (imports, page cache)
        fn(it)
    best = 0.0
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while True:
            for it in items:
                fn(it)
            n += len(items)
            dt = time.perf_counter() - t0
            if dt >= seconds / 3:
                break
        best = max(best, n / dt)
    return best


def max_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    if ours.shape != ref.shape or not np.array_equal(np.isnan(ours), np.isnan(ref)):
        return float("inf")
    return float(np.nanmax(np.abs(ours - ref))) if ours.size else 0.0


def wfdb_files(data: Path, tmp: Path, limit: int) -> dict[str, list[str]]:
    import wfdb

    ludb = sorted((data / "ludb" / "data").glob("*.hea"))[:limit] if (data / "ludb" / "data").is_dir() \
        else sorted((data / "ludb").glob("*.hea"))[:limit]
    cinc = []
    for h in sorted((data / "cinc2021").glob("*.hea")):
        try:
            wfdb.rdheader(str(h)[:-4])
            cinc.append(str(h))
        except Exception:  # headers wfdb cannot parse are left out of the comparison
            pass
    out = {"wfdb 16 (LUDB .dat)": [str(h) for h in ludb], "wfdb 16 in .mat (CinC 2021)": cinc[:limit]}
    for fmt, bits in (("212", 12), ("24", 24), ("32", 32), ("80", 8)):
        paths = []
        for h in ludb[: max(limit // 2, 1)]:
            r = wfdb.rdrecord(str(h)[:-4], physical=False)
            d = r.d_signal.astype(np.int64)
            d = d >> (16 - bits) if bits < 16 else d << (bits - 16)
            lim = 2 ** (bits - 1) - 1
            name = f"{h.stem}_{fmt}"
            wfdb.wrsamp(name, fs=r.fs, units=r.units, sig_name=r.sig_name, d_signal=np.clip(d, -lim, lim),
                        fmt=[fmt] * r.n_sig, adc_gain=[g * 2.0 ** (bits - 16) for g in r.adc_gain],
                        baseline=[int(b * 2.0 ** (bits - 16)) for b in r.baseline], write_dir=str(tmp))
            paths.append(str(tmp / f"{name}.hea"))
        out[f"wfdb {fmt} (from LUDB)"] = paths
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sd = shared_dir()
    ap.add_argument("--data", type=Path, default=(sd / "data") if sd else SAMPLE_ARCHIVE)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per reader and format")
    ap.add_argument("--limit", type=int, default=40, help="files per format")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import h5py
    import scipy.io
    import wfdb

    rows = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for label, files in wfdb_files(args.data, tmp, args.limit).items():
            if not files:
                continue
            diff = max(max_diff(read_record(f).signal, wfdb.rdsamp(f[:-4])[0].T) for f in files)
            ours = rate(read_record, files, args.seconds)
            ref = rate(lambda f: wfdb.rdsamp(f[:-4]), files, args.seconds)
            rows.append((label, len(files), ours, "wfdb.rdsamp", ref, diff))
        ludb_heas = [str(p) for p in sorted((args.data / "ludb").rglob("*.hea"))[: args.limit]]
        if ludb_heas:
            ours = rate(read_header, ludb_heas, args.seconds)
            ref = rate(lambda f: wfdb.rdheader(f[:-4]), ludb_heas, args.seconds)
            rows.append(("header only (LUDB .hea)", len(ludb_heas), ours, "wfdb.rdheader", ref, 0.0))

        mats = sorted((args.data / "cpsc2018").glob("*.mat"))[: args.limit]
        if mats:
            def ref_cpsc(f):
                return scipy.io.loadmat(str(f))["ECG"]["data"][0, 0]
            diff = max(max_diff(read_record(f).signal, ref_cpsc(f).astype(np.float32)) for f in mats)
            rows.append(("CPSC2018 .mat", len(mats), rate(read_record, mats, args.seconds),
                         "scipy.io.loadmat", rate(ref_cpsc, mats, args.seconds), diff))

        npys = sorted((args.data / "ptbxl" / "records").glob("*.npy"))[: args.limit]
        if npys:
            def ours_npy(f):
                return read_record(f, fs=500, units="normalized")
            diff = max(max_diff(ours_npy(f).signal, np.load(f).T) for f in npys)
            rows.append(("NumPy .npy (PTB-XL)", len(npys), rate(ours_npy, npys, args.seconds),
                         "np.load", rate(np.load, npys, args.seconds), diff))
            stack = np.stack([np.load(f) for f in npys])
            h5 = tmp / "code15_style.hdf5"
            with h5py.File(h5, "w") as f:
                f.create_dataset("tracings", data=stack)
                f.create_dataset("exam_id", data=np.arange(len(npys)) + 1000)
            keys = [f"{h5}#{i}" for i in range(len(npys))]

            def ref_h5(k):
                with h5py.File(h5, "r") as f:
                    return f["tracings"][int(k.rsplit("#", 1)[1])]
            diff = max(max_diff(read_record(k).signal, ref_h5(k).T) for k in keys)
            rows.append(("HDF5 multi-record (CODE-15 style)", len(keys), rate(read_record, keys, args.seconds),
                         "h5py slice", rate(ref_h5, keys, args.seconds), diff))
    _print(rows)
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("format", "files", "ours_per_s", "reference",
                                                   "reference_per_s", "max_abs_diff"), r)) for r in rows],
                                        indent=1))


def _print(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="read speed, one process (records/s)")
    for c in ("format", "files", "ecgbatch.io", "reference", "reference/s", "speed-up", "max |diff|"):
        t.add_column(c, justify="left" if c in ("format", "reference") else "right")
    for label, n, ours, ref_name, ref, diff in rows:
        t.add_row(label, str(n), f"{ours:,.0f}", ref_name, f"{ref:,.0f}", f"{ours / ref:.1f}x",
                  f"{diff:.1e}")
    Console(width=150).print(t)


if __name__ == "__main__":
    main()
