"""The CPU priorities of a block job's stages (ecgbatch.pipelines.ray_common.set_niceness): read
tasks give way to the model actor's threads on shared cores. Each case runs in a child process,
since a raised niceness cannot be lowered again without privilege."""
from __future__ import annotations

import os
import subprocess
import sys

from ecgbatch.pipelines.ray_common import MODEL_NICENESS, READ_NICENESS, STAGE_PRIORITIES_ENV

PROBE = ("import os; from ecgbatch.pipelines.ray_common import set_niceness as s; "
         "print(os.getpriority(os.PRIO_PROCESS, 0), s({target}), os.getpriority(os.PRIO_PROCESS, 0))")


def _child(target: int, env: dict | None = None, nice: int = 0) -> list[int]:
    e = {k: v for k, v in os.environ.items() if k != STAGE_PRIORITIES_ENV}
    e.update(env or {})
    cmd = [sys.executable, "-c", PROBE.format(target=target)]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    out = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=60, check=True).stdout
    return [int(v) for v in out.split()]


def test_a_read_task_moves_to_the_read_niceness():
    before, got, after = _child(READ_NICENESS)
    assert got == after == max(before, READ_NICENESS) == READ_NICENESS


def test_off_leaves_the_niceness_as_it_was():
    before, got, after = _child(READ_NICENESS, {STAGE_PRIORITIES_ENV: "off"}, nice=5)
    assert before == got == after == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)


def test_a_model_actor_moves_back_only_where_allowed():
    """From Ray's worker niceness (15) to MODEL_NICENESS: with privilege it gets there, without
    it stays where it was and says so (the return value), never an error."""
    before, got, after = _child(MODEL_NICENESS, nice=15)
    assert got == after
    privileged = os.geteuid() == 0
    assert after == (MODEL_NICENESS if privileged else before)
