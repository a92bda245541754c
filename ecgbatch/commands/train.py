"""`ecgbatch train coca|probe|export ...` and `ecgbatch eval retrieval|zeroshot|crossval|classify ...`.

Heavy imports (torch, ray, transformers) happen inside the command bodies."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ecgbatch.commands.common import fail as _fail   # the one error exit of the command line

train_app = typer.Typer(no_args_is_help=True, help="Train ECG-CoCa models (Ray Train) and their linear probes.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate ECG-CoCa models: retrieval, zero-shot, crossval, classify.")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")


@train_app.command("coca")
def train_coca(
    config: Path = typer.Option(..., "--config", "-c", help="job YAML (configs/*.yaml)"),
    workers: int = typer.Option(1, "--workers", help="Ray Train workers (DDP ranks)"),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="GPUs per worker (0 = CPU)"),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="Ray cluster: auto | ray://host:10001 (default: a local Ray)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run's latest checkpoint"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set optim.epochs=3"),
) -> None:
    """Contrastive (+ caption) training of ECG-CoCa as a Ray Train TorchTrainer job."""
    import yaml

    from ecgbatch.training.coca_job import run_job
    from ecgbatch.training.job_config import load_job_config

    overrides = {}
    for item in set_:
        if "=" not in item:
            _fail(f"--set needs key=value, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    try:
        job = load_job_config(config, overrides)
        result = run_job(job, num_workers=workers, gpus_per_worker=gpus_per_worker, address=address,
                         resume=resume, log=lambda m: typer.echo(m))
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        _fail(str(exc))
    if result is None:
        return
    _print_metrics(result.metrics, f"{job.name}: final epoch")
    if result.checkpoint is not None:
        typer.echo(f"checkpoint: {result.checkpoint.path}  (model folder: {result.checkpoint.path}/model)")


def _overrides(set_: list[str]) -> dict:
    import yaml

    out = {}
    for item in set_:
        if "=" not in item:
            _fail(f"--set needs key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def _train_llava(stage: str, config: Path, workers: int, gpus_per_worker: float, address, resume: bool,
                 set_: list[str]) -> None:
    from ecgbatch.llava.errors import EcgLlavaError
    from ecgbatch.training.instruct_format import InstructDataError
    from ecgbatch.training.llava_config import load_llava_job
    from ecgbatch.training.llava_job import run_job

    try:
        job = load_llava_job(config, _overrides(set_), stage=stage)
        result = run_job(job, num_workers=workers, gpus_per_worker=gpus_per_worker, address=address,
                         resume=resume, log=lambda m: typer.echo(m))
    except (ValueError, FileNotFoundError, FileExistsError, EcgLlavaError, InstructDataError) as exc:
        _fail(str(exc))
    if result is None:
        return
    _print_metrics(result.metrics, f"{job.name}: final epoch")
    if result.checkpoint is not None:
        typer.echo(f"checkpoint: {result.checkpoint.path}  (export: ecgbatch train export {job.run_path()} -o DIR)")


_LLAVA_OPTS = dict(
    config=typer.Option(..., "--config", "-c", help="job YAML (configs/llava-*.yaml)"),
    workers=typer.Option(1, "--workers", help="Ray Train workers (DDP ranks)"),
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


def _export_llava(run: Path, out: Path, full: bool, dtype: str = "float32") -> None:
    """The trained-only folder of an ECG-LLaVA run (what ships), and optionally the full one."""
    import shutil

    from ecgbatch.llava.assemble import full_folder
    from ecgbatch.llava.errors import EcgLlavaError
    from ecgbatch.training.checkpointing import MODEL_SUBDIR

    ck = _llava_checkpoint(run)
    if out.exists() and any(out.iterdir()):
        _fail(f"output {str(out)!r} already exists and is not empty")
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ck / MODEL_SUBDIR, tmp)
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
            _fail(str(exc))


def _print_metrics(metrics: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(t)


# --- shared eval inputs -------------------------------------------------------------------------

def _eval_pairs(model_pre, data: str, text_source: str, dx_mapping, metadata, statements, table,
                read_option: list[str], split: Optional[Path], split_part: str, measure_method: str,
                source: Optional[str] = None):
    import yaml

    from ecgbatch.training.pairs import PairSet, SourceSpec, build_pairs, resolve_path

    opts = {}
    for item in read_option:
        if "=" not in item:
            _fail(f"--read-option needs key=value, got {item!r}")
        k, v = item.split("=", 1)
        opts[k] = yaml.safe_load(v)
    p = resolve_path(data)
    if p.suffix == ".npz":
        pairs = PairSet.load(p)
    else:
        if text_source == "header" and dx_mapping is None and p.is_dir() and any(p.glob("dx_mapping_*.csv")):
            dx_mapping = str(p)
        spec = SourceSpec(name="eval", records=str(p), text=text_source, dx_mapping=dx_mapping,
                          metadata=metadata, statements=statements, table=table, read_options=opts or None)
        pairs = build_pairs([spec], model_pre, measure_method=measure_method, on_error="skip", part="all")
        if pairs.skipped:
            typer.secho(f"{len(pairs.skipped)} records left out (unreadable or no text), e.g. "
                        f"{pairs.skipped[0]['path']}: {pairs.skipped[0]['error']}", fg="yellow", err=True)
    if split is not None:
        keep = set(json.loads(Path(split).read_text())[split_part])
        idx = [i for i, q in enumerate(pairs.path) if q in keep]
        if not idx:
            _fail(f"no record of {data!r} is in the {split_part!r} part of {str(split)!r}")
        pairs = pairs.subset(idx)
    if source is not None:
        idx = [i for i, s in enumerate(pairs.source) if s == source]
        if not idx:
            _fail(f"no pair of {data!r} comes from source {source!r} (sources: {sorted(set(pairs.source))})")
        pairs = pairs.subset(idx)
    return pairs


_DATA_HELP = "records folder, manifest (.parquet/.csv with 'path') or a pair cache (.npz)"
_TS_HELP = "text per record: header (LUDB free text / Challenge #Dx) | ptbxl | table | mimic"


@eval_app.command("retrieval")
def eval_retrieval(
    model: str = typer.Option(..., "--model", "-m", help="zoo name, model folder or training checkpoint"),
    data: str = typer.Option(..., "--data", help=_DATA_HELP),
    text_source: str = typer.Option("header", "--text-source", help=_TS_HELP),
    dx_mapping: Optional[str] = typer.Option(None, help="folder with dx_mapping_*.csv (Challenge codes)"),
    metadata: Optional[str] = typer.Option(None, help="ptbxl: database CSV; mimic: machine_measurements.csv"),
    statements: Optional[str] = typer.Option(None, help="ptbxl: scp_statements.csv"),
    table: Optional[str] = typer.Option(None, help="table: CSV/JSONL of (record_id or path, text)"),
    read_option: list[str] = typer.Option([], "--read-option", help="reader option, e.g. fs=500"),
    wde: bool = typer.Option(True, "--wde/--no-wde", help="append the measurement suffix to every report"),
    split: Optional[Path] = typer.Option(None, help="a run's split.json: evaluate one part only"),
    split_part: str = typer.Option("val", help="train | val"),
    source: Optional[str] = typer.Option(None, help="pair cache (.npz) only: keep one data source"),
    out: Path = typer.Option(Path("eval-retrieval.json"), "--out", "-o", help="JSON output"),
) -> None:
    """ECG <-> report retrieval over the full similarity matrix (ECG-Chat's protocol)."""
    from rich.console import Console
    from rich.table import Table

    from ecgbatch.eval.retrieval import embed_ecgs, embed_texts, retrieval_metrics
    from ecgbatch.models import load_model
    from ecgbatch.training.data import fit_texts, token_counter

    try:
        m, _ = load_model(model)
        pairs = _eval_pairs(m.preprocess_config, data, text_source, dx_mapping, metadata, statements, table,
                            read_option, split, split_part, "ecgchat", source)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    texts = fit_texts(pairs.text, pairs.wave if wde else None, token_counter(m.tokenizer),
                      m.cfg.text_cfg.context_length)
    res = retrieval_metrics(embed_ecgs(m, pairs.x), embed_texts(m, m.tokenizer, texts))
    t = Table(title=f"retrieval: {model} on {res['n']} pairs ({'with' if wde else 'without'} WDE)")
    cols = ["R@1", "R@5", "R@10", "mean_rank", "median_rank"]
    t.add_column("direction")
    for c in cols:
        t.add_column(c, justify="right")
    for d in ("ecg_to_text", "text_to_ecg"):
        t.add_row(d, *[f"{res[d][c]:.3f}" if c.startswith("R@") else f"{res[d][c]:.1f}" for c in cols])
    Console().print(t)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "data": data, "text_source": text_source, "wde": wde, **res},
                              indent=2))
    typer.echo(f"wrote {out}")


