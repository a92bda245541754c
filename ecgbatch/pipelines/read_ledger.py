"""Which record a read task was on when its worker process died, so that one corrupt file that
crashes native code (or is killed for memory) is recorded as a failure instead of ending the job.

Ray retries a task whose worker died (``READ_TASK_RETRIES``). Before each record, the read task
tells a small ledger actor which record it is on; when the task for a block starts again, the
ledger answers with the record that was in flight when the last attempt died, and the retry
writes that record as a failure (error_kind ``reader_crash``) instead of reading it again. One
synchronous call to the actor per record (about a millisecond next to a record's read and
preprocessing). Works on a cluster: the ledger is an actor, not a file on one node.
"""
from __future__ import annotations

from typing import Any

READ_TASK_RETRIES = 8  # crashing records one block can survive (each costs one retry)


class ReadLedger:
    """The actor's state: the record each block is on; records that died, per block."""

    def __init__(self):
        self.current: dict[str, str] = {}
        self.crashed: dict[str, list[str]] = {}

    def begin(self, block: str) -> list[str]:
        """A task starts ``block``: a record still marked in flight died with the last attempt."""
        key = self.current.pop(block, None)
        if key is not None:
            self.crashed.setdefault(block, []).append(key)
        return list(self.crashed.get(block, ()))

    def reading(self, block: str, key: str | None) -> None:
        if key is None:
            self.current.pop(block, None)
        else:
            self.current[block] = key


def start_ledger():
    """A ReadLedger actor in the current Ray session (no CPU reserved: it only keeps a dict)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1)(ReadLedger).remote()


class ReadTracker:
    """Used inside a read task; a no-op without a ledger (plain function calls in tests)."""

    def __init__(self, ledger=None):
        self.ledger = ledger

    def begin(self, block: str) -> set[str]:
        if self.ledger is None:
            return set()
        import ray

        return set(ray.get(self.ledger.begin.remote(block)))

    def reading(self, block: str, key: str | None) -> None:
        if self.ledger is not None:
            import ray

            ray.get(self.ledger.reading.remote(block, key))


def crash_row(key: str) -> dict[str, Any]:
    """The failure row of a record whose read task died on it."""
    return {"source": key, "ok": False, "stage": "read", "error_type": "WorkerCrashedError",
            "error_kind": "reader_crash", "x": None, "notes": "",
            "message": f"{key}: the worker process died while reading this record (a crash in "
                       "native code, or killed for memory); the task was retried without it"}


__all__ = ["READ_TASK_RETRIES", "ReadLedger", "ReadTracker", "start_ledger", "crash_row"]
