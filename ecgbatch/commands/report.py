"""`ecgbatch report RECORD...`: a report (or an answer to --question) for a few records, generated
by an ECG-LLaVA model through vLLM, in this process (ecgbatch.serving.record_reports).
`ecgbatch report --input ARCHIVE` is the archive-scale Ray Data job (ecgbatch.commands.report_archive,
ecgbatch.pipelines.report). vLLM and torch are imported inside the command body."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ecgbatch.commands.common import VERBOSE_HELP, fail
from ecgbatch.commands.report_archive import ArchiveOptions, run_archive
from ecgbatch.llava.errors import EcgLlavaError
from ecgbatch.llava.grounding import finding_text
from ecgbatch.llava.questions import DEFAULT_QUESTION
from ecgbatch.models import DEFAULT_LLAVA
from ecgbatch.quiet import set_verbosity


def report_cmd(
    records: Optional[List[str]] = typer.Argument(None, help="ECG records (any format ecgbatch reads)"),
    archive: Optional[str] = typer.Option(None, "--input", "-i", help="Report a whole ARCHIVE (folder or "
                                          "pyarrow URI) as a Ray Data job into the workspace"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="[--input] workspace folder "
                                             "[default: $ECGBATCH_WORKSPACE, else ~/.ecgbatch/workspace]"),
    model: str = typer.Option(DEFAULT_LLAVA, "--model", "-m", help="ECG-LLaVA model folder or zoo name"),
    lora: Optional[Path] = typer.Option(None, "--lora", help="peft LoRA adapter for the model's language model "
                                        "[default: the model's own (its lora/), if it has one]"),
    question: Optional[str] = typer.Option(None, "--question", "-q", help="what to ask about each ECG "
                                           f"[default: the report prompt {DEFAULT_QUESTION!r}]"),
    ddp: bool = typer.Option(False, "--ddp", help="DDP, the paper's diagnosis-driven prompt: the findings of "
                             "the calibrated probes of the model's tower encoder (with --input: from the "
                             "workspace's embeddings) before the question"),
    grounded: Optional[bool] = typer.Option(None, "--grounded/--no-grounded", help="state what ecgbatch "
                                            "measured and its probes found before the question [default: "
                                            "the model's config, prompt.grounded]; --ddp replaces it"),
    rag: int = typer.Option(0, "--rag", min=0, help="[--input] give the K nearest reference reports as examples"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="[--input --rag] workspace with "
                                             "embeddings and reports of reference records"),
    engines: int = typer.Option(1, "--engines", min=1, help="[--input] vLLM engine actors"),
    gpus_per_engine: Optional[float] = typer.Option(None, "--gpus-per-engine", help="[--input] GPUs per "
                                                    "engine [default: 1 if the cluster has GPUs, else CPU]"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="most new tokens per report"),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty", min=0.01, max=10.0,
                                                       help="vLLM's repetition penalty (1 = none) "
                                                       "[default: the model's config, generation]"),
    address: Optional[str] = typer.Option(None, "--address", help="[--input] Ray cluster: auto or "
                                          "ray://host:port [default: a local Ray for this command]"),
    resume: bool = typer.Option(False, "--resume", help="[--input] continue an interrupted job (every run "
                                "skips committed records; without --input: the workspace's last job)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="[--input] also write every report "
                                          "to one .parquet or .jsonl file"),
    html: Optional[Path] = typer.Option(None, "--html", help="[--input] write a static page per record "
                                        "(plot, report, labels) and an index to this folder"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on GPU), "
                                 "float32, bfloat16 or float16"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="[--input] requests per engine "
                                              "call [default: 32 on CPU, 256 on GPU]"),
    block_size: int = typer.Option(64, "--block-size", min=1, help="[--input] records per committed shard"),
    num_cpus: Optional[int] = typer.Option(2, "--num-cpus", help="[--input] CPUs of the local Ray"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (reports, or the job summary)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="[--input] progress bar"),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Generate a report (or answer --question) for each RECORD, or for every record of an
    archive (--input), with an ECG-LLaVA model (vLLM)."""
    set_verbosity(verbose)
    if archive is not None or (resume and not records):
        if records:
            fail("give RECORD... or --input ARCHIVE, not both")
        return run_archive(ArchiveOptions(archive, workspace, model, lora, question, ddp, rag, reference,
                                          engines, gpus_per_engine, max_tokens, address, resume, output,
                                          html, dtype, batch_size, block_size, num_cpus, as_json, progress,
                                          grounded, repetition_penalty))
    if not records:
        fail("give RECORD... (or --input ARCHIVE)")
    if rag or html is not None or output is not None:
        fail("--rag, --html and -o need --input ARCHIVE")
    _report_records(records, model, lora, question or DEFAULT_QUESTION, max_tokens, dtype, as_json, ddp,
                    grounded, repetition_penalty)


def _report_records(records, model, lora, question, max_tokens, dtype, as_json, ddp: bool = False,
                    grounded: Optional[bool] = None, repetition_penalty: Optional[float] = None) -> None:
    from ecgbatch.encoders.checkpoint import CheckpointError
    from ecgbatch.serving.record_reports import report_records

    try:
        rep = report_records(records, model, lora, question, max_tokens, dtype, ddp, grounded,
                             repetition_penalty=repetition_penalty,
                             on_unreadable=lambda path, msg: typer.echo(f"error: {path}: {msg}", err=True),
                             log=lambda m: typer.echo(m, err=True))
    except (EcgLlavaError, CheckpointError) as exc:
        fail(exc)                  # "kind: message"
    if not rep.results:
        fail("no record could be read")
    print_reports(rep, question, as_json)
    if rep.failed:
        raise typer.Exit(code=1)


def print_reports(rep, question, as_json: bool) -> None:
    """The reports (a RecordReports; with each record's DDP findings when DDP was on)."""
    results, failed, ddp_info = rep.results, rep.failed, rep.ddp
    found = rep.findings if rep.findings is not None else [None] * len(results)
    grounds = rep.grounds or [{"findings": [], "contradictions": []}] * len(results)
    if as_json:
        out = {"question": question, "adapter": str(rep.adapter) if rep.adapter is not None else None,
               "ddp": ddp_info, "grounded": rep.grounded,
               "reports": [{"record": r.id, "text": r.text, "n_prompt_tokens": r.n_prompt_tokens,
                            "n_output_tokens": r.n_output_tokens, "finish_reason": r.finish_reason,
                            **({"ddp_findings": [x.to_dict() for x in f]} if f is not None else {}), **g}
                           for r, f, g in zip(results, found, grounds)],
               "failures": [{"record": p, "error": m} for p, m in failed]}
        typer.echo(json.dumps(out, indent=2))
        return
    if ddp_info:
        typer.echo(f"DDP on: findings of {ddp_info['encoder']}'s probes ({', '.join(ddp_info['probes'])})")
    if rep.grounded:
        typer.echo("grounded prompt on: the findings below were stated before the question")
    for r, f, g in zip(results, found, grounds):
        typer.echo(f"== {r.id}")
        if f is not None:
            typer.echo("   DDP: " + ("; ".join(f"{x.text} (p={x.probability:.2f})" for x in f) or "no finding"))
        typer.echo(r.text.strip())
        if r.finish_reason == "length":
            typer.echo(f"   [stopped at --max-tokens {r.n_output_tokens}]")
        typer.echo("   findings: " + ("; ".join(finding_text(x) for x in g["findings"]) or "none"))
        for c in g["contradictions"]:
            typer.echo(f"   contradiction: {c['statement']!r}: {c['reason']}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
