"""`ecgbatch classify`: zero-shot labels for every embedded record, from the stored embeddings.

No ECG is re-encoded: the label set's prompts go through the table's own model's text tower once
(ecgbatch.encoders.ZeroShotClassifier), and each stored embedding is scored against the class
embeddings. Scores are ECG-Chat's per-label sigmoid(exp(logit_scale) * cos) (or a softmax over
labels); the predicted set is the top-k labels, or every label scoring >= threshold (at least the
best one).

The scoring UDF is a callable class, so the same code runs in-process over the shards (default:
a matrix product per batch needs no cluster) or as a Ray Data job (``build_dataset``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ecgbatch.pipelines.workspace import ModelTable, atomic_write_table


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
        emb = batch.pop("embedding")
        if emb.dtype == object:  # Ray Data reads fixed-size lists as an object array of vectors
            emb = np.stack(list(emb)) if len(emb) else np.zeros((0, self.c.shape[1]), np.float32)
        s = self.scores(np.asarray(emb, dtype=np.float32))
        batch["scores"] = s
        batch["predicted"] = np.array([";".join(p) for p in self.predicted(s)], dtype=object)
        return batch


@dataclass
class ClassifyResult:
    table: str
    labelset: str
    labels: tuple[str, ...]
    n_records: int
    output: str | None
    counts: dict[str, int] = field(default_factory=dict)   # records per predicted label
    preds: pa.Table | None = None

    def summary_rows(self) -> list[dict[str, Any]]:
        n = max(self.n_records, 1)
        return [{"label": lab, "records": self.counts.get(lab, 0),
                 "percent": round(100.0 * self.counts.get(lab, 0) / n, 1)} for lab in self.labels]


def make_udf(model, labels, *, softmax: bool = False, top_k: int = 1, threshold: float | None = None):
    from ecgbatch.encoders import ZeroShotClassifier

    zs = ZeroShotClassifier(model, labels)
    return zs, ZeroShotUDF(zs.class_embeddings, zs.logit_scale, zs.labels, softmax, top_k, threshold)


def _to_numpy_batch(rb: pa.RecordBatch) -> dict[str, np.ndarray]:
    emb = rb.column("embedding")
    d = emb.type.list_size
    vec = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(rb), d)
    return {"record_id": np.array(rb.column("record_id").to_pylist(), dtype=object),
            "source": np.array(rb.column("source").to_pylist(), dtype=object), "embedding": vec}


def preds_table(batches: list[dict[str, np.ndarray]], labels: tuple[str, ...]) -> pa.Table:
    s = np.concatenate([b["scores"] for b in batches]) if batches else np.zeros((0, len(labels)), np.float32)
    cols: dict[str, Any] = {
        "record_id": pa.array([r for b in batches for r in b["record_id"]], pa.string()),
        "source": pa.array([r for b in batches for r in b["source"]], pa.string()),
        "predicted": pa.array([[p for p in str(r).split(";") if p] for b in batches for r in b["predicted"]],
                              pa.list_(pa.string())),
    }
    for j, lab in enumerate(labels):
        cols[f"score_{lab}"] = pa.array(s[:, j], pa.float32())
    return pa.table(cols)


def run(table: ModelTable, labels: str, *, output: str | Path | None = None, softmax: bool = False,
        top_k: int = 1, threshold: float | None = None, model=None, batch_rows: int = 8192) -> ClassifyResult:
    """Score every committed embedding of ``table`` with label set ``labels`` (a built-in name or
    a JSON/YAML file); writes the predictions Parquet (default ``<table>/classify/<set>.parquet``)."""
    from ecgbatch.pipelines.search import load_table_model

    if not table.shard_files():
        raise FileNotFoundError(f"no committed embeddings in {table.root}: run `ecgbatch embed` first")
    model = model or load_table_model(table)
    zs, udf = make_udf(model, labels, softmax=softmax, top_k=top_k, threshold=threshold)
    out_batches = []
    for rb in table.iter_batches(columns=["record_id", "source", "embedding"], batch_size=batch_rows):
        if len(rb):
            out_batches.append(udf(_to_numpy_batch(rb)))
    preds = preds_table(out_batches, zs.labels)
    counts = Counter(lab for row in preds.column("predicted").to_pylist() for lab in row)
    dest = Path(output) if output is not None else table.root / "classify" / f"{zs.labelset.name}.parquet"
    atomic_write_table(preds, dest)
    return ClassifyResult(str(table.root), zs.labelset.name, zs.labels, preds.num_rows, str(dest),
                          dict(counts), preds)


def build_dataset(table: ModelTable, udf: ZeroShotUDF, *, encoders: int = 1, batch_size: int = 4096):
    """The same scoring as a Ray Data job over the shards (for tables on a cluster)."""
    import ray
    from ray.data import ActorPoolStrategy

    ds = ray.data.read_parquet([str(f) for f in table.shard_files()],
                               columns=["record_id", "source", "embedding"])
    return ds.map_batches(ZeroShotUDF, batch_format="numpy", batch_size=batch_size,
                          compute=ActorPoolStrategy(size=encoders),
                          fn_constructor_args=(udf.c, udf.scale, udf.labels, udf.softmax, udf.top_k,
                                               udf.threshold))

