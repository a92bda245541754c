"""`ecgbatch report RECORD...`: a report (or an answer to --question) for a few records, generated
by an ECG-LLaVA model through vLLM, in this process. `ecgbatch report --input ARCHIVE` is the
archive-scale Ray Data job (ecgbatch.commands.report_archive, ecgbatch.pipelines.report).
vLLM and torch are imported inside the command body."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

DEFAULT_MODEL = "ecg-llava-mini"
from ecgbatch.pipelines.report import DEFAULT_QUESTION  # noqa: E402 - one report prompt for both paths


from ecgbatch.commands.common import fail as _fail  # noqa: E402 - the one error exit of the command line


def resolve_llava_model(model: str) -> Path:
    """A model folder, or a zoo name looked up in $ECGBATCH_MODELS_DIR/<name>. Raises
    ModelNotInstalledError with how to get one when there is none."""
    from ecgbatch.serving.errors import ModelNotInstalledError

    p = Path(model)
    if (p / "config.json").is_file():
        return p
    env = os.environ.get("ECGBATCH_MODELS_DIR")
    if env and (Path(env) / model / "config.json").is_file():
        return Path(env) / model
    if p.exists() or os.sep in model:
        raise ModelNotInstalledError(f"{model!r} is not an ECG-LLaVA model folder (no config.json)")
    hint = (" (ecgbatch's own small model, trained by the next release; not shipped yet)"
            if model == DEFAULT_MODEL else "")
    raise ModelNotInstalledError(
        f"model {model!r}{hint} is not installed (looked in $ECGBATCH_MODELS_DIR="
        f"{env or '<unset>'}). Pass --model FOLDER, e.g. an ECG-Chat LLaVA run converted with "
        "`ecgbatch models convert-ecgchat-llava --base VICUNA --lora RUN --ecg-coca CKPT -o FOLDER`, "
        "or put the folder at $ECGBATCH_MODELS_DIR/" + model)


def read_ecgs(records: List[str], config):
    """[(record, ECG array)] for the readable records and [(record, message)] for the others."""
    from ecgbatch.io import read_record
    from ecgbatch.io.errors import EcgReadError
    from ecgbatch.llava.inputs import preprocess_for_model

    ok, failed = [], []
    for path in records:
        try:
            ok.append((path, preprocess_for_model(read_record(path), config, record_id=path)))
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
    lora: Optional[Path] = typer.Option(None, "--lora", help="peft LoRA adapter for the model's language model"),
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


def _ddp_questions(model: str, ecgs, question: str):
    """(question per record, findings per record, labeller description): DDP (ecgbatch.llava.ddp)
    for the records, computed before the engine starts, so that a missing probe fails fast."""
    import numpy as np

    from ecgbatch.llava.ddp import DdpLabeller, ddp_question

    labeller = DdpLabeller.for_model(model)
    findings = labeller.findings(np.stack([x for _, x in ecgs]))
    return [ddp_question(question, f) for f in findings], findings, labeller.describe()


def _report_records(records, model, lora, question, max_tokens, dtype, as_json, ddp: bool = False) -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")   # stdout is the report (--json)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from ecgbatch.llava.errors import EcgLlavaError
    from ecgbatch.encoders.checkpoint import CheckpointError

    try:
        folder = resolve_llava_model(model)
        from ecgbatch.serving.folder import check_adapter, check_model_folder

        config = check_model_folder(folder)
        rank = check_adapter(lora, config) if lora is not None else None
    except (EcgLlavaError, CheckpointError) as exc:
        _fail(str(exc))
    ecgs, failed = read_ecgs(records, config)
    for path, msg in failed:
        typer.echo(f"error: {path}: {msg}", err=True)
    if not ecgs:
        _fail("no record could be read")
    questions, findings, ddp_info = [question] * len(ecgs), None, False
    if ddp:
        try:
            questions, findings, ddp_info = _ddp_questions(model, ecgs, question)
        except EcgLlavaError as exc:
            _fail(exc)
    results = _generate(folder, ecgs, questions, lora, rank, max_tokens, dtype)
    _print(results, failed, question, as_json, findings, ddp_info)
    if failed:
        raise typer.Exit(code=1)


def _generate(folder, ecgs, questions, lora, rank, max_tokens, dtype):
    """One request per (record, ECG) of ``ecgs`` with its question of ``questions``."""
    from ecgbatch.encoders.checkpoint import CheckpointError
    from ecgbatch.llava.errors import EcgLlavaError
    from ecgbatch.serving.engine import EcgLlavaEngine, EcgRequest

    try:
        engine = EcgLlavaEngine(folder, dtype=dtype, lora_rank=rank, max_num_seqs=max(1, len(ecgs)))
        reqs = [EcgRequest(x, engine.prompt_ids(q), id=path) for (path, x), q in zip(ecgs, questions)]
        return engine.generate(reqs, max_tokens=max_tokens, lora=lora)
    except (EcgLlavaError, CheckpointError) as exc:
        _fail(str(exc))


def _print(results, failed, question, as_json: bool, findings=None, ddp_info=False) -> None:
    """The reports (``findings``: the DDP findings per result, when DDP was on)."""
    found = findings if findings is not None else [None] * len(results)
    if as_json:
        out = {"question": question, "ddp": ddp_info,
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
