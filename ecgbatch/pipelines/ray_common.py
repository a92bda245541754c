"""Ray helpers shared by the Ray Data jobs (``embed``, ``classify``, ``report``): the session a job
runs in, Ray Data's logging, and the actor restart policy. Ray is imported inside the functions
(only the jobs need it).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

from ecgbatch.pipelines.ray_connect import init_ray
from ecgbatch.quiet import is_verbose


# Ray Data hands every actor its UDF and context as object-store references, and by default
# restarts dead actors (max_restarts=-1); Ray's core worker then logs an ERROR line for every
# actor ("... has constructor arguments in the object store and max_restarts > 0 ...", ray issue
# 53727), although nothing failed. Our constructor arguments are already small (a model name,
# its create_model spec, a hash), so the cause is the restart policy: no actor restarts. A dead
# actor then fails the job, and rerunning it redoes only the blocks that were not committed.
# Ray 2.60 has no named map_batches parameter for it, and warns that extra remote arguments
# are deprecated (from 2.64): no_restart_warning() silences that one warning where we pass it.
NO_ACTOR_RESTARTS = {"max_restarts": 0}

# CPU priorities of a block job's stages where they share CPU cores (a CPU-only node). A model
# actor's threads step in lock step (vLLM's and torch's OpenMP), so a read task that preempts one
# of them stalls all of them; Ray starts every worker at niceness 15. The read tasks therefore move
# to READ_NICENESS (always allowed: raising one's own niceness needs no privilege) and a model
# actor to MODEL_NICENESS where the node allows it (root or CAP_SYS_NICE; elsewhere it stays at
# Ray's 15 and only the read tasks move). The reads still run whenever a model thread waits.
# STAGE_PRIORITIES_ENV=off (in the workers' environment) leaves every niceness as Ray set it.
READ_NICENESS = 19
MODEL_NICENESS = 0
STAGE_PRIORITIES_ENV = "ECGBATCH_STAGE_PRIORITIES"


def set_niceness(target: int) -> int:
    """This process's niceness moved to ``target`` where allowed (raising it always is, lowering
    it may not be); the niceness it has afterwards. Nothing changes with STAGE_PRIORITIES_ENV=off."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if os.environ.get(STAGE_PRIORITIES_ENV, "").lower() == "off" or current == target:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, 0, target)
    except PermissionError:
        return current
    return os.getpriority(os.PRIO_PROCESS, 0)


@contextmanager
def no_restart_warning() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        yield


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = 2) -> Iterator[None]:
    """A new local Ray started here (and shut down after), an existing cluster (``address``:
    "auto", "host:port" or "ray://host:port"; see ecgbatch.pipelines.ray_connect), or the session
    the caller already started (left running). The workers' output reaches this terminal only
    when a command was given --verbose (ecgbatch.quiet)."""
    import ray

    if ray.is_initialized():
        yield
        return
    verbose = is_verbose()
    init_ray(address, num_cpus=num_cpus, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def quiet_ray_data() -> None:
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver draws one rich bar instead
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
