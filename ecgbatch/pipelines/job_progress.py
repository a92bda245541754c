"""A job's progress in its workspace table, so a job submitted to a cluster can be watched from
anywhere that sees the workspace (`ecgbatch status WORKSPACE`).

``<table>/progress.json`` is rewritten atomically after every committed block of `embed` and
`report --input` (ecgbatch.pipelines.blocks.consume_blocks), and once more when the stream ends::

    {"job": "embed", "state": "running" | "finished" | "failed", "total": 1000, "done": 340,
     "failed": 3, "already_done": 100, "this_run": 240, "records_per_s": 12.5, "eta_s": 52.8,
     "blocks_committed": 4, "started": "2026-...Z", "updated": "2026-...Z"}

``done`` counts every record committed so far (earlier runs included; ``failed`` of them failed),
``records_per_s`` and ``eta_s`` are this run's. A "running" file whose ``updated`` time is old
belongs to a job that died: the committed blocks are kept, a rerun continues.

Imports the workspace module only (no Ray).
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ecgbatch.pipelines.workspace import ModelTable, ReportTable, atomic_write_json

PROGRESS_NAME = "progress.json"


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobProgress:
    """The writer: ``block(rows)`` after each commit, ``close(ok)`` at the end."""

    def __init__(self, table: ModelTable, total: int, already_done: int):
        self.path = table.root / PROGRESS_NAME
        self.job = table.JOB
        self.total, self.already_done = int(total), int(already_done)
        self.ok = self.failed = self.blocks = 0
        self.t0 = time.time()
        self._write("running")

    def block(self, rows: Iterable[dict[str, Any]]) -> None:
        """One committed block's rows (each with its boolean ``ok``)."""
        for r in rows:
            if bool(r["ok"]):
                self.ok += 1
            else:
                self.failed += 1
        self.blocks += 1
        self._write("running")

    def close(self, ok: bool) -> None:
        self._write("finished" if ok else "failed")

    def _write(self, state: str) -> None:
        now = time.time()
        this_run = self.ok + self.failed
        rate = this_run / (now - self.t0) if now > self.t0 and this_run else 0.0
        left = max(0, self.total - self.already_done - this_run)
        atomic_write_json({
            "job": self.job, "state": state, "total": self.total,
            "done": self.already_done + this_run, "failed": self.failed, "already_done": self.already_done,
            "this_run": this_run, "blocks_committed": self.blocks, "records_per_s": round(rate, 3),
            "eta_s": (round(left / rate, 3) if rate > 0 else None) if left else 0.0,
            "started": _utc(self.t0), "updated": _utc(now),
        }, self.path)


def workspace_status(workspace: str | Path) -> list[dict[str, Any]]:
    """One entry per table of ``workspace`` (embeddings and reports): its key, job, committed
    counts from the Parquet footers, and its last progress.json (None when no job wrote one)."""
    ws = Path(workspace).expanduser()
    if not ws.is_dir():
        raise FileNotFoundError(f"no workspace at {str(ws)!r}")
    out = []
    for kind, meta in ((ModelTable, ModelTable.META_NAME), (ReportTable, ReportTable.META_NAME)):
        for m in sorted(ws.glob(f"*/{meta}")):
            table = kind(ws, m.parent.name)
            n_ok, n_bad = table.count()
            p = table.root / PROGRESS_NAME
            out.append({"table": table.key, "job": table.JOB, "committed": n_ok, "failed": n_bad,
                        "progress": json.loads(p.read_text()) if p.is_file() else None})
    return out
