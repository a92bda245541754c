"""A real multi-process Ray cluster on this machine for tests, stopped by its own handles.

Each node is one ``ray start --block`` process started in a new session, so the node's processes
(GCS, raylet, dashboard, agents, workers) share its process group. Everything lives under one
private temp folder, given to every process as RAY_TMPDIR: the cluster's session files and its
``ray_current_cluster`` state file stay there and never touch /tmp/ray, where other clusters on
the machine keep theirs. ``stop()`` kills the process groups it started, then any leftover process
whose command line names that folder, then removes the folder. It never runs ``ray stop``, which
would stop every cluster of the user. All ports are free ports picked here, bound to 127.0.0.1.

``SharedCluster``: the one two-node cluster of a test run (conftest ``ray_cluster``), shared by the
tests that need real nodes (test_ray_jobs, test_ray_multinode).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalRayCluster:
    def __init__(self, env: dict[str, str] | None = None, dashboard: bool = False, start_timeout: float = 120.0):
        # short path: Ray's unix sockets live under it (108-byte limit)
        self.root = Path(tempfile.mkdtemp(prefix="ecgr", dir="/tmp"))
        self.env = {**os.environ, **(env or {}), "RAY_TMPDIR": str(self.root), "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        # the nodes run in this environment as a user's activated venv would: jobs' shell
        # entrypoints (`ecgbatch ...`) find its console script also when pytest was started as
        # `.venv/bin/python -m pytest` without activating it (make test, CI)
        venv_bin = str(Path(sys.executable).parent)
        if venv_bin not in self.env.get("PATH", "").split(os.pathsep):
            self.env["PATH"] = venv_bin + os.pathsep + self.env.get("PATH", "")
        self.dashboard = dashboard
        self.start_timeout = start_timeout
        self.nodes: list[subprocess.Popen] = []
        self.gcs_port = self.dashboard_port = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str], name: str, tries: int = 3) -> subprocess.Popen:
        """One node; a raylet that missed Ray's fixed 30 s registration window (a busy machine)
        is started again after its process group is killed, any other failure is raised."""
        for attempt in range(1, tries + 1):
            try:
                return self._start_once(args, name)
            except RuntimeError as exc:
                if "timed out during startup" not in str(exc) or attempt == tries:
                    raise
                proc = self.nodes.pop()
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(30)
        raise AssertionError("unreachable")

    def _start_once(self, args: list[str], name: str) -> subprocess.Popen:
        agent, agent_grpc, metrics, runtime_env = free_ports(4)
        log = open(self.root / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--object-store-memory", "100000000",
             "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
             "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env), *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.nodes.append(proc)
        deadline = time.time() + self.start_timeout
        while time.time() < deadline:
            text = (self.root / f"{name}.log").read_text(errors="replace")
            if "Ray runtime started" in text:
                return proc
            if proc.poll() is not None:
                raise RuntimeError(f"ray start ({name}) exited {proc.returncode}: {text[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"ray start ({name}) not up in {self.start_timeout:.0f} s")

    def start_head(self, num_cpus: int = 1, resources: str | None = None) -> subprocess.Popen:
        self.gcs_port, self.dashboard_port, client = free_ports(3)
        args = ["--head", "--port", str(self.gcs_port), "--num-cpus", str(num_cpus),
                "--ray-client-server-port", str(client)]
        if self.dashboard:
            args += ["--include-dashboard=true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port)]
        else:
            args += ["--include-dashboard=false"]
        if resources:
            args += ["--resources", resources]
        return self._start(args, "head")

    def add_worker(self, num_cpus: int = 1, resources: str | None = None) -> subprocess.Popen:
        args = ["--address", self.address, "--num-cpus", str(num_cpus)]
        if resources:
            args += ["--resources", resources]
        return self._start(args, f"worker{len(self.nodes)}")

    def node_states(self) -> list[dict]:
        """Every node the GCS knows (``state`` ALIVE or DEAD, ``resources_total``, ...) as the
        dashboard's state API lists them: one HTTP request (with the cluster's token when it has
        token auth), no Ray driver to start (seconds each on a busy machine)."""
        headers = ({"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
                   if self.env.get("RAY_AUTH_MODE") == "token" else {})
        req = urllib.request.Request(self.dashboard_url + "/api/v0/nodes", headers=headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["data"]["result"]["result"]

    @staticmethod
    def raylet_pid(node: subprocess.Popen) -> int:
        """The pid of that node's raylet (a child of its ``ray start`` process)."""
        for p in psutil.Process(node.pid).children(recursive=True):
            if p.name() == "raylet":
                return p.pid
        raise LookupError(f"no raylet under ray start pid {node.pid}")

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM to every node's process group, ``grace_s`` seconds in all for them to end, then
        SIGKILL. (A ``ray start --block`` node outlived a 15 s wait after SIGTERM every time: the
        teardowns took 15 s each. Nothing of a test cluster needs a clean shutdown: its folder is
        removed below.)"""
        for proc in self.nodes:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        for proc in self.nodes:
            try:
                proc.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(15)          # reaped: SIGKILL ends it at once
            except subprocess.TimeoutExpired:
                pass
        # workers that left the process group still name our folder on their command line
        mine = str(self.root)
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid != os.getpid() and any(mine in a for a in (p.info["cmdline"] or [])):
                    p.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# The GCS health-checks each raylet every RAY_health_check_period_ms and declares its node dead
# after RAY_health_check_failure_threshold failures in a row (Ray's defaults: 3000 ms, 5). A
# SIGKILLed raylet fails each check at once (connection refused), so a killed node is counted dead
# after ~5 s instead of ~15 s. A live but busy raylet still has Ray's default 10 s per check
# (health_check_timeout_ms) and the same 5 checks in a row to answer.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


class SharedCluster:
    """The one `ray start` cluster of a test run, started at the first ``get()``: a head with its
    dashboard and Ray 2.60 token auth (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN on the nodes, as the
    README's job recipe has it) and the custom resource ``head_node``, and a worker node with
    ``worker_node``, 2 CPUs each; FAST_NODE_DEATH on the GCS. ``env``: added to the nodes' and
    the tests' commands' environment. A test that kills a node ``retire()``s the cluster when
    done; the next ``get()`` starts a fresh one. (Two clusters, one per test module, cost a head
    start and a stop more: 15-30 s on 2 cores.)"""

    def __init__(self, env: dict[str, str] | None = None):
        self.token = secrets.token_hex(32)
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **FAST_NODE_DEATH, **(env or {})}
        self.cluster: LocalRayCluster | None = None
        self.worker: subprocess.Popen | None = None

    def get(self) -> tuple[LocalRayCluster, subprocess.Popen]:
        """(cluster, its worker node's ``ray start`` process)."""
        if self.cluster is None:
            cluster = LocalRayCluster(env=self.env, dashboard=True, start_timeout=180)
            try:
                cluster.start_head(num_cpus=2, resources='{"head_node": 1}')
                self.worker = cluster.add_worker(num_cpus=2, resources='{"worker_node": 1}')
            except BaseException:
                cluster.stop()
                raise
            self.cluster = cluster
        return self.cluster, self.worker

    def retire(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        self.cluster = self.worker = None


class NodeWork:
    """What Ray ran on one node, seen from outside while it runs: a thread samples the titles of
    the worker processes under that node's raylet. Ray names a busy worker after its task or
    actor (``ray::MapBatches(read_task)``, ``ray::MapWorker(MapBatches(EncoderUDF))``),
    an idle one ``ray::IDLE``; ``titles`` collects the busy ones. A process busy when it starts
    (an earlier job's actor still exiting) counts only once its title changes.

        with NodeWork(cluster.raylet_pid(worker)) as seen:
            ...run a job...
        assert any("EncoderUDF" in t for t in seen.titles)
    """

    def __init__(self, raylet_pid: int, interval_s: float = 0.1):
        self.raylet = psutil.Process(raylet_pid)
        self.interval_s = interval_s
        self.titles: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._before: dict[int, str] = {}

    def _titles(self) -> dict[int, str] | None:
        """pid -> title of the processes under the raylet (None once the node is gone)."""
        try:
            procs = self.raylet.children(recursive=True)
        except psutil.NoSuchProcess:        # the node was killed
            return None
        titles = {}
        for p in procs:
            try:
                titles[p.pid] = " ".join(a for a in p.cmdline() if a).strip()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return titles

    def _sample(self) -> None:
        while not self._stop.is_set():
            titles = self._titles()
            if titles is None:
                return
            for pid, title in titles.items():
                if (title.startswith("ray::") and not title.startswith("ray::IDLE")
                        and self._before.get(pid) != title):
                    self.titles.add(title)
            self._stop.wait(self.interval_s)

    def ran(self, *names: str) -> bool:
        """Whether a worker of this node was seen busy with any of ``names``."""
        return any(n in t for t in self.titles for n in names)

    def __enter__(self) -> "NodeWork":
        self._before = self._titles() or {}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def copy_cinc_records(sample_archive: Path, records, dest: Path) -> Path:
    """A small archive for cluster tests: the named Challenge records of the sample archive
    (header + signal) copied into ``dest``."""
    for rid in records:
        for f in (sample_archive / "cinc2021").glob(f"{rid}.*"):
            shutil.copy(f, dest / f.name)
    return dest
