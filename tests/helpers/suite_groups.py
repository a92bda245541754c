"""Which tests run in which lane of `make test` (pytest -n 2 --dist loadgroup): two xdist groups.

The house rule is one vLLM engine and one Ray cluster per test run. With two xdist workers each
worker has its own session fixtures, so the tests that start engines or Ray are split into two
lanes, each an xdist group that runs on ONE worker, in collection order (as in a serial run),
while the other lane runs on the other worker. Each session fixture that starts something lives
in one lane only:

  * "ray": the session's in-process Ray (``ray_local``; ``sample_embedded`` embeds on it) and
    every test that starts a local Ray of its own (CLI drivers, Ray Train jobs, `report --input`'s
    engine actors, live heads and state files), plus the session's in-process vLLM engine
    (``vllm_engine``) and its users: test_report_archive and test_report_archive_overlap compare
    what Ray's engine actors write with what that engine generates, so the engine lives where the
    session Ray lives.
  * "engine": the processes that run apart from both: the session `ecgbatch serve`
    (``ecg_server``) and its tests, `chat` and `report RECORD` subprocesses with their own engine,
    the engine-exit tests, and the session's `ray start` cluster (``ray_cluster``: test_ray_jobs,
    test_ray_multinode), which keeps its state file and sessions in a private temp folder (a plain
    ray.init() in the "ray" lane never finds it), is reached with --address only and is stopped
    by its own process groups (tests/helpers/ray_cluster.py). It runs here for balance: the
    "ray" lane is the longer one.

Every other test (CPU only: no Ray, no engine) is light: xdist sends it to whichever worker is
free, so the light tests fill in beside the shorter lane. A test is in the lane of the first rule
that holds: a session fixture it uses (directly or through other fixtures; one that uses session
fixtures of both lanes is refused at collection), its file, a marker (module ``pytestmark``
counts). ``lane_reason(item)`` says which; ``python bench/suite_groups.py`` lists the split. A test
that starts what its lane must not (a light test: Ray or a vLLM engine; an "engine" test: Ray in
the test process) and leaves it running at the end of its body fails (tests/conftest.py,
``RayAndEngines``): move its fixture, marker or file here. (Subprocesses that end within the test
are not seen: list such files here.)"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

RAY_LANE, ENGINE_LANE = "ray", "engine"
LANES = (RAY_LANE, ENGINE_LANE)

FIXTURES = {
    RAY_LANE: frozenset({
        "ray_local",                          # the session's one in-process Ray
        "sample_embedded",                    # `embed` on ray_local
        "vllm_engine",                        # the session's one in-process vLLM engine (see above)
        "record_reports_on_session_engine",   # `report RECORD` in-process on that engine
    }),
    ENGINE_LANE: frozenset({
        "ecg_server",                         # the session's one `ecgbatch serve` (its own engine)
        "ray_cluster",                        # the session's one `ray start` cluster (see above)
    }),
}

# files whose tests start Ray, engines or clusters in subprocesses, or look at processes and Ray
# state, whether or not each test carries a marker or uses a fixture above
FILES = {
    RAY_LANE: {
        "test_io_corrupt_archive.py": "`embed` with a dead Ray worker",
        "test_pipeline_embed.py": "SIGKILLed `embed` driver with its own Ray",
        "test_ray_local.py": "live Ray heads and their state files",
        "test_report_archive.py": "SIGKILLed `report --input` with its own Ray and engines",
        "test_report_archive_overlap.py": "engine actors on Ray",
        "test_report_archive_prompts.py": "engine actors on Ray",
        "test_training_job.py": "Ray Train jobs",
    },
    ENGINE_LANE: {
        "test_chat_cli.py": "`ecgbatch chat` subprocesses (own engine)",
        "test_diagnosis_prompt.py": "`ecgbatch report RECORD --ddp` subprocess (own engine)",
        "test_engine_exit.py": "engine processes and their exit",
        "test_ray_jobs.py": "the `ray start` cluster's job server",
        "test_ray_multinode.py": "the two-node `ray start` cluster",
        "test_report_cli.py": "`ecgbatch report` subprocesses (own engine)",
    },
}

MARKERS = {RAY_LANE: ("ray",), ENGINE_LANE: ("vllm",)}


def lane_reason(item) -> tuple[str, str] | None:
    """(lane, why) of ``item`` (a pytest Item), or None for a light test."""
    used = {lane: FIXTURES[lane].intersection(item.fixturenames) for lane in LANES}
    if all(used.values()):
        raise pytest.UsageError(f"{item.nodeid} uses session fixtures of both lanes ({used}): each lives in one "
                                "xdist worker only (tests/helpers/suite_groups.py)")
    file = Path(str(item.path)).name
    for lane in LANES:
        if used[lane]:
            return lane, "fixture " + ", ".join(sorted(used[lane]))
    for lane in LANES:
        if file in FILES[lane]:
            return lane, f"file: {FILES[lane][file]}"
    for lane in LANES:
        for name in MARKERS[lane]:
            if item.get_closest_marker(name) is not None:
                return lane, f"marker {name}"
    return None


def lane_of(item) -> str | None:
    """The xdist group ``item`` was put in (tests/conftest.py), or None for a light test."""
    marker = item.get_closest_marker("xdist_group")
    return None if marker is None else marker.args[0]


class GroupNodeIds:
    """Registered in the workers of ``--dist loadgroup`` (tests/conftest.py). xdist tells the
    scheduler a test's group by an "@ray"/"@engine" suffix on its node id, set in its own
    pytest_collection_modifyitems as ``item._nodeid``; pytest 9.2 keeps a node's id elsewhere
    (``item._id``, a NodeId), so with pytest-xdist 3.8.0 the suffix silently went missing and
    both workers ran a group's tests (measured). This runs after xdist's hook: it adds the suffix
    where xdist's did not take, and stops the run if any grouped test still lacks it."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        grouped = [(i, f"@{lane_of(i)}") for i in items if lane_of(i) is not None]
        for item, suffix in grouped:
            if not item.nodeid.endswith(suffix):
                from _pytest.nodeid import NodeId      # pytest >= 9.2, where xdist's suffix does not take

                item._id = NodeId.parse(item.nodeid + suffix)
        missing = [i.nodeid for i, suffix in grouped if not i.nodeid.endswith(suffix)]
        if missing:
            raise pytest.UsageError(f"{len(missing)} tests lack their xdist group suffix (e.g. {missing[0]}): "
                                    "--dist loadgroup would run a lane on both workers")


