"""Frontal QRS axis (ecgbatch.signal.axis) vs the cardiologists' axis labels of LUDB and PTB-XL.

- LUDB (../shared/data/ludb/data, the records whose header has an ``#Electric axis of the
  heart:`` line): the 5 categories of LUDB's (Russian) convention: left axis deviation, horizontal,
  normal, vertical, right axis deviation. Agreement = the category of the measured degrees under
  that convention (axis_category(deg, "ludb")) equals the label. ../shared's copy has every lead
  rescaled one by one to 1.000 mV peak to peak (ecgbatch.signal.voltage.rescaled_per_lead), so
  the limb-lead ratios the axis rests on are gone: its records are counted as not measurable
  ("rescaled" column) and not scored, as ecgbatch.signal.measure states no axis for them. (The
  0.53 agreement once shown for LUDB came from those rescaled leads.)
- PTB-XL (../shared/data/ptbxl2k, 100 Hz, every record with a ``heart_axis`` code), scored two
  ways. (1) AHA categories (what the grounded prompt states), each code mapped by the statement
  it was coded from: ALAD (überdrehter Linkstyp, beyond -30) -> left; LAD from an English "left
  axis deviation" statement -> left, LAD from German "Linkstyp" (-30..+30) -> normal; MID ("Lagetyp
  normal") -> normal; AXR (Steiltyp, +60..+90) -> normal; RAD (Rechtstyp, +90..+120) and ARAD
  (beyond +120) -> right. (2) The German "Lagetyp" ranges themselves
  (axis_category(deg, "ptbxl"): ALAD, LAD, MID, AXR, RAD, ARAD), a stricter test (MID is taken
  as +30..+60 there). AXL ("borderline left axis deviation"), SUS and LAD rows whose report has
  neither statement have no stated range: shown, not scored.
- Degree error: the distance from the measured axis to the labelled category's range (0 inside).
  Neither set states degrees, so this is the error a category label allows one to compute.

Both standard estimators are run: the net QRS area (the default of ecgbatch.signal.measure) and
the net QRS amplitude (R minus the deeper of Q and S), least squares over the limb leads, both on
the multi-lead QRS windows. No threshold is fitted here: the category boundaries are the
conventions' own.

    .venv/bin/python bench/axis.py [--limit N] [--skip-ptbxl] [--plot axis.png]
"""
from __future__ import annotations

import argparse
import ast
import csv
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

KINDS = ("area", "amplitude")
LUDB_LABELS = {"left axis deviation": "left", "horizontal": "horizontal", "normal": "normal",
               "vertical": "vertical", "right axis deviation": "right"}
LUDB_ORDER = ("left", "horizontal", "normal", "vertical", "right", "extreme")
AHA_ORDER = ("left", "normal", "right", "extreme")
PTBXL_ORDER = ("ALAD", "LAD", "AXL", "MID", "AXR", "RAD", "ARAD", "SUS")


def shared_data() -> Path:
    from ecgbatch._paths import shared_dir

    s = shared_dir()
    if s is None or not (s / "data").is_dir():
        raise FileNotFoundError("../shared/data not found (set ECGBATCH_SHARED)")
    return s / "data"


def category_range(convention: str, category: str) -> list[tuple[float, float]]:
    from ecgbatch.signal.axis import AXIS_CONVENTIONS

    return [(lo, hi) for name, lo, hi in AXIS_CONVENTIONS[convention] if name == category]


def degree_error(deg: float, ranges: list[tuple[float, float]]) -> float:
    """Angular distance (degrees) from ``deg`` to the nearest of ``ranges`` (0 inside one)."""
    if not math.isfinite(deg) or not ranges:
        return float("nan")
    best = math.inf
    for lo, hi in ranges:
        if lo <= deg < hi:
            return 0.0
        for edge in (lo, hi):
            best = min(best, abs((deg - edge + 180.0) % 360.0 - 180.0))
    return best


