"""Typed errors of the ECG embedding index. Callers (pipelines, CLI, serving) catch these by type;
none of them is ever logged and swallowed inside the index package."""
from __future__ import annotations

from ecgbatch.errors import EcgbatchError   # the one base (imports nothing)


class EcgIndexError(EcgbatchError):
    """Base class of every error raised by ``ecgbatch.index``."""

    kind = "index_error"


class IndexModelMismatchError(EcgIndexError):
    """Vectors from a different model, weights, preprocessing or dimension than the index holds.

    Raised when a query (or an update) comes from another embedding space: mixing spaces gives
    scores that look valid and mean nothing, so it is refused instead of answered."""

    kind = "index_model_mismatch"


class IndexFormatError(EcgIndexError):
    """An index folder or an embeddings table that is missing parts, inconsistent or malformed."""

    kind = "index_format"


class EmbeddingTableError(IndexFormatError):
    """The embeddings parquet shards do not follow the workspace schema (columns, types, nulls)."""

    kind = "embedding_table"


class WhereExpressionError(EcgIndexError, ValueError):
    """A cohort filter (``where=``) that is not valid in the filter language."""

    kind = "where_expression"


class UnknownColumnError(WhereExpressionError):
    """A cohort filter names a column that the metadata table does not have."""

    kind = "unknown_column"

    def __init__(self, name: str, available: list[str]):
        self.name = name
        self.available = list(available)
        super().__init__(
            f"unknown column {name!r} in where-expression; available columns: "
            f"{', '.join(self.available)}"
        )


class GpuUnavailableError(EcgIndexError, RuntimeError):
    """``gpu=True`` was asked for but this faiss build sees no GPU."""

    kind = "gpu_unavailable"


class InvalidVectorError(EcgIndexError, ValueError):
    """Vectors that cannot be indexed or queried: wrong shape, NaN/inf, or all zeros."""

    kind = "invalid_vector"


class GpuIndexSettingsError(EcgIndexError, ValueError):
    """Index parameters that the GPU index would refuse (e.g. an IVF-PQ sub-quantizer count)."""

    kind = "gpu_index_settings"
