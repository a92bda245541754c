"""`ecgbatch classify`: labels for every embedded record, from the stored embeddings.

No ECG is re-encoded. Two scorers, both callable classes, so the same code runs in-process over
the shards (default: a matrix product per batch needs no cluster) or as a Ray Data job
(``build_dataset``):

- ``ProbeUDF`` (default where the model ships one for the label set): the linear probe stored
  beside the model's weights (ecgbatch.encoders.probes), fitted on labelled records with
  thresholds chosen by cross-validation by patient. Output: calibrated probabilities, the labels
  at the shipped thresholds and, for an exclusive set (rhythms), the top label. Labels the probe
  never saw in training are *untrained*: NaN probability, never predicted, and marked as such.
- ``ZeroShotUDF`` (``zero_shot=True``, or no probe): the label set's prompts go through the
  table's model's text tower once (ecgbatch.encoders.ZeroShotClassifier); scores are ECG-Chat's
  per-label sigmoid(exp(logit_scale) * cos) (or a softmax over labels); the predicted set is the
  top-k labels, or every label scoring >= threshold (at least the best one). An argmax over
  prompts is not a calibrated answer (MODEL_CARD.md of ecg-coca-mini).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ecgbatch.encoders import ZeroShotClassifier
from ecgbatch.encoders.probes import find_probe, LinearProbe
from ecgbatch.encoders.zeroshot import BUILTIN, ECGCHAT_ALIASES
from ecgbatch.pipelines.ray_common import NO_ACTOR_RESTARTS, no_restart_warning
from ecgbatch.pipelines.table_model import load_table_model, table_weights_folder
from ecgbatch.pipelines.workspace import ModelTable, atomic_write_table

UNTRAINED_NOTE = "untrained: no training records, never predicted"


class ZeroShotUDF:
    """Scores one batch {record_id, source, embedding [N, D]} -> adds scores [N, C], predicted."""

    def __init__(self, class_embeddings: np.ndarray, logit_scale: float, labels: tuple[str, ...],
                 softmax: bool = False, top_k: int = 1, threshold: float | None = None):
        if top_k < 1 or top_k > len(labels):
            raise ValueError(f"top_k must be in 1..{len(labels)}, got {top_k!r}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        self.c = np.asarray(class_embeddings, dtype=np.float32)
        self.scale = float(logit_scale)
        self.labels = tuple(labels)
        self.softmax, self.top_k, self.threshold = softmax, top_k, threshold

    def scores(self, emb: np.ndarray) -> np.ndarray:
        """Same numbers as ZeroShotClassifier.scores."""
        f = np.asarray(emb, dtype=np.float32)
        if f.ndim != 2 or f.shape[1] != self.c.shape[1]:
            raise ValueError(f"embeddings must be [N, {self.c.shape[1]}], got {f.shape!r}")
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        z = (self.scale * f @ self.c.T).astype(np.float64)
        if self.softmax:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def predicted(self, s: np.ndarray) -> list[list[str]]:
        order = np.argsort(-s, axis=1, kind="stable")
        out = []
        for row, o in zip(s, order):
            if self.threshold is None:
                keep = o[: self.top_k]
            else:
                keep = [j for j in o if row[j] >= self.threshold] or [o[0]]
            out.append([self.labels[j] for j in keep])
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.scores(_embedding_matrix(batch, self.c.shape[1]))
        batch["scores"] = s
        batch["predicted"] = np.array([";".join(p) for p in self.predicted(s)], dtype=object)
        return batch

    def constructor_args(self) -> tuple:
        return (self.c, self.scale, self.labels, self.softmax, self.top_k, self.threshold)


def _embedding_matrix(batch: dict[str, np.ndarray], dim: int) -> np.ndarray:
    emb = batch.pop("embedding")
    if emb.dtype == object:  # Ray Data reads fixed-size lists as an object array of vectors
        emb = np.stack(list(emb)) if len(emb) else np.zeros((0, dim), np.float32)
    return np.asarray(emb, dtype=np.float32)


class ProbeUDF:
    """Applies a linear probe to one batch {record_id, source, embedding [N, D]} -> adds scores
    [N, C] (calibrated probabilities, NaN for untrained labels), predicted, top."""

    def __init__(self, probe: dict):
        self.probe = LinearProbe.from_dict(probe) if isinstance(probe, dict) else probe
        self.labels = self.probe.labels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pr = self.probe
        p = pr.trained_probabilities(_embedding_matrix(batch, pr.embed_dim))
        batch["scores"] = pr.all_labels(p)
        batch["predicted"] = np.array([";".join(x) for x in pr.predict_trained(p)], dtype=object)
        batch["top"] = np.array(pr.top(p), dtype=object)
        return batch

    def constructor_args(self) -> tuple:
        return (self.probe.to_dict(),)


@dataclass
class ClassifyResult:
    table: str
    labelset: str
    labels: tuple[str, ...]
    n_records: int
    output: str | None
    counts: dict[str, int] = field(default_factory=dict)   # records per label (top label for an exclusive probe)
    preds: pa.Table | None = None
    method: str = "zero-shot"                               # "probe" | "zero-shot"
    untrained: tuple[str, ...] = ()
    probe: str | None = None                                # the probe file used

    def summary_rows(self) -> list[dict[str, Any]]:
        n = max(self.n_records, 1)
        return [{"label": lab, "records": None if lab in self.untrained else self.counts.get(lab, 0),
                 "percent": None if lab in self.untrained else round(100.0 * self.counts.get(lab, 0) / n, 1),
                 "note": UNTRAINED_NOTE if lab in self.untrained else ""} for lab in self.labels]


def make_udf(model, labels, *, softmax: bool = False, top_k: int = 1, threshold: float | None = None):
    zs = ZeroShotClassifier(model, labels)
    return zs, ZeroShotUDF(zs.class_embeddings, zs.logit_scale, zs.labels, softmax, top_k, threshold)


def table_probe(table: ModelTable, labels) -> Path | None:
    """The probe file for label set ``labels`` beside the weights that embedded ``table``."""
    name = ECGCHAT_ALIASES.get(str(labels), str(labels))
    if name not in BUILTIN:
        return None
    return find_probe(table_weights_folder(table), name)


def load_probe_for(table: ModelTable, path: str | Path):
    """The probe at ``path``, refused unless it was fitted on the embeddings of this table's model."""
    probe = LinearProbe.load(path)
    meta = table.read_meta()
    probe.check_model(meta.get("weights_hash"), what=f"the embeddings in {table.root}")
    if int(meta.get("dim", probe.embed_dim)) != probe.embed_dim:
        raise ValueError(f"probe {str(path)!r} expects {probe.embed_dim}-dim embeddings, {table.root} "
                         f"holds {meta.get('dim')}-dim ones")
    return probe


