"""Archive-scale commands: `ecgbatch embed`, `ecgbatch index build`, `ecgbatch search`,
`ecgbatch classify`. Thin wrappers over ecgbatch.pipelines; heavy imports inside the bodies."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ecgbatch.commands.common import VERBOSE_HELP, fail, quiet_libraries, stderr_console, workspace_dir
from ecgbatch.quiet import set_verbosity

WS_HELP = ("Workspace folder [default: $ECGBATCH_WORKSPACE if set, else ~/.ecgbatch/workspace]; "
           "`embed` writes <workspace>/<model-key>/, the other commands read it.")
MODEL_HELP = "Model table to use when the workspace holds several (model name or table key)."


def _open(ws: Optional[Path], model: Optional[str]):
    from ecgbatch.pipelines.workspace import open_table

    try:
        return open_table(workspace_dir(ws), model)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


# ---------------------------------------------------------------------------------------------
def embed_command(
    archive: Optional[str] = typer.Argument(None, help="Archive folder or pyarrow URI (s3://, gs://, "
                                            "file://). Optional with --resume (then the workspace's last job)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WS_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Zoo name or model folder [default: ecg-coca-mini]."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained",
                                             help="Weights: 'default' (zoo), a folder or an ECG-Chat .pt."),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray cluster: 'auto' or ray://host:port [default: start a "
                                               "local Ray for this command]. ecgbatch must be installed there."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Records per encoder forward pass "
                                             "[default: 64 on CPU, 512 on GPU]."),
    encoders: int = typer.Option(1, "--encoders", "-n", help="Encoder actors (one model each)."),
    gpus_per_encoder: Optional[float] = typer.Option(None, "--gpus-per-encoder",
                                                     help="GPUs per encoder actor [default: 1 if the "
                                                          "cluster has GPUs, else 0 = CPU]."),
    cpus_per_encoder: float = typer.Option(1.0, "--cpus-per-encoder", help="CPUs (torch threads) per CPU encoder."),
    num_cpus: Optional[int] = typer.Option(2, "--num-cpus", help="CPUs of the local Ray (ignored with --address)."),
    block_size: int = typer.Option(128, "--block-size", help="Records per committed shard (work unit)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted job: committed blocks "
                                "are kept, the rest is redone (every run skips committed records)."),
    measure: bool = typer.Option(False, "--measure/--no-measure", help="Also compute waveform measurements "
                                 "(HR, PR, QRS, QT, QTc columns, usable in --where) with NeuroKit2: "
                                 "~0.2 s per record per core, ~10x the rest of the work."),
    index: bool = typer.Option(True, "--index/--no-index", help="Build or update the FAISS index at the end."),
    index_kind: str = typer.Option("auto", "--index-kind", help="auto | flat | ivfpq | hnsw"),
    allow_random_init: bool = typer.Option(False, "--allow-random-init", help="If the zoo model's trained "
                                           "weights are missing, use its random init (loud warning)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Embed every record of an ECG archive into the workspace (Ray Data; exactly-once, resumable)."""
    set_verbosity(verbose)
    quiet_libraries()
    from ecgbatch.pipelines import embed as pipeline
    from ecgbatch.pipelines.workspace import WorkspaceLockedError, list_tables

    console = stderr_console()
    ws = workspace_dir(workspace)
    if archive is None:
        if not resume:
            fail("give an ARCHIVE (or --resume to continue the workspace's last job)")
        tables = [t for t in list_tables(ws) if model is None or t.read_meta().get("model") == model]
        if not tables:
            fail(f"nothing to resume in {ws}")
        meta = tables[0].read_meta()
        archive, model = meta["archive"], model or meta["model"]
        console.print(f"resuming {model} on {archive}")
    model = model or pipeline.DEFAULT_MODEL
    if index_kind not in ("auto", "flat", "ivfpq", "hnsw"):
        fail(f"--index-kind must be auto, flat, ivfpq or hnsw, got {index_kind!r}")
    try:
        s = pipeline.run(archive, ws, model, pretrained=pretrained, address=address, batch_size=batch_size,
                         encoders=encoders, gpus_per_encoder=gpus_per_encoder,
                         cpus_per_encoder=cpus_per_encoder, block_size=block_size, measure=measure,
                         build_index=index, index_kind=index_kind, allow_random_init=allow_random_init,
                         num_cpus=num_cpus, console=console, progress=progress)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: committed blocks are kept; rerun the same command "
                      "(or `ecgbatch embed --resume`) to finish")
        raise typer.Exit(130)
    except (FileNotFoundError, ValueError, WorkspaceLockedError) as exc:
        fail(str(exc))
    except ConnectionError as exc:  # --address with no cluster there
        fail(f"cannot connect to the Ray cluster at {address!r}: {exc}")
    if as_json:
        d = dict(s.__dict__, records_per_s=round(s.records_per_s, 2))
        print(json.dumps(d, indent=2, default=str))
        return
    _print_embed_summary(console, s)


