"""`ecgbatch train coca|llava-align|llava-sft|export|probe`: training jobs (Ray Train) and linear
probes. Each command parses its options, calls one function of ecgbatch.training and prints
(the evaluation commands are ecgbatch.commands.evaluate).

Heavy imports (torch, ray, transformers) happen inside the command bodies."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ecgbatch.commands.common import PROBE_CONFIG_HELP, fail, key_values, print_metrics
from ecgbatch.llava.errors import EcgLlavaError
from ecgbatch.models import create_model, model_folder

train_app = typer.Typer(no_args_is_help=True, help="Train ECG-CoCa and ECG-LLaVA models (Ray Train) and "
                        "linear probes.")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


@train_app.command("coca")
def train_coca(
    config: Path = typer.Option(..., "--config", "-c", help="job YAML (configs/*.yaml)"),
    workers: int = typer.Option(1, "--workers", help="Ray Train workers (DistributedDataParallel processes)"),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="GPUs per worker (0 = CPU)"),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray cluster: auto | ray://host:10001 (default: a local Ray)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run's latest checkpoint"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set optim.epochs=3"),
) -> None:
    """Contrastive (+ caption) training of ECG-CoCa as a Ray Train TorchTrainer job."""
    from ecgbatch.training.coca_job import run_job
    from ecgbatch.training.job_config import load_job_config

    overrides = key_values(set_, "--set")
    try:
        job = load_job_config(config, overrides)
        result = run_job(job, num_workers=workers, gpus_per_worker=gpus_per_worker, address=address,
                         resume=resume, log=lambda m: typer.echo(m))
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        fail(str(exc))
    if result is None:
        return
    print_metrics(result.metrics, f"{job.name}: final epoch")
    if result.checkpoint is not None:
        typer.echo(f"checkpoint: {result.checkpoint.path}  (model folder: {result.checkpoint.path}/model)")


def _train_llava(stage: str, config: Path, workers: int, gpus_per_worker: float, address, resume: bool,
                 set_: list[str]) -> None:
    from ecgbatch.training.instruct_format import InstructDataError
    from ecgbatch.training.llava_config import load_llava_job
    from ecgbatch.training.llava_job import run_job

    try:
        job = load_llava_job(config, key_values(set_, "--set"), stage=stage)
        result = run_job(job, num_workers=workers, gpus_per_worker=gpus_per_worker, address=address,
                         resume=resume, log=lambda m: typer.echo(m))
    except (ValueError, FileNotFoundError, FileExistsError, EcgLlavaError, InstructDataError) as exc:
        fail(str(exc))
    if result is None:
        return
    print_metrics(result.metrics, f"{job.name}: final epoch")
    if result.checkpoint is not None:
        typer.echo(f"checkpoint: {result.checkpoint.path}  (export: ecgbatch train export {job.run_path()} -o DIR)")


_LLAVA_OPTS = dict(
    config=typer.Option(..., "--config", "-c", help="job YAML (configs/llava-*.yaml)"),
    workers=typer.Option(1, "--workers", help="Ray Train workers (DistributedDataParallel processes)"),
    gpus_per_worker=typer.Option(0.0, "--gpus-per-worker", help="GPUs per worker (0 = CPU)"),
    address=typer.Option(None, "--address", help="Ray cluster: auto | ray://host:10001 (default: a local Ray)"),
    resume=typer.Option(False, "--resume", help="continue from the run's latest checkpoint"),
    set_=typer.Option([], "--set", help="override a config key: --set optim.epochs=3"),
)


@train_app.command("llava-align")
def train_llava_align(config: Path = _LLAVA_OPTS["config"], workers: int = _LLAVA_OPTS["workers"],
                      gpus_per_worker: float = _LLAVA_OPTS["gpus_per_worker"],
                      address: Optional[str] = _LLAVA_OPTS["address"], resume: bool = _LLAVA_OPTS["resume"],
                      set_: list[str] = _LLAVA_OPTS["set_"]) -> None:
    """ECG-LLaVA stage 1: train the projector (ECG tower and language model frozen)."""
    _train_llava("align", config, workers, gpus_per_worker, address, resume, set_)


@train_app.command("llava-sft")
def train_llava_sft(config: Path = _LLAVA_OPTS["config"], workers: int = _LLAVA_OPTS["workers"],
                    gpus_per_worker: float = _LLAVA_OPTS["gpus_per_worker"],
                    address: Optional[str] = _LLAVA_OPTS["address"], resume: bool = _LLAVA_OPTS["resume"],
                    set_: list[str] = _LLAVA_OPTS["set_"]) -> None:
    """ECG-LLaVA stage 2: LoRA on the language model's linear layers + the projector (tower frozen)."""
    _train_llava("sft", config, workers, gpus_per_worker, address, resume, set_)


def _llava_checkpoint(run: Path) -> Path | None:
    """The ECG-LLaVA checkpoint ``run`` names (a checkpoint, or a run folder's latest), or None."""
    from ecgbatch.llava.assemble import is_trained_only
    from ecgbatch.training.checkpointing import MODEL_SUBDIR, latest_checkpoint

    ck = run if (run / MODEL_SUBDIR).is_dir() else latest_checkpoint(run)
    return ck if ck is not None and is_trained_only(ck / MODEL_SUBDIR) else None


