"""Issue 20's goals for `ecgbatch report --input`, measured as a user runs it, on the test fold
(ecgbatch/testfold.py: records no shipped weights trained on).

Three steps (each can be run alone):

    # 1. an archive of the test fold's records (copied, each source in its own folder) and
    #    their reference reports, from `ecgbatch data instruct ... --part test`
    python bench/report_goals.py prepare --instruct .ecgbatch/instruct/testfold.jsonl --out .ecgbatch/goals
    # 2. the reports, with report --input's defaults
    ecgbatch report --input .ecgbatch/goals/archive -w .ecgbatch/goals/ws -o .ecgbatch/goals/reports.jsonl
    # 3. the table: every goal per source, with bootstrap 95 % intervals over patients
    python bench/report_goals.py score --out .ecgbatch/goals [--json goals.json]

    # the grounds alone as reports (no language model): what each report row's `findings` say the
    # prompt stated, joined into sentences (ecgbatch.llava.grounding.STATED_RULES), then scored the same way; the
    # report run may use --max-tokens 1, since only its findings are read
    python bench/report_goals.py grounds --reports .ecgbatch/goals/reports.jsonl -o .ecgbatch/goals/grounds.jsonl
    python bench/report_goals.py score --out .ecgbatch/goals --reports .ecgbatch/goals/grounds.jsonl

Sources: LUDB and Challenge 2021 (WFDB/.mat, 500 Hz) and PTB-XL's 100 Hz release (ptbxl2k). The
`ptbxl` subset folder (band-passed, z-scored .npy without a header) is left out: an archive reader
cannot know its rate and layout, and its patients' ECGs are in ptbxl2k's test fold too.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

TEMPLATE = "Sinus rhythm. Normal ECG. Normal electrical axis."     # the floor a template scores
ARCHIVE_SOURCES = {"ludb": "ludb", "cinc2021": "cinc2021", "ptbxl2k": "ptbxl"}   # instruct source -> goal source


def labels_only(reference: str, record_facts: dict) -> str:
    """The reference without what the instruction builder added from the measurements (the
    axis or the LVH by voltage of a record whose labels state none, ``{"measured": true}``,
    appended in order, stripped last first): a reference says what
    the cardiologists labelled, or the goals would score the measurement against itself."""
    from ecgbatch.training.instruct_questions import report_text

    for s in reversed(record_facts.get("statements") or ()):
        tail = " " + report_text(s["text"]) if s.get("measured") else None
        if tail and reference.endswith(tail):
            reference = reference[: -len(tail)]
        elif tail and reference == tail.strip():
            reference = ""
    return reference


def prepare(instruct: Path, out: Path, split: str | None = None) -> int:
    """The archive and references of ``instruct``'s report items (only meta.split ``split`` when given)."""
    from ecgbatch.training.instruct_format import read_instruct
    from ecgbatch.training.instruct_questions import report_text

    archive = out / "archive"
    refs = []
    for it in read_instruct(instruct, check_files=True, split=split):
        src = it.meta.get("source")
        if it.meta.get("kind") != "report" or src not in ARCHIVE_SOURCES:
            continue
        p = Path(it.ecg_path)
        dest = archive / src
        dest.mkdir(parents=True, exist_ok=True)
        files = [q for q in p.parent.glob(p.stem + ".*") if q.suffix in (".hea", ".dat", ".mat")]
        for q in files:
            shutil.copy2(q, dest / q.name)
        ref = it.conversations[1]["value"] if len(it.conversations) > 1 else report_text(it.meta["facts"]["report"])
        ref = labels_only(ref, it.meta.get("record_facts") or {})
        refs.append({"record_id": f"{src}/{p.stem}", "source": ARCHIVE_SOURCES[src],
                     "patient": str(it.meta.get("patient") or f"{src}:{p.stem}"), "reference": ref})
    (out / "references.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    print(f"{len(refs)} records -> {archive}; references -> {out / 'references.jsonl'}")
    return len(refs)


def grounds_report(findings: list[dict]) -> str:
    """The grounds-only report of a row's ``findings``: ecgbatch.llava.grounding.stated_report, whose
    STATED_RULES (once GROUNDS_RULES here) say which stated findings become a sentence, and its
    words. A diagnostic, not a product feature: it shows what repeating the prompt would score, i.e.
    how much of a goal the grounds carry and how much the model adds or loses."""
    from ecgbatch.llava.grounding import stated_report

    return stated_report(findings)


def grounds(reports: Path, dest: Path) -> int:
    rows = _rows_with_findings(reports)
    from ecgbatch.training.instruct_format import write_jsonl

    write_jsonl([{"record_id": r["record_id"], "report": grounds_report(r["findings"])} for r in rows], dest)
    print(f"{len(rows)} grounds-only reports -> {dest}")
    return len(rows)


def _finding_readers() -> dict:
    """finding -> what a text states of it (False/None: nothing), as the goals score it."""
    from ecgbatch.eval.report_goals import af_stated, axis_category, lvh_stated

    return {"AF/flutter": af_stated, "axis category": axis_category, "LVH": lvh_stated}


def _references(out: Path) -> dict[str, dict]:
    return {r["record_id"]: r for r in map(json.loads, (out / "references.jsonl").read_text().splitlines())}


def _rows_with_findings(reports: Path) -> list[dict]:
    """The rows of a report --input -o file; refused unless every row carries its findings."""
    rows = [json.loads(line) for line in reports.read_text().splitlines() if line.strip()]
    lacking = [r["record_id"] for r in rows if r.get("findings") is None]
    if lacking:
        raise SystemExit(f"{len(lacking)} rows carry no findings (e.g. {lacking[0]}): run report --input with its "
                         "grounded default")
    return rows


def _print_table(table: list[tuple]) -> None:
    w = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))


