"""Which record a read task was on when its worker process died, so that one corrupt file that
crashes native code (or is killed for memory) is recorded as a failure instead of ending the job.

Ray Data retries a task whose worker died (its tasks' default ``max_retries=-1``: without end);
the ledger bounds that at ``READ_TASK_RETRIES`` per block (the next attempt raises
ReadRetriesExhausted, which ends the job as Ray's own limit did). A small ledger actor hears when a
read task starts and finishes a block (two calls per block, nothing per record). When a task
starts a block that an earlier attempt started but never finished, that attempt died: this
attempt reads "carefully", telling the ledger which record it is on before each one. If it dies
too, the next attempt learns the record and writes it as a failure (error_kind
``reader_crash``) instead of reading it again. So a crashing record costs two retries and
records that never crash cost nothing. Works on a cluster: the ledger is an actor, not a file on
one node. One ledger per job run (run_ledger), killed by its handle when the run ends, so a
long-lived Ray (a cluster, a service, a test session) does not collect one per run; named
``ecgbatch-read-ledger-*`` so that `ray list actors` shows whose it is.
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from ecgbatch.errors import EcgbatchError

READ_TASK_RETRIES = 10  # each crashing record of a block costs two retries
LEDGER_NAME_PREFIX = "ecgbatch-read-ledger-"


class ReadRetriesExhausted(EcgbatchError, RuntimeError):
    """A block's read task died more than READ_TASK_RETRIES times."""

    kind = "read_retries_exhausted"


class ReadLedger:
    """The actor's state per block: attempts started, the record a careful attempt is on, the
    records that died."""

    def __init__(self):
        self.started: dict[str, int] = {}
        self.current: dict[str, str] = {}
        self.crashed: dict[str, list[str]] = {}

    def begin(self, block: str) -> tuple[bool, list[str]]:
        """(read carefully, records to skip) for a new attempt at ``block``; ReadRetriesExhausted
        once READ_TASK_RETRIES retries of it have died."""
        if self.started.get(block, 0) > READ_TASK_RETRIES:
            raise ReadRetriesExhausted(
                f"block {block}: its read task's worker died {self.started[block]} times (crashes in "
                f"native code or kills for memory not pinned to one record); giving up after "
                f"{READ_TASK_RETRIES} retries")
        careful = self.started.get(block, 0) > 0  # an earlier attempt started and did not finish
        self.started[block] = self.started.get(block, 0) + 1
        key = self.current.pop(block, None)
        if key is not None:
            self.crashed.setdefault(block, []).append(key)
        return careful, list(self.crashed.get(block, ()))

    def reading(self, block: str, key: str | None) -> None:
        if key is None:
            self.current.pop(block, None)
        else:
            self.current[block] = key

    def finish(self, block: str) -> None:
        self.started.pop(block, None)
        self.current.pop(block, None)


def start_ledger():
    """A ReadLedger actor in the current Ray session (no CPU reserved: it only keeps a dict)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1)(ReadLedger).options(
        name=LEDGER_NAME_PREFIX + uuid.uuid4().hex[:12]).remote()


@contextmanager
def run_ledger() -> Iterator[Any]:
    """The ledger of one job run (its read stage's, read_stage.read_stage), killed by its handle
    when the run ends, whether it finished, failed or was interrupted."""
    import ray

    ledger = start_ledger()
    try:
        yield ledger
    finally:
        ray.kill(ledger, no_restart=True)


class ReadTracker:
    """Used inside a read task; a no-op without a ledger (plain function calls in tests)."""

    def __init__(self, ledger=None):
        self.ledger = ledger
        self.careful = False

    def begin(self, block: str) -> set[str]:
        """Records of ``block`` that killed an earlier attempt (to be written as failures)."""
        if self.ledger is None:
            return set()
        import ray

        self.careful, died = ray.get(self.ledger.begin.remote(block))
        return set(died)

    def reading(self, block: str, key: str | None) -> None:
        if self.ledger is not None and self.careful:
            import ray

            ray.get(self.ledger.reading.remote(block, key))

    def finish(self, block: str) -> None:
        if self.ledger is not None:
            import ray

            ray.get(self.ledger.finish.remote(block))


def crash_row(key: str) -> dict[str, Any]:
    """The failure row of a record whose read task died on it."""
    return {"source": key, "ok": False, "stage": "read", "error_type": "WorkerCrashedError",
            "error_kind": "reader_crash", "x": None, "notes": "",
            "message": f"{key}: the worker process died while reading this record (a crash in "
                       "native code, or killed for memory); the task was retried without it"}


__all__ = ["READ_TASK_RETRIES", "LEDGER_NAME_PREFIX", "ReadLedger", "ReadRetriesExhausted", "ReadTracker",
           "start_ledger", "run_ledger", "crash_row"]
