"""A real multi-process Ray cluster on this machine for tests, stopped by its own handles.

Each node is one ``ray start --block`` process started in a new session, so the node's processes
(GCS, raylet, dashboard, agents, workers) share its process group. Everything lives under one
private temp folder, given to every process as RAY_TMPDIR: the cluster's session files and its
``ray_current_cluster`` state file stay there and never touch /tmp/ray, where other clusters on
the machine keep theirs. ``stop()`` kills the process groups it started, then any leftover process
whose command line names that folder, then removes the folder. It never runs ``ray stop``, which
would stop every cluster of the user. All ports are free ports picked here, bound to 127.0.0.1.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
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


class NodeWork:
    """What Ray ran on one node, seen from outside while it runs: a thread samples the titles of
    the worker processes under that node's raylet. Ray names a busy worker after its task or
    actor (``ray::MapBatches(read_and_preprocess)``, ``ray::MapWorker(MapBatches(EncoderUDF))``),
    an idle one ``ray::IDLE``; ``titles`` collects the busy ones.

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

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                procs = self.raylet.children(recursive=True)
            except psutil.NoSuchProcess:        # the node was killed
                return
            for p in procs:
                try:
                    title = " ".join(a for a in p.cmdline() if a).strip()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if title.startswith("ray::") and not title.startswith("ray::IDLE"):
                    self.titles.add(title)
            self._stop.wait(self.interval_s)

    def ran(self, *names: str) -> bool:
        """Whether a worker of this node was seen busy with any of ``names``."""
        return any(n in t for t in self.titles for n in names)

    def __enter__(self) -> "NodeWork":
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
