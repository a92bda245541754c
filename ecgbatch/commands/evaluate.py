"""`ecgbatch eval retrieval|zeroshot|crossval|classify|report`: the evaluation commands. Each
parses its options, calls one function of ecgbatch.eval and prints; `eval report` lives in
ecgbatch.commands.eval_report and joins this group here.

Heavy imports (torch, transformers) happen inside the command bodies."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ecgbatch.commands.common import PROBE_CONFIG_HELP, fail, key_values
from ecgbatch.commands.eval_report import eval_report
from ecgbatch.models import load_model

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate models: retrieval, zero-shot, crossval, classify, report.")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


# --- shared eval inputs -------------------------------------------------------------------------

def _eval_pairs(model_pre, data: str, text_source: str, dx_mapping, metadata, statements, table,
                read_option: list[str], split: Optional[Path], split_part: str, measure_method: str,
                source: Optional[str] = None):
    from ecgbatch.training.pairs import PairSet, SourceSpec, build_pairs, resolve_path

    opts = key_values(read_option, "--read-option")
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
            fail(f"no record of {data!r} is in the {split_part!r} part of {str(split)!r}")
        pairs = pairs.subset(idx)
    if source is not None:
        idx = [i for i, s in enumerate(pairs.source) if s == source]
        if not idx:
            fail(f"no pair of {data!r} comes from source {source!r} (sources: {sorted(set(pairs.source))})")
        pairs = pairs.subset(idx)
    return pairs


def _model_and_pairs(model, data, text_source, dx_mapping, metadata, statements, table, read_option, split,
                     split_part, source):
    """(the model --model names, its evaluation pairs from the _PAIR_OPTS options)."""
    try:
        m, _ = load_model(model)
        return m, _eval_pairs(m.preprocess_config, data, text_source, dx_mapping, metadata, statements, table,
                              read_option, split, split_part, "ecgchat", source)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


_DATA_HELP = "records folder, manifest (.parquet/.csv with 'path') or a pair cache (.npz)"
_TS_HELP = "text per record: header (LUDB free text / Challenge #Dx) | ptbxl | table | mimic"
# The options that say which (ECG, text) pairs an evaluation runs on (retrieval, zeroshot).
_PAIR_OPTS = dict(
    data=typer.Option(..., "--data", help=_DATA_HELP),
    text_source=typer.Option("header", "--text-source", help=_TS_HELP),
    dx_mapping=typer.Option(None, help="folder with dx_mapping_*.csv (Challenge codes)"),
    metadata=typer.Option(None, help="ptbxl: database CSV; mimic: machine_measurements.csv"),
    statements=typer.Option(None, help="ptbxl: scp_statements.csv"),
    table=typer.Option(None, help="table: CSV/JSONL of (record_id or path, text)"),
    read_option=typer.Option([], "--read-option", help="reader option, e.g. fs=500"),
    split=typer.Option(None, help="a run's split.json: evaluate one part only"),
    split_part=typer.Option("val", help="train | val"),
    source=typer.Option(None, help="pair cache (.npz) only: keep one data source"),
)


@eval_app.command("retrieval")
def eval_retrieval(
    model: str = typer.Option(..., "--model", "-m", help="zoo name, model folder or training checkpoint"),
    data: str = _PAIR_OPTS["data"],
    text_source: str = _PAIR_OPTS["text_source"],
    dx_mapping: Optional[str] = _PAIR_OPTS["dx_mapping"],
    metadata: Optional[str] = _PAIR_OPTS["metadata"],
    statements: Optional[str] = _PAIR_OPTS["statements"],
    table: Optional[str] = _PAIR_OPTS["table"],
    read_option: list[str] = _PAIR_OPTS["read_option"],
    wde: bool = typer.Option(True, "--wde/--no-wde", help="append the measurement suffix to every report"),
    split: Optional[Path] = _PAIR_OPTS["split"],
    split_part: str = _PAIR_OPTS["split_part"],
    source: Optional[str] = _PAIR_OPTS["source"],
    out: Path = typer.Option(Path("eval-retrieval.json"), "--out", "-o", help="JSON output"),
) -> None:
    """ECG <-> report retrieval over the full similarity matrix (ECG-Chat's protocol)."""
    from ecgbatch.eval.retrieval import embed_ecgs, embed_texts, retrieval_metrics
    from ecgbatch.training.data import fit_texts, token_counter

    m, pairs = _model_and_pairs(model, data, text_source, dx_mapping, metadata, statements, table, read_option,
                                split, split_part, source)
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
    data: str = _PAIR_OPTS["data"],
    labels: str = typer.Option("af", "--labels",
                               help="comma list of keyword labels read from the reports (af, sinus_rhythm, "
                                    "lbbb, rbbb, lvh, avb1, lad), or a CSV (record_id/path + one 0/1 column per label)"),
    prompts: Optional[Path] = typer.Option(None, help="JSON/YAML {label: prompt | [prompts]} (default: built-in)"),
    text_source: str = _PAIR_OPTS["text_source"],
    dx_mapping: Optional[str] = _PAIR_OPTS["dx_mapping"],
    metadata: Optional[str] = _PAIR_OPTS["metadata"],
    statements: Optional[str] = _PAIR_OPTS["statements"],
    table: Optional[str] = _PAIR_OPTS["table"],
    read_option: list[str] = _PAIR_OPTS["read_option"],
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
    split: Optional[Path] = _PAIR_OPTS["split"],
    split_part: str = _PAIR_OPTS["split_part"],
    source: Optional[str] = _PAIR_OPTS["source"],
    out: Path = typer.Option(Path("eval-zeroshot"), "--out", "-o", help="output folder (JSON + roc.png)"),
) -> None:
    """Zero-shot classification: per-class AUC, best-threshold F1, fixed-threshold F1, ROC PNG."""
    from ecgbatch.eval.zeroshot_eval import save_roc_png
    from ecgbatch.eval.zeroshot_run import evaluate_zeroshot

    m, pairs = _model_and_pairs(model, data, text_source, dx_mapping, metadata, statements, table, read_option,
                                split, split_part, source)
    try:
        run = evaluate_zeroshot(m, pairs, labels, prompts, threshold, contrast, query, expand, k, query_prevalence)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    names, res = run.names, run.result
    out.mkdir(parents=True, exist_ok=True)
    png = save_roc_png(run.y, run.scores, names, out / "roc.png", title=f"zero-shot ROC: {model}")
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

    from ecgbatch.text.labels import KEYWORD_LABELS
    from ecgbatch.training.crossval import crossval_scores, summary

    if label not in KEYWORD_LABELS:
        fail(f"unknown keyword label {label!r} (known: {sorted(KEYWORD_LABELS)})")
    from ecgbatch.training.pairs import PairSet, resolve_path

    cache = resolve_path(data)
    if cache.suffix != ".npz" or not cache.is_file():
        fail(f"--data must be the pair cache (.npz) the runs trained on, got {data!r}")
    try:
        cv = crossval_scores(runs, PairSet.load(cache), label, query, expand=expand)
        res = summary(cv, k=k, prevalence=prevalence, pool=pool or None)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
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


