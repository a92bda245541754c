"""Issue 20 part 8: does the chat answer the question asked? Through `ecgbatch serve` and the
official `openai` client, as a client would ask, on LUDB records of the test fold (no shipped
weights trained on them; prepared by `bench/report_goals.py prepare`).

- "What is the heart rate of this ECG, in beats per minute?": the first number of the answer
  against the rate of LUDB's own QRS annotations (lead II, median RR; bench/ludb_intervals.py);
  goal: within 10 bpm for >= 90 %.
- Yes/no questions on atrial fibrillation (or flutter), left ventricular hypertrophy, bundle branch
  block (complete left or right) and axis deviation (left or right), against the
  record's header diagnoses (ecgbatch.text.findings); goal: >= 90 % right, with "yes" and "no" both
  used. The axis question is scored on the records whose labels state an axis (normal or
  deviated), as report_goals scores the report's axis: a reference silent on the axis is unknown,
  not "normal". `--rescore JSON` prints a saved run's table with its truths read again.

On PTB-XL and Challenge records of the test fold (`--source ptbxl2k` / `cinc2021`) the yes/no
truth is the record's labelled reference (`references.jsonl` of the same prepare, measured
statements stripped); there is no annotated rate, so the rate question is asked and shown but not
scored. ../shared's LUDB copy has every lead rescaled to 1 mV, so LVH and axis have no voltage
ground there; the PTB-XL records keep their voltages.

    python bench/chat_goals.py --model ecg-llava-mini --archive .ecgbatch/goals/archive [--limit 40] [--source ludb]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ludb_intervals import reference_intervals  # noqa: E402

RATE_Q = "What is the heart rate of this ECG, in beats per minute?"
YES_NO = {   # question -> finding keys of ecgbatch.text.findings whose presence means "yes"
    "af": ("Is there atrial fibrillation? Answer yes or no.", ("atrial_fibrillation", "atrial_flutter")),
    "lvh": ("Is there left ventricular hypertrophy? Answer yes or no.", ("lvh",)),
    "bbb": ("Is there a bundle branch block? Answer yes or no.", ("rbbb", "lbbb")),
    "axis": ("Is the electrical axis deviated? Answer yes or no.", ("axis_left", "axis_right")),
}
NUMBER = re.compile(r"\b(\d{2,3}(?:\.\d+)?)\b")


def reference_truth(reference: str) -> dict:
    """Yes/no truth from a labelled reference text (no annotated rate: hr_bpm NaN). The axis truth
    is None (not scored) when the reference states no axis: many PTB-XL records have no
    ``heart_axis``, and a text silent on the axis does not say it is normal (report_goals scores
    the report's axis on the same records only)."""
    from ecgbatch.eval.report_goals import axis_category
    from ecgbatch.text.findings import KEYS, positive_findings

    found = positive_findings(reference, KEYS)
    out = {k: bool(set(keys) & found) for k, (_, keys) in YES_NO.items()}
    if axis_category(reference) is None:
        out["axis"] = None
    return {**out, "hr_bpm": float("nan")}


def truth_word(known: bool | None) -> str | None:
    """A row's "truth": "yes", "no", or None where the labels do not say (not scored)."""
    return None if known is None else "yes" if known else "no"


def truth(hea: Path) -> dict:
    """A LUDB record's truth: its header's diagnoses, and the rate of its QRS annotations."""
    from ecgbatch._paths import shared_dir
    from ecgbatch.training.texts import hea_comments, ludb_text

    annotated = shared_dir() / "data" / "ludb" / "data" / hea.stem     # the archive copy has no annotations
    return {**reference_truth(ludb_text(hea_comments(hea))), "hr_bpm": reference_intervals(annotated)["hr_bpm"]}


def fold_records(archive: Path, source: str, limit: int) -> dict:
    """{record path: truth} for the first `limit` records of one source of the prepared archive."""
    if source == "ludb":
        heas = sorted((archive / "ludb").glob("*.hea"), key=lambda p: int(p.stem))[:limit]
        return {h: truth(h) for h in heas}
    refs = {r["record_id"]: r["reference"]
            for r in map(json.loads, (archive.parent / "references.jsonl").read_text().splitlines())}
    heas = sorted((archive / source).glob("*.hea"))[:limit]
    return {h: reference_truth(refs[f"{source}/{h.stem}"]) for h in heas}


def yes_no(answer: str) -> str | None:
    a = answer.strip().lower()
    m = re.match(r"\W*(yes|no)\b", a)
    if m:
        return m.group(1)
    has_yes, has_no = bool(re.search(r"\byes\b", a)), bool(re.search(r"\bno\b|\bnot\b", a))
    return "yes" if has_yes and not has_no else "no" if has_no and not has_yes else None


def start_server(model: str, ecg_dir: Path, port: int, key: str, log: Path, extra=()):
    from ecgbatch._paths import REPO_ROOT

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    proc = subprocess.Popen([sys.executable, "-m", "ecgbatch.cli", "serve", "--model", model, "--api-key", key,
                             "--ecg-dir", str(ecg_dir), "--port", str(port), "--max-tokens", "48", *extra],
                            cwd=REPO_ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ecgbatch serve exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return proc, url
        except Exception:
            if time.time() > deadline:
                os.killpg(proc.pid, signal.SIGTERM)
                raise
            time.sleep(2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ecg-llava-mini")
    ap.add_argument("--archive", type=Path, required=True, help="bench/report_goals.py prepare's OUT/archive")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--source", default="ludb", choices=("ludb", "ptbxl2k", "cinc2021"),
                    help="which part of the test fold (the rate is scored on LUDB's annotations only)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `ecgbatch serve` argument")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rescore", type=Path, default=None, metavar="JSON",
                    help="print the table of a saved --json run with its truths read again; runs no model")
    a = ap.parse_args(argv)
    if a.rescore:
        rescore(a.rescore, a.archive, a.source)
        return 0
    import openai

    from ecgbatch.serving.server import free_port

    truths = fold_records(a.archive, a.source, a.limit)
    heas = list(truths)
    key = secrets.token_hex(8)
    port = a.port or free_port()
    log = a.archive.parent / "chat_goals_server.log"
    proc, url = start_server(a.model, a.archive, port, key, log, a.serve_arg)
    rows = []
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)
        model_id = client.models.list().data[0].id

        def ask(h: Path, q: str) -> str:
            r = client.chat.completions.create(model=model_id, temperature=0, max_tokens=48, messages=[
                {"role": "user", "content": [{"type": "ecg", "ecg": {"path": f"{a.source}/{h.name}"}},
                                             {"type": "text", "text": q}]}])
            return r.choices[0].message.content or ""

        for i, h in enumerate(heas):
            t = truths[h]
            row = {"record": f"{a.source}/{h.stem}", "hr_true": t["hr_bpm"], "rate_answer": ask(h, RATE_Q)}
            m = NUMBER.search(row["rate_answer"])
            row["hr_said"] = float(m.group(1)) if m else None
            for k, (q, _) in YES_NO.items():
                ans = ask(h, q)
                row[k] = {"truth": truth_word(t[k]), "said": yes_no(ans), "answer": ans}
            rows.append(row)
            print(f"{i + 1}/{len(heas)} {row['record']}: rate {row['hr_said']} (true {t['hr_bpm']:.0f}); "
                  + ", ".join(f"{k} {row[k]['said']}/{row[k]['truth']}" for k in YES_NO), flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    summary = report(rows, a.source)
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


def report(rows: list[dict], source: str) -> dict:
    """Print the goals table of answered rows and return its summary. A question is scored on the
    rows whose truth is known (``truth`` not None: the axis of a record whose labels state none is
    not)."""
    rate_ok = [r["hr_said"] is not None and abs(r["hr_said"] - r["hr_true"]) <= 10 for r in rows
               if r["hr_true"] == r["hr_true"]]
    table = [("question", "right", "n", "said yes / no / neither", "truth yes", "goal met")]
    rate = sum(rate_ok) / len(rate_ok) if rate_ok else None
    table.append(("heart rate within 10 bpm", "-" if rate is None else f"{rate:.3f}", str(len(rate_ok)), "-", "-",
                  "no reference rate" if rate is None else "yes" if rate >= 0.9 else "no"))
    summary = {"rate_within_10": rate, "n": len(rows), "source": source}
    for k in YES_NO:
        known = [r for r in rows if r[k]["truth"] is not None]
        said = [r[k]["said"] for r in known]
        right = sum(r[k]["said"] == r[k]["truth"] for r in known) / len(known) if known else float("nan")
        ys, ns = said.count("yes"), said.count("no")
        table.append((f"yes/no {k}", f"{right:.3f}", str(len(known)), f"{ys} / {ns} / {len(known) - ys - ns}",
                      str(sum(r[k]["truth"] == "yes" for r in known)),
                      "yes" if right >= 0.9 and ys and ns else "no"))
        summary[k] = {"right": right, "n": len(known), "said_yes": ys, "said_no": ns}
    w = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    print()
    for r in table:
        print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
    return summary


def rescore(path: Path, archive: Path, source: str) -> dict:
    """The table of a saved ``--json`` run, its truths recomputed from the archive (e.g. after a
    change to how truth is read): no server, no model."""
    saved = json.loads(path.read_text())
    rows = saved["rows"]
    truths = fold_records(archive, source, len(rows))
    by_record = {f"{source}/{h.stem}": t for h, t in truths.items()}
    for r in rows:
        t = by_record[r["record"]]
        for k in YES_NO:
            r[k]["truth"] = truth_word(t[k])
    return report(rows, source)


if __name__ == "__main__":
    sys.exit(main())
