"""`ecgbatch embed`: a Ray Data streaming job that turns an ECG archive into embeddings.

    scan (driver) -> blocks of record sources -> ray.data.from_items
      -> map_batches(read_task)                           CPU tasks (read_and_preprocess, at low priority), the model's PreprocessConfig
      -> map_batches(EncoderUDF, ActorPoolStrategy(N))    one model per actor, GPU when asked
      -> iter_batches on the driver -> one Parquet shard per block, committed atomically

A block (work unit) is a fixed-size chunk of the sorted records still to do; the driver collects
the rows of a block as they stream in and commits the block (failures file, then shard) once
every record of it has come back, so a crash at any point loses at most the blocks in flight and
never duplicates a record (see ecgbatch.pipelines.workspace).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ecgbatch.device import embed_batch_size
from ecgbatch.models import create_model, load_model
from ecgbatch.pipelines import sources as src
from ecgbatch.pipelines.blocks import consume_blocks, count_kinds, plan_blocks, split_failures
from ecgbatch.pipelines.job_progress import JobProgress
from ecgbatch.pipelines.progress import RecordProgress
from ecgbatch.pipelines.ray_common import NO_ACTOR_RESTARTS, no_restart_warning, quiet_ray_data, ray_session
from ecgbatch.pipelines.read_ledger import run_ledger
from ecgbatch.pipelines.read_stage import failures_table, metadata_columns, read_stage
from ecgbatch.pipelines.sources import list_sources
from ecgbatch.pipelines.table_model import model_weights_hash
from ecgbatch.pipelines.workspace import ModelTable, default_workspace, model_key

DEFAULT_MODEL = "ecg-coca-mini"
DEFAULT_BLOCK_SIZE = 128


# ---------------------------------------------------------------------------------------------
# Stage 2: encode (callable class: the model is loaded once per actor); stage 1, the read, is
# ecgbatch.pipelines.read_stage
# ---------------------------------------------------------------------------------------------
class EncoderUDF:
    """Ray Data actor: the ECG tower of one model, loaded once, on the actor's GPU when it has one."""

    def __init__(self, model: str, spec: dict[str, Any], weights_hash: str, use_gpu: bool = False,
                 torch_threads: int | None = None):
        import torch

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


def build_dataset(blocks: list[tuple[str, list[str], list[str]]], *, model: str, spec: dict[str, Any],
                  weights_hash: str, preprocess: dict, batch_size: int = 64, encoders: int = 1,
                  gpus_per_encoder: float = 0.0, cpus_per_encoder: float = 1.0, measure: bool = True,
                  rhythm: dict | None = None, ledger=None):
    """The Ray Dataset of the embed job (lazy; iterate it to run). ``blocks``: [(key, sources, ids)].
    ``ledger``: the run's read ledger (read_ledger.run_ledger)."""
    from ray.data import ActorPoolStrategy

    if batch_size < 1 or encoders < 1:
        raise ValueError(f"batch_size and encoders must be >= 1, got {batch_size!r}, {encoders!r}")
    ds = read_stage(blocks, preprocess, ledger=ledger, measure=measure, rhythm=rhythm)
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


def _jsonable(d: dict) -> dict:
    return {str(k): (v if isinstance(v, (str, int, float, bool, type(None))) else str(v)) for k, v in d.items()}


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
            with ray_session(address, num_cpus), run_ledger() as ledger:
                import ray

                quiet_ray_data()
                if gpus_per_encoder is None:
                    gpus_per_encoder = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
                batch_size = embed_batch_size(gpus_per_encoder > 0, batch_size)
                ds = build_dataset(blocks, model=str(model), spec=spec,
                                   weights_hash=signature["weights_hash"], preprocess=pcfg.to_dict(),
                                   batch_size=batch_size, encoders=encoders,
                                   gpus_per_encoder=gpus_per_encoder, cpus_per_encoder=cpus_per_encoder,
                                   measure=measure, rhythm=rhythm, ledger=ledger)
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
