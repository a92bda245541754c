"""The archive half of `ecgbatch report`: ``--input ARCHIVE`` runs ecgbatch.pipelines.report (Ray
Data + vLLM engine actors, exactly once, resumable), prints a summary, and optionally exports the
reports (-o) and a static HTML browser (--html)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ecgbatch.commands.common import fail, quiet_libraries, stderr_console, workspace_dir
from ecgbatch.llava.errors import EcgLlavaError
from ecgbatch.llava.grounding import use_grounded
from ecgbatch.models import llava_model


@dataclass
class ArchiveOptions:
    archive: Optional[str]
    workspace: Optional[Path]
    model: str
    lora: Optional[Path]
    question: Optional[str]
    ddp: bool
    rag: int
    reference: Optional[Path]
    engines: int
    gpus_per_engine: Optional[float]
    max_tokens: int
    address: Optional[str]
    resume: bool
    output: Optional[Path]
    html: Optional[Path]
    dtype: str
    batch_size: Optional[int]
    block_size: int
    num_cpus: Optional[int]
    as_json: bool
    progress: bool
    grounded: Optional[bool] = None     # --grounded/--no-grounded (None: the model's config)
    repetition_penalty: Optional[float] = None   # --repetition-penalty (None: the model's config)


def _check_ddp_encoder(console, folder, table_root: str) -> None:
    """Warn when the workspace's embeddings (whose probes give the DDP findings) come from another
    encoder than the one the model's ECG tower is: the model learnt (if it was trained with DDP)
    the findings of its own tower's encoder. A warning, not a refusal: the prompt is text."""
    from ecgbatch.llava.diagnosis_prompt import DiagnosisPromptUnavailableError, tower_encoder
    from ecgbatch.pipelines.workspace import ModelTable

    used = ModelTable(Path(table_root).parent, Path(table_root).name).read_meta().get("model")
    try:
        tower, _ = tower_encoder(folder)
    except DiagnosisPromptUnavailableError:
        tower = None
    if tower is None or Path(str(tower)).name != Path(str(used)).name:
        console.print(f"[yellow]warning[/yellow]: --ddp findings come from {used}'s probes on the workspace's "
                      f"embeddings, but the model's ECG tower is "
                      f"{'no installed zoo encoder' if tower is None else repr(tower)}'s: a model trained with "
                      "DDP saw its own tower encoder's findings")


def _last_job(console, ws: Path) -> dict:
    """The newest report table's meta (what --resume without --input continues)."""
    metas = sorted(ws.glob("report-*/report.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not metas:
        fail(f"nothing to resume in {ws}: give --input ARCHIVE")
    return json.loads(metas[0].read_text())


def _settings(console, o: ArchiveOptions, meta: dict | None):
    from ecgbatch.pipelines.report import DEFAULT_QUESTION, PromptSettings

    if meta is not None:
        return PromptSettings(**meta["settings"])
    if sum([o.question is not None, o.ddp, o.rag > 0]) > 1:
        fail("--question, --ddp and --rag are different prompt modes: pick one")
    if o.rag > 0 and o.reference is None:
        fail("--rag K needs --reference WORKSPACE (a workspace with reports and embeddings)")
    mode = "question" if o.question is not None else "ddp" if o.ddp else "rag" if o.rag > 0 else "report"
    return PromptSettings(mode=mode, question=o.question or DEFAULT_QUESTION, max_tokens=o.max_tokens,
                          rag_k=o.rag, repetition_penalty=o.repetition_penalty)


def run_archive(o: ArchiveOptions) -> None:
    quiet_libraries()
    from ecgbatch.serving.engine import engine_env

    engine_env(log_stream=False)
    from ecgbatch.encoders.checkpoint import CheckpointError
    from ecgbatch.pipelines import report as pipeline
    from ecgbatch.pipelines.workspace import WorkspaceLockedError

    console = stderr_console()
    ws = workspace_dir(o.workspace)
    meta = None
    if o.archive is None:
        if not o.resume:
            fail("give --input ARCHIVE (or --resume to continue the workspace's last report job)")
        meta = _last_job(console, ws)
        o.archive, o.model = meta["archive"], meta["model_dir"]
        o.lora = Path(meta["adapter"]) if meta.get("adapter") else None
        o.dtype = meta.get("dtype", o.dtype)
        console.print(f"resuming {meta['model']} ({meta['prompt_mode']}) on {o.archive}")
    settings = _settings(console, o, meta)
    if meta is not None and settings.mode == "rag":
        o.reference = Path(settings.reference).parent   # the reference workspace of the first run
    prompt_stage = None
    try:
        folder, lora = llava_model(o.model, o.lora, log=lambda m: typer.echo(m, err=True))  # no --lora: its own
        if meta is not None:
            lora = o.lora                       # resume: exactly the first run's adapter (or none)
        else:
            from ecgbatch.llava.loading import read_config   # torch

            settings.grounded = use_grounded(o.grounded, o.ddp, read_config(folder))
        if settings.mode in ("ddp", "rag"):
            from ecgbatch.pipelines import report_prompts

            prompt_stage, settings = report_prompts.prepare(settings, ws, o.reference, o.archive)
            if settings.mode == "ddp":
                _check_ddp_encoder(console, folder, settings.reference)
        s = pipeline.run(o.archive, folder, ws, lora=lora, settings=settings, engines=o.engines,
                         gpus_per_engine=o.gpus_per_engine, batch_size=o.batch_size,
                         block_size=o.block_size, dtype=o.dtype, address=o.address, num_cpus=o.num_cpus,
                         prompt_stage=prompt_stage, output=o.output, console=console, progress=o.progress)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: committed blocks are kept; rerun the same command "
                      "(or `ecgbatch report --resume`) to finish")
        raise typer.Exit(130)
    except (EcgLlavaError, CheckpointError, FileNotFoundError, ValueError, WorkspaceLockedError) as exc:
        fail(str(exc))
    except ConnectionError as exc:
        fail(f"cannot connect to the Ray cluster at {o.address!r}: {exc}")
    if o.html is not None:
        from ecgbatch.pipelines.report_html import write_site

        site = write_site(pipeline.ReportTable(ws, Path(s.table).name), o.html)
        console.print(f"html: {site}")
    if o.as_json:
        d = dict(s.__dict__, records_per_s=round(s.records_per_s, 3),
                 output_tokens_per_s=round(s.output_tokens_per_s, 3))
        print(json.dumps(d, indent=2, default=str))
        return
    _print_summary(console, s)


def _print_summary(console, s) -> None:
    t = Table(title=f"report: {Path(s.model).name} ({s.prompt_mode})", show_header=False)
    t.add_row("table", s.table)
    t.add_row("records in archive", str(s.total_records))
    t.add_row("already committed (skipped)", str(s.already_done))
    t.add_row("reported now", str(s.reported))
    t.add_row("failed now", str(s.failed))
    t.add_row("tokens", f"{s.prompt_tokens} prompt, {s.output_tokens} output "
                         f"({s.output_tokens_per_s:.1f} output tok/s while streaming)")
    t.add_row("throughput", f"{s.records_per_s:.2f} records/s over {s.seconds:.1f} s (incl. engine start-up "
                            f"{s.first_result_s:.0f} s)")
    if s.finish_reasons:
        t.add_row("finish reasons", ", ".join(f"{k}: {v}" for k, v in sorted(s.finish_reasons.items())))
    if s.failure_kinds:
        t.add_row("failures by kind", ", ".join(f"{k}: {v}" for k, v in sorted(s.failure_kinds.items())))
    if s.output:
        t.add_row("written", s.output)
    console.print(t)