class LaneLog:
    """Registered when $ECGBATCH_LANE_LOG names a file (tests/conftest.py): every worker appends one
    line per test phase, tab-separated: worker, lane ("light" for ungrouped tests), when, outcome,
    start, stop (epoch seconds), node id; `bench/suite_groups.py --log FILE` sums each worker's and
    each lane's time, says when each worker was busy and lists the failed phases."""

    def __init__(self, path: str, worker: str):
        self.path, self.worker, self.lanes = path, worker, {}

    def pytest_collection_finish(self, session):        # after every hook that sets node ids
        self.lanes = {i.nodeid: lane_of(i) or "light" for i in session.items}

    def pytest_runtest_logreport(self, report):
        if hasattr(report, "node"):             # xdist's controller: a worker's report, logged there
            return
        line = (f"{self.worker}\t{self.lanes.get(report.nodeid, 'light')}\t{report.when}\t{report.outcome}\t"
                f"{report.start:.3f}\t{report.stop:.3f}\t{report.nodeid}\n")
        with open(self.path, "a") as fh:        # one short write per line: lines of two workers do not mix
            fh.write(line)


ENGINE_OR_RAY_PROCESSES = ("EngineCore", "raylet", "gcs_server")
# what a test of each lane must not leave running in the test process: None = a light test
# (the "engine" lane's `ray start` cluster has Ray daemons as children; a second in-process Ray it must not start)
FORBIDDEN = {None: ("in-process Ray", *ENGINE_OR_RAY_PROCESSES), ENGINE_LANE: ("in-process Ray",)}


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

    def started_since(self, names=FORBIDDEN[None]) -> list[str]:
        """Which of ``names`` run now that did not then: "in-process Ray", or the names of new child
        processes that are vLLM engine cores or Ray daemons."""
        found = ["in-process Ray"] if "in-process Ray" in names and ray_up() and not self.ray else []
        for pid in child_pids() - self.children:
            try:
                p = psutil.Process(pid)
                cmd = " ".join([p.name(), *p.cmdline()])
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            found += [n for n in names if n != "in-process Ray" and n in cmd]
        return found
