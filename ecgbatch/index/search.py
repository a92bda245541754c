"""EcgIndex: a FAISS index over ECG embeddings, its id map and metadata, search and save/load.

On disk (one folder, by default ``<workspace>/index``)::

    index.json     manifest: kind, parameters, row count, the ModelSignature of the vectors
    index.faiss    the FAISS index (faiss ids 0..N-1 = row positions)
    ids.parquet    faiss_id (int64) -> record_id, plus the metadata columns used by `where=`
    vectors.npy    float32 [N, D] L2-normalised vectors, memory-mapped for exact re-ranking

Each file is written under a temporary name and moved into place with ``os.replace``; index.json
goes last and records the row count, so a half-written update is detected on load.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ecgbatch.index.errors import IndexFormatError, InvalidVectorError
from ecgbatch.index.faiss_index import bitmap_selector, l2_normalize, to_cpu, to_gpu
from ecgbatch.index.filters import where_mask
from ecgbatch.index.signature import ModelSignature
from ecgbatch.index.vectors_file import VectorFileWriter, open_vectors

log = logging.getLogger(__name__)

FORMAT = "ecgbatch-index"
FORMAT_VERSION = 1
INDEX_FILE, MANIFEST_FILE, IDS_FILE, VECTORS_FILE = "index.faiss", "index.json", "ids.parquet", "vectors.npy"
FAISS_ID = "faiss_id"
EXACT_MAX_ROWS = 20_000  # a filter this selective is searched exactly over its rows
EXACT_MAX_FRACTION = 0.01
_QUERY_CHUNK = 256


@dataclass
class SearchHit:
    """One neighbour of one query: rank 0 is the best; score = cosine similarity."""

    rank: int
    score: float
    record_id: str
    faiss_id: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class IndexParams:
    """Search-time parameters stored with the index (override per call in ``search``)."""

    nlist: int = 0
    pq_m: int = 0
    pq_nbits: int = 8
    nprobe: int = 0
    rerank: int = 10  # IVF-PQ: re-rank the top k*rerank candidates with exact inner products
    hnsw_m: int = 0
    ef_search: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def exact_topk(q: np.ndarray, vectors: np.ndarray, rows: np.ndarray | None, k: int,
               chunk_rows: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``q`` [Q, D] over ``vectors[rows]`` (all rows for None).
    Returns (scores [Q, k], row ids [Q, k]) sorted by score desc then row id; -1 pads."""
    nq = len(q)
    n = len(vectors) if rows is None else len(rows)
    best_s = np.full((nq, 0), -np.inf, np.float32)
    best_i = np.full((nq, 0), -1, np.int64)
    for start in range(0, n, chunk_rows):
        ids = np.arange(start, min(n, start + chunk_rows)) if rows is None else rows[start : start + chunk_rows]
        block = np.asarray(vectors[ids], dtype=np.float32)
        s = q @ block.T
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
        if cand_s.shape[1] > k:
            part = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
            cand_s = np.take_along_axis(cand_s, part, 1)
            cand_i = np.take_along_axis(cand_i, part, 1)
        best_s, best_i = cand_s, cand_i
    order = np.lexsort((best_i, -best_s), axis=1) if best_s.size else np.zeros_like(best_i)
    best_s = np.take_along_axis(best_s, order, 1)
    best_i = np.take_along_axis(best_i, order, 1)
    return _pad(best_s, best_i, k)


