"""The embedding workspace: a folder of committed Parquet shards, one table per model.

Layout::

    <workspace>/
      <model-key>/                 model name + weights-hash prefix + preprocess-config hash
        embed.json                 model, preprocess config, archive root, schema version
        embeddings/part-<block>.parquet one per committed work unit (may hold zero rows)
        failures/part-<block>.parquet   the records of that unit that failed (source, stage, error)
        index/                     the FAISS index (written by ecgbatch.index)
        .lock                      held (flock) by the one writer
      report-<key>/                `ecgbatch report --input`: reports/ + failures/ + report.json,
                                   one table per model + adapter + prompt settings (ReportTable)

Exactly-once: a work unit (a block of record paths) is committed iff its shard file exists. Both
files of a unit are written to a temporary name, fsynced and moved into place with os.replace;
the failures file goes first, so a crash between the two only leaves a failures file for an
uncommitted block, which readers ignore and the rerun overwrites. A rerun subtracts every record
already present in a committed block (as an embedding or as a failure) before cutting the rest
into new blocks, so no record is ever written twice, even when the archive gained files.

Imports pyarrow only (no Ray, no torch).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ecgbatch._paths import default_workspace  # noqa: F401 - the workspace of every job
from ecgbatch.errors import EcgbatchError

SCHEMA_VERSION = 1
SHARD_PREFIX = "part-"
_TMP_SUFFIX = ".tmp"


def model_key(model_name: str, weights_hash: str, preprocess_hash: str) -> str:
    """Folder name of a model's table: another model, weights or preprocessing -> another table."""
    for what, v in (("model_name", model_name), ("weights_hash", weights_hash),
                     ("preprocess_hash", preprocess_hash)):
        if not v or not isinstance(v, str):
            raise ValueError(f"model_key needs a non-empty {what}, got {v!r}")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_name).name if os.sep in model_name else model_name)
    return f"{safe}-{weights_hash[:10]}-{preprocess_hash[:10]}"


def block_key(record_keys: Iterable[str]) -> str:
    """Deterministic key of a work unit: hash of its (sorted) record keys."""
    h = hashlib.sha256()
    for k in sorted(record_keys):
        h.update(k.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def make_blocks(record_keys: Iterable[str], block_size: int) -> list[tuple[str, list[str]]]:
    """Sorted records cut into fixed-size units -> [(block_key, [record keys])]."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size!r}")
    keys = sorted(set(record_keys))
    out = []
    for i in range(0, len(keys), block_size):
        chunk = keys[i:i + block_size]
        out.append((block_key(chunk), chunk))
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_table(table: pa.Table, dest: Path) -> None:
    """Write ``table`` to ``dest`` so that ``dest`` either does not exist or is complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}{_TMP_SUFFIX}")
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def atomic_write_json(obj: Any, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}{_TMP_SUFFIX}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


class WorkspaceLockedError(EcgbatchError, RuntimeError):
    """Another process is writing this model table."""

    kind = "workspace_locked"


