"""FAISS index over ECG embeddings: build (in memory or streamed from a workspace's parquet
shards), incremental update, save/load, and k-NN search inside metadata cohorts.

Imports faiss, numpy and pyarrow only (never torch, ray or vllm).

    from ecgbatch.index import build_index, update_index, EcgIndex, ModelSignature
    idx = build_index(workspace)                      # writes <workspace>/index/
    hits = idx.search(query_vectors, k=10, where="age >= 60 and sex == 'F'",
                      model=ModelSignature("ecg-coca", weights_hash, dim=512))
    update_index(workspace)                           # after an embed rerun: new records only
    idx = EcgIndex.load(workspace)
"""
from ecgbatch.index.builder import (
    UpdateReport, add_shard, build_index, default_index_dir, merge_indexes, train_empty_index,
    update_index,
)
from ecgbatch.index.errors import (
    EcgIndexError, EmbeddingTableError, GpuUnavailableError, IndexFormatError,
    IndexModelMismatchError, InvalidVectorError, UnknownColumnError, WhereExpressionError,
)
from ecgbatch.index.filters import parse_where, where_mask
from ecgbatch.index.search import EcgIndex, SearchHit
from ecgbatch.index.signature import ModelSignature
from ecgbatch.index.store import EMBEDDINGS_SUBDIR, INDEX_SUBDIR, EmbeddingStore

__all__ = [
    "EMBEDDINGS_SUBDIR", "INDEX_SUBDIR", "EcgIndex", "EcgIndexError", "EmbeddingStore",
    "EmbeddingTableError", "GpuUnavailableError", "IndexFormatError", "IndexModelMismatchError",
    "InvalidVectorError", "ModelSignature", "SearchHit", "UnknownColumnError", "UpdateReport",
    "WhereExpressionError", "add_shard", "build_index", "default_index_dir", "merge_indexes",
    "parse_where", "train_empty_index", "update_index", "where_mask",
]
