"""Model commands: `ecgbatch models list`, `ecgbatch models convert-ecgchat`,
`ecgbatch models convert-ecgchat-llava`, `ecgbatch encode`,
`ecgbatch zeroshot`. Heavy imports (torch, transformers) happen inside the command bodies."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ecgbatch import models as zoo
from ecgbatch.commands.common import fail
from ecgbatch.models.listing import zoo_rows

models_app = typer.Typer(no_args_is_help=True, help="The model zoo: list models, convert ECG-Chat checkpoints.")

MODEL_HELP = ("zoo name (ecg-coca, ecg-coca-mini: their installed weights), a model folder "
              "(config.json + model.safetensors) or a training checkpoint")


def load_model(model: str, random: bool = False):
    """The model a command was given (ecgbatch.models.load_model); random=True: the seeded random
    init (pretrained text tower when installed) for trying the mechanics. Errors exit with code 2."""
    try:
        return zoo.load_model(model, random_init=random)[0]
    except (FileNotFoundError, ValueError) as exc:   # CheckpointError is a ValueError
        hint = "" if random else " (use --random to try the mechanics with untrained weights)"
        fail(f"cannot load model {model!r}: {exc}{hint}")


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} M"


def _read_batch(records: List[str], cfg, fs: Optional[float]):
    """(ids, x [N, leads, samples], failures [(path, message)]) - every failure is reported."""
    import numpy as np

    from ecgbatch.io import read_record
    from ecgbatch.io.errors import EcgReadError
    from ecgbatch.signal import preprocess

    ids, xs, failed = [], [], []
    for path in records:
        try:
            rec = read_record(path, fs=fs) if fs else read_record(path)
            xs.append(preprocess(rec, cfg).x.astype(np.float32, copy=False))
            ids.append(path)
        except (EcgReadError, ValueError) as exc:
            failed.append((path, f"{type(exc).__name__}: {exc}"))
    x = np.stack(xs) if xs else np.zeros((0, len(cfg.leads), cfg.n_samples or 0), np.float32)
    return ids, x, failed


def _embed(model, x, batch_size: int):
    import numpy as np

    out = [model.embed_ecgs(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim), np.float32)


def _report_failures(failed) -> None:
    for path, msg in failed:
        typer.echo(f"error: {path}: {msg}", err=True)


def list_command(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Zoo models of every family: kind, size, where the weights come from, whether installed."""
    import json

    rows = zoo_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return

    t = Table(title="ecgbatch model zoo")
    for col in ("name", "kind", "parameters", "on disk"):
        t.add_column(col, justify="left" if col in ("name", "kind") else "right", no_wrap=True)
    t.add_column("source")
    t.add_column("installed", overflow="fold")
    for r in rows:
        t.add_row(r["name"], r["kind"], _millions(r["params"]),
                  f"{r['size_mb']:.1f} MB" if r["size_mb"] is not None else "-", r["source"],
                  f"yes: {r['weights']}" if r["installed"] else "[yellow]no[/yellow]")
    Console().print(t)


def convert_command(
    checkpoint: Path = typer.Argument(..., help="ECG-Chat training checkpoint (.pt), e.g. cpt_wfep_epoch_20.pt"),
    text_encoder: Path = typer.Option(..., "--text-encoder", help="local HF folder of the text tower "
                                      "(MedCPT-Query-Encoder: config + tokenizer)"),
    out: Path = typer.Option(..., "-o", "--out", help="output model folder"),
    config: str = typer.Option("ecg-coca", "--config", help="architecture name or open_clip JSON"),
    fp16: bool = typer.Option(False, "--fp16", help="store weights as float16 (half the size)"),
) -> None:
    """Convert an ECG-Chat checkpoint into our folder format (weights only, strict key check)."""
    import torch

    from ecgbatch.encoders import CheckpointError, load_ecgchat_checkpoint, save_pretrained

    try:
        model = load_ecgchat_checkpoint(checkpoint, config, text_encoder_dir=text_encoder)
    except (CheckpointError, FileNotFoundError) as exc:
        fail(str(exc))
    if model.tokenizer is None:
        fail(f"no tokenizer files in {text_encoder}")
    folder = save_pretrained(model, out, dtype=torch.float16 if fp16 else None)
    typer.echo(f"wrote {folder} (weights {model.weights_hash}, {'float16' if fp16 else 'float32'})")