class ModelTable:
    """One model's table inside a workspace (see the module docstring for the layout).

    Subclasses keep the same commit/resume/failure machinery for other row kinds (ReportTable:
    generated reports): only the rows folder, the meta file and the command name differ."""

    ROWS_DIR = "embeddings"    # the name ecgbatch.index reads
    META_NAME = "embed.json"
    JOB = "embed"

    def __init__(self, workspace: str | os.PathLike, key: str):
        if "://" in str(workspace):
            raise ValueError(f"the workspace must be a local folder (atomic renames), got {workspace!r}")
        self.workspace = Path(workspace).expanduser()
        self.key = key
        self.root = self.workspace / key
        self.shards_dir = self.root / self.ROWS_DIR
        self.failures_dir = self.root / "failures"
        self.index_dir = self.root / "index"
        self.meta_path = self.root / self.META_NAME
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"ModelTable({str(self.root)!r})"

    # -- writer side -----------------------------------------------------------------------
    def acquire(self) -> "ModelTable":
        """Create the folders, take the writer lock and sweep temporaries of dead writers."""
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.failures_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkspaceLockedError(
                f"another ecgbatch process is writing {self.root}; wait for it or stop it") from None
        self._lock_fd = fd
        for d in (self.shards_dir, self.failures_dir, self.root):
            for p in d.glob(f".*{_TMP_SUFFIX}"):
                p.unlink(missing_ok=True)  # only a writer holding the lock creates these
        return self

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "ModelTable":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def write_meta(self, meta: dict[str, Any]) -> None:
        meta = dict(meta, schema_version=SCHEMA_VERSION, model_key=self.key)
        atomic_write_json(meta, self.meta_path)

    def commit_block(self, key: str, rows: pa.Table, failures: pa.Table | None) -> None:
        """Commit one work unit: failures first, then the shard (the commit point)."""
        if self._lock_fd is None:
            raise RuntimeError(f"{self!r}: commit_block without holding the writer lock (call acquire())")
        if failures is not None and failures.num_rows:
            atomic_write_table(failures, self.failures_dir / f"{SHARD_PREFIX}{key}.parquet")
        else:  # a stale failures file of an earlier crashed attempt must not survive
            (self.failures_dir / f"{SHARD_PREFIX}{key}.parquet").unlink(missing_ok=True)
        atomic_write_table(rows, self.shards_dir / f"{SHARD_PREFIX}{key}.parquet")

    # -- reader side -----------------------------------------------------------------------
    def exists(self) -> bool:
        return self.meta_path.is_file()

    def read_meta(self) -> dict[str, Any]:
        if not self.meta_path.is_file():
            raise FileNotFoundError(f"no {self.META_NAME} in {self.root}: run `ecgbatch {self.JOB}` first")
        return json.loads(self.meta_path.read_text())

    def committed_blocks(self) -> set[str]:
        if not self.shards_dir.is_dir():
            return set()
        return {p.name[len(SHARD_PREFIX):-len(".parquet")]
                for p in self.shards_dir.glob(f"{SHARD_PREFIX}*.parquet")}

    def shard_files(self) -> list[Path]:
        return sorted(self.shards_dir.glob(f"{SHARD_PREFIX}*.parquet")) if self.shards_dir.is_dir() else []

    def failure_files(self) -> list[Path]:
        """Failure files of committed blocks only."""
        done = self.committed_blocks()
        if not self.failures_dir.is_dir():
            return []
        return sorted(p for p in self.failures_dir.glob(f"{SHARD_PREFIX}*.parquet")
                      if p.name[len(SHARD_PREFIX):-len(".parquet")] in done)

    def committed_sources(self) -> set[str]:
        """Record sources already done: embedded or failed."""
        done: set[str] = set()
        for f in self.shard_files():
            done.update(pq.read_table(f, columns=["source"]).column("source").to_pylist())
        for f in self.failure_files():
            done.update(pq.read_table(f, columns=["source"]).column("source").to_pylist())
        return done

    def iter_batches(self, columns: list[str] | None = None, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """Stream the committed embeddings (bounded memory)."""
        for f in self.shard_files():
            pf = pq.ParquetFile(f)
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        files = self.shard_files()
        if not files:
            raise FileNotFoundError(f"no committed shards in {self.shards_dir}: run `ecgbatch {self.JOB}` first")
        tables = [pq.read_table(f, columns=columns) for f in files]
        tables = [t for t in tables if t.num_rows] or tables[:1]
        return pa.concat_tables(tables, promote_options="permissive")

    def read_failures(self) -> pa.Table | None:
        files = self.failure_files()
        if not files:
            return None
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")

    def count(self) -> tuple[int, int]:
        """(embedded records, failed records) from the Parquet footers."""
        n_ok = sum(pq.ParquetFile(f).metadata.num_rows for f in self.shard_files())
        n_bad = sum(pq.ParquetFile(f).metadata.num_rows for f in self.failure_files())
        return n_ok, n_bad


class ReportTable(ModelTable):
    """Generated reports of one model + adapter + prompt settings (``ecgbatch report --input``):
    reports/part-<block>.parquet, failures/part-<block>.parquet, report.json."""

    ROWS_DIR = "reports"
    META_NAME = "report.json"
    JOB = "report --input"


def list_tables(workspace: str | os.PathLike) -> list[ModelTable]:
    """Every model table in a workspace (folders holding an embed.json), newest first."""
    ws = Path(workspace).expanduser()
    if not ws.is_dir():
        return []
    tables = [ModelTable(ws, p.parent.name) for p in ws.glob("*/embed.json")]
    return sorted(tables, key=lambda t: t.meta_path.stat().st_mtime, reverse=True)


def open_table(workspace: str | os.PathLike, model: str | None = None) -> ModelTable:
    """The table to search/classify: the only one, or the one whose key or model name is ``model``
    (the newest when several match)."""
    ws = Path(workspace).expanduser()
    tables = list_tables(ws)
    if not tables:
        raise FileNotFoundError(f"no embeddings in workspace {str(ws)!r}: run `ecgbatch embed ARCHIVE` first")
    if model is None:
        if len({t.read_meta().get("model") for t in tables}) > 1:
            names = sorted({f"{t.key}" for t in tables})
            raise ValueError(f"workspace {str(ws)!r} holds several models {names}; pick one with --model")
        return tables[0]
    for t in tables:
        if t.key == model or t.read_meta().get("model") == model:
            return t
    raise ValueError(f"no table for model {model!r} in {str(ws)!r}; have {[t.key for t in tables]}")