def _print_embed_summary(console, s) -> None:
    t = Table(title=f"embed: {s.model}", show_header=False)
    t.add_row("table", s.table)
    t.add_row("records in archive", str(s.total_records))
    t.add_row("already committed (skipped)", str(s.already_done))
    t.add_row("embedded now", str(s.embedded))
    t.add_row("failed now", str(s.failed))
    t.add_row("blocks committed", str(s.blocks_committed))
    t.add_row("throughput", f"{s.records_per_s:.1f} records/s over {s.seconds:.1f} s (incl. start-up)")
    if s.failure_kinds:
        t.add_row("failures by kind", ", ".join(f"{k}: {v}" for k, v in sorted(s.failure_kinds.items())))
    if s.index:
        t.add_row("index", f"{s.index['action']} {s.index['kind']} ({s.index['rows']} rows) in {s.index['path']}")
    console.print(t)


# ---------------------------------------------------------------------------------------------
def index_build_command(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WS_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    kind: str = typer.Option("auto", "--kind", help="auto (flat below 100k vectors, else ivfpq) | flat | ivfpq | hnsw"),
    gpu: bool = typer.Option(False, "--gpu", help="Train/add on GPU (faiss-gpu)."),
) -> None:
    """(Re)build the FAISS index of a workspace's embeddings."""
    from ecgbatch.pipelines.embed import build_or_update_index

    console = stderr_console()
    if kind not in ("auto", "flat", "ivfpq", "hnsw"):
        fail(f"--kind must be auto, flat, ivfpq or hnsw, got {kind!r}")
    table = _open(workspace, model)
    from ecgbatch.index import EcgIndexError

    try:
        info = build_or_update_index(table, kind=kind, gpu=gpu, rebuild=True)
    except (EcgIndexError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"built {info['kind']} index of {info['rows']} records in {info['seconds']:.2f} s: {info['path']}")


# ---------------------------------------------------------------------------------------------
def _emit_rows(rows: list[dict], columns: tuple[str, ...], as_json: bool, as_csv: bool, title: str,
               console, extra: Optional[dict] = None) -> None:
    if as_json:
        print(json.dumps({**(extra or {}), "rows": rows}, indent=2, default=str))
        return
    if as_csv:
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        return

    out = Console()
    if not out.is_terminal:
        out = Console(width=160)  # pipes and logs: do not squeeze the table into 80 columns
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c in ("rank", "score", "age", "records", "percent") else "left",
                     overflow="ellipsis", no_wrap=c != "diagnoses", max_width=70 if c == "diagnoses" else None)
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if c == "diagnoses" and isinstance(v, str) and len(v) > 140:
                v = v[:137] + "..."
            cells.append("" if v is None else f"{v:.4f}" if c == "score" else
                         f"{v:g}" if isinstance(v, float) else str(v))
        t.add_row(*cells)
    out.print(t)


