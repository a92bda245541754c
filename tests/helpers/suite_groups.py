"""Which tests share the one xdist group "heavy" (`make test`: pytest -n 2 --dist loadgroup).

The house rule is one vLLM engine and one Ray cluster per test run. With two xdist workers each
worker has its own session fixtures, so every test that starts an engine or a Ray cluster (in
this process, through a session fixture, or in a subprocess), and every test that looks at the
machine's processes or Ray state, goes to ONE group: xdist runs a group on one worker, in
collection order, so those tests run one after another as they do in a serial run. The other
worker takes the light tests meanwhile (and the heavy worker takes light ones when it is done).

A test is heavy when ANY of these holds (err on the side of heavy):
  1. it carries a marker in HEAVY_MARKERS (module ``pytestmark`` counts);
  2. it uses, directly or through other fixtures, a fixture in HEAVY_FIXTURES;
  3. its file is in HEAVY_FILES.
``heavy_reason(item)`` says which; ``python bench/suite_groups.py`` lists the split.
A light test that starts Ray or a vLLM engine in the test process, and leaves it running at the
end of its body, fails (tests/conftest.py, ``RayAndEngines``): add its fixture, marker or file
here. (Subprocesses that end within the test are not seen: list such files in HEAVY_FILES.)"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

HEAVY_GROUP = "heavy"

HEAVY_MARKERS = ("ray", "vllm", "slow")

# session fixtures (tests/conftest.py) that start an engine, a server or a Ray cluster, or that are
# expensive to build a second time on the other worker (the LLaVA conversion: ~20 s on 2 cores)
HEAVY_FIXTURES = frozenset({
    "vllm_engine",                        # the session's one vLLM engine
    "record_reports_on_session_engine",   # `report RECORD` in-process on that engine
    "ecg_server",                         # the session's one `ecgbatch serve` (its own engine)
    "ray_local",                          # the session's one in-process Ray
    "llava_converted", "llava_trained_only", "llava_assembled", "llava_cache",   # LLaVA conversion
})

# files whose tests start engines or Ray clusters in subprocesses, or scan processes / Ray state,
# whether or not each test carries a marker
HEAVY_FILES = {
    "test_chat_cli.py": "`ecgbatch chat` subprocesses (own engine)",
    "test_diagnosis_prompt.py": "`ecgbatch report RECORD --ddp` subprocess (own engine)",
    "test_engine_exit.py": "scans for EngineCore processes",
    "test_pipeline_embed.py": "SIGKILLed `embed` driver with its own Ray",
    "test_ray_jobs.py": "`ray start` cluster with job server",
    "test_ray_local.py": "live Ray heads and their state files",
    "test_ray_multinode.py": "two-node `ray start` cluster",
    "test_report_archive.py": "SIGKILLed `report --input` with its own Ray and engines",
    "test_report_archive_overlap.py": "engine actors on Ray",
    "test_report_archive_prompts.py": "engine actors on Ray",
    "test_report_cli.py": "`ecgbatch report` subprocesses (own engine)",
}


def heavy_reason(item) -> str | None:
    """Why ``item`` (a pytest Item) belongs to the heavy group, or None for a light test."""
    for name in HEAVY_MARKERS:
        if item.get_closest_marker(name) is not None:
            return f"marker {name}"
    used = HEAVY_FIXTURES.intersection(item.fixturenames)
    if used:
        return "fixture " + ", ".join(sorted(used))
    file = Path(str(item.path)).name
    if file in HEAVY_FILES:
        return f"file: {HEAVY_FILES[file]}"
    return None


class GroupNodeIds:
    """Registered in the workers of ``--dist loadgroup`` (tests/conftest.py). xdist tells the
    scheduler a test's group by a "@heavy" suffix on its node id, set in its own
    pytest_collection_modifyitems as ``item._nodeid``; pytest 9.2 keeps a node's id elsewhere
    (``item._id``, a NodeId), so with pytest-xdist 3.8.0 the suffix silently went missing and
    both workers ran heavy tests (measured). This runs after xdist's hook: it adds the suffix
    where xdist's did not take, and stops the run if any heavy test still lacks it."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        suffix = f"@{HEAVY_GROUP}"
        for item in items:
            if item.get_closest_marker("xdist_group") is not None and not item.nodeid.endswith(suffix):
                from _pytest.nodeid import NodeId      # pytest >= 9.2, where xdist's suffix does not take

                item._id = NodeId.parse(item.nodeid + suffix)
        missing = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and not i.nodeid.endswith(suffix)]
        if missing:
            raise pytest.UsageError(f"{len(missing)} heavy tests lack their xdist group suffix (e.g. {missing[0]}): "
                                    "--dist loadgroup would run them on both workers")


ENGINE_OR_RAY_PROCESSES = ("EngineCore", "raylet", "gcs_server")


def child_pids() -> set[int]:
    """This process's live children (vLLM's engine core and Ray's daemons are direct children):
    Linux lists them per thread in /proc (0.05 ms; psutil scans every process, ~7 ms)."""
    files = list(Path("/proc/self/task").glob("*/children"))
    if not files:
        return {c.pid for c in psutil.Process().children()}
    pids = set()
    for f in files:
        try:
            pids.update(int(x) for x in f.read_text().split())
        except OSError:          # a thread that ended
            pass
    return pids


def ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@dataclass(frozen=True)
class RayAndEngines:
    """Whether Ray is initialized in this process, and its live child processes."""
    ray: bool
    children: frozenset[int]

    @classmethod
    def now(cls) -> RayAndEngines:
        return cls(ray_up(), frozenset(child_pids()))

    def started_since(self) -> list[str]:
        """What runs now that did not then: "in-process Ray", or the names of new child processes
        that are vLLM engine cores or Ray daemons."""
        found = ["in-process Ray"] if ray_up() and not self.ray else []
        for pid in child_pids() - self.children:
            try:
                p = psutil.Process(pid)
                cmd = " ".join([p.name(), *p.cmdline()])
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            found += [n for n in ENGINE_OR_RAY_PROCESSES if n in cmd]
        return found
