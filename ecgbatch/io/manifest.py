"""Parquet manifest (one row per record) and failures table (one row per failed record), written
streaming in row groups and atomically (``<name>.tmp-<pid>`` then ``os.replace``), so a crashed
scan never leaves a half-written manifest under the final name."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable

from ecgbatch.io.entries import Failure
from ecgbatch.io.header import RecordHeader
from ecgbatch.io.record import Record

_FIXED_META = ("age", "sex", "diagnoses", "dx_codes", "acquired", "quality", "storage", "scan")


def manifest_schema():
    import pyarrow as pa

    return pa.schema([
        ("key", pa.string()), ("record_id", pa.string()), ("path", pa.string()),
        ("format", pa.string()), ("fs", pa.float64()), ("n_leads", pa.int32()),
        ("leads", pa.list_(pa.string())), ("n_samples", pa.int64()), ("duration_s", pa.float64()),
        ("units", pa.string()), ("age", pa.int32()), ("sex", pa.string()),
        ("diagnoses", pa.string()), ("dx_codes", pa.list_(pa.string())), ("acquired", pa.string()),
        ("quality", pa.list_(pa.string())), ("storage", pa.string()),
        ("files", pa.list_(pa.string())), ("meta_json", pa.string()),
    ])


def failures_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("path", pa.string()), ("format", pa.string()),
                      ("error_type", pa.string()), ("message", pa.string()),
                      ("files", pa.list_(pa.string()))])


def manifest_row(item: Record | RecordHeader) -> dict[str, Any]:
    meta = item.meta
    scan = meta.get("scan", {})
    dx = meta.get("diagnoses")
    rest = {k: v for k, v in meta.items() if k not in _FIXED_META}
    fmt = scan.get("format") or getattr(item, "format", "")
    return {
        "key": scan.get("key") or item.source, "record_id": item.record_id, "path": item.source,
        "format": fmt, "fs": float(item.fs), "n_leads": len(item.leads), "leads": list(item.leads),
        "n_samples": int(item.n_samples), "duration_s": float(item.duration_s), "units": item.units,
        "age": meta.get("age"), "sex": meta.get("sex"),
        "diagnoses": "\n".join(dx) if isinstance(dx, (list, tuple)) else dx,
        "dx_codes": [str(c) for c in meta.get("dx_codes", [])] or None,
        "acquired": meta.get("acquired"),
        # None = not checked (header-only scan); [] = checked and clean
        "quality": list(meta["quality"]) if "quality" in meta else None,
        "storage": meta.get("storage"), "files": list(scan.get("files", [])),
        "meta_json": json.dumps(rest, default=str, sort_keys=True) if rest else None,
    }


def failure_row(f: Failure) -> dict[str, Any]:
    return {"key": f.key or f.path, "path": f.path, "format": f.format, "error_type": f.error_type,
            "message": f.message, "files": list(f.files)}


@dataclass
class ManifestResult:
    manifest_path: str
    failures_path: str
    n_records: int
    n_failures: int


class _Writer:
    def __init__(self, path: str, schema, batch: int):
        self.path, self.schema, self.batch = path, schema, batch
        self.tmp = f"{path}.tmp-{os.getpid()}"
        self.rows: list[dict] = []
        self.writer = None
        self.count = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self, metadata: dict | None = None) -> None:
        self.flush()
        if metadata:  # the scan statistics, in the file's key-value metadata
            self.writer.add_key_value_metadata(metadata)
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def default_failures_path(manifest_path: str) -> str:
    root, ext = os.path.splitext(os.fspath(manifest_path))
    return f"{root}.failures{ext or '.parquet'}"


def write_manifest(items: Iterable[Record | RecordHeader | Failure], manifest_path,
                   failures_path=None, *, batch_size: int = 4096, stats=None,
                   on_item=None) -> ManifestResult:
    """Consume ``items`` (e.g. ``scan(root)``) and write the manifest and failures parquet files.

    stats: a ScanStats to store as JSON in the manifest's metadata (``ecgbatch.scan_stats``);
    taken from ``items.stats`` when ``items`` is a Scan. on_item: called with each item (progress).
    """
    manifest_path = os.fspath(manifest_path)
    failures_path = os.fspath(failures_path) if failures_path else default_failures_path(manifest_path)
    man = _Writer(manifest_path, manifest_schema(), batch_size)
    fail = _Writer(failures_path, failures_schema(), batch_size)
    try:
        for item in items:
            if isinstance(item, Failure):
                fail.add(failure_row(item))
            elif isinstance(item, (Record, RecordHeader)):
                man.add(manifest_row(item))
            else:
                raise TypeError(f"write_manifest expects Record, RecordHeader or Failure, got {type(item)!r}")
            if on_item is not None:
                on_item(item)
        stats = stats if stats is not None else getattr(items, "stats", None)
        meta = {"ecgbatch.scan_stats": json.dumps(stats.to_dict())} if stats is not None else None
        man.close(meta)
        fail.close(meta)
    except BaseException:
        man.abort()
        fail.abort()
        raise
    return ManifestResult(manifest_path, failures_path, man.count, fail.count)