@eval_app.command("zeroshot")
def eval_zeroshot(
    model: str = typer.Option(..., "--model", "-m", help="zoo name, model folder or training checkpoint"),
    data: str = typer.Option(..., "--data", help=_DATA_HELP),
    labels: str = typer.Option("af", "--labels",
                               help="comma list of keyword labels read from the reports (af, sinus_rhythm, "
                                    "lbbb, rbbb, lvh, avb1, lad), or a CSV (record_id/path + one 0/1 column per label)"),
    prompts: Optional[Path] = typer.Option(None, help="JSON/YAML {label: prompt | [prompts]} (default: built-in)"),
    text_source: str = typer.Option("header", "--text-source", help=_TS_HELP),
    dx_mapping: Optional[str] = typer.Option(None, help="folder with dx_mapping_*.csv (Challenge codes)"),
    metadata: Optional[str] = typer.Option(None, help="ptbxl: database CSV; mimic: machine_measurements.csv"),
    statements: Optional[str] = typer.Option(None, help="ptbxl: scp_statements.csv"),
    table: Optional[str] = typer.Option(None, help="table: CSV/JSONL of (record_id or path, text)"),
    read_option: list[str] = typer.Option([], "--read-option", help="reader option, e.g. fs=500"),
    threshold: float = typer.Option(0.5, help="fixed threshold for the fixed-threshold F1"),
    contrast: bool = typer.Option(False, "--contrast/--no-contrast",
                                  help="binary scores against each label's counter-prompt (af vs 'sinus "
                                       "rhythm'), instead of ECG-Chat's per-class sigmoid"),
    query: Optional[str] = typer.Option(None, help="also: precision of the top-k ECGs for this text (label = first), "
                                        "ranked as `ecgbatch search` ranks it"),
    expand: bool = typer.Option(False, "--expand", help="--query ensembled with its label's prompts "
                                "(as `ecgbatch search --expand`)"),
    k: int = typer.Option(8, help="top-k for --query"),
    query_prevalence: Optional[float] = typer.Option(
        None, help="also: --query precision on random pools where the label has this prevalence (e.g. 0.08)"),
    split: Optional[Path] = typer.Option(None, help="a run's split.json: evaluate one part only"),
    split_part: str = typer.Option("val", help="train | val"),
    source: Optional[str] = typer.Option(None, help="pair cache (.npz) only: keep one data source"),
    out: Path = typer.Option(Path("eval-zeroshot"), "--out", "-o", help="output folder (JSON + roc.png)"),
) -> None:
    """Zero-shot classification: per-class AUC, best-threshold F1, fixed-threshold F1, ROC PNG."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from ecgbatch.encoders.zeroshot import ZeroShotClassifier, load_labelset
    from ecgbatch.eval.retrieval import embed_ecgs, precision_at_k
    from ecgbatch.eval.zeroshot_eval import keyword_labelset, per_class_metrics, save_roc_png
    from ecgbatch.models import load_model
    from ecgbatch.text.labels import KEYWORD_LABELS, keyword_labels

    try:
        m, _ = load_model(model)
        pairs = _eval_pairs(m.preprocess_config, data, text_source, dx_mapping, metadata, statements, table,
                            read_option, split, split_part, "ecgchat", source)
        if Path(labels).suffix.lower() == ".csv":
            names, y = _labels_from_csv(Path(labels), pairs)
        else:
            names = [n.strip() for n in labels.split(",") if n.strip()]
            y = np.array([[keyword_labels(t, names)[n] for n in names] for t in pairs.text])
        if prompts is not None:
            ls = load_labelset(prompts)
            missing = [n for n in names if n not in ls.labels]
            if missing:
                _fail(f"prompts file {str(prompts)!r} has no prompt for {missing}")
            from ecgbatch.encoders.zeroshot import LabelSet

            ls = LabelSet(ls.name, tuple(names), tuple(ls.prompts[ls.labels.index(n)] for n in names))
        else:
            unknown = [n for n in names if n not in KEYWORD_LABELS]
            if unknown:
                _fail(f"no built-in prompt for {unknown}: pass --prompts")
            ls = keyword_labelset(names)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    emb = embed_ecgs(m, pairs.x)
    zs = ZeroShotClassifier(m, ls, lower=True)
    scores = zs.scores(emb)
    if contrast:
        from ecgbatch.encoders.zeroshot import labelset_from_mapping
        from ecgbatch.eval.zeroshot_eval import contrast_scores
        from ecgbatch.text.labels import KEYWORD_COUNTER_PROMPTS

        missing = [n for n in names if n not in KEYWORD_COUNTER_PROMPTS]
        if missing:
            _fail(f"--contrast: no counter-prompt for {missing} (known: {sorted(KEYWORD_COUNTER_PROMPTS)})")
        neg = ZeroShotClassifier(m, labelset_from_mapping("counter", {n: KEYWORD_COUNTER_PROMPTS[n] for n in names}),
                                 lower=True)
        scores = contrast_scores(zs, neg, emb)
    res = per_class_metrics(y, scores, list(names), threshold)
    if query:
        from ecgbatch.pipelines.search import text_vector

        q, qp, _, _ = text_vector(m, query, expand=expand)
        how = f"as `ecgbatch search{' --expand' if expand else ''}` ranks it: {len(qp)} prompt(s)"
        res["query"] = {"text": query, "label": names[0], "k": k, "vector": how,
                        "precision": precision_at_k(q, emb, y[:, 0], k), "prevalence": float(y[:, 0].mean())}
        if query_prevalence:
            from ecgbatch.eval.retrieval import precision_at_k_at_prevalence

            try:
                res["query"]["at_prevalence"] = {"prevalence": query_prevalence, **precision_at_k_at_prevalence(
                    q, emb, y[:, 0], k, query_prevalence)}
            except ValueError as exc:
                _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    png = save_roc_png(y, scores, list(names), out / "roc.png", title=f"zero-shot ROC: {model}")
    t = Table(title=f"zero-shot: {model} on {len(pairs)} records")
    for c in ("label", "n+", "AUC", "F1 best (oracle thr)", f"F1 @ {threshold}"):
        t.add_column(c, justify="right" if c != "label" else "left")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for n in names:
        r = res["per_class"][n]
        t.add_row(n, str(r["n_pos"]), fmt(r["auc"]), fmt(r["f1_best"]), fmt(r["f1_fixed"]))
    mac = res["macro"]
    t.add_row("macro", "", fmt(mac["auc"]), fmt(mac["f1_best"]), fmt(mac["f1_fixed"]))
    Console().print(t)
    if query:
        typer.echo(f"query {query!r} ({res['query']['vector']}): {res['query']['precision']:.3f} of the top {k} "
                   f"are {names[0]} (prevalence {res['query']['prevalence']:.3f})")
        ap = res["query"].get("at_prevalence")
        if ap:
            typer.echo(f"  at prevalence {ap['prevalence']:.2f} ({ap['relevant_in_pool']} of {ap['pool']}, "
                       f"{ap['trials']} pools): mean {ap['mean']:.3f}, p10 {ap['p10']:.3f}, min {ap['min']:.3f}")
    (out / "zeroshot.json").write_text(json.dumps({"model": model, "data": data, "labels": list(names),
                                                   "scoring": "contrast" if contrast else "per-class sigmoid", **res},
                                                  indent=2))
    typer.echo(f"wrote {out / 'zeroshot.json'} and {png}")


@eval_app.command("crossval")
def eval_crossval(
    runs: list[Path] = typer.Argument(..., help="training run folders of one k-fold split (--set split.folds=K "
                                             "--set split.fold=i), e.g. .ecgbatch/runs/coca-mini-cv*"),
    data: str = typer.Option(..., "--data", help="the pair cache (.npz) the runs trained on"),
    label: str = typer.Option("af", help="keyword label read from the reports"),
    query: str = typer.Option("atrial fibrillation", help="text query ranked as `ecgbatch search` does"),
    expand: bool = typer.Option(False, "--expand", help="the query ensembled with its label's prompts (search --expand)"),
    k: int = typer.Option(8, help="top-k for the query precision"),
    prevalence: float = typer.Option(0.08, help="share of the label in the random pools for the query precision"),
    pool: int = typer.Option(100, help="records per random pool (0 = every record without the label)"),
    out: Path = typer.Option(Path("eval-crossval.json"), "--out", "-o", help="JSON output"),
) -> None:
    """Pooled held-out scores of a k-fold cross-validation: AUC and query precision per source."""
    from rich.console import Console
    from rich.table import Table

    from ecgbatch.training.crossval import crossval_scores, summary
    from ecgbatch.text.labels import KEYWORD_LABELS

    if label not in KEYWORD_LABELS:
        _fail(f"unknown keyword label {label!r} (known: {sorted(KEYWORD_LABELS)})")
    from ecgbatch.training.pairs import PairSet, resolve_path

    cache = resolve_path(data)
    if cache.suffix != ".npz" or not cache.is_file():
        _fail(f"--data must be the pair cache (.npz) the runs trained on, got {data!r}")
    try:
        cv = crossval_scores(runs, PairSet.load(cache), label, query, expand=expand)
        res = summary(cv, k=k, prevalence=prevalence, pool=pool or None)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    key = f"query_p@{k}_at_{prevalence:g}"
    t = Table(title=f"held-out scores pooled over {len(runs)} cross-validation runs: {label!r}, query {query!r}")
    pools = f"pools of {pool}" if pool else "pools"
    for c in ("part", "n", label, "AUC (prompt)", "AUC (query)", f"query p@{k}, {pools} at {prevalence:g} (mean / p10)"):
        t.add_column(c, justify="left" if c == "part" else "right")
    parts = [("all", res["all"])] + list(res["by_source"].items())
    for name, r in parts:
        p = r.get(key) or {}
        t.add_row(name, str(r["n"]), str(r["n_pos"]), f"{r['auc_prompt']:.3f}" if "auc_prompt" in r else "-",
                  f"{r['auc_query']:.3f}" if "auc_query" in r else "-",
                  f"{p['mean']:.3f} / {p['p10']:.3f}" + (f" (pools of {p['pool']})" if p["pool"] != pool else "")
                  if "mean" in p else "-")
    Console().print(t)
    typer.echo(f"ECG -> own report R@10 within each fold's held-out pairs: {res['retrieval_r10_mean']:.3f} with the "
               f"measurement suffix, {res['retrieval_r10_no_wde_mean']:.3f} without (mean over folds of "
               f"{', '.join(str(f['n']) for f in res['folds'])} pairs)")
    out.parent.mkdir(parents=True, exist_ok=True)
    records = [{"path": p, "source": s_, "y": int(y), "prompt_score": float(a), "query_score": float(b)}
               for p, s_, y, a, b in zip(cv.path, cv.source, cv.y, cv.prompt_score, cv.query_score)]
    out.write_text(json.dumps({"runs": [str(r) for r in runs], "data": data, "pool": pool or None, **res,
                               "records": records}, indent=2))
    typer.echo(f"wrote {out}")


def _labels_from_csv(path: Path, pairs):
    import csv

    import numpy as np

    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"labels CSV {str(path)!r} is empty")
    key = next((c for c in ("record_id", "path") if c in rows[0]), None)
    if key is None:
        raise ValueError(f"labels CSV {str(path)!r} needs a record_id or path column")
    names = [c for c in rows[0] if c != key]
    by_key = {r[key]: r for r in rows}
    y = []
    for rid, p in zip(pairs.record_id, pairs.path):
        r = by_key.get(rid if key == "record_id" else p)
        if r is None:
            raise ValueError(f"record {rid!r} has no row in {str(path)!r}")
        try:
            y.append([int(r[n]) for n in names])
        except ValueError:
            raise ValueError(f"labels CSV {str(path)!r}: row {rid!r} has a non 0/1 value") from None
    return names, np.array(y)


@train_app.command("export")
def train_export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a training checkpoint directory (or an "
                                    "ECG-LLaVA run folder: its latest checkpoint)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to write (e.g. ecgbatch/models/weights/NAME)"),
    dtype: str = typer.Option("float32", help="float32 | float16 for the stored tensors (ECG-CoCa)"),
    full: bool = typer.Option(False, "--full", help="ECG-LLaVA: also assemble the full folder (+ lora/) "
                              "that vLLM and report load, into the cache, and print its path"),
) -> None:
    """Write a checkpoint as a trained-only weights folder: only the tensors training changed.
    ECG-CoCa: the frozen text transformer comes from the installed text encoder (hash-checked),
    an untrained caption decoder is left out. ECG-LLaVA: projector + LoRA adapter + config; the
    frozen tower and language model come from the installed packages (hash-checked)."""
    import torch

    if _llava_checkpoint(checkpoint) is not None:
        _export_llava(checkpoint, out, full, dtype)
        return

    from ecgbatch.models import create_model
    from ecgbatch.training import checkpointing as C
    from ecgbatch.training.coca_task import configure_trainable, trainable_names
    from ecgbatch.training.job_config import CocaJobConfig

    if dtype not in ("float32", "float16"):
        _fail(f"--dtype must be float32 or float16, got {dtype!r}")
    try:
        state = C.read_train_state(checkpoint)
        job = CocaJobConfig.from_dict(state["job"])
        model = create_model(checkpoint)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
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

_PROBE_CONFIG_HELP = "training YAML whose data section lists the labelled records (its pair cache is reused)"


def _probe_inputs(model: str, labels: str, config: Path):
    """(model, ProbeData) for `eval classify`."""
    m, datas = _probe_inputs_many(model, [labels], config)
    return m, datas[0]


def _probe_inputs_many(model: str, labelsets: list[str], config: Path):
    """(model, [ProbeData per label set]) of the config's training records (test fold left out),
    embedded once."""
    from ecgbatch.encoders.label_sources import supported_labelsets
    from ecgbatch.models import load_model
    from ecgbatch.training.probes import embed_pairs, probe_data, training_pairs

    bad = [ls for ls in labelsets if ls not in supported_labelsets()]
    if bad or not labelsets:
        _fail(f"no mapping from the data's labels to {bad or labelsets!r}; probes can be fitted for "
              f"{supported_labelsets()}")
    try:
        m = load_model(model)[0]
        pairs, specs = training_pairs(config, m.preprocess_config)
        emb = embed_pairs(m, pairs)
        return m, [probe_data(m, pairs, specs, ls, emb=emb) for ls in labelsets]
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@train_app.command("probe")
def train_probe(
    labels: str = typer.Option(..., "--labels", "-l", help="built-in label set: ptbxl-rhythm | ptbxl-super | "
                               "ptbxl-sub | ptbxl-form | cpsc2018; a comma list fits several on one embedding pass"),
    model: str = typer.Option("ecg-coca-mini", "--model", "-m", help="zoo name or model folder"),
    config: Path = typer.Option(Path("configs/coca-mini.yaml"), "--config", "-c", help=_PROBE_CONFIG_HELP),
    folds: int = typer.Option(5, help="cross-validation folds by patient (L2 strength, thresholds)"),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="probe file [default: beside the model's "
                                       "weights, <weights>/probes/<labels>.json, where classify finds it]"),
) -> None:
    """Fit a calibrated linear probe (logistic regression) for a label set on a model's embeddings
    of labelled records (the test fold left out); thresholds by cross-validation by patient."""
    from ecgbatch.encoders.probes import probe_path
    from ecgbatch.pipelines.classify import weights_folder_of
    from ecgbatch.training.probes import fit_probe, model_info

    names = [x.strip() for x in labels.split(",") if x.strip()]
    if out is not None and len(names) != 1:
        _fail("--out takes one label set")
    folder = None
    if out is None:
        folder = weights_folder_of(model, "default" if not Path(model).is_dir() else None)
        if folder is None:
            _fail(f"model {model!r} has no weights folder to store the probe beside: pass --out")
    m, datas = _probe_inputs_many(model, names, config)
    for name, data in zip(names, datas):
        try:
            probe = fit_probe(data, model_info(m, model), folds=folds, seed=seed)
        except ValueError as exc:
            _fail(str(exc))
        path = probe.save(out if out is not None else probe_path(folder, name))
        info = probe.info
        typer.echo(f"{name}: {info['records']} records ({info['records_by_source']}), {info['patients']} patients; "
                   f"l2 {info['l2']}")
        typer.echo("trained: " + ", ".join(f"{t} (n={info['positives'][t]}, thr {th:.3f})"
                                           for t, th in zip(probe.trained, probe.thresholds)))
        if probe.untrained:
            typer.echo("untrained (too few records; marked, never predicted): " + ", ".join(probe.untrained))
        typer.echo(f"wrote {path}")


@eval_app.command("classify")
def eval_classify(
    labels: str = typer.Option(..., "--labels", "-l", help="built-in label set (see `train probe`)"),
    model: str = typer.Option("ecg-coca-mini", "--model", "-m", help="zoo name, model folder or checkpoint"),
    config: Path = typer.Option(Path("configs/coca-mini.yaml"), "--config", "-c", help=_PROBE_CONFIG_HELP),
    folds: int = typer.Option(5, help="outer folds by patient (each probe also cross-validates inside)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("eval-classify.json"), "--out", "-o", help="JSON output"),
) -> None:
    """Cross-validated (by patient) per-label AUC, F1 at the probe's thresholds, top-label and
    sinus vs AF/flutter accuracy, and a confusion table; zero-shot beside it."""
    from ecgbatch.encoders.zeroshot import ZeroShotClassifier
    from ecgbatch.training.probe_eval import evaluate
    from ecgbatch.training.probes import model_info

    m, data = _probe_inputs(model, labels, config)
    zs = ZeroShotClassifier(m, labels).scores(data.emb)
    try:
        res = evaluate(data, model_info(m, model), folds=folds, seed=seed, zero_shot_scores=zs)
    except ValueError as exc:
        _fail(str(exc))
    _print_classify_eval(res, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "config": str(config), **res}, indent=2))
    typer.echo(f"wrote {out}")


@eval_app.command("testfold")
def eval_testfold(
    model: str = typer.Option("ecg-coca-mini", "--model", "-m", help="zoo name or model folder (its probes are used)"),
    config: Path = typer.Option(Path("configs/coca-mini.yaml"), "--config", "-c",
                                help="training YAML whose data sources hold the test fold (ecgbatch/testfold.py)"),
    labels: str = typer.Option("ptbxl-rhythm", "--labels", "-l", help="comma list of probe label sets"),
    zero_shot: str = typer.Option("af", "--zero-shot", help="comma list of keyword labels for zero-shot AUC"),
    trained_on_test: bool = typer.Option(False, "--trained-on-test",
                                         help="the model saw test-fold records: label its figures as training-set figures"),
    unseen_by: Optional[Path] = typer.Option(None, "--unseen-by",
                                             help="keep only test records (and patients) that no source of this "
                                                  "training YAML holds, e.g. the config an older model was trained with"),
    reps: int = typer.Option(2000, help="bootstrap resamples (patients)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("eval-testfold.json"), "--out", "-o", help="JSON output"),
) -> None:
    """ECG -> report R@1, zero-shot AUC and probe top-1 on the fixed test fold only, each with a
    bootstrap 95 % interval over patients."""
    from ecgbatch.eval.bootstrap import fmt_ci
    from ecgbatch.training.testfold_eval import evaluate_test_fold
    from ecgbatch.models import load_model
    from ecgbatch.training.job_config import load_job_config
    from ecgbatch.training.pairs import load_or_build, resolve_path

    try:
        m = load_model(model)[0]
        job = load_job_config(resolve_path(config))
        pairs, cache = load_or_build(job.data.sources, m.preprocess_config, job.data.cache_dir,
                                     job.data.measure_method, "skip", part="test")
        if unseen_by is not None:
            pairs = _unseen_pairs(pairs, job.data.sources, load_job_config(resolve_path(unseen_by)).data.sources)
        res = evaluate_test_fold(m, pairs, job.data.sources, [x.strip() for x in labels.split(",") if x.strip()],
                                 [x.strip() for x in zero_shot.split(",") if x.strip()], reps=reps, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    tag = " [TRAINING-SET figures: the model saw these records]" if trained_on_test else ""
    typer.echo(f"test fold: {res['records']} records, {res['patients']} patients {res['records_by_source']}{tag}")
    typer.echo(f"  ECG -> report R@1: {fmt_ci(res['retrieval']['R@1'])}")
    for n, r in res["zero_shot"].items():
        typer.echo(f"  zero-shot {n} AUC: {fmt_ci(r['auc'])} ({r['n_pos']} of {r['n']})")
    for ls, r in res["probes"].items():
        if "error" in r:
            typer.echo(f"  {ls}: {r['error']}")
            continue
        line = f"  {ls} probe ({r['records']} records): macro AUC {fmt_ci(r['macro_auc_trained'])}"
        if "top1" in r:
            line += f"; top-1 {fmt_ci(r['top1'])}"
        typer.echo(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "config": str(config), "cache": cache.name,
                               "trained_on_test": trained_on_test,
                               "unseen_by": None if unseen_by is None else str(unseen_by), **res}, indent=2))
    typer.echo(f"wrote {out}")


def _unseen_pairs(pairs, specs, seen_specs):
    """The pairs whose ECG and patient no record of ``seen_specs`` (any part) shares."""
    from ecgbatch import testfold
    from ecgbatch.training.pairs import record_keys

    keys, groups = set(), set()
    for part in ("train", "test"):
        k, g = record_keys(seen_specs, part)
        keys |= k
        groups |= g
    ds = {s.name: s.test_dataset for s in specs}
    idx = [i for i, (src, path, g) in enumerate(zip(pairs.source, pairs.path, pairs.group))
           if g not in groups and not (ds.get(src) and testfold.ecg_key(ds[src], path) in keys)]
    if not idx:
        raise ValueError("every test record is held by the --unseen-by sources")
    return pairs.subset(idx)


def _print_classify_eval(res: dict, model: str) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 120))
    t = Table(title=f"{res['labelset']}: {model}, {res['records']} records, {res['folds']}-fold CV by patient")
    for c in ("label", "n+", "AUC", "F1 @ probe threshold"):
        t.add_column(c, justify="left" if c == "label" else "right")
    for lab, r in res["per_label"].items():
        t.add_row(lab, str(r["n_pos"]), f"{r['auc']:.3f}" if "auc" in r else "-",
                  f"{r['f1_at_threshold']:.3f}" if "f1_at_threshold" in r else ("-" if r["trained"] else "untrained"))
    con.print(t)
    if "probe" not in res:
        return
    for how in ("probe", "zero_shot"):
        r = res.get(how)
        if not r:
            continue
        line = f"{how}: top-1 accuracy {r['top1_all']['accuracy']} of {r['top1_all']['n']}"
        if "top1_goal_classes" in r:
            g = r["top1_goal_classes"]
            line += f"; among {'/'.join(g['classes'])}: {g['accuracy']} of {g['n']}"
            line += " (" + ", ".join(f"{s} {v['accuracy']} of {v['n']}"
                                     for s, v in r["top1_goal_classes_by_source"].items() if v["n"]) + ")"
        if "binary_groups" in r:
            line += f"; sinus vs AF/flutter: {r['binary_groups']['accuracy']} of {r['binary_groups']['n']}"
        con.print(line)
    conf = res["probe"]["confusion"]
    cols = sorted({p for row in conf.values() for p in row})
    t = Table(title="probe confusion (rows: truth, columns: top label)")
    t.add_column("truth")
    for c in cols:
        t.add_column(c, justify="right")
    for truth, row in conf.items():
        t.add_row(truth, *[str(row.get(c, "")) for c in cols])
    con.print(t)
