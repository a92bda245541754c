"""`ecgbatch eval report --predictions PRED.jsonl --references REF.jsonl`: report-generation
metrics (BLEU-1/4, ROUGE-L, METEOR, clinical-efficacy F1) beside ECG-Chat's published numbers.

Prediction and reference files: JSON Lines of ``{"id": ..., "text": ...}``. A reference file
may also be ECG-Instruct data from ``ecgbatch data instruct``: the answer of each record's report
item is its reference, under the id ``<source>/<record_id>``. With ``--model M --ddp`` the reports
are generated with the diagnosis-driven prompt (DDP, ecgbatch.llava.diagnosis_prompt); the output says whether DDP was
on ("ddp" in the -o JSON: the labeller, false, or null when the predictions were given).
The `eval` group (ecgbatch.commands.evaluate) registers ``eval_report`` as `eval report`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ecgbatch.commands.common import fail, key_values

_DIFFERENCES = (
    "ECG-Chat: Vicuna-13B + ECG-CoCa trained on ~800k MIMIC-IV-ECG pairs, 45k ECG-Instruct items, "
    "PTB-XL test set with GPT-4o-translated reports and SCP-statement CE labels (its matcher unpublished).",
    "Here: the texts given; CE labels from ecgbatch.text.findings' keyword matcher on both texts; "
    "DDP as stated above. Numbers are comparable in kind, not in data or model size.",
)
_DDP_CAVEAT = ("ecg-coca-mini's shipped probes were fitted on all 477 records of ../shared/data: DDP "
               "findings on those records are optimistic")


def _read_texts(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {i} is not JSON: {exc}") from exc
        if "text" in d:
            key, text = str(d.get("id")), d["text"]
        elif "conversations" in d:   # ECG-Instruct item: its report item's answer
            if (d.get("meta") or {}).get("kind") != "report":
                continue
            key, text = str(d["meta"].get("source", "")) + "/" + str(d["meta"].get("record_id")), d["conversations"][1]["value"]
        else:
            raise ValueError(f"{path}: line {i} has neither 'text' nor 'conversations'")
        if not isinstance(text, str):
            raise ValueError(f"{path}: line {i}: 'text' must be a string")
        if key in out:
            raise ValueError(f"{path}: id {key!r} appears twice")
        out[key] = text
    if not out:
        raise ValueError(f"{path}: no texts")
    return out


def eval_report(
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="JSONL of {id, text}: generated "
                                               "reports (or give --model to generate them)"),
    references: Path = typer.Option(..., "--references", "--data", help="JSONL of {id, text}, or ECG-Instruct data"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="ECG-LLaVA model (folder, trained-only "
                                        "folder or zoo name): generate the reports of --data's report items"),
    split: Optional[str] = typer.Option("val", "--split", help="with --model: the items' meta.split to run"),
    limit: Optional[int] = typer.Option(None, "--limit", help="with --model: at most this many records (evenly spaced over the file)"),
    read_option: list[str] = typer.Option([], "--read-option", help="SOURCE.key=value reader option, e.g. "
                                          "ptbxl.fs=500 ptbxl.layout=samples_first"),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", min=1),
    save_predictions: Optional[Path] = typer.Option(None, "--save-predictions", help="with --model: write them"),
    ddp: bool = typer.Option(False, "--ddp", help="with --model: diagnosis-driven prompts (the findings of the "
                             "calibrated probes of the model's tower encoder before each question)"),
    grounded: Optional[bool] = typer.Option(None, "--grounded/--no-grounded", help="with --model: state what "
                                            "ecgbatch measured and its probes found before each question "
                                            "[default: the model's config, prompt.grounded]"),
    meteor: bool = typer.Option(True, "--meteor/--no-meteor", help="METEOR needs WordNet (skipped if absent)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write all metrics as JSON"),
) -> None:
    """BLEU-1/4, ROUGE-L, METEOR and CE-F1 of generated reports, beside ECG-Chat's paper numbers
    (with --model: generate them first for the held-out records, and check the rhythm goals)."""
    from ecgbatch.eval.llava_eval import goal_rows, rhythm_goals
    from ecgbatch.eval.report_metrics import PAPER, comparison_rows, report_metrics

    if (predictions is None) == (model is None):
        fail("give either --predictions or --model")
    if ddp and model is None:
        fail("--ddp needs --model (it changes the prompts the reports are generated from)")
    if grounded is not None and model is None:
        fail("--grounded/--no-grounded need --model (they change the prompts the reports are generated from)")
    ddp_info = None        # unknown for given predictions
    try:
        ref = _read_texts(references)
        if model is not None:
            pred, asked, ddp_info, grounds = _generate(model, references, split, limit, read_option, batch_size,
                                                       max_new_tokens, ddp, grounded)
            if save_predictions is not None:    # the question as asked; the row's findings and contradictions
                _write_jsonl(save_predictions, [{"id": k, "text": v, "question": asked[k], **grounds[k]}
                                                for k, v in pred.items()])
        else:
            pred = _read_texts(predictions)
        missing = [k for k in pred if k not in ref]
        if missing:
            raise ValueError(f"{len(missing)} prediction ids have no reference, e.g. {missing[0]!r}")
        ids = list(pred)
        res = report_metrics([pred[k] for k in ids], [ref[k] for k in ids], with_meteor=meteor)
        res.update(rhythm_goals([pred[k] for k in ids], [ref[k] for k in ids]))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    con = Console()
    ddp_line = ("not known (--predictions)" if ddp_info is None else "off" if ddp_info is False else
                f"on: findings of {ddp_info['encoder']}'s probes ({', '.join(ddp_info['probes'])})")
    con.print(f"DDP (diagnosis-driven prompts): {ddp_line}")
    if ddp_info:
        con.print(f"[yellow]note:[/yellow] {_DDP_CAVEAT}")
    ddp_tag = "" if ddp_info is None else ", with DDP" if ddp_info else ", no DDP"
    t = Table(title=f"report metrics on {res['n']} reports (0-100{ddp_tag})")
    for c in ("metric", "ours", "ECG-Chat +DDP", "ECG-Chat no DDP"):
        t.add_column(c, justify="left" if c == "metric" else "right")
    for row in comparison_rows(res):
        t.add_row(*row)
    con.print(t)
    f = Table(title="clinical findings (F1 per finding; support = references with it)")
    for c in ("finding", "support", "tp", "fp", "fn", "F1"):
        f.add_column(c, justify="left" if c == "finding" else "right")
    for k, v in res["per_finding"].items():
        if v["support"] or v["fp"]:
            f.add_row(k, str(v["support"]), str(v["tp"]), str(v["fp"]), str(v["fn"]),
                      "n/a" if v["f1"] != v["f1"] else f"{v['f1']:.1f}")
    con.print(f)
    if res.get("meteor_skipped"):
        con.print(f"[yellow]METEOR skipped:[/yellow] {res['meteor_skipped']}")
    g = Table(title="issue 11 goals (rhythm findings as the texts state them)")
    for c in ("goal metric", "value", "goal", "met"):
        g.add_column(c)
    for row in goal_rows(res):
        g.add_row(*row)
    con.print(g)
    con.print(f"paper: {PAPER['model']}")
    for line in _DIFFERENCES:
        con.print(f"- {line}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"predictions": str(predictions or model), "references": str(references),
                                   "ddp": ddp_info, **res}, indent=2, default=float))
        tmp.replace(out)
        typer.echo(f"wrote {out}")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _generate(model: str, data: Path, split, limit, read_option, batch_size, max_new_tokens,
              ddp: bool = False, grounded: Optional[bool] = None) -> tuple[dict[str, str], dict[str, str], dict | bool, dict]:
    """--model: the reports of ``data``'s report items in ``split`` (ecgbatch.eval.report_generation)."""
    from ecgbatch.eval.report_generation import generate_for_items
    from ecgbatch.training.instruct_format import read_instruct

    opts: dict[str, dict] = {}
    for k, v in key_values(read_option, "--read-option").items():
        if "." not in k:
            raise ValueError(f"--read-option needs SOURCE.key=value, got {k}={v!r}")
        src, key = k.split(".", 1)
        opts.setdefault(src, {})[key] = v
    return generate_for_items(model, read_instruct(data, split=split), limit, opts, batch_size, max_new_tokens, ddp,
                              log=lambda msg: typer.echo(msg, err=True), what=f"{str(data)!r} in split {split!r}",
                              grounded=grounded)