def encode_command(
    records: List[str] = typer.Argument(..., help="ECG files (any format read_record knows)"),
    model: str = typer.Option("ecg-coca-mini", "--model", "-m", help=MODEL_HELP),
    random: bool = typer.Option(False, "--random", help="fresh (untrained) CoCa weights: mechanics only"),
    fs: Optional[float] = typer.Option(None, "--fs", help="sampling rate for formats without one (.npy)"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    as_json: bool = typer.Option(False, "--json", help="one JSON line per record with the embedding"),
) -> None:
    """Embed ECG records (L2-normalised ECG-CoCa embeddings)."""
    import json

    import numpy as np

    m = load_model(model, random)
    ids, x, failed = _read_batch(records, m.preprocess_config, fs)
    emb = _embed(m, x, batch_size)
    prov = {"model": model, "weights_hash": m.weights_hash,
            "preprocess_hash": m.preprocess_config.hash(), "random_weights": random}
    if as_json:
        for path, e in zip(ids, emb):
            typer.echo(json.dumps({"path": path, **prov, "embedding": [round(float(v), 7) for v in e]}))
    else:
        t = Table(title=f"{model} embeddings (dim {m.embed_dim}, weights {prov['weights_hash']})")
        for col in ("record", "norm", "first values"):
            t.add_column(col)
        for path, e in zip(ids, emb):
            t.add_row(path, f"{np.linalg.norm(e):.4f}", " ".join(f"{v:+.3f}" for v in e[:6]) + " ...")
        Console().print(t)
    _report_failures(failed)
    if failed:
        raise typer.Exit(code=2)


def zeroshot_command(
    records: List[str] = typer.Argument(..., help="ECG files"),
    labels: str = typer.Option(..., "--labels", "-l", help="ptbxl-rhythm|ptbxl-super|ptbxl-sub|ptbxl-form|"
                               "cpsc2018 or a JSON/YAML file {label: prompt(s)}"),
    model: str = typer.Option("ecg-coca-mini", "--model", "-m", help=MODEL_HELP),
    random: bool = typer.Option(False, "--random", help="fresh (untrained) CoCa weights: mechanics only"),
    softmax: bool = typer.Option(False, "--softmax", help="softmax over classes instead of per-class sigmoid"),
    top: int = typer.Option(0, "--top", min=0, help="show only the top K classes (0 = all)"),
    fs: Optional[float] = typer.Option(None, "--fs", help="sampling rate for formats without one (.npy)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Zero-shot classification: a ranked table of class scores per record."""
    import json

    from ecgbatch.encoders.zeroshot import ZeroShotClassifier, load_labelset

    try:
        labelset = load_labelset(labels)
    except ValueError as exc:
        fail(str(exc))
    m = load_model(model, random)
    clf = ZeroShotClassifier(m, labelset)
    ids, x, failed = _read_batch(records, m.preprocess_config, fs)
    scores = clf.scores(_embed(m, x, 32), softmax=softmax)
    kind = "softmax" if softmax else "sigmoid"
    if as_json:
        for path, row in zip(ids, scores):
            typer.echo(json.dumps({"path": path, "model": model, "weights_hash": m.weights_hash,
                                   "labels": labelset.name, "score": kind,
                                   "ranked": [[lab, round(s, 6)] for lab, s in clf.ranked(row)]}))
    else:
        con = Console()
        for path, row in zip(ids, scores):
            ranked = clf.ranked(row)[: top or None]
            t = Table(title=f"{path}  ({labelset.name}, {kind}, {model}{' random' if random else ''})")
            t.add_column("rank", justify="right")
            t.add_column("label")
            t.add_column("score", justify="right")
            for i, (lab, s) in enumerate(ranked, 1):
                t.add_row(str(i), lab, f"{s:.4f}")
            con.print(t)
    _report_failures(failed)
    if failed:
        raise typer.Exit(code=2)


def convert_llava_command(
    base: Path = typer.Option(..., "--base", help="base LLM folder (HF: config, weights, tokenizer), e.g. vicuna-13b-v1.5"),
    lora: Path = typer.Option(..., "--lora", help="ECG-Chat LoRA output: config.json (llava_llama), adapter, "
                              "non_lora_trainables.bin"),
    ecg_coca: Path = typer.Option(..., "--ecg-coca", help="ECG-CoCa training checkpoint (.pt) holding the ECG tower"),
    out: Path = typer.Option(..., "-o", "--out", help="output ECG-LLaVA model folder"),
    merge_lora: bool = typer.Option(False, "--merge-lora", help="merge the adapter into the LM weights "
                                    "(default: keep it as a peft folder in OUT/lora)"),
    ecg_config: Optional[str] = typer.Option(None, "--ecg-config", help="ECG-CoCa architecture name or open_clip "
                                             "JSON (default: the checkpoint's neighbour <open_clip_config>.json "
                                             "or model_config.json)"),
    dtype: str = typer.Option("float32", "--dtype", help="weights dtype: float32 (exact), bfloat16 or float16 "
                              "(half the memory; a 13B base needs about 52 GB of RAM in float32)"),
) -> None:
    """Convert ECG-Chat's LLaVA LoRA run into one ECG-LLaVA folder (base + tower + projector)."""
    import torch

    from ecgbatch.encoders.checkpoint import CheckpointError
    from ecgbatch.llava import EcgLlavaError, convert_ecgchat_llava

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        fail(f"--dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    try:
        folder = convert_ecgchat_llava(base, lora, ecg_coca, out, merge_lora=merge_lora, ecg_config=ecg_config,
                                       dtype=dtypes[dtype])
    except (EcgLlavaError, CheckpointError) as exc:
        fail(str(exc))
    adapter = "merged into the LM" if merge_lora else f"adapter in {folder / 'lora'}"
    typer.echo(f"wrote {folder} (LoRA {adapter})")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    models_app.command("list")(list_command)
    models_app.command("convert-ecgchat")(convert_command)
    models_app.command("convert-ecgchat-llava")(convert_llava_command)
    app.command("encode")(encode_command)
    app.command("zeroshot")(zeroshot_command)
