"""Build and update an EcgIndex from vectors in memory or from a workspace's parquet shards.

- In memory: ``build_index(vectors [N, D], ids, model=ModelSignature(...))`` or a pyarrow Table
  in the embeddings schema (see store.py).
- From a workspace: ``build_index(workspace)`` streams the shards in row batches: vectors are
  normalised, appended to ``vectors.npy`` and added to the FAISS index batch by batch, never all
  in memory. IVF-PQ is trained on a uniform sample first. ``sharded=True`` builds one index per
  shard from the shared trained (empty) index and merges them (``merge_from``), the pattern for
  building shards in parallel workers: see :func:`train_empty_index`, :func:`add_shard`,
  :func:`merge_indexes`.
- ``update_index(workspace)`` adds only the records the index does not hold yet.

Record ids must be unique: in a workspace the first row of a record wins and later copies (an
embed rerun that wrote a record again) are counted in ``duplicates_skipped``; in-memory input with
duplicate ids is refused.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import faiss
import numpy as np
import pyarrow as pa

from ecgbatch.index.errors import EmbeddingTableError, IndexFormatError, InvalidVectorError
from ecgbatch.index.faiss_index import (
    check_gpu_pq, choose_kind, choose_nlist, choose_pq_m, choose_pq_nbits, l2_normalize, new_index, require_gpu,
    to_cpu, to_gpu,
    train_size as default_train_size,
)
from ecgbatch.index.search import FAISS_ID, INDEX_FILE, VECTORS_FILE, EcgIndex, IndexParams, staging_path
from ecgbatch.index.signature import ModelSignature
from ecgbatch.index.store import (
    EMBEDDING_COLUMN, EMBEDDINGS_SUBDIR, ID_COLUMN, INDEX_SUBDIR, SIGNATURE_COLUMNS,
    EmbeddingStore, concat_metadata, embeddings_to_numpy,
)
from ecgbatch.index.vectors_file import VectorFileWriter, open_vectors

log = logging.getLogger(__name__)


def default_index_dir(source: str | Path) -> Path:
    """``<workspace>/index`` for a workspace (or a folder of shards), beside a single file."""
    p = Path(source)
    return (p.parent if p.is_file() else p) / INDEX_SUBDIR


def default_params(kind: str, n: int, d: int, *, nlist=None, pq_m=None, nprobe=None, rerank=10,
                   hnsw_m=32, ef_search=128, gpu: bool = False) -> IndexParams:
    """``gpu``: IVF-PQ sizes the GPU index runs (a given ``pq_m`` it would refuse is refused here)."""
    if kind == "ivfpq":
        nlist = nlist or choose_nlist(n)
        pq_m = pq_m or choose_pq_m(d, gpu=gpu)
        if gpu:
            check_gpu_pq(d, pq_m)
        # ~3% of the lists (at least 32). bench/index.py, clustered data, exact re-ranking of
        # the top k*10: recall@10 0.94/0.97 at 2%/4% of the lists for 200k vectors, 0.97/0.99
        # for 1M; queries/s fall as nprobe grows (1M: 15x flat at 2%, 11x at 4%).
        nprobe = nprobe or max(32, int(round(nlist / 32)))
        return IndexParams(nlist=nlist, pq_m=pq_m, nprobe=min(nprobe, nlist), rerank=rerank)
    if kind == "hnsw":
        return IndexParams(hnsw_m=hnsw_m, ef_search=ef_search)
    return IndexParams()


def train_empty_index(kind: str, sample: np.ndarray, params: IndexParams, *, gpu: bool = False) -> faiss.Index:
    """An empty index of ``kind``, trained on ``sample`` (normalised rows) when it needs it.
    Clone it (``faiss.clone_index``) for each shard built in parallel."""
    d = sample.shape[1]
    if kind == "ivfpq":
        params.pq_nbits = choose_pq_nbits(len(sample))
    index = new_index(kind, d, nlist=params.nlist, pq_m=params.pq_m, pq_nbits=params.pq_nbits,
                      hnsw_m=params.hnsw_m or 32)
    if kind == "ivfpq":
        if len(sample) < params.nlist:
            raise InvalidVectorError(
                f"IVF-PQ with nlist={params.nlist} needs at least that many training vectors, "
                f"got {len(sample)}"
            )
        x = l2_normalize(sample, "training vectors")
        if not gpu:
            index.train(x)
            return index
        # k-means on the GPU; the index itself stays a CPU index. clustering_index is a raw
        # pointer on the C++ side: the GPU index is held here until training is over and the
        # pointer is cleared before it is freed.
        require_gpu()
        ivf = faiss.extract_index_ivf(index)
        clustering = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(d))
        ivf.clustering_index = clustering
        try:
            index.train(x)
        finally:
            ivf.clustering_index = None
            del clustering
    return index


def add_shard(empty: faiss.Index, vectors: np.ndarray, first_id: int) -> faiss.Index:
    """A copy of the trained empty index holding ``vectors`` (normalised) with faiss ids
    first_id.. first_id+len-1 (flat/HNSW: ids are positions, so only first_id=0 is allowed)."""
    part = faiss.clone_index(empty)
    if isinstance(part, faiss.IndexIVF):
        part.add_with_ids(vectors, np.arange(first_id, first_id + len(vectors), dtype=np.int64))
    else:
        part.add(vectors)
    return part


def merge_indexes(empty: faiss.Index, parts: Sequence[faiss.Index]) -> faiss.Index:
    """Merge per-shard indexes (in id order) into one, moving their contents (``merge_from``)."""
    out = faiss.clone_index(empty)
    for part in parts:
        out.merge_from(part, 0)
    return out


@dataclass
class _Rows:
    ids: list[str]
    vectors: np.ndarray
    metadata: pa.Table
    signature: ModelSignature
    duplicates: int = 0


def _in_memory_rows(source, ids, model, metadata) -> _Rows:
    if isinstance(source, pa.Table):
        if ID_COLUMN not in source.column_names or EMBEDDING_COLUMN not in source.column_names:
            raise EmbeddingTableError(
                f"table needs columns {ID_COLUMN!r} and {EMBEDDING_COLUMN!r}, has {source.column_names!r}"
            )
        vec = embeddings_to_numpy(source.column(EMBEDDING_COLUMN))
        if all(c in source.column_names for c in SIGNATURE_COLUMNS):
            vals = {c: set(source.column(c).unique().to_pylist()) for c in SIGNATURE_COLUMNS}
            if any(len(v) != 1 for v in vals.values()):
                raise EmbeddingTableError(f"table must hold one model signature, got {vals!r}")
            sig = ModelSignature(vals["model"].pop(), vals["weights_hash"].pop(), vec.shape[1],
                                 vals["preprocess_hash"].pop())
        elif model is not None:
            sig = ModelSignature.coerce(model)
        else:
            raise EmbeddingTableError(
                f"table lacks the signature columns {SIGNATURE_COLUMNS!r}; pass model=ModelSignature(...)"
            )
        meta = source.drop_columns([c for c in (EMBEDDING_COLUMN, *SIGNATURE_COLUMNS) if c in source.column_names])
        rid = [str(x) for x in source.column(ID_COLUMN).to_pylist()]
        return _dedupe(_Rows(rid, vec, meta, sig), allow=True)
    if ids is None or model is None:
        raise ValueError("building from an array needs ids=[record ids] and model=ModelSignature(...)")
    vec = np.asarray(source)
    if vec.ndim != 2:
        raise InvalidVectorError(f"vectors must be [N, D], got shape {vec.shape!r}")
    rid = [str(x) for x in ids]
    if len(rid) != len(vec):
        raise ValueError(f"{len(vec)} vectors but {len(rid)} ids")
    sig = ModelSignature.coerce(model)
    if metadata is None:
        meta = pa.table({ID_COLUMN: pa.array(rid, pa.string())})
    else:
        meta = metadata if isinstance(metadata, pa.Table) else pa.table(dict(metadata))
        if meta.num_rows != len(rid):
            raise ValueError(f"metadata has {meta.num_rows} rows for {len(rid)} vectors")
        meta = meta.drop_columns([c for c in (ID_COLUMN, FAISS_ID) if c in meta.column_names])
        meta = meta.add_column(0, ID_COLUMN, pa.array(rid, pa.string()))
    return _dedupe(_Rows(rid, vec, meta, sig), allow=False)


def _dedupe(rows: _Rows, allow: bool) -> _Rows:
    first = {}
    for i, r in enumerate(rows.ids):
        first.setdefault(r, i)
    if len(first) == len(rows.ids):
        return rows
    if not allow:
        dup = next(r for i, r in enumerate(rows.ids) if first[r] != i)
        raise ValueError(f"record ids must be unique; {len(rows.ids) - len(first)} duplicates, e.g. {dup!r}")
    keep = np.array(sorted(first.values()))
    return _Rows([rows.ids[i] for i in keep], rows.vectors[keep], rows.metadata.take(pa.array(keep)),
                 rows.signature, len(rows.ids) - len(keep))


def _with_faiss_ids(meta: pa.Table, start: int = 0) -> pa.Table:
    if FAISS_ID in meta.column_names:
        meta = meta.drop_columns([FAISS_ID])
    return meta.add_column(0, FAISS_ID, pa.array(np.arange(start, start + meta.num_rows, dtype=np.int64)))


def build_index(source: np.ndarray | pa.Table | str | Path | Sequence[str | Path],
                ids: Sequence[str] | None = None, *, kind: str = "auto", gpu: bool = False,
                model: ModelSignature | Mapping[str, Any] | None = None,
                metadata: pa.Table | Mapping[str, Sequence] | None = None,
                out_dir: str | Path | None = None, nlist: int | None = None,
                pq_m: int | None = None, nprobe: int | None = None, rerank: int = 10,
                hnsw_m: int = 32, ef_search: int = 128, train_size: int | None = None,
                batch_rows: int = 65_536, sharded: bool = False, seed: int = 0) -> EcgIndex:
    """Build an :class:`EcgIndex` (inner product on L2-normalised vectors).

    ``source``: an array [N, D] (with ``ids`` and ``model``, optional ``metadata`` table/dict),
    a pyarrow Table in the embeddings schema, or a workspace / folder / list of parquet shards
    (streamed; saved to ``out_dir``, default ``<workspace>/index``). In-memory input is saved
    only when ``out_dir`` is given.

    ``kind``: "auto" (exact "flat" below 100k vectors, else "ivfpq"), "flat", "ivfpq" (trained
    on ``train_size`` sampled rows, ``nlist`` ~ 4 sqrt(N), ``pq_m`` dividing D, top k*``rerank``
    candidates re-ranked exactly, ``nprobe`` lists searched) or "hnsw" (IndexHNSWFlat, ``hnsw_m``
    links, ``ef_search``). ``gpu=True`` trains/adds on GPUs and searches there (raises
    GpuUnavailableError when faiss sees none).
    """
    if gpu:
        require_gpu()
        if kind == "hnsw":
            raise ValueError("faiss has no GPU HNSW index: use kind='flat' or 'ivfpq' with gpu=True")
    t0 = time.perf_counter()
    if isinstance(source, (str, Path)) or (
        isinstance(source, (list, tuple)) and source and isinstance(source[0], (str, Path))
    ):
        if ids is not None or metadata is not None:
            raise ValueError("ids/metadata come from the parquet shards; do not pass them with a workspace")
        out = Path(out_dir) if out_dir is not None else default_index_dir(
            source if isinstance(source, (str, Path)) else source[0]
        )
        idx = _build_streaming(EmbeddingStore(source), out, kind=kind, gpu=gpu, nlist=nlist,
                               pq_m=pq_m, nprobe=nprobe, rerank=rerank, hnsw_m=hnsw_m,
                               ef_search=ef_search, train_size=train_size,
                               batch_rows=batch_rows, sharded=sharded, seed=seed)
    else:
        rows = _in_memory_rows(source, ids, model, metadata)
        vec = l2_normalize(rows.vectors, "vectors")
        if vec.shape[1] != rows.signature.dim:
            raise InvalidVectorError(
                f"vectors have dimension {vec.shape[1]} but model signature says {rows.signature.dim}"
            )
        n, d = vec.shape
        k = choose_kind(n, kind)
        params = default_params(k, n, d, nlist=nlist, pq_m=pq_m, nprobe=nprobe, rerank=rerank,
                                hnsw_m=hnsw_m, ef_search=ef_search, gpu=gpu)
        sample = _sample(vec, train_size or default_train_size(n, params.nlist), seed) if k == "ivfpq" else vec[:1]
        empty = train_empty_index(k, sample, params, gpu=gpu)
        index = _add_all(empty, [vec], gpu) if not sharded else merge_indexes(
            empty, [add_shard(empty, vec[a : a + batch_rows], a) for a in range(0, n, batch_rows)]
        )
        idx = EcgIndex(index, k, rows.signature, _with_faiss_ids(rows.metadata), vec, params,
                       out_dir, info={"created": _now(), "duplicates_skipped": rows.duplicates})
    idx.info["build_seconds"] = round(time.perf_counter() - t0, 3)
    if idx.path is not None:
        idx.save()
    if gpu:
        idx.to_gpu()
    return idx


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _sample(vec: np.ndarray, n: int, seed: int) -> np.ndarray:
    if n >= len(vec):
        return vec
    rows = np.sort(np.random.default_rng(seed).choice(len(vec), size=n, replace=False))
    return vec[rows]


def _add_all(index: faiss.Index, batches, gpu: bool) -> faiss.Index:
    target = to_gpu(index) if gpu and isinstance(index, faiss.IndexIVF) else index
    for b in batches:
        target.add(b)
    return to_cpu(target) if target is not index else index


def _build_streaming(store: EmbeddingStore, out: Path, *, kind, gpu, nlist, pq_m, nprobe, rerank,
                     hnsw_m, ef_search, train_size, batch_rows, sharded, seed) -> EcgIndex:
    sig = store.signature()
    n_total, d = len(store), sig.dim
    k = choose_kind(n_total, kind)
    params = default_params(k, n_total, d, nlist=nlist, pq_m=pq_m, nprobe=nprobe, rerank=rerank,
                            hnsw_m=hnsw_m, ef_search=ef_search, gpu=gpu)
    if k == "ivfpq":
        sample = store.sample_vectors(train_size or default_train_size(n_total, params.nlist), seed, batch_rows)
    else:
        sample = np.ones((1, d), np.float32)
    empty = train_empty_index(k, sample, params, gpu=gpu)
    del sample
    out.mkdir(parents=True, exist_ok=True)
    writer = VectorFileWriter(staging_path(out / VECTORS_FILE), d)
    try:
        seen: set[str] = set()
        metas, parts = [], []
        target = to_gpu(empty) if gpu and k == "ivfpq" and not sharded else empty
        if sharded and k == "hnsw":
            raise ValueError("HNSW graphs cannot be merged: build kind='hnsw' with sharded=False")
        for shard_no, shard in enumerate(store.shards):
            part = faiss.clone_index(empty) if sharded else target
            first_id = writer.rows
            for batch in store.iter_batches_of(shard_no, batch_rows):
                keep = _new_rows(batch.record_ids, seen)
                if not keep.any():
                    continue
                v = l2_normalize(batch.vectors[keep], f"embeddings in {shard.name}")
                if isinstance(part, faiss.IndexIVF) and sharded:
                    part.add_with_ids(v, np.arange(writer.rows, writer.rows + len(v), dtype=np.int64))
                else:
                    part.add(v)
                writer.append(v)
                metas.append(batch.metadata.filter(pa.array(keep)))
            if sharded and writer.rows > first_id:
                parts.append(_spill(part, out, shard_no))
        n = writer.rows
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    if sharded:
        index = merge_indexes(empty, [_unspill(p) for p in parts])
    else:
        index = to_cpu(target) if target is not empty else empty
    meta = _with_faiss_ids(concat_metadata(metas))
    idx = EcgIndex(index, k, sig, meta, open_vectors(path), params, out,
                   info={"created": _now(), "duplicates_skipped": n_total - n,
                         "source": [str(p) for p in store.shards]})
    if n_total - n:
        log.info("skipped %d duplicate record ids while indexing %s", n_total - n, out)
    return idx


def _spill(part: faiss.Index, out: Path, shard_no: int) -> Path:
    """Write a per-shard index to disk (the parts of a sharded build need not fit in RAM)."""
    p = out / "shards" / f"part-{shard_no:05d}.faiss"
    p.parent.mkdir(exist_ok=True)
    faiss.write_index(part, str(p))
    return p


def _unspill(p: Path) -> faiss.Index:
    part = faiss.read_index(str(p))
    p.unlink()
    if not any(p.parent.iterdir()):
        p.parent.rmdir()
    return part


def _new_rows(record_ids: list[str], seen: set[str]) -> np.ndarray:
    keep = np.zeros(len(record_ids), bool)
    for i, r in enumerate(record_ids):
        if r not in seen:
            seen.add(r)
            keep[i] = True
    return keep


@dataclass
class UpdateReport:
    index: EcgIndex
    added: int
    already_indexed: int


def update_index(workspace: str | Path | Sequence[str | Path], *, index_dir: str | Path | None = None,
                 batch_rows: int = 65_536) -> UpdateReport:
    """Add the workspace records that the index does not hold yet (e.g. after an embed rerun
    over a grown archive). Refuses embeddings from another model/preprocessing/dimension with
    IndexModelMismatchError; the index keeps its kind and trained parameters (rebuild to switch,
    e.g. when a flat index outgrows exact search)."""
    path = Path(index_dir) if index_dir is not None else default_index_dir(
        workspace if isinstance(workspace, (str, Path)) else workspace[0]
    )
    idx = EcgIndex.load(path)
    store = EmbeddingStore(workspace)
    idx.signature.check_same_space(store.signature(), "the workspace's embeddings")
    seen = set(idx.record_ids)
    n_old = len(idx)
    writer = None
    metas, added, already = [], 0, 0
    try:
        for batch in store.iter_batches(batch_rows):
            keep = _new_rows(batch.record_ids, seen)
            already += int((~keep).sum())
            if not keep.any():
                continue
            if writer is None:  # copy the old vectors once, then append
                writer = VectorFileWriter(staging_path(path / VECTORS_FILE), idx.dim)
                writer.append_from(idx.vectors)
            v = l2_normalize(batch.vectors[keep], "new embeddings")
            idx.index.add(v)
            writer.append(v)
            metas.append(batch.metadata.filter(pa.array(keep)))
            added += len(v)
        if writer is None:
            return UpdateReport(idx, 0, already)
        vec_path = writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    new_meta = _with_faiss_ids(concat_metadata(metas), n_old)
    meta = concat_metadata([idx.meta, new_meta])
    out = EcgIndex(idx.index, idx.kind, idx.signature, meta, open_vectors(vec_path), idx.params,
                   path, {**idx.info, "last_update_added": added})
    out.save()
    return UpdateReport(out, added, already)