def _export_llava(run: Path, out: Path, full: bool, dtype: str = "float32",
                  repetition_penalty: float | None = None) -> None:
    """The trained-only folder of an ECG-LLaVA run (what ships), and optionally the full one;
    ``repetition_penalty``: the decoding default written into its config (``generation``)."""
    import shutil

    from ecgbatch.llava.assemble import full_folder
    from ecgbatch.training.checkpointing import MODEL_SUBDIR

    ck = _llava_checkpoint(run)
    if out.exists() and any(out.iterdir()):
        fail(f"output {str(out)!r} already exists and is not empty")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ck / MODEL_SUBDIR, tmp)
    if repetition_penalty is not None:
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["generation"] = {**(cfg.get("generation") or {}), "repetition_penalty": float(repetition_penalty)}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if dtype == "float16":                    # the adapter only; the projector stays float32
        import torch
        from safetensors.torch import load_file, save_file

        f = tmp / "lora" / "adapter_model.safetensors"
        if f.is_file():
            save_file({k: v.to(torch.float16).contiguous() for k, v in load_file(str(f)).items()}, str(f),
                      metadata={"format": "pt"})
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    typer.echo(f"wrote {out} (from {ck})")
    if full:
        try:
            typer.echo(f"full folder: {full_folder(out, log=lambda m: typer.echo(m, err=True))}")
        except (EcgLlavaError, OSError) as exc:
            fail(str(exc))


@train_app.command("export")
def train_export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a training checkpoint directory (or an "
                                    "ECG-LLaVA run folder: its latest checkpoint)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write (e.g. ecgbatch/models/weights/NAME)"),
    dtype: str = typer.Option("float32", help="float32 | float16 for the stored tensors (ECG-CoCa)"),
    full: bool = typer.Option(False, "--full", help="ECG-LLaVA: also assemble the full folder (+ lora/) "
                              "that vLLM and report load, into the cache, and print its path"),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty", min=0.01, max=10.0,
                                                       help="ECG-LLaVA: the decoding default to ship in "
                                                       "its config (vLLM's repetition_penalty)"),
) -> None:
    """Write a checkpoint as a trained-only weights folder: only the tensors training changed.
    ECG-CoCa: the frozen text transformer comes from the installed text encoder (hash-checked),
    an untrained caption decoder is left out. ECG-LLaVA: projector + LoRA adapter + config; the
    frozen tower and language model come from the installed packages (hash-checked)."""
    import torch

    if _llava_checkpoint(checkpoint) is not None:
        _export_llava(checkpoint, out, full, dtype, repetition_penalty)
        return
    if repetition_penalty is not None:
        fail("--repetition-penalty is a decoding default of ECG-LLaVA models; this is not an ECG-LLaVA checkpoint")

    from ecgbatch.training import checkpointing as C
    from ecgbatch.training.coca_task import configure_trainable, trainable_names
    from ecgbatch.training.job_config import CocaJobConfig

    if dtype not in ("float32", "float16"):
        fail(f"--dtype must be float32 or float16, got {dtype!r}")
    try:
        state = C.read_train_state(checkpoint)
        job = CocaJobConfig.from_dict(state["job"])
        model = create_model(checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    use_decoder = job.loss.caption_weight > 0
    configure_trainable(model, job.text_tower.lock, job.text_tower.freeze_layer_norm, use_decoder)
    folder = C.save_trained_only(
        model, out, trainable_names(model), omit_prefixes=() if use_decoder else ("text_decoder.",),
        dtype=torch.float16 if dtype == "float16" else None,
        extra={"training": {"job": job.name, "epoch": state["epoch"], "global_step": state["global_step"],
                            "metrics": state.get("metrics", {})}})
    size = (folder / "model.safetensors").stat().st_size
    typer.echo(f"wrote {folder} (model.safetensors {size / 1e6:.1f} MB)")


# --- linear probes ------------------------------------------------------------------------------

@train_app.command("probe")
def train_probe(
    labels: str = typer.Option(..., "--labels", "-l", help="built-in label set: ptbxl-rhythm | ptbxl-super | "
                               "ptbxl-sub | ptbxl-form | cpsc2018; a comma list fits several on one embedding pass"),
    model: str = typer.Option("ecg-coca-mini", "--model", "-m", help="zoo name or model folder"),
    config: Path = typer.Option(Path("configs/coca-mini.yaml"), "--config", "-c", help=PROBE_CONFIG_HELP),
    folds: int = typer.Option(5, help="cross-validation folds by patient (L2 strength, thresholds)"),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="probe file [default: beside the model's "
                                       "weights, <weights>/probes/<labels>.json, where classify finds it]"),
) -> None:
    """Fit a calibrated linear probe (logistic regression) for a label set on a model's embeddings
    of labelled records (the test fold left out); thresholds by cross-validation by patient."""
    from ecgbatch.encoders.probes import probe_path
    from ecgbatch.training.probes import fit_probe, model_info, probe_inputs

    names = [x.strip() for x in labels.split(",") if x.strip()]
    if out is not None and len(names) != 1:
        fail("--out takes one label set")
    folder = None
    if out is None:
        try:
            folder = model_folder(model, "ecg-coca")
        except (ValueError, FileNotFoundError):
            fail(f"model {model!r} has no weights folder to store the probe beside: pass --out")
    try:
        m, datas = probe_inputs(model, names, config)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for name, data in zip(names, datas):
        try:
            probe = fit_probe(data, model_info(m, model), folds=folds, seed=seed)
        except ValueError as exc:
            fail(str(exc))
        path = probe.save(out if out is not None else probe_path(folder, name))
        info = probe.info
        typer.echo(f"{name}: {info['records']} records ({info['records_by_source']}), {info['patients']} patients; "
                   f"l2 {info['l2']}")
        typer.echo("trained: " + ", ".join(f"{t} (n={info['positives'][t]}, thr {th:.3f})"
                                           for t, th in zip(probe.trained, probe.thresholds)))
        if probe.untrained:
            typer.echo("untrained (too few records; marked, never predicted): " + ", ".join(probe.untrained))
        typer.echo(f"wrote {path}")


