"""`ecgbatch data instruct SOURCES... -o OUT.jsonl`: ECG-Instruct data from labelled records."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ecgbatch.commands.common import fail

data_app = typer.Typer(no_args_is_help=True, help="Build training data from ECG archives.")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("instruct")
def instruct_command(
    sources: list[str] = typer.Argument(..., help="sources YAML/JSON (a 'sources:' list as in the training "
                                        "configs) or [NAME=]FOLDER of WFDB records with labels in the headers"),
    output: Path = typer.Option(..., "-o", "--output", help="ECG-Instruct JSON Lines file (written atomically)"),
    split_by_patient: bool = typer.Option(False, "--split-by-patient/--no-split",
                                          help="mark each item train/val, every patient on one side"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="share of patients in val, per source"),
    seed: int = typer.Option(0, "--seed", help="phrasings, dialogues and the split are deterministic in it"),
    dialogues: int = typer.Option(2, "--dialogues", help="multi-turn dialogues per record (besides one report item)"),
    measure_method: str = typer.Option("multilead", "--measure", help="multilead | ecgchat | none"),
    root: Optional[Path] = typer.Option(None, "--root", help="write 'ecg' paths relative to this folder "
                                        "(ECG-Chat's --ecg_folder); default: absolute paths"),
    strict: bool = typer.Option(False, "--strict", help="stop at the first unreadable or unlabelled record"),
    part: str = typer.Option("train", "--part", help="train: the test fold (ecgbatch/testfold.py) left out | "
                             "test: the test fold only, for evaluation | all"),
) -> None:
    """Questions and answers about real records, answered only from their labels and measurements."""
    from ecgbatch.training.instruct import build_instruct, load_sources
    from ecgbatch.training.instruct_format import write_jsonl

    if measure_method not in ("multilead", "ecgchat", "none"):
        fail(f"--measure must be multilead, ecgchat or none, got {measure_method!r}")
    try:
        specs = [s for arg in sources for s in load_sources(arg)]
        built = build_instruct(specs, seed=seed, val_fraction=val_fraction if split_by_patient else None,
                               measure_method=None if measure_method == "none" else measure_method,
                               dialogues=dialogues, root=root, on_error="raise" if strict else "skip", part=part)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    write_jsonl(built.items, output)
    _summary(built, output)


def _summary(built, output: Path) -> None:
    con = Console()
    t = Table(title=f"{len(built.items)} items from {len(built.records)} records -> {output}")
    for c in ("source", "records", "patients", "train/val/all records", "items", "yes", "no", "measured"):
        t.add_column(c, justify="right" if c != "source" else "left")
    split_of = {it["meta"]["record_id"] + "|" + it["meta"]["source"]: it["meta"]["split"] for it in built.items}
    for src in sorted({f.source for f in built.records}):
        recs = [f for f in built.records if f.source == src]
        items = [it for it in built.items if it["meta"]["source"] == src]
        kinds = Counter(fa.get("kind") for it in items for fa in it["meta"]["facts"])
        sp = Counter(split_of[f.record_id + "|" + src] for f in recs)
        t.add_row(src, str(len(recs)), str(len({f.patient for f in recs})),
                  f"{sp['train']}/{sp['val']}/{sp['all']}", str(len(items)), str(kinds["finding_yes"]),
                  str(kinds["finding_no"]), str(sum(bool(f.measurements.get("hr_bpm")) for f in recs)))
    con.print(t)
    if built.skipped:
        by = Counter(s["error"] for s in built.skipped)
        con.print(f"[yellow]{len(built.skipped)} records left out[/yellow] ({dict(by)}), e.g. "
                  f"{built.skipped[0]['path']}: {built.skipped[0]['message']}")
