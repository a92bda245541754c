"""`ecgbatch report RECORD...`: a report (or an answer to --question) for a few records, generated
by an ECG-LLaVA model through vLLM, in this process. `ecgbatch report --input ARCHIVE` is the
archive-scale Ray Data job (ecgbatch.commands.report_archive, ecgbatch.pipelines.report).
vLLM and torch are imported inside the command body."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_MODEL = "ecg-llava-mini"
from ecgbatch.pipelines.report import DEFAULT_QUESTION  # noqa: E402 - one report prompt for both paths


from ecgbatch.commands.common import fail as _fail  # noqa: E402 - the one error exit of the command line


def resolve_llava_model(model: str, lora: Optional[Path] = None) -> tuple[Path, Optional[Path]]:
    """(full model folder, LoRA adapter or None) for --model and --lora, the one resolution of
    every generative command: ecgbatch.llava.assemble.resolve_model (a full folder, a trained-only
    folder or zoo name assembled into the cache at first use, $ECGBATCH_MODELS_DIR/<name>). The
    adapter is --lora when given, else the one that comes with the model (its lora/ folder).
    Raises ModelNotInstalledError / ModelFolderError saying how to get a model."""
    from ecgbatch.llava.assemble import resolve_model

    folder, own = resolve_model(model, log=lambda m: typer.echo(m, err=True))
    return folder, (lora if lora is not None else own)


def read_ecgs(records: List[str], config):
    """[(record, ECG array)] for the readable records and [(record, message)] for the others."""
    from ecgbatch.io import read_record
    from ecgbatch.io.errors import EcgReadError
    from ecgbatch.llava.inputs import preprocess_for_model
    from ecgbatch.signal.content import require_physiological

    ok, failed = [], []
    for path in records:
        try:
            rec = read_record(path)
            require_physiological(rec)      # no confident report on a flat or absurd signal
            ok.append((path, preprocess_for_model(rec, config, record_id=path)))
        except (EcgReadError, ValueError) as exc:   # EcgInputError is a ValueError
            failed.append((path, f"{getattr(exc, 'kind', type(exc).__name__)}: {exc}"))
    return ok, failed


def report_cmd(
    records: Optional[List[str]] = typer.Argument(None, help="ECG records (any format ecgbatch reads)"),
    archive: Optional[str] = typer.Option(None, "--input", "-i", help="Report a whole ARCHIVE (folder or "
                                          "pyarrow URI) as a Ray Data job into the workspace"),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="[--input] workspace folder "
                                             "[default: $ECGBATCH_WORKSPACE, else ~/.ecgbatch/workspace]"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="ECG-LLaVA model folder or zoo name"),
    lora: Optional[Path] = typer.Option(None, "--lora", help="peft LoRA adapter for the model's language model "
                                        "[default: the model's own (its lora/), if it has one]"),
    question: Optional[str] = typer.Option(None, "--question", "-q", help="what to ask about each ECG "
                                           f"[default: the report prompt {DEFAULT_QUESTION!r}]"),
    ddp: bool = typer.Option(False, "--ddp", help="diagnosis-driven prompt: the findings of the calibrated "
                             "probes of the model's tower encoder (with --input: from the workspace's "
                             "embeddings) before the question"),
    rag: int = typer.Option(0, "--rag", min=0, help="[--input] give the K nearest reference reports as examples"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="[--input --rag] workspace with "
                                             "embeddings and reports of reference records"),
    engines: int = typer.Option(1, "--engines", min=1, help="[--input] vLLM engine actors"),
    gpus_per_engine: Optional[float] = typer.Option(None, "--gpus-per-engine", help="[--input] GPUs per "
                                                    "engine [default: 1 if the cluster has GPUs, else CPU]"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="most new tokens per report"),
    address: Optional[str] = typer.Option(None, "--address", help="[--input] Ray cluster: auto or "
                                          "ray://host:port [default: a local Ray for this command]"),
    resume: bool = typer.Option(False, "--resume", help="[--input] continue an interrupted job (every run "
                                "skips committed records; without --input: the workspace's last job)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="[--input] also write every report "
                                          "to one .parquet or .jsonl file"),
    html: Optional[Path] = typer.Option(None, "--html", help="[--input] write a static page per record "
                                        "(plot, report, labels) and an index to this folder"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16 (bfloat16 is faster on CPU)"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="[--input] requests per engine call"),
    block_size: int = typer.Option(64, "--block-size", min=1, help="[--input] records per committed shard"),
    num_cpus: Optional[int] = typer.Option(2, "--num-cpus", help="[--input] CPUs of the local Ray"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (reports, or the job summary)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="[--input] progress bar"),
) -> None:
    """Generate a report (or answer --question) for each RECORD, or for every record of an
    archive (--input), with an ECG-LLaVA model (vLLM)."""
    if archive is not None or (resume and not records):
        if records:
            _fail("give RECORD... or --input ARCHIVE, not both")
        from ecgbatch.commands.report_archive import ArchiveOptions, run_archive

        return run_archive(ArchiveOptions(archive, workspace, model, lora, question, ddp, rag, reference,
                                          engines, gpus_per_engine, max_tokens, address, resume, output,
                                          html, dtype, batch_size, block_size, num_cpus, as_json, progress))
    if not records:
        _fail("give RECORD... (or --input ARCHIVE)")
    if rag or html is not None or output is not None:
        _fail("--rag, --html and -o need --input ARCHIVE")
    _report_records(records, model, lora, question or DEFAULT_QUESTION, max_tokens, dtype, as_json, ddp)


def _engine_env() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")   # stdout is the report (--json)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def _ddp_questions(model: str, ecgs, question: str):
    """(question per record, findings per record, labeller description): DDP (ecgbatch.llava.ddp)
    for the records, computed before the engine starts, so that a missing probe fails fast."""
    import numpy as np

    from ecgbatch.llava.ddp import DdpLabeller, ddp_question

    labeller = DdpLabeller.for_model(model)
    findings = labeller.findings(np.stack([x for _, x in ecgs]))
    return [ddp_question(question, f) for f in findings], findings, labeller.describe()


@dataclass
class RecordReports:
    results: list                  # an EcgResult per readable record, in order
    failed: list                   # [(record, message)] of the unreadable ones
    adapter: Optional[Path]        # the LoRA adapter used (--lora, else the model's own, else None)
    findings: Optional[list] = None   # DDP findings per result (None: DDP off)
    ddp: object = False            # the DDP labeller's description, or False


def report_records(records: List[str], model: str = DEFAULT_MODEL, lora: Optional[Path] = None,
                   question: str = DEFAULT_QUESTION, max_tokens: int = 256, dtype: str = "float32",
                   ddp: bool = False, on_unreadable=None) -> RecordReports:
    """What `ecgbatch report RECORD...` does, for callers (the demo): resolve the model and its
    adapter, check them, read the records, (DDP: the findings before the engine starts), generate
    through vLLM. ``on_unreadable(record, message)`` is called for each unreadable record before
    the engine starts. Raises EcgLlavaError / CheckpointError (the model, the adapter, DDP, the
    engine)."""
    from ecgbatch.serving.engine import EcgLlavaEngine, EcgRequest
    from ecgbatch.serving.folder import check_adapter, check_model_folder

    _engine_env()
    folder, lora = resolve_llava_model(model, lora)
    config = check_model_folder(folder)
    rank = check_adapter(lora, config) if lora is not None else None
    ecgs, failed = read_ecgs(records, config)
    for path, msg in failed:
        if on_unreadable is not None:
            on_unreadable(path, msg)
    out = RecordReports([], failed, lora)
    if not ecgs:
        return out
    questions = [question] * len(ecgs)
    if ddp:
        questions, out.findings, out.ddp = _ddp_questions(model, ecgs, question)
    engine = EcgLlavaEngine(folder, dtype=dtype, lora_rank=rank, max_num_seqs=max(1, len(ecgs)))
    reqs = [EcgRequest(x, engine.prompt_ids(q), id=path) for (path, x), q in zip(ecgs, questions)]
    out.results = engine.generate(reqs, max_tokens=max_tokens, lora=lora)
    return out


def _report_records(records, model, lora, question, max_tokens, dtype, as_json, ddp: bool = False) -> None:
    from ecgbatch.encoders.checkpoint import CheckpointError
    from ecgbatch.llava.errors import EcgLlavaError

    try:
        rep = report_records(records, model, lora, question, max_tokens, dtype, ddp,
                             on_unreadable=lambda path, msg: typer.echo(f"error: {path}: {msg}", err=True))
    except (EcgLlavaError, CheckpointError) as exc:
        _fail(exc)                  # "kind: message"
    if not rep.results:
        _fail("no record could be read")
    _print(rep, question, as_json)
    if rep.failed:
        raise typer.Exit(code=1)


def _print(rep: RecordReports, question, as_json: bool) -> None:
    """The reports (with each record's DDP findings when DDP was on)."""
    results, failed, ddp_info = rep.results, rep.failed, rep.ddp
    found = rep.findings if rep.findings is not None else [None] * len(results)
    if as_json:
        out = {"question": question, "adapter": str(rep.adapter) if rep.adapter is not None else None,
               "ddp": ddp_info,
               "reports": [{"record": r.id, "text": r.text, "n_prompt_tokens": r.n_prompt_tokens,
                            "n_output_tokens": r.n_output_tokens, "finish_reason": r.finish_reason,
                            **({"ddp_findings": [x.to_dict() for x in f]} if f is not None else {})}
                           for r, f in zip(results, found)],
               "failures": [{"record": p, "error": m} for p, m in failed]}
        typer.echo(json.dumps(out, indent=2))
        return
    if ddp_info:
        typer.echo(f"DDP on: findings of {ddp_info['encoder']}'s probes ({', '.join(ddp_info['probes'])})")
    for r, f in zip(results, found):
        typer.echo(f"== {r.id}")
        if f is not None:
            typer.echo("   DDP: " + ("; ".join(f"{x.text} (p={x.probability:.2f})" for x in f) or "no finding"))
        typer.echo(r.text.strip())
        if r.finish_reason == "length":
            typer.echo(f"   [stopped at --max-tokens {r.n_output_tokens}]")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