def agreement(rows: list[dict], refs: dict[str, dict]) -> dict:
    """Per finding, the report (row["report"]) against its own grounds (grounds_report of
    row["findings"]) and the reference: ``prompt_states`` records whose grounds state the finding,
    ``said`` of them the report states the same, ``contrary`` it states another value (axis);
    ``prompt_silent`` records whose grounds state nothing of it, ``added`` of them the report states
    it anyway, ``added_right`` of those the reference agrees."""
    out, grounds = {}, [grounds_report(r["findings"]) for r in rows]
    for name, f in _finding_readers().items():
        c = dict.fromkeys(("prompt_states", "said", "contrary", "prompt_silent", "added", "added_right"), 0)
        for r, stated in zip(rows, grounds):
            g, m = f(stated), f(r["report"])
            ref = refs.get(r["record_id"])
            if g:
                c["prompt_states"] += 1
                c["said"] += m == g
                c["contrary"] += bool(m) and m != g
            else:
                c["prompt_silent"] += 1
                c["added"] += bool(m)
                c["added_right"] += bool(m) and ref is not None and f(ref["reference"]) == m
        out[name] = c
    return out


def agreement_table(out: Path, reports: Path) -> dict:
    refs, rows = _references(out), _rows_with_findings(reports)
    result = {}
    for source in ("all", *sorted({r["source"] for r in refs.values()})):
        sel = [r for r in rows if source == "all" or refs.get(r["record_id"], {}).get("source") == source]
        res = result[source] = agreement(sel, refs)
        print(f"\n{source}: {len(sel)} reports against their own grounds")
        table = [("finding", "prompt states: report says it", "says another", "prompt silent: report adds it",
                  "added and right")]
        for name, c in res.items():
            table.append((name, f"{c['said']} of {c['prompt_states']}", str(c["contrary"]),
                          f"{c['added']} of {c['prompt_silent']}", f"{c['added_right']} of {c['added']}"))
        _print_table(table)
    return result


def score(out: Path, reports: Path | None = None) -> dict:
    from ecgbatch.eval.report_goals import goal_rows, report_goals

    refs = _references(out)
    rows = [json.loads(line) for line in (reports or out / "reports.jsonl").read_text().splitlines() if line.strip()]
    got = {r["record_id"]: r["report"] for r in rows}
    missing = sorted(set(refs) - set(got))
    if missing:
        print(f"{len(missing)} records have no report (e.g. {missing[:3]}); they are scored as empty reports")
    result = {}
    for source in ("all", *sorted({r["source"] for r in refs.values()})):
        ids = [k for k, r in refs.items() if source == "all" or r["source"] == source]
        preds = [got.get(k, "") for k in ids]
        ref_texts, groups = [refs[k]["reference"] for k in ids], [refs[k]["patient"] for k in ids]
        res = report_goals(preds, ref_texts, groups=groups)
        floor = report_goals([TEMPLATE] * len(ids), ref_texts, groups=groups, reps=200)
        result[source] = {"n": len(ids), **res, "template": floor}
        print(f"\n{source}: {len(ids)} records (last column: every record reported as {TEMPLATE!r})")
        rows = goal_rows(res, None if source == "all" else source)
        table = [("measure", "value [95 % CI] (n)", "goal", "met", "template")]
        table += [(*r, f"{floor[r[0]]['value']:.3f}") for r in rows]
        _print_table(table)
    from ecgbatch.eval.report_metrics import comparison_rows, report_metrics

    ids = sorted(refs)
    text = report_metrics([got.get(k, "") for k in ids], [refs[k]["reference"] for k in ids])
    result["text_metrics"] = text
    print(f"\nreport text metrics, all {len(ids)} records (0-100), beside ECG-Chat's paper figures "
          "(PTB-XL test, Vicuna-13B; not the same records)")
    _print_table([("metric", "ecgbatch", "ECG-Chat + DDP", "ECG-Chat")] + comparison_rows(text))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--instruct", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default=None, help="only the items of this meta.split, e.g. val: a model-selection "
                   "set held out from the LLM (the tower and probes trained on ../shared's val records)")
    s = sub.add_parser("score")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--reports", type=Path, default=None, help="report --input -o file (default OUT/reports.jsonl)")
    s.add_argument("--json", type=Path, default=None)
    g = sub.add_parser("grounds", help="the grounds alone as reports (see ecgbatch.llava.grounding.STATED_RULES)")
    g.add_argument("--reports", type=Path, required=True, help="report --input -o file whose rows carry findings")
    g.add_argument("-o", "--output", type=Path, required=True)
    ag = sub.add_parser("agreement", help="does each report state what its own grounds stated?")
    ag.add_argument("--out", type=Path, required=True)
    ag.add_argument("--reports", type=Path, required=True, help="report --input -o file whose rows carry findings")
    ag.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.cmd == "agreement":
        res = agreement_table(a.out, a.reports)
        if a.json:
            a.json.write_text(json.dumps(res, indent=2))
        return 0
    if a.cmd == "prepare":
        prepare(a.instruct, a.out, a.split)
        return 0
    if a.cmd == "grounds":
        grounds(a.reports, a.output)
        return 0
    res = score(a.out, a.reports)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
