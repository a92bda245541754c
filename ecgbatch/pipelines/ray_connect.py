"""Which Ray a job runs on: the one decision for `embed`, `report --input` and the training jobs.

- No address (None, "" or "local"): a NEW local Ray, started by this process and shut down by
  its caller, whatever other local cluster exists or existed. A plain ``ray.init()`` attaches to
  the cluster named by $RAY_ADDRESS or by the state file /tmp/ray/ray_current_cluster: with a
  live ``ray start --head`` on the machine it then refuses ``num_cpus`` ("When connecting to an
  existing cluster, num_cpus and num_gpus must not be provided"), and the file of a killed one
  points at a dead GCS. Ray 2.60's ``ray.init(address="local")`` skips both, so it is used here.
- "auto": on purpose, the cluster this machine belongs to ($RAY_ADDRESS, which a Ray job's
  driver gets from the job supervisor, else the state file).
- "HOST:PORT" or "ray://HOST:PORT": that cluster.

Token auth: Ray 2.60 turns token auth on for a new local cluster when RAY_AUTH_MODE is unset; a
local run is private to this process, so it defaults to "disabled" there (an explicit
RAY_AUTH_MODE wins). Attaching uses whatever RAY_AUTH_MODE / RAY_AUTH_TOKEN the environment has.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

LOCAL_ADDRESSES = (None, "", "local")


def is_local(address: str | None) -> bool:
    """True when ``address`` asks for a Ray of this process's own."""
    return address in LOCAL_ADDRESSES


def init_ray(address: str | None, *, num_cpus: int | None = None, log: Callable[[str], Any] | None = None,
             tries: int = 3, **ray_kwargs: Any) -> None:
    """``ray.init`` by the rule of the module docstring. A new local Ray whose raylet misses Ray's
    fixed 30 s registration window (an overloaded machine) is retried after a clean shutdown;
    every other error is raised at once. ``num_cpus`` applies to a local Ray only."""
    import ray

    if is_local(address):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs = {"address": "local", "num_cpus": num_cpus, "include_dashboard": False, **ray_kwargs}
    else:
        kwargs = {"address": address, **ray_kwargs}
        tries = 1
    for attempt in range(1, tries + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this case
            if "timed out during startup" not in str(exc) or attempt == tries:
                raise
            if log is not None:
                log(f"Ray did not start in time ({exc}); retrying ({attempt}/{tries - 1})")
            ray.shutdown()
            time.sleep(2.0)