def _to_numpy_batch(rb: pa.RecordBatch) -> dict[str, np.ndarray]:
    emb = rb.column("embedding")
    d = emb.type.list_size
    vec = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(rb), d)
    return {"record_id": np.array(rb.column("record_id").to_pylist(), dtype=object),
            "source": np.array(rb.column("source").to_pylist(), dtype=object), "embedding": vec}


def preds_table(batches: list[dict[str, np.ndarray]], labels: tuple[str, ...], prefix: str = "score_") -> pa.Table:
    s = np.concatenate([b["scores"] for b in batches]) if batches else np.zeros((0, len(labels)), np.float32)
    cols: dict[str, Any] = {
        "record_id": pa.array([r for b in batches for r in b["record_id"]], pa.string()),
        "source": pa.array([r for b in batches for r in b["source"]], pa.string()),
        "predicted": pa.array([[p for p in str(r).split(";") if p] for b in batches for r in b["predicted"]],
                              pa.list_(pa.string())),
    }
    if batches and "top" in batches[0]:
        cols["top"] = pa.array([str(r) for b in batches for r in b["top"]], pa.string())
    for j, lab in enumerate(labels):
        cols[f"{prefix}{lab}"] = pa.array(s[:, j], pa.float32(), from_pandas=True)  # NaN -> null
    return pa.table(cols)


def run(table: ModelTable, labels: str, *, output: str | Path | None = None, softmax: bool = False,
        top_k: int = 1, threshold: float | None = None, model=None, batch_rows: int = 8192,
        zero_shot: bool = False) -> ClassifyResult:
    """Label every committed embedding of ``table`` with label set ``labels`` (a built-in name or
    a JSON/YAML file); writes the predictions Parquet (default ``<table>/classify/<set>.parquet``).

    The model's linear probe for the set is used when it exists (``prob_<label>`` columns,
    ``predicted`` at the shipped thresholds, ``top``); ``zero_shot=True`` or no probe: zero-shot
    prompts (``score_<label>`` columns). ``softmax``, ``top_k`` and ``threshold`` shape the
    zero-shot answer only."""
    if not table.shard_files():
        raise FileNotFoundError(f"no committed embeddings in {table.root}: run `ecgbatch embed` first")
    probe_file = None if zero_shot else table_probe(table, labels)
    if probe_file is not None:
        if softmax or top_k != 1 or threshold is not None:
            raise ValueError("--softmax, --top-k and --threshold shape zero-shot scores; the probe has its "
                             "own calibrated thresholds (add --zero-shot to use them)")
        udf = ProbeUDF(load_probe_for(table, probe_file))
        name, lab, prefix, untrained = udf.probe.labelset, udf.labels, "prob_", udf.probe.untrained
    else:
        model = model or load_table_model(table)
        zs, udf = make_udf(model, labels, softmax=softmax, top_k=top_k, threshold=threshold)
        name, lab, prefix, untrained = zs.labelset.name, zs.labels, "score_", ()
    out_batches = []
    for rb in table.iter_batches(columns=["record_id", "source", "embedding"], batch_size=batch_rows):
        if len(rb):
            out_batches.append(udf(_to_numpy_batch(rb)))
    preds = preds_table(out_batches, lab, prefix)
    if probe_file is not None and udf.probe.exclusive:
        counts = Counter(preds.column("top").to_pylist())
    else:
        counts = Counter(x for row in preds.column("predicted").to_pylist() for x in row)
    dest = Path(output) if output is not None else table.root / "classify" / f"{name}.parquet"
    atomic_write_table(preds, dest)
    return ClassifyResult(str(table.root), name, lab, preds.num_rows, str(dest), dict(counts), preds,
                          "probe" if probe_file is not None else "zero-shot", tuple(untrained),
                          None if probe_file is None else str(probe_file))


def build_dataset(table: ModelTable, udf: ZeroShotUDF | ProbeUDF, *, encoders: int = 1, batch_size: int = 4096):
    """The same scoring as a Ray Data job over the shards (for tables on a cluster)."""
    import ray
    from ray.data import ActorPoolStrategy

    ds = ray.data.read_parquet([str(f) for f in table.shard_files()],
                               columns=["record_id", "source", "embedding"])
    with no_restart_warning():
        return ds.map_batches(type(udf), batch_format="numpy", batch_size=batch_size,
                              compute=ActorPoolStrategy(size=encoders),
                              fn_constructor_args=udf.constructor_args(), **NO_ACTOR_RESTARTS)