def axes_of(x: np.ndarray, fs: float, leads) -> dict[str, float]:
    """{kind: degrees} of one record (all leads [L, T] at ``fs``): NeuroKit2 R peaks on lead
    II, the multi-lead QRS windows, the two estimators."""
    from ecgbatch.signal import filters
    from ecgbatch.signal.axis import frontal_axis
    from ecgbatch.signal.delineation import qrs_bounds
    from ecgbatch.signal.measure import at_500hz
    from ecgbatch.signal.measurements import ECGCHAT_FS, lead_index, neurokit_delineate

    from ecgbatch.signal.rate import rr_regularity

    x5 = at_500hz(x, fs)
    nan = {k: float("nan") for k in (*KINDS, "nrmssd")}
    try:
        _, rp, _ = neurokit_delineate(x5[lead_index(leads, "II")])
    except Exception:  # noqa: BLE001 - a record NeuroKit2 cannot read counts as not measured
        return nan
    r = np.asarray(rp["ECG_R_Peaks"], dtype=int)
    if len(r) < 2:
        return nan
    y = filters.bandpass(x5, ECGCHAT_FS, 0.5, 40.0)
    ons, offs = qrs_bounds(y, r, ECGCHAT_FS)
    out = {k: frontal_axis(y, leads, ons, offs, ECGCHAT_FS, kind=k) for k in KINDS}
    out["nrmssd"] = rr_regularity(np.diff(r) * 1000.0 / ECGCHAT_FS).nrmssd
    return out


def rhythm_group(text: str) -> str:
    t = text.lower()
    return ("AF" if "fibrillation" in t or "afib" in t else "flutter" if "flutter" in t or "aflt" in t
            else "sinus" if "sinus" in t or re.search(r"\b(sr|sbrad|stach|sarrh)\b", t) else "other")


def ludb_cases(limit: int | None):
    import wfdb

    d = shared_data() / "ludb" / "data"
    for hea in sorted(d.glob("*.hea"), key=lambda p: int(p.stem))[:limit]:
        head = hea.read_text()
        m = re.search(r"#Electric axis of the heart:\s*([a-z ]+)", head, re.I)
        if not m or m.group(1).strip().lower() not in LUDB_LABELS:
            continue
        rhythm = re.search(r"#Rhythm:(.*)", head)
        sig, f = wfdb.rdsamp(str(hea.with_suffix("")))
        yield (LUDB_LABELS[m.group(1).strip().lower()], "", rhythm_group(rhythm.group(1) if rhythm else ""),
               sig.T, float(f["fs"]), f["sig_name"], ("ludb", hea.stem))


def ptbxl_cases(limit: int | None):
    import wfdb

    d = shared_data() / "ptbxl2k"
    rows = [r for r in csv.DictReader(open(d / "ptbxl_database.csv", newline="")) if r["heart_axis"]]
    for r in rows[:limit]:
        sig, f = wfdb.rdsamp(str(d / r["filename_lr"]))
        rep = r["report"].lower()
        note = ("de" if "linkstyp" in rep else "en" if "left axis deviation" in rep else "") \
            if r["heart_axis"] == "LAD" else ""
        codes = " ".join(k for k, v in ast.literal_eval(r["scp_codes"]).items() if float(v) > 0 or k == "SR")
        yield (r["heart_axis"], note, rhythm_group(codes), sig.T, float(f["fs"]), f["sig_name"],
               ("ptbxl", Path(r["filename_lr"]).name))


def evaluate(which: str, limit: int | None = None) -> dict:
    """-> {"labels": [...], "notes": [...], "deg": {kind: [...]}, "seconds": s}."""
    cases = ludb_cases(limit) if which == "ludb" else ptbxl_cases(limit)
    from ecgbatch.testfold import in_test_fold

    from ecgbatch.signal.voltage import rescaled_per_lead

    out = {"labels": [], "notes": [], "rhythm": [], "nrmssd": [], "test": [], "rescaled": [],
           "deg": {k: [] for k in KINDS}}
    t0 = time.perf_counter()
    for label, note, rhythm, x, fs, leads, (dataset, rid) in cases:
        out["test"].append(in_test_fold(dataset, rid))
        a = axes_of(np.nan_to_num(np.asarray(x, float)), fs, leads)
        rescaled = rescaled_per_lead(x, leads)
        if rescaled:      # no limb-lead ratio left: not measurable (the RR regularity still is)
            a = {**a, **{k: float("nan") for k in KINDS}}
        out["rescaled"].append(rescaled)
        out["labels"].append(label)
        out["notes"].append(note)
        out["rhythm"].append(rhythm)
        out["nrmssd"].append(a["nrmssd"])
        for k in KINDS:
            out["deg"][k].append(a[k])
    out["seconds"] = time.perf_counter() - t0
    return out


PTBXL_AHA = {("ALAD", ""): "left", ("LAD", "en"): "left", ("LAD", "de"): "normal", ("MID", ""): "normal",
             ("AXR", ""): "normal", ("RAD", ""): "right", ("ARAD", ""): "right"}


