"""Rebuild the sample archive from ../shared/data (run from the repository root:
``.venv/bin/python sample_archive/make_sample_archive.py``). Real records are copied unchanged;
the files in bad/ are derived from real LUDB record 13 to show every failure and quality flag.
(sample_archive/xml/ is written by the XML readers' own script and is left alone.)"""
from __future__ import annotations

import ast
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from ecgbatch._paths import shared_dir  # noqa: E402

LUDB = ["1", "3", "5", "7", "9", "11", "101", "103"]           # 101 AF, 103 atrial flutter
LUDB_WITH_ANNOTATIONS = ["1"]                                   # shows .i/.ii/... being ignored
CINC = ["A0689", "A1041", "E00271", "E07500", "HR03961", "JS01048", "JS09740", "JS11438"]
CPSC = ["A1980", "A1982"]
PTBXL_NPY = [318, 846, 533, 668]                                # 318/846 AF, 533/668 sinus
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def main() -> None:
    data = shared_dir() / "data"
    for sub in ("ludb", "cinc2021", "cpsc2018", "ptbxl", "bad"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
    out = HERE / "ludb"
    out.mkdir()
    for r in LUDB:
        for f in sorted((data / "ludb/data").glob(f"{r}.*")):
            if f.suffix in (".hea", ".dat") or r in LUDB_WITH_ANNOTATIONS:
                shutil.copy(f, out / f.name)
    shutil.copy(data / "ludb/LICENSE.txt", out / "LICENSE.txt")
    out = HERE / "cinc2021"
    out.mkdir()
    for r in CINC:
        for ext in (".hea", ".mat"):
            shutil.copy(data / "cinc2021" / f"{r}{ext}", out / f"{r}{ext}")
    shutil.copy(data / "cinc2021/dx_mapping_scored.csv", out / "dx_mapping_scored.csv")
    out = HERE / "cpsc2018"
    out.mkdir()
    for r in CPSC:
        shutil.copy(data / "cpsc2018" / f"{r}.mat", out / f"{r}.mat")
    _ptbxl(data)
    _bad(data)


def _ptbxl(data: Path) -> None:
    out = HERE / "ptbxl/records"
    out.mkdir(parents=True)
    raw = HERE / "ptbxl/raw"
    raw.mkdir()
    for f in (data / "ptbxl/raw").iterdir():
        shutil.copy(f, raw / f.name)
    (out / "ecgbatch.json").write_text(json.dumps({
        "fs": 500, "leads": LEADS, "units": "normalized", "layout": "samples_first",
        "meta": {"preprocessing": "band-pass 0.5-40 Hz and z-score per lead, by the source"}},
        indent=1) + "\n")
    with open(data / "ptbxl/ptbxl_database_subset.csv", newline="") as fh:
        rows = {int(r["ecg_id"]): r for r in csv.DictReader(fh)}
    keep = ["ecg_id", "age", "sex", "report", "scp_codes", "heart_axis", "strat_fold"]  # no patient_id
    with open(HERE / "ptbxl/ptbxl_database_rows.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keep)
        w.writeheader()
        for i in PTBXL_NPY:
            w.writerow({k: rows[i][k] for k in keep})
    for i in PTBXL_NPY:
        shutil.copy(data / f"ptbxl/records/{i}.npy", out / f"{i}.npy")
        r = rows[i]
        age = float(r["age"]) if r["age"] else None
        meta = {"age": int(age) if age is not None and age < 120 else None,   # PTB-XL: 300 = >89
                "sex": {"0": "M", "1": "F"}.get(r["sex"]),                     # PTB-XL: 0 male, 1 female
                "diagnoses": [r["report"]],
                "dx_codes": sorted(ast.literal_eval(r["scp_codes"])), "dx_system": "SCP-ECG"}
        (out / f"{i}.json").write_text(json.dumps({"meta": meta}, indent=1) + "\n")


def _bad(data: Path) -> None:
    out = HERE / "bad"
    out.mkdir()
    hea = (data / "ludb/data/13.hea").read_text()
    full = np.frombuffer((data / "ludb/data/13.dat").read_bytes(), "<i2").reshape(-1, 12)
    d = full[:1000]                 # the first 2 s keep bad/ small
    dat = d.tobytes()
    lines = [ln for ln in hea.splitlines() if not ln.startswith("#")]
    sig_lines = lines[1:13]

    def header(name: str, sigs: list[str], n: int = 1000, dat_name: str | None = None) -> str:
        body = [ln.replace("13.dat", f"{dat_name or name}.dat") for ln in sigs]
        return "\n".join([f"{name} {len(sigs)} 500 {n}", *body]) + "\n"

    # failures ---------------------------------------------------------------------------------
    (out / "truncated.hea").write_text(header("truncated", sig_lines))
    (out / "truncated.dat").write_bytes(dat[: len(dat) // 2])               # truncated_signal
    (out / "empty.hea").write_bytes(b"")                                      # empty_file
    (out / "not_numpy.npy").write_text("this is a text file, not a NumPy array\n")  # not_an_ecg
    (out / "not_matlab.mat").write_text("neither MATLAB nor ECG\n")           # not_an_ecg
    (out / "orphan.dat").write_bytes(dat[:2400])                             # missing_header
    (out / "long_signal.hea").write_text(header("long_signal", sig_lines, n=500))
    (out / "long_signal.dat").write_bytes(dat)                                # length_mismatch
    (out / "missing_signal.hea").write_text(header("missing_signal", sig_lines))  # missing_signal_file
    (out / "unknown_format.hea").write_text(                                 # unknown_format
        "unknown_format 1 500 5000\nunknown_format.dat 999 200/mV 16 0 0 0 0 II\n")
    (out / "garbage.hea").write_text("hello world, not a header\n")          # bad_header
    (out / "not_ecg.xml").write_text("<?xml version='1.0'?>\n<html><body>no ECG</body></html>\n")
    np.save(out / "square.npy", np.zeros((10, 10), np.float32))              # ambiguous_layout
    np.save(out / "no_rate.npy", (d[:200] / 1000.0).astype(np.float32))      # missing_metadata
    # readable, but flagged in meta["quality"] ------------------------------------------------
    (out / "single_lead.hea").write_text(header("single_lead", [sig_lines[1]]))
    _set_checksum(out / "single_lead.hea", [d[:, 1]])
    (out / "single_lead.dat").write_bytes(np.ascontiguousarray(d[:, 1]).astype("<i2").tobytes())
    bad = d.copy()
    bad[:, 8] = bad[0, 8]           # V3 flat (disconnected electrode)
    bad[:, 9] = -32768              # V4 all invalid -> NaN
    v5 = sig_lines[10].split()
    v5[2] = "20(0)/mV"              # V5 gain 20 adu/mV instead of ~2000 -> amplitudes x100, absurd
    (out / "flat_nan_absurd.hea").write_text(
        header("flat_nan_absurd", sig_lines[:10] + [" ".join(v5)] + sig_lines[11:]))
    _set_checksum(out / "flat_nan_absurd.hea", [bad[:, i] for i in range(12)])
    (out / "flat_nan_absurd.dat").write_bytes(bad.astype("<i2").tobytes())
    renamed = [ln.rsplit(" ", 1)[0] + f" CH{i + 1}" for i, ln in enumerate(sig_lines)]
    (out / "unknown_leads.hea").write_text(header("unknown_leads", renamed))
    (out / "unknown_leads.dat").write_bytes(dat)
    for name in ("truncated", "long_signal", "missing_signal", "unknown_leads"):  # true checksums
        _set_checksum(out / f"{name}.hea", [d[:, i] for i in range(12)])


def _set_checksum(hea: Path, leads: list[np.ndarray]) -> None:
    """Rewrite each signal line's checksum field so only the intended flags appear."""
    lines = hea.read_text().splitlines()
    for i, x in enumerate(leads, start=1):
        parts = lines[i].split()
        parts[6] = str(int(((int(x.astype(np.int64).sum()) + 32768) % 65536) - 32768))
        lines[i] = " ".join(parts)
    hea.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
