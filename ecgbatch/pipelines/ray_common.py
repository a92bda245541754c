"""Ray helpers shared by the Ray Data jobs (``embed``, ``classify``, ``report``): the session a job
runs in, Ray Data's logging, and the actor restart policy. Ray is imported inside the functions
(only the jobs need it).
"""
from __future__ import annotations

import logging
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
