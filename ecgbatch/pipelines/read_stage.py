"""The read stage every block job shares (``embed``, ``report``): records -> the model's input,
with the metadata and measurements the tables keep, as plain functions that run as Ray tasks
(testable without Ray), and the table columns built from their rows.

    read_stage(blocks, preprocess, ledger=...)   one Ray task per block, running read_and_preprocess
    read_and_preprocess(batch, ...)    one block: read, preprocess, measure; failures as rows
    metadata_columns / failures_table  the shard columns from those rows
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from ecgbatch.io.errors import EcgReadError
from ecgbatch.pipelines import sources as src
from ecgbatch.pipelines.ray_common import READ_NICENESS, set_niceness
from ecgbatch.pipelines.read_ledger import crash_row, ReadTracker
from ecgbatch.signal import preprocess
from ecgbatch.signal.config import PreprocessConfig
from ecgbatch.signal.content import physiological_flags
from ecgbatch.signal.measure import measure

LABEL_SEP = "\x1f"  # joins label codes inside the read stage's string column
# Waveform measurements stored per record (ecgbatch.signal.measure, ECG-Chat method), in ms/bpm,
# the frontal QRS axis in degrees, the RR irregularity (RMSSD / mean RR, ecgbatch.signal.rate) and
# the Sokolow-Lyon / Cornell LVH voltages in mV (ecgbatch.signal.voltage; NaN unless the record is in mV).
MEASUREMENT_COLUMNS = ("hr_bpm", "rr_ms", "pr_ms", "qrs_ms", "qt_ms", "qtc_ms", "axis_deg", "rr_nrmssd",
                       "sokolow_lyon_mv", "cornell_mv")
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


def _measure(record, method: str = "ecgchat") -> dict[str, float]:
    m = measure(record, method=method)
    failed = m.quality == "failed"
    out = {}
    for k in MEASUREMENT_COLUMNS:
        v = float(getattr(m, k))
        out[k] = math.nan if failed or not math.isfinite(v) else v
    return out


def read_one(source, config, measure: bool, measure_method: str = "ecgchat") -> dict[str, Any]:
    """One record -> a row dict (ok=True with x, or ok=False with stage/error fields).

    Typed input errors (ecgbatch.io.errors.EcgReadError) become failure rows with their kind;
    any other exception is recorded too (error_kind="unexpected") so one odd file cannot stop an
    archive-wide job, and it is visible in the failures table and the summary."""
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
                row.update(_measure(rec, measure_method))
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
                        rhythm: dict | None = None, ledger=None, measure_method: str = "ecgchat"
                        ) -> dict[str, np.ndarray]:
    """Ray Data UDF: a batch of blocks {block, sources (RecordSource JSON), ids} -> one row per record.

    Columns: block, source, record_id, ok, stage, error_type, error_kind, message, x [L, T]
    (zeros for failed rows), age, sex, diagnoses, labels, quality (reader flags), fs, duration_s,
    notes, measurements (NaN unless ``measure``; ``measure_method``: ecgbatch.signal.measure's
    method, "multilead" for the report job's grounds); with ``rhythm`` (the model's ``rhythm_spec``)
    also rhythm_features [7] and rhythm_rr_ms, the rhythm channel's inputs, computed here on CPU
    so that the encoder actors only run the network. ``ledger`` (read_ledger.start_ledger): a
    record whose worker process died in an earlier attempt of this task becomes a failure row."""
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
                r = read_one(source, cfg, measure, measure_method)
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
# The dataset
# ---------------------------------------------------------------------------------------------
def read_task(batch: dict[str, np.ndarray], **kwargs) -> dict[str, np.ndarray]:
    """read_and_preprocess as a Ray read task: at READ_NICENESS first, so that on shared CPU cores
    the reads give way to the model actor's threads (ray_common.set_niceness)."""
    set_niceness(READ_NICENESS)
    return read_and_preprocess(batch, **kwargs)


def read_stage(blocks: list[tuple[str, list[str], list[str]]], preprocess: dict, *, ledger,
               measure: bool = False, rhythm: dict | None = None, measure_method: str = "ecgchat"):
    """The scan + read/preprocess stages shared by the block jobs: one Ray task per block
    ``(key, sources, ids)`` running read_and_preprocess. ``ledger``: the run's ReadLedger actor
    (read_ledger.run_ledger, which kills it when the run ends)."""
    import ray

    items = [{"block": k, "sources": list(s), "ids": list(i)} for k, s, i in blocks]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # Each read task holds one block of model inputs (plus the decoded records): declaring that
    # memory lets Ray pack tasks safely, and (as different remote args) keeps this CPU stage out
    # of the model actors, so reading overlaps the model instead of taking turns with it.
    n_leads, n_samples = len(preprocess["leads"]), preprocess.get("n_samples") or 5000
    block_bytes = max(len(s) for _, s, _ in blocks) * n_leads * n_samples * 4 * 3 + (256 << 20)
    # a worker that dies on a record (native crash, OOM kill) is retried without that record:
    # Ray Data retries its tasks without end (max_retries=-1, its default; Ray 2.60 deprecates
    # both ray_remote_args_fn and **ray_remote_args, and has no named max_retries), and the
    # ledger bounds it at READ_TASK_RETRIES per block
    return ds.map_batches(read_task, batch_size=1,
                          fn_kwargs={"preprocess": preprocess, "measure": measure, "rhythm": rhythm,
                                     "ledger": ledger, "measure_method": measure_method},
                          num_cpus=1, memory=block_bytes)


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


def failures_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({k: pa.array([str(r[k]) for r in rows], pa.string()) for k in FAILURE_FIELDS})
