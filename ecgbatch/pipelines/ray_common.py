"""Ray helpers shared by the Ray Data jobs (``embed``, ``classify``, ``report``): the session a job
runs in, Ray Data's logging, and the actor restart policy. Ray is imported inside the functions
(only the jobs need it).
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Iterator


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
    """A local Ray started here (and shut down after), an existing cluster (``address``: "auto"
    or "ray://host:port"), or the session the caller already started (left running)."""
    import ray

    if ray.is_initialized():
        yield
        return
    import logging

    ctx_kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address in (None, "", "local"):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        _init_local(num_cpus, ctx_kwargs)
    else:
        ray.init(address=address, **ctx_kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def _init_local(num_cpus: int | None, ctx_kwargs: dict[str, Any], attempts: int = 3) -> None:
    """ray.init of a local head; Ray gives its raylet a fixed 30 s to come up, which a busy
    machine can miss: that one failure is retried (after a clean shutdown), any other raised."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **ctx_kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this case
            if "timed out during startup" not in str(exc) or attempt == attempts - 1:
                raise
            ray.shutdown()
            time.sleep(2.0)


def quiet_ray_data() -> None:
    import logging

    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver draws one rich bar instead
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