def reference(res: dict, mapping: dict | None) -> list[str]:
    """Each case's reference category: its label, or mapping[(label, note)] ("" when unmapped)."""
    if mapping is None:
        return list(res["labels"])
    return [mapping.get((lab, note), "") for lab, note in zip(res["labels"], res["notes"])]


def scores(res: dict, convention: str, kind: str, scored: tuple[str, ...], mapping: dict | None = None) -> dict:
    from ecgbatch.signal.axis import axis_category

    labels, deg = reference(res, mapping), res["deg"][kind]
    pred = [axis_category(d, convention) if math.isfinite(d) else "n/a" for d in deg]
    labelled = [i for i, lab in enumerate(labels) if lab in scored]
    keep = [i for i in labelled if not res["rescaled"][i]]      # rescaled per lead: not measurable
    agree = sum(pred[i] == labels[i] for i in keep)
    err = [degree_error(deg[i], category_range(convention, labels[i])) for i in keep]
    err = [e for e in err if math.isfinite(e)]
    return {"n": len(keep), "rescaled": len(labelled) - len(keep), "agree": agree, "accuracy": agree / len(keep) if keep else float("nan"),
            "missing": sum(not math.isfinite(deg[i]) for i in keep),
            "deg_err_mean": float(np.mean(err)) if err else float("nan"),
            "deg_err_median": float(np.median(err)) if err else float("nan"),
            "within_15": float(np.mean([e <= 15 for e in err])) if err else float("nan"),
            "confusion": Counter(zip(labels, pred))}


def training_words() -> tuple[dict[str, str], dict[str, str]]:
    """(label -> left/normal/right as the instruction data words it: PTB-XL codes by
    ecgbatch.training.instruct.PTBXL_AXIS, LUDB's categories with horizontal/vertical normal;
    measured category -> the same, by instruct.MEASURED_AXIS)."""
    from ecgbatch.training.instruct import MEASURED_AXIS, PTBXL_AXIS

    three = {cat: key.removeprefix("axis_") for cat, (key, _) in MEASURED_AXIS.items()}
    words = {code: next(w for w in ("left", "right", "normal") if w in phrase) for code, phrase in PTBXL_AXIS.items()}
    return {**words, **three}, three


def prompt_convention_table(sets: dict) -> None:
    """Which convention's left / normal / right agrees with the labels as the training data words
    them (what a model trained on them says), on the records outside the test fold: how
    ecgbatch.llava.grounding.GROUND_AXIS_CONVENTION was chosen."""
    from ecgbatch.signal.axis import axis_category

    print("\n-- the grounded prompt's convention: left/normal/right vs the labels as the training data words them, "
          "records outside the test fold (area) --")
    print(f"{'set':<8} {'n':>4} " + "".join(f"{c:>8}" for c in ("aha", "ludb")))
    words, three = training_words()
    tot = Counter()
    for name, res in sets.items():
        keep = [i for i, (lab, t, d) in enumerate(zip(res["labels"], res["test"], res["deg"]["area"]))
                if lab in words and not t and math.isfinite(d)]
        if not keep:
            n_resc = sum(res["rescaled"])
            print(f"{name:<8} {0:>4}   not scored ({n_resc} of {len(res['labels'])} rescaled per lead)")
            continue
        row = []
        for conv in ("aha", "ludb"):
            ok = sum(three.get(axis_category(res["deg"]["area"][i], conv)) == words[res["labels"][i]]
                     for i in keep)
            tot[conv] += ok
            row.append(ok / len(keep) if keep else float("nan"))
        tot["n"] += len(keep)
        print(f"{name:<8} {len(keep):>4} " + "".join(f"{v:>8.3f}" for v in row))
    if tot["n"]:
        print(f"{'all':<8} {tot['n']:>4} " + "".join(f"{tot[c] / tot['n']:>8.3f}" for c in ("aha", "ludb")))


def print_confusion(conf: Counter, rows, cols) -> None:
    cols = [c for c in cols if any(conf[(r, c)] for r in rows)] + (
        ["n/a"] if any(conf[(r, "n/a")] for r in rows) else [])
    head = "label / measured"
    print(f"{head:<18}" + "".join(f"{c:>11}" for c in cols))
    for r in rows:
        if any(conf[(r, c)] for c in cols):
            print(f"{r:<18}" + "".join(f"{conf[(r, c)]:>11}" for c in cols))


