"""Training-job runs of a test module, started at once (tests/test_training_job.py,
tests/test_training_llava.py).

Each Ray Train run (``run_job``) spends most of its time starting and stopping processes: the
Train controller and its helper actors, then the workers importing torch and transformers. Run
one after another, the session's 2-CPU Ray sits half idle; started together (one thread per
chain of runs that depend on each other), Ray queues the workers for the CPUs and one run's
start-up and shut-down overlap another's training. Every run trains exactly as alone.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

import pytest

# Ray Train settings for these runs (Ray's own, not the jobs'):
RAY_TRAIN_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",        # one helper actor (a process) less per run
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",        # the controller sees a run end or crash sooner (2 s)
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",   # a run queued behind others for the CPUs waits (60 s)
    "RAY_TRAIN_METRICS_ENABLED": "0",                  # no Prometheus metrics of the controller and workers
}


@contextlib.contextmanager
def concurrent_runs(**chains: Callable[[], object]) -> Iterator[dict[str, Future]]:
    """Start every chain (a callable running its runs in order) in its own thread, with
    RAY_TRAIN_ENV set; yields {name: Future}. On exit waits for all of them (a test that failed
    early leaves none running)."""
    with pytest.MonkeyPatch.context() as mp, ThreadPoolExecutor(len(chains)) as pool:
        for k, v in RAY_TRAIN_ENV.items():
            mp.setenv(k, v)
        futures = {name: pool.submit(chain) for name, chain in chains.items()}
        try:
            yield futures
        finally:
            for fut in futures.values():
                fut.exception()


def raised(fn: Callable, *args, **kwargs) -> Exception | None:
    """The exception ``fn(*args, **kwargs)`` raised (None when it returned): a chain records
    it and goes on, the test asserts it."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the test checks which
        return exc
    return None