def _pad(s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if s.shape[1] >= k:
        return s[:, :k].astype(np.float32), i[:, :k].astype(np.int64)
    extra = k - s.shape[1]
    return (
        np.concatenate([s, np.full((len(s), extra), -np.inf, np.float32)], 1).astype(np.float32),
        np.concatenate([i, np.full((len(i), extra), -1, np.int64)], 1),
    )


def _rerank(q: np.ndarray, vectors: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate rows (-1 = none); best k."""
    out_s, out_i = [], []
    for a in range(0, len(q), _QUERY_CHUNK):
        c = cand[a : a + _QUERY_CHUNK]
        valid = c >= 0
        flat = np.where(valid, c, 0).ravel()
        uniq, inv = np.unique(flat, return_inverse=True)  # sorted reads from the memmap
        vecs = np.asarray(vectors[uniq], dtype=np.float32)[inv].reshape(*c.shape, -1)
        s = np.einsum("qd,qcd->qc", q[a : a + _QUERY_CHUNK], vecs)
        s = np.where(valid, s, -np.inf).astype(np.float32)
        order = np.lexsort((np.where(valid, c, np.iinfo(np.int64).max), -s), axis=1)[:, :k]
        out_s.append(np.take_along_axis(s, order, 1))
        out_i.append(np.where(np.isfinite(out_s[-1]), np.take_along_axis(c, order, 1), -1))
    return _pad(np.concatenate(out_s), np.concatenate(out_i), k)


class EcgIndex:
    """Search ECG embeddings by cosine similarity, optionally inside a metadata cohort.

    Filtered search: the where-expression becomes a boolean mask over the rows. A selective
    cohort (<= ``exact_max_rows`` rows or < ``exact_max_fraction`` of the index) is searched
    exactly over its own vectors (numpy on the memory-mapped vectors.npy); a broad one goes
    through FAISS with an IDSelectorBitmap. IVF-PQ or HNSW with a selector may find fewer than
    k members in the lists it visits: those queries are retried with 4x nprobe up to nlist, and
    finally searched exactly, so a cohort of >= k rows always yields k hits.

    Build with :func:`ecgbatch.index.build_index`, reopen with :meth:`EcgIndex.load`.
    """

    def __init__(self, index: faiss.Index, kind: str, signature: ModelSignature, meta: pa.Table,
                 vectors: np.ndarray, params: IndexParams, path: str | Path | None = None,
                 info: Mapping[str, Any] | None = None):
        n = index.ntotal
        if meta.num_rows != n or len(vectors) != n:
            raise IndexFormatError(
                f"index parts disagree: faiss has {n} vectors, id map {meta.num_rows} rows, "
                f"vectors file {len(vectors)} rows"
            )
        self.index = index
        self.kind = kind
        self.signature = signature
        self.meta = meta
        self.vectors = vectors
        self.params = params
        self.path = Path(path) if path is not None else None
        self.info = dict(info or {})
        # a cohort this small (rows, or fraction of the index) is searched exactly over its rows
        self.exact_max_rows = EXACT_MAX_ROWS
        self.exact_max_fraction = EXACT_MAX_FRACTION
        self._gpu_index = None
        self._row_of: dict[str, int] | None = None

    # ---------------------------------------------------------------- properties
    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.signature.dim

    @property
    def record_ids(self) -> list[str]:
        return self.meta.column("record_id").to_pylist()

    def row_of(self, record_id: str) -> int:
        if self._row_of is None:
            self._row_of = {r: i for i, r in enumerate(self.record_ids)}
        try:
            return self._row_of[record_id]
        except KeyError:
            raise KeyError(f"record_id {record_id!r} is not in the index") from None

    def __repr__(self) -> str:
        return (f"EcgIndex(kind={self.kind!r}, n={len(self)}, dim={self.dim}, "
                f"model={self.signature.model!r}, path={str(self.path) if self.path else None!r})")

    # ---------------------------------------------------------------- GPU
    def to_gpu(self) -> "EcgIndex":
        """Search unfiltered queries on all GPUs (filtered ones stay on the CPU copy, where
        faiss supports ID selectors for every index type). Raises GpuUnavailableError."""
        if self.kind == "hnsw":
            raise ValueError("faiss has no GPU HNSW index: build kind='flat' or 'ivfpq' for GPU search")
        self._gpu_index = to_gpu(self.index)
        return self

    # ---------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int = 10, where: str | None = None, *,
               model: ModelSignature | Mapping[str, Any] | None = None, nprobe: int | None = None,
               rerank: int | None = None, ef_search: int | None = None) -> list[list[SearchHit]]:
        """The ``k`` nearest records of each query [Q, D] (or [D]), best first, as hits carrying
        the record's metadata row. ``where`` restricts the search to a cohort (see filters.py).
        ``model`` is the ModelSignature of the query vectors; vectors from another model or of
        another dimension raise IndexModelMismatchError. A cohort smaller than ``k`` gives
        fewer hits."""
        scores, rows = self.search_arrays(queries, k, where, model=model, nprobe=nprobe,
                                          rerank=rerank, ef_search=ef_search)
        return self._hits(scores, rows)

    def search_by_score(self, score_fn, k: int = 10, where: str | None = None,
                        chunk_rows: int = 65536) -> list[SearchHit]:
        """The ``k`` records with the highest ``score_fn(vectors [n, D]) -> [n]``, best first,
        optionally inside a ``where`` cohort: an exact scan over the stored vectors, for scores
        that are not an inner product with one query (e.g. a classifier's probability)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        n = len(self)
        mask = None if where is None else where_mask(self.meta, where)
        scores = np.full(n, -np.inf, np.float64)
        for a in range(0, n, chunk_rows):
            s = np.asarray(score_fn(np.asarray(self.vectors[a:a + chunk_rows], np.float32)), np.float64)
            if s.shape != (min(chunk_rows, n - a),):
                raise ValueError(f"score_fn must return one score per vector, got shape {s.shape!r}")
            scores[a:a + len(s)] = np.nan_to_num(s, nan=-np.inf)
        if mask is not None:
            scores[~mask] = -np.inf
        order = np.argsort(-scores, kind="stable")[: int(k)]
        order = order[np.isfinite(scores[order])]
        s_out, r_out = _pad(scores[order][None].astype(np.float32), order[None].astype(np.int64), int(k))
        return self._hits(s_out, r_out)[0]

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[list[SearchHit]]:
        valid = rows[rows >= 0]
        uniq = np.unique(valid)
        cols = [c for c in self.meta.column_names if c not in (FAISS_ID, "record_id")]
        table = self.meta.take(pa.array(uniq, pa.int64()))
        ids = table.column("record_id").to_pylist()
        metas = table.select(cols).to_pylist()
        pos = {int(r): j for j, r in enumerate(uniq)}
        out = []
        for qs, qr in zip(scores, rows):
            hits = []
            for rank, (s, r) in enumerate(zip(qs, qr)):
                if r < 0:
                    break
                j = pos[int(r)]
                hits.append(SearchHit(rank, float(s), ids[j], int(r), metas[j]))
            out.append(hits)
        return out

    def search_arrays(self, queries: np.ndarray, k: int = 10, where: str | None = None, *,
                      model: ModelSignature | Mapping[str, Any] | None = None,
                      nprobe: int | None = None, rerank: int | None = None,
                      ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` but returns (scores [Q, k] float32, faiss ids [Q, k] int64), padded
        with (-inf, -1) where fewer than ``k`` records match. Faiss ids are row positions."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = np.asarray(queries)
        if q.ndim not in (1, 2):
            raise InvalidVectorError(f"queries must be [Q, D] or [D], got shape {q.shape!r}")
        self.signature.check_query(model, q.shape[-1])
        q = l2_normalize(q, "query vectors")
        n = len(self)
        k = int(k)
        mask = None if where is None else where_mask(self.meta, where)
        if n == 0 or (mask is not None and not mask.any()):
            return _pad(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
        n_sel = n if mask is None else int(mask.sum())
        kk = min(k, n_sel)
        if mask is not None and (n_sel <= self.exact_max_rows or n_sel < self.exact_max_fraction * n):
            s, i = exact_topk(q, self.vectors, np.flatnonzero(mask), kk)
        elif self.kind == "flat":
            s, i = self._faiss_search(q, kk, mask)
        elif self.kind == "hnsw":
            s, i = self._search_hnsw(q, kk, mask, ef_search or self.params.ef_search)
        else:
            s, i = self._search_ivfpq(q, kk, mask, nprobe or self.params.nprobe,
                                      rerank or self.params.rerank)
        return _pad(s, i, k)

    def _faiss_search(self, q, k, mask, params=None, sel_params_cls=faiss.SearchParameters):
        if mask is None:
            if self._gpu_index is not None and params is None:
                s, i = self._gpu_index.search(q, k)
            elif self._gpu_index is not None and isinstance(params, faiss.SearchParametersIVF):
                faiss.GpuParameterSpace().set_index_parameter(self._gpu_index, "nprobe", params.nprobe)
                s, i = self._gpu_index.search(q, k)
            else:
                s, i = self.index.search(q, k, params=params)
            return s, i
        sel, bitmap = bitmap_selector(mask)
        p = params if params is not None else sel_params_cls()
        p.sel = sel
        s, i = self.index.search(q, k, params=p)
        del bitmap
        return s, i

    def _short(self, i: np.ndarray, want: int) -> np.ndarray:
        return (i >= 0).sum(axis=1) < want

    def _search_hnsw(self, q, k, mask, ef):
        ef = max(ef, k)
        p = faiss.SearchParametersHNSW()
        p.efSearch = ef
        s, i = self._faiss_search(q, k, mask, p)
        short = self._short(i, k)
        if short.any():  # a selective filter can starve the graph walk: search those exactly
            rows = None if mask is None else np.flatnonzero(mask)
            s2, i2 = exact_topk(q[short], self.vectors, rows, k)
            s[short], i[short] = s2, i2
        return s, i

    def _search_ivfpq(self, q, k, mask, nprobe, rerank):
        nlist = self.params.nlist or faiss.extract_index_ivf(self.index).nlist
        n_sel = len(self) if mask is None else int(mask.sum())
        kc = min(max(k * max(rerank, 1), k), n_sel)
        s = np.empty((len(q), kc), np.float32)
        i = np.full((len(q), kc), -1, np.int64)
        todo = np.arange(len(q))
        probe = max(1, min(nprobe, nlist))
        while len(todo):
            p = faiss.SearchParametersIVF()
            p.nprobe = probe
            s[todo], i[todo] = self._faiss_search(q[todo], kc, mask, p, faiss.SearchParametersIVF)
            todo = todo[self._short(i[todo], kc)]
            if probe >= nlist:
                break
            probe = min(nlist, probe * 4)  # too few candidates in the probed lists: widen
        if len(todo):  # still short with every list probed: only the filter can cause it
            rows = None if mask is None else np.flatnonzero(mask)
            s2, i2 = exact_topk(q[todo], self.vectors, rows, kc)
            s[todo], i[todo] = s2, i2
        return _rerank(q, self.vectors, i, k)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path | None = None) -> Path:
        """Write the index folder atomically file by file (see the module docstring)."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("save() needs a folder: this index was built in memory")
        path.mkdir(parents=True, exist_ok=True)
        vec_target = path / VECTORS_FILE
        src = getattr(self.vectors, "filename", None)
        if src is None or Path(src).resolve() != vec_target.resolve():
            tmp = staging_path(vec_target)
            if src is not None and Path(src).name.startswith(VECTORS_FILE + ".tmp"):
                os.replace(src, vec_target)  # a freshly streamed file: move it into place
            else:
                w = VectorFileWriter(tmp, self.dim)
                w.append_from(self.vectors)
                w.close()
                os.replace(tmp, vec_target)
            self.vectors = open_vectors(vec_target)
        tmp = staging_path(path / IDS_FILE)
        pq.write_table(self.meta, tmp)
        os.replace(tmp, path / IDS_FILE)
        tmp = staging_path(path / INDEX_FILE)
        faiss.write_index(to_cpu(self.index), str(tmp))
        os.replace(tmp, path / INDEX_FILE)
        self.info["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "metric": "inner_product",
            "normalized": True,
            "count": len(self),
            "signature": self.signature.to_dict(),
            "params": self.params.to_dict(),
            "files": {"index": INDEX_FILE, "ids": IDS_FILE, "vectors": VECTORS_FILE},
            "metadata_columns": [c for c in self.meta.column_names if c != FAISS_ID],
            "faiss_version": faiss.__version__,
            **{k: v for k, v in self.info.items() if k not in ("count", "signature", "params")},
        }
        tmp = staging_path(path / MANIFEST_FILE)
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(tmp, path / MANIFEST_FILE)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, *, gpu: bool = False, mmap_index: bool = False) -> "EcgIndex":
        """Open an index folder (or a workspace that has ``index/``). ``mmap_index`` memory-maps
        the FAISS file instead of reading it into RAM."""
        path = Path(path)
        if not (path / MANIFEST_FILE).is_file() and (path / "index" / MANIFEST_FILE).is_file():
            path = path / "index"
        mf = path / MANIFEST_FILE
        if not mf.is_file():
            raise IndexFormatError(f"no {MANIFEST_FILE} in {str(path)!r}: not an index folder")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise IndexFormatError(f"{mf} is not valid JSON: {e}") from None
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{mf} is not an {FORMAT} v{FORMAT_VERSION} manifest: "
                f"format={manifest.get('format')!r} version={manifest.get('format_version')!r}"
            )
        for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE):
            if not (path / name).is_file():
                raise IndexFormatError(f"index folder {str(path)!r} lacks {name}")
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap_index else 0
        index = faiss.read_index(str(path / INDEX_FILE), flags)
        meta = pq.read_table(path / IDS_FILE)
        vectors = open_vectors(path / VECTORS_FILE)
        count = manifest.get("count")
        if count != index.ntotal:
            raise IndexFormatError(
                f"{mf} says {count} vectors but {INDEX_FILE} holds {index.ntotal}: the folder "
                "was left half-written; rebuild or re-run the update"
            )
        sig = ModelSignature.coerce(manifest["signature"])
        if vectors.ndim != 2 or vectors.shape[1] != sig.dim or index.d != sig.dim:
            raise IndexFormatError(
                f"dimension mismatch in {str(path)!r}: manifest {sig.dim}, faiss {index.d}, "
                f"vectors {vectors.shape!r}"
            )
        info = {k: v for k, v in manifest.items()
                if k in ("created", "updated", "source", "duplicates_skipped", "build_seconds")}
        obj = cls(index, manifest["kind"], sig, meta, vectors, IndexParams(**manifest["params"]),
                  path, info)
        if gpu:
            obj.to_gpu()
        return obj


def staging_path(target: Path) -> Path:
    """The temporary name a file is written under before its atomic rename to ``target``."""
    return target.with_name(f"{target.name}.tmp-{os.getpid()}")
