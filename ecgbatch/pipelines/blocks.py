"""The driver side of the block-committing Ray Data jobs (`embed`, `report --input`): rows stream
in, are grouped by their work unit ("block" column), and each block is handed to ``commit`` as
soon as all of its records came back (see ecgbatch.pipelines.workspace for the exactly-once rule).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ecgbatch.pipelines import sources as src
from ecgbatch.pipelines.workspace import make_blocks


@dataclass
class StreamStats:
    rows: int = 0
    pipeline_seconds: float = 0.0      # from starting the dataset to the last commit
    steady_records_per_s: float = 0.0  # after the first results arrived (start-up excluded)
    first_result_s: float = 0.0


def plan_blocks(all_sources: list[str], done: set[str], by_key: dict, ids: dict[str, str],
                block_size: int) -> tuple[list[str], list[tuple[str, list[str], list[str]]]]:
    """(records still to do, their work blocks ``(key, sources as JSON, record ids)``). Small jobs
    get smaller blocks, so reading is spread over several tasks (>= ~8 blocks)."""
    todo = [s for s in all_sources if s not in done]
    bs = max(1, min(block_size, math.ceil(len(todo) / 8)))
    blocks = [(k, [src.source_to_json(by_key[s]) for s in chunk], [ids[s] for s in chunk])
              for k, chunk in make_blocks(todo, bs)]
    return todo, blocks


def split_failures(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ok = [r for r in rows if bool(r["ok"])]
    return ok, [r for r in rows if not bool(r["ok"])]


def count_kinds(counts: dict[str, int], bad: list[dict[str, Any]]) -> None:
    for r in bad:
        k = str(r["error_kind"])
        counts[k] = counts.get(k, 0) + 1


def consume_blocks(ds, expected: dict[str, int], commit: Callable[[str, list[dict[str, Any]]], None],
                   on_batch: Callable[[dict[str, np.ndarray]], None] | None = None,
                   progress=None) -> StreamStats:
    """Iterate ``ds`` on the driver, call ``commit(block, rows)`` once per complete block (every
    record of ``expected[block]`` back, no source twice) and ``on_batch`` for each batch (progress).
    ``progress`` (a job_progress.JobProgress) is told of each commit and of the end."""
    try:
        stats = _consume(ds, expected, commit, on_batch, progress)
    except BaseException:
        if progress is not None:
            progress.close(ok=False)
        raise
    if progress is not None:
        progress.close(ok=True)
    return stats


def _consume(ds, expected, commit, on_batch, progress) -> StreamStats:
    pending: dict[str, list[dict[str, Any]]] = {}
    stats = StreamStats()
    t_start = time.perf_counter()
    t_first, n_first = None, 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n = len(batch["block"])
        stats.rows += n
        if t_first is None:
            t_first, n_first = time.perf_counter(), n
            stats.first_result_s = t_first - t_start
        cols = list(batch)
        for i in range(n):
            row = {c: batch[c][i] for c in cols}
            pending.setdefault(str(row["block"]), []).append(row)
        if on_batch is not None:
            on_batch(batch)
        for key in [k for k, rows in pending.items() if len(rows) >= expected[k]]:
            rows = pending.pop(key)
            if len(rows) != expected[key] or len({r["source"] for r in rows}) != len(rows):
                raise RuntimeError(f"block {key}: got {len(rows)} rows for {expected[key]} records")
            commit(key, rows)
            if progress is not None:
                progress.block(rows)
    if pending:
        raise RuntimeError(f"the dataset ended with {len(pending)} incomplete blocks")
    t_end = time.perf_counter()
    stats.pipeline_seconds = t_end - t_start
    if t_first is not None and t_end > t_first and stats.rows > n_first:
        stats.steady_records_per_s = (stats.rows - n_first) / (t_end - t_first)
    return stats
