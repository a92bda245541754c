"""A vLLM engine of ours whose client process is killed with SIGKILL (no exit handler runs): its
EngineCore process notices (ecgbatch.serving.parent_watch, started by our vLLM plugin in that
process) and exits with its workers instead of staying an orphan.

  * the watch itself, without vLLM (seconds): spawned children named as vLLM names its engine
    cores stop when their parent is killed, one that ignores SIGTERM after the grace period, and
    a child with another name is left alone;
  * a real engine (slow: an engine start-up): multiprocess vLLM (the default: an EngineCore
    process under the client), the fixture model, one generated token, then SIGKILL.

The clean exits (no "engine core exited unexpectedly") are asserted on the runs of real commands
that already exist: test_diagnosis_prompt's `report --ddp` process (quiet) and test_chat_cli's
chat (--verbose)."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from ecgbatch._paths import REPO_ROOT
from ecgbatch.serving.parent_watch import watch_parent

START_S = 900      # the engine's start-up on a loaded 2-core machine (minutes there)
EXIT_S = 180       # a bound on the orphan's exit, not a timing claim (~30 s on 2 busy cores)

# argv: model folder, vLLM work dir; generates one token, says so, then blocks until killed
CLIENT = """
import sys
import numpy as np
from ecgbatch.serving.engine import EcgLlavaEngine, EcgRequest, engine_env

if __name__ == "__main__":
    engine_env()
    engine = EcgLlavaEngine(sys.argv[1], dtype="float32", max_num_seqs=1, work_dir=sys.argv[2])
    tower = engine.config.tower_cfg
    ecg = np.zeros((tower.lead_num, tower.seq_length), np.float32)
    [res] = engine.generate([EcgRequest(ecg, engine.prompt_ids("Please describe this ECG."))], max_tokens=1)
    print("generated", res.n_output_tokens, flush=True)
    sys.stdin.read()
"""


# the parent of three spawned children: two named as vLLM's engine cores (one ignores SIGTERM), one not
PARENT = """
import multiprocessing as mp, os, signal, sys, time
from ecgbatch.serving.parent_watch import watch_parent

def child(ignore_term):
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    line = f"{mp.current_process().name} {watch_parent(grace_s=2.0)}\\n"
    os.write(1, line.encode())     # one write per line: three children share the pipe (print may split it)
    time.sleep(600)

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    kids = [ctx.Process(target=child, args=(ignore,), name=name)
            for name, ignore in (("EngineCore", False), ("EngineCore_DP1", True), ("Worker", False))]
    for k in kids:
        k.start()
    print("pids", *[k.pid for k in kids], flush=True)
    time.sleep(600)
"""


def test_watch_stops_engine_cores_whose_parent_died(tmp_path):
    import psutil

    script = tmp_path / "parent.py"        # a file: spawn re-imports the children's target from it
    script.write_text(PARENT)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        lines = _lines(proc, 4, 120)
        pids = dict(zip(("EngineCore", "EngineCore_DP1", "Worker"),
                        map(int, next(x for x in lines if x.startswith("pids")).split()[1:])))
        assert sorted(x.strip() for x in lines if not x.startswith("pids")) == [
            "EngineCore True", "EngineCore_DP1 True", "Worker False"], lines
        assert watch_parent() is False          # this process: no multiprocessing parent
        kids = {name: psutil.Process(pid) for name, pid in pids.items()}
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        _, alive = psutil.wait_procs([kids["EngineCore"], kids["EngineCore_DP1"]], timeout=EXIT_S)
        assert not alive, [(p.pid, p.name()) for p in alive]
        assert kids["Worker"].is_running()      # not an engine core: vLLM ties its workers to theirs
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(60)


def _lines(proc: subprocess.Popen, n: int, timeout: float) -> list[str]:
    """The first n lines of proc's stdout, or fewer when timeout (s) passes first. It reads the pipe's
    file descriptor itself: a select() on the fd after the text wrapper's readline() would wait on lines
    that the wrapper has already buffered (two children writing at once), which failed in CI."""
    deadline = time.monotonic() + timeout
    fd, buf = proc.stdout.fileno(), b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while buf.count(b"\n") < n and (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            chunk = os.read(fd, 4096)
            if not chunk:       # EOF: the process is gone
                break
            buf += chunk
    return [line + "\n" for line in buf.decode().split("\n")[:n] if line] if buf else []


@pytest.mark.vllm
@pytest.mark.slow
def test_engine_core_exits_when_its_client_is_killed(llava_converted, tmp_path):
    import psutil

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), VLLM_CPU_KVCACHE_SPACE="1", TRANSFORMERS_VERBOSITY="error")
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)      # the EngineCore process is the subject
    err = tmp_path / "client.err"
    with open(err, "w") as err_f:
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(llava_converted), str(tmp_path / "vllm")],
                                cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err_f, text=True, start_new_session=True)
    try:
        line = next(iter(_lines(proc, 1, START_S)), "")
        assert line.startswith("generated 1"), err.read_text()[-3000:]
        below = psutil.Process(proc.pid).children(recursive=True)
        cores = [p for p in below if "EngineCore" in p.name()]       # vLLM's process title
        assert len(cores) == 1, [(p.pid, p.name()) for p in below]
        proc.send_signal(signal.SIGKILL)      # the client alone
        proc.wait(60)
        _, alive = psutil.wait_procs(below, timeout=EXIT_S)          # EngineCore, its workers, the tracker
        assert not alive, [(p.pid, p.name()) for p in alive]
        assert "is gone: stopping the engine core" in err.read_text()    # the watch did it, not chance
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)       # whatever is left of the group
        except ProcessLookupError:
            pass
        proc.wait(60)
