"""False alarms of ecgbatch.llava.contradictions: how often the cardiologists' own reports are
called contradictory by ecgbatch's measurements.

A reference report that is flagged is a false alarm (or a measurement error): the rules should
almost never fire on it. Measurements only (method="multilead"); the shipped probes were fitted
on these records, so probe rules are not measured here.

- LUDB (../shared/data/ludb/data): the header's diagnoses as the training texts write them
  (ecgbatch.training.texts.ludb_text): rhythm, axis, the rest.
- PTB-XL (../shared/data/ptbxl2k, 100 Hz): the English text of the SCP codes (ptbxl_text, as
  the training data builds it), with the heart axis written as the training data does
  (PTBXL_AXIS) when the record has one; the first ``--ptbxl N`` records by ecg_id.

    .venv/bin/python bench/contradictions.py [--ptbxl 300]
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from pathlib import Path


def shared_data() -> Path:
    from ecgbatch._paths import shared_dir

    s = shared_dir()
    if s is None:
        raise FileNotFoundError("../shared/data not found (set ECGBATCH_SHARED)")
    return s / "data"


def ludb_cases():
    from ecgbatch.io import read_record
    from ecgbatch.training.texts import hea_comments, ludb_text

    d = shared_data() / "ludb" / "data"
    for hea in sorted(d.glob("*.hea"), key=lambda p: int(p.stem)):
        yield hea.stem, ludb_text(hea_comments(hea)), read_record(hea)


def ptbxl_cases(n: int):
    from ecgbatch.io import read_record
    from ecgbatch.training.instruct import PTBXL_AXIS
    from ecgbatch.training.texts import ScpStatements, ptbxl_text

    d = shared_data() / "ptbxl2k"
    st = ScpStatements.from_csv(d / "scp_statements.csv")
    rows = list(csv.DictReader(open(d / "ptbxl_database.csv", newline="")))[:n]
    for r in rows:
        text = ptbxl_text(r["scp_codes"], st, r["report"])
        if r["heart_axis"] in PTBXL_AXIS:
            text += ". " + PTBXL_AXIS[r["heart_axis"]]
        yield r["ecg_id"], text, read_record(d / (r["filename_lr"] + ".hea"))


def run(name: str, cases) -> None:
    from ecgbatch.llava.contradictions import contradictions
    from ecgbatch.llava.grounding import ground
    from ecgbatch.signal import measure

    n = flagged = 0
    rules: Counter = Counter()
    examples: dict[tuple, str] = {}
    t0 = time.perf_counter()
    for rid, text, rec in cases:
        g = ground(measure(rec, method="multilead"))
        cs = contradictions(text, g)
        n += 1
        flagged += bool(cs)
        for c in cs:
            key = (c.finding, c.against.split(" ")[0] + " " + c.against.split(" ")[1])
            rules[key] += 1
            examples.setdefault(key, f"{rid}: '{c.statement}' vs {c.against}")
    print(f"\n== {name}: {n} reference reports, {flagged} flagged ({flagged / max(n, 1):.3f}), "
          f"{n / (time.perf_counter() - t0):.1f} records/s ==")
    for key, k in rules.most_common():
        print(f"  {k:>4}  {key[0]:<22} vs {key[1]:<18} e.g. {examples[key]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptbxl", type=int, default=300, help="first N ptbxl2k records (0: none)")
    a = ap.parse_args(argv)
    run("LUDB", ludb_cases())
    if a.ptbxl:
        run("PTB-XL ptbxl2k", ptbxl_cases(a.ptbxl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
