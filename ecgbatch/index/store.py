"""The embeddings table of a workspace: Parquet shards written by the embed pipeline.

Layout (the contract with ``ecgbatch.pipelines``)::

    <workspace>/embeddings/*.parquet     one row per ECG record
    <workspace>/index/                   what ``build_index(workspace)`` writes (see search.py)

Columns of every shard: ``record_id`` (string, unique), ``source`` (string), ``embedding``
(fixed_size_list<float32>[D]; list/large_list of floats and Ray's tensor extension type are read
too), ``model``, ``weights_hash``, ``preprocess_hash`` (strings, one value for the whole table),
plus any metadata columns (``age``, ``sex``, ``diagnoses``, ``dx_codes``, measurements, ...).
Everything except the vectors and the three signature columns is "metadata": it is kept beside
the index for cohort filters and returned with each hit.

Shards are read in row batches, so a table larger than memory can be indexed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecgbatch.index.errors import EmbeddingTableError, IndexModelMismatchError
from ecgbatch.index.signature import ModelSignature

EMBEDDINGS_SUBDIR = "embeddings"
INDEX_SUBDIR = "index"
EMBEDDING_COLUMN = "embedding"
ID_COLUMN = "record_id"
SIGNATURE_COLUMNS = ("model", "weights_hash", "preprocess_hash")
REQUIRED_COLUMNS = (ID_COLUMN, EMBEDDING_COLUMN, *SIGNATURE_COLUMNS)


def embedding_shards(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The parquet shards of ``source``: a workspace (its ``embeddings/`` folder), a folder of
    ``*.parquet`` files, one parquet file, or a list of files. Sorted by path, never empty."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_file():
            files = [p]
        elif p.is_dir():
            folder = p / EMBEDDINGS_SUBDIR if (p / EMBEDDINGS_SUBDIR).is_dir() else p
            files = sorted(folder.glob("*.parquet"))
        else:
            raise EmbeddingTableError(f"embeddings source does not exist: {str(p)!r}")
    else:
        files = [Path(f) for f in source]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise EmbeddingTableError(f"embedding shards do not exist: {missing!r}")
    if not files:
        raise EmbeddingTableError(f"no *.parquet embedding shards found in {str(source)!r}")
    return sorted(files)


def embeddings_to_numpy(column: pa.Array | pa.ChunkedArray, dim: int | None = None) -> np.ndarray:
    """[N, D] float32 from a fixed-size-list / list / tensor-extension column (no nulls)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for arr in chunks:
        if isinstance(arr.type, pa.ExtensionType):  # e.g. Ray Data's tensor type
            arr = arr.storage
        if arr.null_count:
            raise EmbeddingTableError(f"embedding column has {arr.null_count} null rows")
        t = arr.type
        if pa.types.is_fixed_size_list(t):
            d = t.list_size
            values = arr.flatten()
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if len(lengths) == 0:
                d = dim or 0
            else:
                d = int(lengths[0])
                if not (lengths == d).all():
                    raise EmbeddingTableError(
                        f"embedding rows have different lengths {sorted(set(lengths.tolist()))[:5]!r}"
                    )
            values = arr.flatten()
        else:
            raise EmbeddingTableError(
                f"embedding column must be a list of floats, got type {t}"
            )
        if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
            raise EmbeddingTableError(f"embedding values must be numeric, got {values.type}")
        if values.null_count:
            raise EmbeddingTableError(f"embedding column has {values.null_count} null values")
        if dim is not None and len(arr) and d != dim:
            raise IndexModelMismatchError(f"embedding dimension {d} != expected {dim}")
        dim = d
        v = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        out.append(v.reshape(len(arr), d))
    if not out:
        return np.zeros((0, dim or 0), np.float32)
    return out[0] if len(out) == 1 else np.concatenate(out)


def _embedding_dim(schema: pa.Schema, path: Path) -> int | None:
    t = schema.field(EMBEDDING_COLUMN).type
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    if pa.types.is_fixed_size_list(t):
        return t.list_size
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return None  # known after reading a row
    raise EmbeddingTableError(f"{path.name}: embedding column must be a list of floats, got {t}")


@dataclass
class EmbeddingBatch:
    """A batch of rows: ids, [n, D] float32 vectors (as stored, not normalised) and metadata."""

    record_ids: list[str]
    vectors: np.ndarray
    metadata: pa.Table