def search_command(
    query: Optional[str] = typer.Argument(None, help="Text query, e.g. \"atrial fibrillation\"."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WS_HELP),
    k: int = typer.Option(10, "-k", "--top-k", help="Number of hits."),
    where: Optional[str] = typer.Option(None, "--where", help="Cohort filter on metadata, e.g. "
                                        "\"age >= 60 and sex == 'F'\" (columns: age, sex, diagnoses, "
                                        "labels, hr_bpm, qtc_ms, ...)."),
    like: Optional[str] = typer.Option(None, "--like", help="Find ECGs similar to this record id or ECG file."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV on stdout."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a 12-lead plot of every hit to this folder."),
    versus: Optional[str] = typer.Option(None, "--versus", help="Rank by QUERY rather than this text "
                                         "(the query vector minus this one), e.g. --versus \"sinus rhythm\"."),
    expand: bool = typer.Option(False, "--expand", help="Ensemble a query that names a built-in label with "
                                "that label's prompts."),
    contrast: bool = typer.Option(False, "--contrast", help="Rank a query that names a built-in label against "
                                  "its label set's normal class (SR / NORM)."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Rank a query that names a label the model "
                               "has a trained probe for by the probe's probability [default]; --no-probe: "
                               "by the text's cosine similarity."),
) -> None:
    """Search the embedded archive by text or by example ECG."""
    quiet_libraries()
    from ecgbatch.index import EcgIndexError
    from ecgbatch.pipelines.queries import RESULT_COLUMNS, plot_hits, search

    console = stderr_console()
    if (query is None) == (like is None):
        fail("give a text QUERY or --like RECORD_OR_ID (not both)")
    if as_json and as_csv:
        fail("--json and --csv are exclusive")
    table = _open(workspace, model)
    try:
        res = search(table, query, like=like, k=k, where=where, expand=expand, contrast=contrast, versus=versus,
                     probe=probe)
    except (EcgIndexError, ValueError, FileNotFoundError) as exc:   # ProbeError is a ValueError
        fail(str(exc))
    if len(res.prompts) > 1 and not (as_json or as_csv):
        console.print(f"query ensembled with the prompts of {', '.join(res.matched_labels)} "
                      f"({len(res.prompts)} prompts)")
    for note in res.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if res.ranked_by.startswith("probe:") and not (as_json or as_csv):
        console.print(f"ranked by the model's calibrated probe: score = P({res.ranked_by.split(':')[-1]}) "
                      f"({res.ranked_by.split(':')[1]}; --no-probe ranks by the text)")
    if res.contrast and not (as_json or as_csv):
        console.print(f"ranked against {res.contrast[0]!r} ({len(res.contrast)} prompts subtracted)")
    title = f"{res.mode} search: {res.query!r}" + (f" where {where}" if where else "")
    if as_json or as_csv:
        _emit_rows(res.hits, RESULT_COLUMNS, as_json, as_csv, title, console,
                   extra={k_: v for k_, v in res.to_dict().items() if k_ != "hits"})
    else:  # the table shows paths relative to the archive (JSON/CSV give the full source)
        from ecgbatch.pipelines.sources import relative

        root = table.read_meta().get("archive", "")
        rows = [dict(h, path=relative(h["source"], root)) for h in res.hits]
        _emit_rows(rows, ("rank", "score", "record_id", "path", "age", "sex", "diagnoses"), False, False,
                   title, console)
    if plot is not None:
        files, skipped = plot_hits(res, plot)
        console.print(f"{len(files)} plots written to {plot}")
        for rid, why in skipped:
            console.print(f"[yellow]not plotted[/yellow] {rid}: {why}")


# ---------------------------------------------------------------------------------------------
def classify_command(
    labels: str = typer.Option(..., "--labels", "-l", help="ptbxl-rhythm | ptbxl-super | ptbxl-sub | "
                               "ptbxl-form | cpsc2018 | a JSON/YAML file {label: prompt or [prompts]}."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WS_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Predictions parquet "
                                          "[default: <workspace>/<model-key>/classify/<labels>.parquet]."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Score the label set's prompts (ECG-Chat's "
                                   "zero-shot) even where the model ships a trained probe for it."),
    top_k: int = typer.Option(1, "--top-k", help="Zero-shot: labels in each predicted set (without --threshold)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Zero-shot: predict every label "
                                              "scoring >= this (multi-label; at least the best one)."),
    softmax: bool = typer.Option(False, "--softmax", help="Zero-shot: softmax over labels instead of ECG-Chat's sigmoid."),
    as_json: bool = typer.Option(False, "--json", help="Label counts as JSON on stdout."),
) -> None:
    """Classify every embedded record from its stored embedding (no re-encoding): the model's
    calibrated linear probe for the label set where it has one, else zero-shot prompts."""
    quiet_libraries()
    from ecgbatch.encoders.probes import ProbeError
    from ecgbatch.pipelines import classify

    console = stderr_console()
    table = _open(workspace, model)
    try:
        res = classify.run(table, labels, output=output, softmax=softmax, top_k=top_k, threshold=threshold,
                           zero_shot=zero_shot)
    except (ValueError, FileNotFoundError, ProbeError) as exc:
        fail(str(exc))
    rows = sorted(res.summary_rows(), key=lambda r: (r["records"] is None, -(r["records"] or 0)))
    if res.method == "probe":
        what = "top label" if "top" in res.preds.column_names else "predicted"
        title = f"{res.labelset} ({what}, calibrated linear probe): {res.n_records} records"
    else:
        title = f"zero-shot {res.labelset} (argmax of prompt scores, not calibrated): {res.n_records} records"
    cols = ("label", "records", "percent", "note") if res.untrained else ("label", "records", "percent")
    _emit_rows(rows, cols, as_json, False, title, console,
               extra={"labelset": res.labelset, "method": res.method, "probe": res.probe,
                      "untrained": list(res.untrained), "records": res.n_records, "output": res.output})
    if not as_json:
        what = "probabilities per label, predicted set at the shipped thresholds, top label" \
            if res.method == "probe" else "scores per label + predicted set"
        console.print(f"predictions ({what}): {res.output}")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed_command)
    index_app = typer.Typer(help="FAISS index of a workspace.", no_args_is_help=True)
    index_app.command("build")(index_build_command)
    app.add_typer(index_app, name="index")
    app.command("search")(search_command)
    app.command("classify")(classify_command)