def print_scores(res: dict, convention: str, scored, rows, cols, mapping: dict | None = None) -> None:
    print(f"{'estimator':<10} {'n':>4} {'agree':>6} {'acc':>6} {'missing':>7} {'rescaled':>8} {'deg err mean':>13} "
          f"{'median':>7} {'<=15 deg':>9}")
    for k in KINDS:
        s = scores(res, convention, k, scored, mapping)
        print(f"{k:<10} {s['n']:>4} {s['agree']:>6} {s['accuracy']:>6.2f} {s['missing']:>7} {s['rescaled']:>8} "
              f"{s['deg_err_mean']:>13.1f} {s['deg_err_median']:>7.1f} {s['within_15']:>9.2f}")
    s = scores(res, convention, "area", scored, mapping)
    if not s["n"]:
        print(f"no record scored: {s['rescaled']} of {s['rescaled'] + s['n']} have every lead rescaled one by one "
              "(the same peak to peak), so no axis can be measured from them")
        return
    print(f"confusion (net area estimator, {convention} categories):")
    print_confusion(s["confusion"], rows, cols)


def print_report(name: str, res: dict, convention: str, scored, rows, cols) -> None:
    n = len(res["labels"])
    print(f"\n== {name}: {n} records, {n / max(res['seconds'], 1e-9):.1f} records/s ==")
    print_scores(res, convention, scored, rows, cols)
    print("measured degrees per label (net area): median [IQR]")
    groups: dict[str, list[float]] = {}
    for lab, note, d in zip(res["labels"], res["notes"], res["deg"]["area"]):
        if math.isfinite(d):
            groups.setdefault(lab, []).append(d)
            if note:
                groups.setdefault(f"{lab} ({note})", []).append(d)
    for lab in sorted(groups, key=lambda g: (list(rows).index(g.split()[0]) if g.split()[0] in rows else 99, g)):
        v = np.asarray(groups[lab])
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        print(f"  {lab:<18} n={len(v):>4}  {med:7.1f}  [{q1:6.1f}, {q3:6.1f}]")


def print_regularity(res: dict) -> None:
    """How often ecgbatch.signal.rate calls the RR series irregular, per rhythm label."""
    from ecgbatch.signal.rate import IRREGULAR_NRMSSD

    print(f"RR irregular (RMSSD/mean RR > {IRREGULAR_NRMSSD}, Dash et al. 2009) by rhythm label:")
    for g in ("sinus", "AF", "flutter", "other"):
        v = [x for x, r in zip(res["nrmssd"], res["rhythm"]) if r == g and math.isfinite(x)]
        if v:
            print(f"  {g:<8} n={len(v):>4}  irregular {np.mean(np.asarray(v) > IRREGULAR_NRMSSD):5.2f}  "
                  f"median {np.median(v):.3f}")


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (name, (res, order)) in zip(axes[0], results.items()):
        labs = [lab for lab in order if lab in res["labels"]]
        for j, lab in enumerate(labs):
            d = [v for v, l in zip(res["deg"]["area"], res["labels"]) if l == lab and math.isfinite(v)]
            ax.scatter(d, np.full(len(d), j) + np.random.default_rng(j).uniform(-0.2, 0.2, len(d)), s=8)
        ax.set_yticks(range(len(labs)), labs)
        ax.set_xlim(-180, 180)
        ax.set_xlabel("measured QRS axis (degrees, net area)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N records of each set")
    ap.add_argument("--skip-ptbxl", action="store_true")
    ap.add_argument("--plot", type=Path, default=None, help="write a strip plot (PNG)")
    a = ap.parse_args(argv)
    results = {}
    ludb = evaluate("ludb", a.limit)
    print_report("LUDB", ludb, "ludb", tuple(LUDB_LABELS.values()), LUDB_ORDER, LUDB_ORDER)
    print_regularity(ludb)
    results["LUDB (cardiologists' category)"] = (ludb, LUDB_ORDER)
    if not a.skip_ptbxl:
        ptb = evaluate("ptbxl", a.limit)
        print_report("PTB-XL ptbxl2k, heart_axis (German Lagetyp ranges)", ptb, "ptbxl",
                     ("ALAD", "LAD", "MID", "AXR", "RAD", "ARAD"), PTBXL_ORDER, PTBXL_ORDER)
        print("\n-- PTB-XL, AHA categories (codes mapped by the statement they came from; see the doc) --")
        print_scores(ptb, "aha", ("left", "normal", "right"), AHA_ORDER, AHA_ORDER, PTBXL_AHA)
        print_regularity(ptb)
        results["PTB-XL heart_axis"] = (ptb, PTBXL_ORDER)
    prompt_convention_table({"PTB-XL": ptb, "LUDB": ludb} if not a.skip_ptbxl else {"LUDB": ludb})
    if a.plot:
        print(f"\nplot: {plot(results, a.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
