"""FAISS building blocks: normalisation, index factories, parameter choices, GPU moves.

Every index uses inner product on L2-normalised float32 vectors (= cosine similarity).
"""
from __future__ import annotations

import math

import faiss
import numpy as np

from ecgbatch.index.errors import GpuIndexSettingsError, GpuUnavailableError, InvalidVectorError

KINDS = ("flat", "ivfpq", "hnsw")
AUTO_FLAT_MAX = 100_000  # below this `kind="auto"` uses exact search: fast enough, recall 1.0
MIN_POINTS_PER_CENTROID = 39  # faiss warns below this many training points per centroid
PQ_NBITS = 8
# Standard (non-cuVS) GPU IVF-PQ, faiss/gpu/impl/IVFPQ.cu and PQScanMultiPassNoPrecomputed: the
# sub-quantizer counts (bytes per code at 8 bits; 56, 64 and 96 need float16 lookup tables, which
# to_gpu turns on) and the dimensions per sub-quantizer it runs without precomputed tables
# (precomputed tables do not exist for the inner product metric, so these hold here).
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
GPU_PQ_SUB_DIMS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)


def l2_normalize(x: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Row-normalised C-contiguous float32 copy of ``x`` [N, D]; refuses NaN/inf and zero rows."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InvalidVectorError(f"{what} must be a [N, D] array, got shape {x.shape!r}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InvalidVectorError(f"{what} must be numeric, got dtype {x.dtype}")
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.size and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise InvalidVectorError(f"{what}: {bad} rows contain NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    if zero.any():
        raise InvalidVectorError(
            f"{what}: {int(zero.sum())} rows are all zeros and have no direction "
            f"(first at row {int(np.flatnonzero(zero)[0])})"
        )
    x /= norms
    return x


def choose_kind(n: int, kind: str) -> str:
    if kind == "auto":
        return "flat" if n < AUTO_FLAT_MAX else "ivfpq"
    if kind not in KINDS:
        raise ValueError(f"kind must be 'auto' or one of {KINDS!r}, got {kind!r}")
    return kind


def choose_nlist(n: int) -> int:
    """~4*sqrt(N) inverted lists, but at least 39 training points per list."""
    nlist = int(round(4 * math.sqrt(max(n, 1))))
    return max(1, min(nlist, n // MIN_POINTS_PER_CENTROID))


def choose_pq_m(d: int, bytes_per_vector: int | None = None, *, gpu: bool = False) -> int:
    """Number of PQ sub-quantizers: a divisor of ``d`` closest to ``bytes_per_vector`` (default
    d/4, i.e. 4 dimensions per 1-byte code: 64 bytes for D=256; at 1M clustered vectors this gave
    recall@10 0.96 against 0.94 for d/8 at the same nprobe, for 30 MB more codes). ``gpu``: only
    the sizes GPU IVF-PQ runs (:func:`gpu_pq_sizes`; D=512 -> 64 instead of 128)."""
    target = bytes_per_vector or max(1, d // 4)
    divisors = gpu_pq_sizes(d) if gpu else [m for m in range(1, d + 1) if d % m == 0]
    if not divisors:
        raise GpuIndexSettingsError(
            f"GPU IVF-PQ has no sub-quantizer count for dimension {d}: it needs m in {GPU_PQ_M} with "
            f"d/m in {GPU_PQ_SUB_DIMS}; build this index without --gpu, or kind='flat' on the GPU")
    return min(divisors, key=lambda m: (abs(m - target), -m))


def gpu_pq_sizes(d: int) -> list[int]:
    """The sub-quantizer counts m that standard GPU IVF-PQ accepts for dimension ``d``."""
    return [m for m in GPU_PQ_M if d % m == 0 and d // m in GPU_PQ_SUB_DIMS]


def check_gpu_pq(d: int, pq_m: int) -> None:
    """Refuse, before any training, an IVF-PQ the GPU would refuse after it."""
    if pq_m not in gpu_pq_sizes(d):
        raise GpuIndexSettingsError(
            f"pq_m={pq_m} for dimension {d} does not run on GPU IVF-PQ (m in {GPU_PQ_M} with d/m in "
            f"{GPU_PQ_SUB_DIMS}); for d={d} use one of {gpu_pq_sizes(d) or 'none: build without --gpu'}")


def choose_pq_nbits(n_train: int) -> int:
    """8-bit PQ codes need 256 * 39 training vectors; tiny collections get smaller codebooks."""
    bits = PQ_NBITS
    while bits > 4 and n_train < (1 << bits) * MIN_POINTS_PER_CENTROID:
        bits -= 1
    return bits


def train_size(n: int, nlist: int) -> int:
    """Training sample: ~48 points per list (faiss asks for 39..256; k-means time grows with
    it), and at least 2^nbits * 39 for the PQ codebooks."""
    return int(min(n, max(48 * nlist, (1 << PQ_NBITS) * MIN_POINTS_PER_CENTROID, 10_000)))


def new_index(kind: str, d: int, *, nlist: int = 0, pq_m: int = 0, pq_nbits: int = PQ_NBITS, hnsw_m: int = 32,
              ef_construction: int = 80) -> faiss.Index:
    """An empty (untrained for ivfpq) CPU index of ``kind`` with the inner-product metric."""
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "ivfpq":
        if d % pq_m:
            raise ValueError(f"pq_m must divide the dimension {d}, got {pq_m!r}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, pq_nbits, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()  # the IVF index owns (and frees) its quantizer
        # Training cost on CPUs: 10 k-means iterations for the coarse lists (faiss default 25;
        # the assignment, not the last digits of the centroids, is what matters for IVF) and
        # 64 points per PQ centroid (faiss default 256); exact re-ranking absorbs the rest.
        index.cp.niter = 10
        index.pq.cp.max_points_per_centroid = 64
        return index
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        return index
    raise ValueError(f"unknown index kind {kind!r}")


def num_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def require_gpu() -> None:
    if num_gpus() == 0:
        has_gpu_build = hasattr(faiss, "StandardGpuResources")
        why = (
            "this faiss build has GPU support but sees no CUDA device"
            if has_gpu_build
            else f"the installed faiss {faiss.__version__} is a CPU-only build"
        )
        raise GpuUnavailableError(
            f"gpu=True, but {why}; install the 'gpu' extra (faiss-gpu) on a CUDA machine or "
            "pass gpu=False"
        )


def to_gpu(index: faiss.Index) -> faiss.Index:
    """Copy a CPU index onto all visible GPUs (sharded); raises GpuUnavailableError if none, and
    GpuIndexSettingsError for an IVF-PQ the GPU cannot run (e.g. one built on CPU with m=128)."""
    if isinstance(index, faiss.IndexIVFPQ):
        check_gpu_pq(index.d, index.pq.M)
    require_gpu()
    co = faiss.GpuMultipleClonerOptions()
    co.shard = True
    co.useFloat16LookupTables = True  # IVF-PQ with many sub-quantizers needs it on GPU
    return faiss.index_cpu_to_all_gpus(index, co=co)


def on_gpu(index: faiss.Index) -> bool:
    """True for a GPU index and for a sharded/replicated wrapper (what index_cpu_to_all_gpus
    returns for several GPUs) holding one, found through faiss's classes, not type names."""
    gpu_index = getattr(faiss, "GpuIndex", None)
    if gpu_index is not None and isinstance(index, gpu_index):
        return True
    if isinstance(index, faiss.ThreadedIndexBase):   # IndexShards, IndexShardsIVF, IndexReplicas
        return any(on_gpu(faiss.downcast_index(index.at(i))) for i in range(index.count()))
    return False


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU index (one GPU, or sharded over several: the shards are merged back
    into one CPU index); a CPU index itself."""
    return faiss.index_gpu_to_cpu(index) if on_gpu(index) else index


def bitmap_selector(mask: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """An IDSelectorBitmap for faiss ids 0..N-1 where ``mask`` is True (O(1) membership, N/8
    bytes). Returns the bitmap too: the caller must keep it alive during the search."""
    bitmap = np.packbits(np.ascontiguousarray(mask, dtype=bool), bitorder="little")
    return faiss.IDSelectorBitmap(bitmap), bitmap
