"""`python -m ecgbatch.demo` (what `make demo` runs): the whole job on the bundled sample archive.

1. scan the archive (summary of formats, leads, failures) and inspect one record (metadata,
   measurements, a 12-lead plot written to a file);
2. embed it with the default model (Ray Data, local Ray started by the command);
3. build the FAISS index (done by embed), then `ecgbatch search "atrial fibrillation"` (ranked
   by the model's calibrated rhythm probe) and `ecgbatch classify --labels ptbxl-rhythm` (each
   record's rhythm from that probe; rhythms the model never saw in training are marked
   "untrained", never guessed);
4. reports of the default ECG-LLaVA model (ecg-llava-mini) for three records chosen by their
   labels (one atrial fibrillation, one sinus rhythm, one other), generated through vLLM by the
   same code as `ecgbatch report RECORD...`, each beside the record's reference labels. When the
   model is not installed the demo says so in one line and ends normally.

Every step is the real CLI command, run in-process, so the output is what a user would see.
Outputs go to ./out/demo/ (git-ignored); a second run shows the exactly-once rerun (nothing redone).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ecgbatch._paths import REPO_ROOT, SAMPLE_ARCHIVE

DEFAULT_MODEL = "ecg-coca-mini"
REPORT_MODEL = "ecg-llava-mini"


def _step(title: str) -> None:
    from rich.console import Console
    from rich.rule import Rule

    Console().print(Rule(f"[bold cyan]{title}"))


def _cli(*args: str) -> None:
    """Run one `ecgbatch ...` command in this process; stop the demo if it fails."""
    from ecgbatch.cli import app

    print(f"$ ecgbatch {' '.join(args)}", flush=True)
    try:
        app(list(args), prog_name="ecgbatch", standalone_mode=False)
    except SystemExit as exc:  # typer.Exit inside standalone_mode=False surfaces as an exit code
        if exc.code not in (0, None):
            raise SystemExit(f"demo step failed: ecgbatch {' '.join(args)} (exit {exc.code})") from None
    else:
        return


def _pick_record(archive: Path) -> Path:
    """A readable 12-lead WFDB record of the archive (LUDB first: it has diagnoses and mV units)."""
    for pattern in ("ludb/*.hea", "**/*.hea"):
        for p in sorted(archive.glob(pattern)):
            if "bad" not in p.parts:
                return p
    raise SystemExit(f"no WFDB record found in {archive}")


def _labels(rec) -> list[str]:
    """The reference statements a record carries: LUDB's diagnoses, or the Challenge #Dx names."""
    meta = rec.meta or {}
    return [str(x) for x in (meta.get("diagnoses") or meta.get("dx_names") or [])]


def _rhythm_kind(labels: list[str]) -> str:
    text = " ".join(labels).lower()
    if "atrial fibrillation" in text:
        return "atrial fibrillation"
    if "sinus rhythm" in text:
        return "sinus rhythm"
    return "other"


def pick_report_records(archive: Path) -> list[tuple[str, Path, list[str]]]:
    """(kind, record, reference labels) for the first labelled WFDB record of each kind (atrial
    fibrillation, sinus rhythm, other), LUDB's (full diagnoses) before the Challenge's (#Dx)."""
    from ecgbatch.io import read_record
    from ecgbatch.io.errors import EcgReadError

    paths = [p for p in sorted(archive.glob("**/*.hea")) if "bad" not in p.relative_to(archive).parts]
    found: dict[str, tuple[str, Path, list[str]]] = {}
    for prefer_diagnoses in (True, False):
        for p in paths:
            try:
                rec = read_record(str(p))
            except (EcgReadError, ValueError):
                continue
            labels = _labels(rec)
            if not labels or bool((rec.meta or {}).get("diagnoses")) != prefer_diagnoses:
                continue
            kind = _rhythm_kind(labels)
            found.setdefault(kind, (kind, p, labels))
    return [found[k] for k in ("atrial fibrillation", "sinus rhythm", "other") if k in found]


