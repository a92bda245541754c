"""`ecgbatch embed`: a Ray Data streaming job that turns an ECG archive into embeddings.

    scan (driver) -> blocks of record sources -> ray.data.from_items
      -> map_batches(read_and_preprocess)                 CPU tasks, the model's PreprocessConfig
      -> map_batches(EncoderUDF, ActorPoolStrategy(N))    one model per actor, GPU when asked
      -> iter_batches on the driver -> one Parquet shard per block, committed atomically

A block (work unit) is a fixed-size chunk of the sorted records still to do; the driver collects
the rows of a block as they stream in and commits the block (failures file, then shard) once
every record of it has come back, so a crash at any point loses at most the blocks in flight and
never duplicates a record (see ecgbatch.pipelines.workspace).
"""
from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from ecgbatch.models import load_model  # -> (model, the create_model args the actors rebuild it with)
from ecgbatch.pipelines import ray_connect
from ecgbatch.pipelines import sources as src
from ecgbatch.pipelines.blocks import plan_blocks
from ecgbatch.pipelines.job_progress import JobProgress
from ecgbatch.pipelines.workspace import ModelTable, default_workspace, model_key
from ecgbatch.signal.content import physiological_flags

DEFAULT_MODEL = "ecg-coca-mini"
DEFAULT_BLOCK_SIZE = 128
LABEL_SEP = "\x1f"  # joins label codes inside the read stage's string column
# Waveform measurements stored per record (ecgbatch.signal.measure, ECG-Chat method), in ms/bpm,
# the frontal QRS axis in degrees and the RR irregularity (RMSSD / mean RR, ecgbatch.signal.rate).
MEASUREMENT_COLUMNS = ("hr_bpm", "rr_ms", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms", "axis_deg", "rr_nrmssd")
FAILURE_FIELDS = ("source", "record_id", "stage", "error_type", "error_kind", "message")


# ---------------------------------------------------------------------------------------------
# Stage 1: read + preprocess (plain function, runs as Ray tasks; testable without Ray)
# ---------------------------------------------------------------------------------------------
def _meta_fields(meta: dict[str, Any]) -> dict[str, Any]:
    """age, sex, diagnoses text and label codes from a Record's meta (never identifiers)."""
    age = meta.get("age")
    try:
        age = float(age) if age is not None and str(age).strip() != "" else math.nan
    except (TypeError, ValueError):
        age = math.nan
    sex = meta.get("sex")
    sex = str(sex) if sex is not None else ""
    diag = next((meta[k] for k in ("diagnoses", "diagnosis_text", "diagnosis_statements", "report",
                                   "dx_names")
                 if meta.get(k)), "")
    if isinstance(diag, (list, tuple)):
        diag = "; ".join(str(d) for d in diag)
    labels = next((meta[k] for k in ("labels", "label_codes", "dx_codes", "scp_codes") if meta.get(k)), ())
    if isinstance(labels, dict):  # e.g. PTB-XL scp_codes {code: likelihood}
        labels = list(labels)
    elif isinstance(labels, str):
        labels = [p.strip() for p in labels.replace(";", ",").split(",") if p.strip()]
    labels = [str(v) for v in (labels or ())]
    quality = [str(q) for q in (meta.get("quality") or ())]
    return {"age": age, "sex": sex, "diagnoses": str(diag or ""), "labels": LABEL_SEP.join(labels),
            "quality": LABEL_SEP.join(quality)}


def _measure(record) -> dict[str, float]:
    from ecgbatch.signal.measure import measure

    m = measure(record)
    failed = m.quality == "failed"
    out = {}
    for k in MEASUREMENT_COLUMNS:
        v = float(getattr(m, k))
        out[k] = math.nan if failed or not math.isfinite(v) else v
    return out


def read_one(source, config, measure: bool) -> dict[str, Any]:
    """One record -> a row dict (ok=True with x, or ok=False with stage/error fields).

    Typed input errors (ecgbatch.io.errors.EcgReadError) become failure rows with their kind;
    any other exception is recorded too (error_kind="unexpected") so one odd file cannot stop an
    archive-wide job, and it is visible in the failures table and the summary."""
    from ecgbatch.io.errors import EcgReadError
    from ecgbatch.signal import preprocess

    row: dict[str, Any] = {"source": source.key, "ok": False, "stage": "read", "error_type": "",
                           "error_kind": "", "message": "", "x": None, "notes": ""}
    stage = "read"
    try:
        with src.local_source(source) as local:
            rec = local.read()
        stage = "preprocess"
        flags = physiological_flags(rec.signal, rec.leads, rec.units)   # the report job refuses
        rec.meta["quality"] = list(dict.fromkeys([*(rec.meta.get("quality") or ()), *flags]))
        pre = preprocess(rec, config)
        row.update(_meta_fields(rec.meta or {}))
        row["fs"] = float(rec.fs)
        row["duration_s"] = float(rec.duration_s)
        notes = list(pre.notes)
        if measure:  # a record that cannot be measured is still embedded: null columns + a note
            try:
                row.update(_measure(rec))
            except Exception as exc:  # noqa: BLE001 - kept in preprocess_notes
                notes.append(f"measurements failed: {type(exc).__name__}: {exc}")
        row["notes"] = "; ".join(notes)
        row.update(ok=True, stage="", x=pre.x)
    except EcgReadError as exc:
        row.update(stage=stage, error_type=type(exc).__name__, error_kind=exc.kind, message=str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded as a failure row, never dropped
        row.update(stage=stage, error_type=type(exc).__name__, error_kind="unexpected",
                   message=f"{type(exc).__name__}: {exc}")
    return row


def read_and_preprocess(batch: dict[str, np.ndarray], *, preprocess: dict, measure: bool = True,
                        rhythm: dict | None = None, ledger=None) -> dict[str, np.ndarray]:
    """Ray Data UDF: a batch of blocks {block, sources (RecordSource JSON), ids} -> one row per record.

    Columns: block, source, record_id, ok, stage, error_type, error_kind, message, x [L, T]
    (zeros for failed rows), age, sex, diagnoses, labels, quality (reader flags), fs, duration_s,
    notes, measurements (NaN unless ``measure``); with ``rhythm`` (the model's ``rhythm_spec``)
    also rhythm_features [7] and rhythm_rr_ms, the rhythm channel's inputs, computed here on CPU
    so that the encoder actors only run the network. ``ledger`` (read_ledger.start_ledger): a
    record whose worker process died in an earlier attempt of this task becomes a failure row."""
    from ecgbatch.pipelines.read_ledger import ReadTracker, crash_row
    from ecgbatch.signal.config import PreprocessConfig

    cfg = PreprocessConfig.from_dict(preprocess)
    n_leads, n_samples = len(cfg.leads), cfg.n_samples
    tracker = ReadTracker(ledger)
    rows = []
    for blk, sources, ids in zip(batch["block"], batch["sources"], batch["ids"]):
        died = tracker.begin(str(blk))
        for s, rid in zip(list(sources), list(ids)):
            source = src.source_from_json(str(s))
            if source.key in died:
                r = crash_row(source.key)
            else:
                tracker.reading(str(blk), source.key)
                r = read_one(source, cfg, measure)
            r["block"], r["record_id"] = str(blk), str(rid)
            rows.append(r)
        tracker.finish(str(blk))
    if n_samples is None:
        shapes = {r["x"].shape for r in rows if r["ok"]}
        if len(shapes) > 1:
            raise ValueError(f"PreprocessConfig.n_samples=None gives records of different lengths "
                             f"{sorted(shapes)}; the embed pipeline needs a fixed length")
        n_samples = next(iter(shapes))[1] if shapes else 1
    out: dict[str, np.ndarray] = {}
    for k in ("block", "source", "record_id", "stage", "error_type", "error_kind", "message",
              "sex", "diagnoses", "labels", "quality", "notes"):
        out[k] = np.array([str(r.get(k, "")) for r in rows], dtype=object)
    out["ok"] = np.array([r["ok"] for r in rows], dtype=bool)
    for k in ("age", "fs", "duration_s", *MEASUREMENT_COLUMNS):
        out[k] = np.array([r.get(k, math.nan) for r in rows], dtype=np.float64)
    x = np.zeros((len(rows), n_leads, n_samples), dtype=np.float32)
    for i, r in enumerate(rows):
        if r["ok"]:
            x[i] = r["x"]
    out["x"] = x
    if rhythm is not None:
        from ecgbatch.encoders.rhythm import rhythm_inputs

        out["rhythm_features"], out["rhythm_rr_ms"] = rhythm_inputs(x[:, int(rhythm["lead_index"])],
                                                                    float(rhythm["fs"]))
    return out


# ---------------------------------------------------------------------------------------------
# Stage 2: encode (callable class: the model is loaded once per actor)
# ---------------------------------------------------------------------------------------------
def model_weights_hash(model) -> str:
    """The identity of a model's weights (ecgbatch.encoders: sha256 over the sorted state dict)."""
    return str(model.weights_hash)


class EncoderUDF:
    """Ray Data actor: the ECG tower of one model, loaded once, on the actor's GPU when it has one."""

    def __init__(self, model: str, spec: dict[str, Any], weights_hash: str, use_gpu: bool = False,
                 torch_threads: int | None = None):
        import torch

        from ecgbatch.models import create_model

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("this encoder actor was given a GPU by Ray, but torch sees no CUDA "
                               f"device (torch {torch.__version__}): install a CUDA build of torch")
        device = "cuda" if use_gpu else "cpu"
        self.model = create_model(model, device=device, **spec)
        self.model.eval()
        got = model_weights_hash(self.model)
        if got != weights_hash:  # every actor must encode into the driver's embedding space
            raise RuntimeError(f"encoder actor loaded weights {got!r}, the driver expected "
                               f"{weights_hash!r} (model {model!r} changed on disk?)")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = batch.pop("x")
        ok = np.asarray(batch["ok"], dtype=bool)
        dim = int(self.model.embed_dim)
        emb = np.zeros((len(ok), dim), dtype=np.float32)
        feats, rr = batch.pop("rhythm_features", None), batch.pop("rhythm_rr_ms", None)
        if ok.any():
            given = None if feats is None else (np.asarray(feats)[ok], np.asarray(rr)[ok])
            emb[ok] = self.model.embed_ecgs(x[ok], rhythm=given)
        batch["embedding"] = emb
        return batch


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------
def read_stage(blocks: list[tuple[str, list[str], list[str]]], preprocess: dict, *, measure: bool = False,
               rhythm: dict | None = None):
    """The scan + read/preprocess stages shared by the block jobs: one Ray task per block
    ``(key, sources, ids)`` running read_and_preprocess."""
    import ray

    items = [{"block": k, "sources": list(s), "ids": list(i)} for k, s, i in blocks]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # Each read task holds one block of model inputs (plus the decoded records): declaring that
    # memory lets Ray pack tasks safely, and (as different remote args) keeps this CPU stage out
    # of the model actors, so reading overlaps the model instead of taking turns with it.
    n_leads, n_samples = len(preprocess["leads"]), preprocess.get("n_samples") or 5000
    block_bytes = max(len(s) for _, s, _ in blocks) * n_leads * n_samples * 4 * 3 + (256 << 20)
    # a worker that dies on a record (native crash, OOM kill) is retried without that record
    from ecgbatch.pipelines.read_ledger import READ_TASK_RETRIES, start_ledger

    return ds.map_batches(read_and_preprocess, batch_size=1,
                          fn_kwargs={"preprocess": preprocess, "measure": measure, "rhythm": rhythm,
                                     "ledger": start_ledger()},
                          num_cpus=1, memory=block_bytes,
                          ray_remote_args_fn=lambda: {"max_retries": READ_TASK_RETRIES})


# Ray Data hands every actor its UDF and context as object-store references, and by default
# restarts dead actors (max_restarts=-1); Ray's core worker then logs an ERROR line for every
# actor ("... has constructor arguments in the object store and max_restarts > 0 ...", ray issue
# 53727), although nothing failed. Our constructor arguments are already small (a model name,
# its create_model spec, a hash), so the cause is the restart policy: no actor restarts. A dead
# actor then fails the job, and rerunning it redoes only the blocks that were not committed.
# Ray 2.60 has no named map_batches parameter for it, and warns that extra remote arguments
# are deprecated (from 2.64): no_restart_warning() silences that one warning where we pass it.
NO_ACTOR_RESTARTS = {"max_restarts": 0}


@contextmanager
def no_restart_warning() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        yield


def build_dataset(blocks: list[tuple[str, list[str], list[str]]], *, model: str, spec: dict[str, Any],
                  weights_hash: str, preprocess: dict, batch_size: int = 64, encoders: int = 1,
                  gpus_per_encoder: float = 0.0, cpus_per_encoder: float = 1.0, measure: bool = True,
                  rhythm: dict | None = None):
    """The Ray Dataset of the embed job (lazy; iterate it to run). ``blocks``: [(key, sources, ids)]."""
    from ray.data import ActorPoolStrategy

    if batch_size < 1 or encoders < 1:
        raise ValueError(f"batch_size and encoders must be >= 1, got {batch_size!r}, {encoders!r}")
    ds = read_stage(blocks, preprocess, measure=measure, rhythm=rhythm)
    use_gpu = gpus_per_encoder > 0
    with no_restart_warning():
        ds = ds.map_batches(
            EncoderUDF,
            fn_constructor_kwargs={"model": model, "spec": spec, "weights_hash": weights_hash,
                                   "use_gpu": use_gpu,
                                   "torch_threads": None if use_gpu else max(1, int(cpus_per_encoder))},
            compute=ActorPoolStrategy(size=encoders), batch_size=batch_size,
            num_gpus=gpus_per_encoder if use_gpu else 0, num_cpus=cpus_per_encoder,
            **NO_ACTOR_RESTARTS)
    return ds


# ---------------------------------------------------------------------------------------------
# Driver: shards
# ---------------------------------------------------------------------------------------------
def metadata_columns(rows: list[dict[str, Any]]) -> dict[str, pa.Array]:
    """The record metadata columns of a shard (age, sex, diagnoses, labels, quality, fs,
    duration, measurements, preprocess notes) from read_and_preprocess rows."""
    cols: dict[str, pa.Array] = {
        "age": pa.array([None if math.isnan(r["age"]) else r["age"] for r in rows], pa.float64()),
        "sex": pa.array([r["sex"] or None for r in rows], pa.string()),
        "diagnoses": pa.array([r["diagnoses"] for r in rows], pa.string()),
        "labels": pa.array([[v for v in r["labels"].split(LABEL_SEP) if v] for r in rows],
                           pa.list_(pa.string())),
        "quality": pa.array([[v for v in r["quality"].split(LABEL_SEP) if v] for r in rows],
                            pa.list_(pa.string())),
    }
    for k in ("fs", "duration_s", *MEASUREMENT_COLUMNS):
        cols[k] = pa.array([None if math.isnan(r[k]) else r[k] for r in rows], pa.float64())
    cols["preprocess_notes"] = pa.array([r["notes"] for r in rows], pa.string())
    return cols


def embeddings_table(rows: list[dict[str, Any]], signature: dict[str, str], dim: int) -> pa.Table:
    """The shard of one block (ok rows only); an empty table with the full schema when none."""
    emb = np.asarray([r["embedding"] for r in rows], dtype=np.float32).reshape(len(rows), dim)
    cols: dict[str, pa.Array] = {
        "record_id": pa.array([r["record_id"] for r in rows], pa.string()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), dim),
        "model": pa.array([signature["model"]] * len(rows), pa.string()),
        "weights_hash": pa.array([signature["weights_hash"]] * len(rows), pa.string()),
        "preprocess_hash": pa.array([signature["preprocess_hash"]] * len(rows), pa.string()),
    }
    cols.update(metadata_columns(rows))
    return pa.table(cols)


def failures_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({k: pa.array([str(r[k]) for r in rows], pa.string()) for k in FAILURE_FIELDS})


@dataclass
class EmbedSummary:
    table: str
    model: str
    total_records: int
    already_done: int
    embedded: int = 0
    failed: int = 0
    blocks_committed: int = 0
    seconds: float = 0.0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    index: dict[str, Any] | None = None
    # the streaming part alone: from starting the dataset to the last commit, and the rate after
    # the first results arrived (actor start-up and model loading excluded)
    pipeline_seconds: float = 0.0
    steady_records_per_s: float = 0.0

    @property
    def records_per_s(self) -> float:
        return (self.embedded + self.failed) / self.seconds if self.seconds > 0 else 0.0


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = 2) -> Iterator[None]:
    """A new local Ray started here (and shut down after), an existing cluster (``address``:
    "auto", "host:port" or "ray://host:port"; see ecgbatch.pipelines.ray_connect), or the session
    the caller already started (left running)."""
    import ray

    if ray.is_initialized():
        yield
        return

    ray_connect.init_ray(address, num_cpus=num_cpus, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def _jsonable(d: dict) -> dict:
    return {str(k): (v if isinstance(v, (str, int, float, bool, type(None))) else str(v)) for k, v in d.items()}


def list_sources(root: str) -> list:
    """Every RecordSource of an archive, via ecgbatch.io's cheap listing (no signal decoding);
    pyarrow filesystem URIs are listed by sources.list_remote."""
    if src.is_uri(root):
        return src.list_remote(root)
    from ecgbatch.io import list_records

    return list(list_records(root))


def _quiet_ray_data() -> None:
    import logging

    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver draws one rich bar instead
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def run(archive: str, workspace: str | os.PathLike | None = None, model: str = DEFAULT_MODEL, *,
        pretrained: str | None = None, address: str | None = None, batch_size: int | None = None,
        encoders: int = 1, gpus_per_encoder: float | None = None, cpus_per_encoder: float = 1.0,
        block_size: int = DEFAULT_BLOCK_SIZE, measure: bool = False, build_index: bool = True,
        index_kind: str = "auto", allow_random_init: bool = False, num_cpus: int | None = 2,
        console=None, progress: bool = True, sources: list | None = None) -> EmbedSummary:
    """Embed every record of ``archive`` not yet in the workspace; returns the summary.

    ``measure``: also compute waveform measurements (NeuroKit2, ~0.2 s per record on one core,
    about 10x the rest of the per-record work), else those columns are null.

    ``batch_size``: ECGs per encoder forward, default 64 on CPU and 512 on GPU
    (ecgbatch.device.embed_batch_size).

    Exactly-once and resumable: records already committed (embedded or failed) are skipped, the
    rest is cut into blocks of ``block_size`` and committed block by block."""
    from ecgbatch.device import embed_batch_size
    from ecgbatch.pipelines.progress import RecordProgress

    t0 = time.perf_counter()
    root = src.normalize_root(archive)
    ws = default_workspace() if workspace is None else workspace
    warn = (console.print if console is not None else print)
    mdl, spec = load_model(model, pretrained, device="cpu", allow_random_init=allow_random_init,
                           warn=lambda m: warn(f"WARNING: {m}"))
    pcfg = mdl.preprocess_config
    signature = {"model": str(model), "weights_hash": model_weights_hash(mdl), "preprocess_hash": pcfg.hash()}
    dim = int(mdl.embed_dim)
    rhythm = getattr(mdl, "rhythm_spec", None)   # rhythm-channel inputs are computed in the read tasks
    mdl_provenance = dict(getattr(mdl, "provenance", {}) or {})
    del mdl

    by_key = {s.key: s for s in (sources if sources is not None else list_sources(root))}
    all_sources = sorted(by_key)
    ids = src.record_ids(all_sources, root)
    table = ModelTable(ws, model_key(signature["model"], signature["weights_hash"],
                                     signature["preprocess_hash"]))
    with table:
        if table.exists():
            prev = table.read_meta()
            if prev.get("archive") != root:
                raise ValueError(f"{table.root} holds embeddings of archive {prev.get('archive')!r}, "
                                 f"not {root!r}: use another --workspace for another archive")
        table.write_meta({**signature, "dim": dim, "create_args": spec,
                          "provenance": _jsonable(mdl_provenance), "archive": root,
                          "preprocess": pcfg.to_dict(), "block_size": block_size})
        todo, blocks = plan_blocks(all_sources, table.committed_sources(), by_key, ids, block_size)
        summary = EmbedSummary(table=str(table.root), model=str(model), total_records=len(all_sources),
                               already_done=len(all_sources) - len(todo))
        if blocks:
            with ray_session(address, num_cpus):
                import ray

                _quiet_ray_data()
                if gpus_per_encoder is None:
                    gpus_per_encoder = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
                batch_size = embed_batch_size(gpus_per_encoder > 0, batch_size)
                ds = build_dataset(blocks, model=str(model), spec=spec,
                                   weights_hash=signature["weights_hash"], preprocess=pcfg.to_dict(),
                                   batch_size=batch_size, encoders=encoders,
                                   gpus_per_encoder=gpus_per_encoder, cpus_per_encoder=cpus_per_encoder,
                                   measure=measure, rhythm=rhythm)
                expected = {k: len(chunk) for k, chunk, _ in blocks}
                with RecordProgress(len(todo), console=console, enabled=progress) as bar:
                    _consume(ds, table, expected, signature, dim, summary, bar)
        summary.seconds = time.perf_counter() - t0
    if build_index and table.shard_files():
        summary.index = build_or_update_index(table, kind=index_kind)
    return summary


def _consume(ds, table: ModelTable, expected: dict[str, int], signature: dict[str, str], dim: int,
             summary: EmbedSummary, bar) -> None:
    """Group the streamed rows by block and commit each block as soon as it is complete."""
    from ecgbatch.pipelines.blocks import consume_blocks, count_kinds, split_failures

    def commit(key: str, rows: list[dict[str, Any]]) -> None:
        ok, bad = split_failures(rows)
        table.commit_block(key, embeddings_table(ok, signature, dim), failures_table(bad))
        summary.embedded += len(ok)
        summary.failed += len(bad)
        summary.blocks_committed += 1
        count_kinds(summary.failure_kinds, bad)

    progress = JobProgress(table, summary.total_records, summary.already_done)
    stats = consume_blocks(ds, expected, commit, progress=progress,
                           on_batch=lambda b: bar.advance(len(b["block"])))
    summary.pipeline_seconds = stats.pipeline_seconds
    summary.steady_records_per_s = stats.steady_records_per_s


def build_or_update_index(table: ModelTable, kind: str = "auto", gpu: bool = False,
                          rebuild: bool = False) -> dict[str, Any]:
    """Build the table's FAISS index, or add the records it lacks when one exists (same kind)."""
    from ecgbatch import index as ix

    t0 = time.perf_counter()
    manifest = table.index_dir / "index.json"
    if manifest.is_file() and not rebuild and kind in ("auto", None):
        rep = ix.update_index(table.root, index_dir=table.index_dir)
        return {"action": "updated", "kind": rep.index.kind, "rows": len(rep.index), "added": rep.added,
                "path": str(table.index_dir), "seconds": round(time.perf_counter() - t0, 3)}
    idx = ix.build_index(table.root, kind=kind, gpu=gpu, out_dir=table.index_dir)
    return {"action": "built", "kind": idx.kind, "rows": len(idx), "added": len(idx),
            "path": str(table.index_dir), "seconds": round(time.perf_counter() - t0, 3)}