@eval_app.command("classify")
def eval_classify(
    labels: str = typer.Option(..., "--labels", "-l", help="built-in label set (see `train probe`)"),
    model: str = typer.Option("ecg-coca-mini", "--model", "-m", help="zoo name, model folder or checkpoint"),
    config: Path = typer.Option(Path("configs/coca-mini.yaml"), "--config", "-c", help=PROBE_CONFIG_HELP),
    folds: int = typer.Option(5, help="outer folds by patient (each probe also cross-validates inside)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("eval-classify.json"), "--out", "-o", help="JSON output"),
) -> None:
    """Cross-validated (by patient) per-label AUC, F1 at the probe's thresholds, top-label and
    sinus vs AF/flutter accuracy, and a confusion table; zero-shot beside it."""
    from ecgbatch.encoders.zeroshot import ZeroShotClassifier
    from ecgbatch.training.probe_eval import evaluate
    from ecgbatch.training.probes import model_info, probe_inputs

    try:
        m, (data,) = probe_inputs(model, [labels], config)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    zs = ZeroShotClassifier(m, labels).scores(data.emb)
    try:
        res = evaluate(data, model_info(m, model), folds=folds, seed=seed, zero_shot_scores=zs)
    except ValueError as exc:
        fail(str(exc))
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
        fail(str(exc))
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


eval_app.command("report")(eval_report)   # ecgbatch.commands.eval_report, last in --help as before