class EmbeddingStore:
    """Reads a workspace's embedding shards lazily (schema and row counts from parquet footers)."""

    def __init__(self, source: str | Path | Sequence[str | Path]):
        self.shards = embedding_shards(source)
        self._files = [pq.ParquetFile(p) for p in self.shards]
        self.rows_per_shard = [f.metadata.num_rows for f in self._files]
        schemas = [f.schema_arrow for f in self._files]
        for p, s in zip(self.shards, schemas):
            missing = [c for c in REQUIRED_COLUMNS if c not in s.names]
            if missing:
                raise EmbeddingTableError(
                    f"{p.name}: missing columns {missing!r}; has {s.names!r}"
                )
        self.metadata_columns = [
            c for c in schemas[0].names if c not in (EMBEDDING_COLUMN, *SIGNATURE_COLUMNS)
        ]
        for p, s in zip(self.shards[1:], schemas[1:]):
            cols = [c for c in s.names if c not in (EMBEDDING_COLUMN, *SIGNATURE_COLUMNS)]
            for c in cols:
                if c not in self.metadata_columns:
                    self.metadata_columns.append(c)
        dims = {d for p, s in zip(self.shards, schemas) if (d := _embedding_dim(s, p)) is not None}
        if len(dims) > 1:
            raise IndexModelMismatchError(f"embedding shards mix dimensions {sorted(dims)!r}")
        self._dim = dims.pop() if dims else None

    def __len__(self) -> int:
        return sum(self.rows_per_shard)

    @property
    def dim(self) -> int:
        if self._dim is None:  # variable-size list column: read one row
            for f in self._files:
                for b in f.iter_batches(batch_size=1, columns=[EMBEDDING_COLUMN]):
                    self._dim = embeddings_to_numpy(b.column(0)).shape[1]
                    return self._dim
            raise EmbeddingTableError("embedding shards hold no rows: dimension unknown")
        return self._dim

    def signature(self) -> ModelSignature:
        """The one embedding space of all shards; raises if the shards mix models."""
        values: dict[str, set] = {c: set() for c in SIGNATURE_COLUMNS}
        for f in self._files:
            t = f.read(columns=list(SIGNATURE_COLUMNS))
            for c in SIGNATURE_COLUMNS:
                col = t.column(c)
                if col.null_count:
                    raise EmbeddingTableError(f"column {c!r} has {col.null_count} null rows")
                values[c].update(pc.unique(col).to_pylist())
        for c, v in values.items():
            if len(v) > 1:
                raise IndexModelMismatchError(
                    f"embedding shards mix {c} values {sorted(v)[:5]!r}: one index holds one "
                    "embedding space"
                )
            if not v:
                raise EmbeddingTableError("embedding shards hold no rows")
        return ModelSignature(
            model=values["model"].pop(),
            weights_hash=values["weights_hash"].pop(),
            preprocess_hash=values["preprocess_hash"].pop(),
            dim=self.dim,
        )

    def iter_batches(self, batch_rows: int = 65_536, vectors: bool = True) -> Iterator[EmbeddingBatch]:
        """Stream the table in row batches (shard order, then row order)."""
        for shard_no in range(len(self.shards)):
            yield from self.iter_batches_of(shard_no, batch_rows, vectors)

    def iter_batches_of(self, shard_no: int, batch_rows: int = 65_536,
                        vectors: bool = True) -> Iterator[EmbeddingBatch]:
        """Stream one shard in row batches."""
        cols = list(self.metadata_columns) + ([EMBEDDING_COLUMN] if vectors else [])
        p, f = self.shards[shard_no], self._files[shard_no]
        have = f.schema_arrow.names
        for b in f.iter_batches(batch_size=batch_rows, columns=[c for c in cols if c in have]):
            t = pa.Table.from_batches([b])
            for c in self.metadata_columns:  # a shard that lacks a metadata column: nulls
                if c not in have:
                    t = t.append_column(c, pa.nulls(len(t)))
            ids = t.column(ID_COLUMN)
            if ids.null_count:
                raise EmbeddingTableError(f"{p.name}: record_id has {ids.null_count} null rows")
            vec = (
                embeddings_to_numpy(t.column(EMBEDDING_COLUMN), self._dim)
                if vectors
                else np.zeros((len(t), 0), np.float32)
            )
            yield EmbeddingBatch(
                record_ids=[str(x) for x in ids.to_pylist()],
                vectors=vec,
                metadata=t.select(self.metadata_columns),
            )

    def sample_vectors(self, n: int, seed: int = 0, batch_rows: int = 65_536) -> np.ndarray:
        """``n`` rows drawn uniformly without replacement over all shards (one streamed pass over
        the embedding column only), as stored (not normalised)."""
        total = len(self)
        n = min(n, total)
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(total, size=n, replace=False))
        out = np.empty((n, self.dim), np.float32)
        start, filled = 0, 0
        for f in self._files:
            for b in f.iter_batches(batch_size=batch_rows, columns=[EMBEDDING_COLUMN]):
                stop = start + b.num_rows
                lo, hi = np.searchsorted(chosen, [start, stop])
                if hi > lo:
                    vec = embeddings_to_numpy(b.column(0), self._dim)
                    out[filled : filled + hi - lo] = vec[chosen[lo:hi] - start]
                    filled += hi - lo
                start = stop
        return out[:filled]


def concat_metadata(tables: list[pa.Table]) -> pa.Table:
    """Concatenate metadata batches, unifying types where shards differ (null vs string...)."""
    if not tables:
        return pa.table({ID_COLUMN: pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()