def show_reports(archive: Path, model: str = REPORT_MODEL, max_tokens: int = 160) -> bool:
    """Step 5: generate and print; False (after one line) when the model is not installed."""
    from rich.console import Console
    from rich.markup import escape

    from ecgbatch.llava.errors import ModelNotInstalledError
    from ecgbatch.serving.record_reports import report_records

    con = Console()
    picks = pick_report_records(archive)
    if not picks:
        con.print(f"no labelled WFDB record in {archive}: no reports to show")
        return False
    paths = [str(p) for _, p, _ in picks]
    print(f"$ ecgbatch report {' '.join(paths)} -m {model} --max-tokens {max_tokens}", flush=True)
    try:
        rep = report_records(paths, model, max_tokens=max_tokens, log=lambda m: print(m, file=sys.stderr))
    except ModelNotInstalledError as exc:
        con.print(f"[yellow]no reports:[/yellow] {escape(str(exc))}", soft_wrap=True)
        return False
    by_path, failed = {r.id: r for r in rep.results}, rep.failed
    grounds = {r.id: g for r, g in zip(rep.results, rep.grounds or [])}
    for kind, p, labels in picks:
        con.print(f"[bold]{p.relative_to(archive)}[/bold] ({kind})")
        con.print("  reference: " + " | ".join(labels), soft_wrap=True, markup=False, highlight=False)
        r = by_path.get(str(p))
        text = r.text.strip() if r is not None else f"(not reported: {dict(failed).get(str(p), '?')})"
        con.print(f"  {model}: {text}", soft_wrap=True, markup=False, highlight=False)
        g = grounds.get(str(p))
        if g:
            show_grounds(con, g)
    return True


def show_grounds(con, g: dict) -> None:
    """What the report stands on (the grounded prompt's findings) and what in it disagrees."""
    from ecgbatch.llava.grounding import finding_text

    if g.get("findings"):
        con.print("  grounds: " + "; ".join(finding_text(f) for f in g["findings"]), soft_wrap=True,
                  markup=False, highlight=False)
    for c in g.get("contradictions") or ():
        con.print(f"  contradiction: \"{c['statement']}\" vs {c['against']}", soft_wrap=True, markup=False,
                  highlight=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ecgbatch.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--archive", type=Path, default=SAMPLE_ARCHIVE)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "demo")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ns = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from ecgbatch.models import registry

    t0 = time.perf_counter()
    out = ns.out
    out.mkdir(parents=True, exist_ok=True)
    ws = out / "workspace"

    _step("1. scan the archive")
    _cli("scan", str(ns.archive), "-o", str(out / "manifest.parquet"))

    rec = _pick_record(ns.archive)
    _step(f"1b. inspect one record: {rec.relative_to(ns.archive)}")
    _cli("inspect", str(rec), "--plot", str(out / f"{rec.stem}_12lead.png"))
    print(f"12-lead plot written to {out / f'{rec.stem}_12lead.png'}")

    _step(f"2. embed the archive with {ns.model} (Ray Data) and build the index")
    embed_args = ["embed", str(ns.archive), "-w", str(ws), "-m", ns.model, "--measure"]
    if registry.get(ns.model) is not None and registry.find_weights(ns.model) is None:
        from rich.console import Console

        Console().print(f"[bold red]WARNING:[/bold red] the trained weights of {ns.model!r} are not "
                        "installed: the demo runs on the model's RANDOM INITIALISATION, so search "
                        "scores and zero-shot labels below are meaningless (the pipeline is real).")
        embed_args.append("--allow-random-init")
    _cli(*embed_args)

    _step('3. ecgbatch search "atrial fibrillation"')
    _cli("search", "atrial fibrillation", "-w", str(ws), "-k", "10")

    _step("4. ecgbatch classify --labels ptbxl-rhythm (calibrated rhythm probe)")
    _cli("classify", "-w", str(ws), "--labels", "ptbxl-rhythm")

    _step(f"5. ecgbatch report: {REPORT_MODEL} on three records (vLLM), beside their reference labels")
    show_reports(ns.archive)

    print(f"\ndemo done in {time.perf_counter() - t0:.0f} s; outputs in {out}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
