"""Report metrics of trivial generators, as a floor to read model numbers against.

    python bench/report_baselines.py INSTRUCT.jsonl [--source ptbxl]

INSTRUCT.jsonl: output of `ecgbatch data instruct ... --split-by-patient`. References: the
report answers of the val records. Generators: (1) one constant report ("Sinus rhythm. Normal
ECG."), (2) the most frequent report of the train records of the same source, (3) the report
of a random train record of the same source (seeded). Prints one table beside ECG-Chat's numbers.
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from ecgbatch.eval.report_metrics import PAPER, comparison_rows, report_metrics
from ecgbatch.training.instruct_format import read_instruct


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("instruct")
    ap.add_argument("--source", default=None, help="only this source's records")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    reports = [it for it in read_instruct(a.instruct, check_files=False) if it.meta.get("kind") == "report"
               and (a.source is None or it.meta["source"] == a.source)]
    train = [it for it in reports if it.meta["split"] == "train"]
    val = [it for it in reports if it.meta["split"] == "val"]
    if not val or not train:
        raise SystemExit("need an instruct file built with --split-by-patient (train and val records)")
    refs = [it.conversations[1]["value"] for it in val]
    by_src: dict[str, list[str]] = {}
    for it in train:
        by_src.setdefault(it.meta["source"], []).append(it.conversations[1]["value"])
    rng = np.random.default_rng(a.seed)
    gens = {
        "constant": ["Sinus rhythm. Normal ECG."] * len(val),
        "train mode": [Counter(by_src[it.meta["source"]]).most_common(1)[0][0] for it in val],
        "random train": [by_src[it.meta["source"]][rng.integers(len(by_src[it.meta["source"]]))] for it in val],
    }
    results = {name: report_metrics(p, refs) for name, p in gens.items()}
    names = list(results)
    print(f"{len(val)} val reports ({a.source or 'all sources'}); 0-100")
    print(f"{'metric':<28}" + "".join(f"{n:>14}" for n in names) + f"{'ECG-Chat+DDP':>14}")
    rows = {n: comparison_rows(r) for n, r in results.items()}
    for i, (metric, *_rest) in enumerate(rows[names[0]]):
        print(f"{metric:<28}" + "".join(f"{rows[n][i][1]:>14}" for n in names) + f"{rows[names[0]][i][2]:>14}")
    skipped = results[names[0]].get("meteor_skipped")
    if skipped:
        print("METEOR skipped:", skipped)
    print("paper:", PAPER["model"])


if __name__ == "__main__":
    main()
