"""Stop vLLM's engine-core process when the process that started it dies.

vLLM's EngineCore process (spawned by the engine's client: `report`, `chat`, `serve`, a report
actor, a bench) has no parent-death check: after a kill -9 of its parent it keeps its model, its
memory and its CPU threads, an orphan under init. Our plugin's register() runs in that process
(ecgbatch.serving.plugin) and starts watch_parent() there: a daemon thread that waits on the
parent's end of multiprocessing's spawn pipe (it closes when the parent dies, however it died)
and, as a second sign, for the process to be re-parented. Then it sends the process SIGTERM,
vLLM's own shutdown path (its busy loop ends, its workers are stopped), and if the process is
still there after ``grace_s``, ends it.

Not prctl(PR_SET_PDEATHSIG): Linux sends that signal when the parent *thread* that started the
child ends, and our engines are started from threads (report actors' batches, the serve
lifespan) that may end long before their process.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.connection import wait

log = logging.getLogger(__name__)

# process names (multiprocessing's) of vLLM's engine-core processes: "EngineCore", "EngineCore_DP<i>"
ENGINE_CORE_PREFIX = "EngineCore"
POLL_S = 1.0       # how often the re-parenting is checked besides the pipe
GRACE_S = 30.0     # SIGTERM's time to stop before the process is ended

_started: set[int] = set()     # pids in which a watch thread runs (register() may run twice)
_lock = threading.Lock()


def watch_parent(grace_s: float = GRACE_S) -> bool:
    """In a vLLM engine-core process: start the thread that stops this process when its parent
    dies. Elsewhere (the engine's client, vLLM's workers, which vLLM already ties to their
    engine core) and when it already runs: nothing. Returns whether a thread was started."""
    parent = multiprocessing.parent_process()
    if parent is None or not multiprocessing.current_process().name.startswith(ENGINE_CORE_PREFIX):
        return False
    with _lock:
        if os.getpid() in _started:
            return False
        _started.add(os.getpid())
    threading.Thread(target=_watch, args=(parent.sentinel, parent.pid, grace_s), daemon=True,
                     name="ecgbatch-parent-watch").start()
    return True


def _watch(sentinel: int, parent_pid: int | None, grace_s: float) -> None:
    while not wait([sentinel], POLL_S) and os.getppid() == parent_pid:
        pass
    log.warning("the process that started this vLLM engine core (pid %s) is gone: stopping the engine core",
                parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(grace_s)
    os._exit(1)
