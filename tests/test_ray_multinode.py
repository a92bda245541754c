"""`embed` and `report --input` on a local two-node Ray cluster (two `ray start` processes, each
its own node with its own CPUs and custom resource: the test run's one cluster, conftest
``ray_cluster``, whose head test_ray_jobs uses too), attached with --address HOST:PORT:

- embed: every record committed exactly once across the two nodes, and the worker node's own
  processes were seen running its read tasks or encoder actors (helpers.ray_cluster.NodeWork);
- report --input: the worker node ran part of the job (seen as for embed), then its raylet is
  SIGKILLed (by pid) after the first committed block; Ray's retries (or, failing those, the rerun of the same command on the surviving head)
  complete the job, and the committed blocks hold every record exactly once (no record lost,
  none twice).

4 records, one per block, 2 new tokens per report. The report test kills the worker node, so it
runs last and retires the cluster (stopped by its own process groups, tests/helpers/ray_cluster.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from helpers.ray_cluster import NodeWork, copy_cinc_records

from ecgbatch._paths import REPO_ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RECORDS = ["A0689", "A1041", "E00271", "HR03961"]


@pytest.fixture(scope="module")
def archive(sample_archive, tmp_path_factory):
    return copy_cinc_records(sample_archive, RECORDS, tmp_path_factory.mktemp("multinode-archive"))


@pytest.fixture
def two_nodes(ray_cluster):
    """(cluster, its worker node's ``ray start`` process); the nodes' environment (FAST_NODE_DEATH,
    the vLLM test settings, token auth) is the one the commands here run in."""
    return ray_cluster.get()


@pytest.fixture
def two_nodes_then_retired(ray_cluster):
    """two_nodes for the test that kills the worker node: the cluster is retired after it (a later
    user of ``ray_cluster`` gets a fresh one)."""
    yield ray_cluster.get()
    ray_cluster.retire()


def _cli(cluster, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "ecgbatch.cli", *args, "--address", cluster.address, "--no-progress", "--json"]


def _exactly_once(root, rows_dir: str, n: int) -> None:
    """Each record in exactly one committed block: n sources, no duplicates, no failures."""
    sources = Counter()
    for f in sorted((root / rows_dir).glob("part-*.parquet")):
        sources.update(pq.read_table(f, columns=["source"]).column("source").to_pylist())
    assert len(sources) == n and set(sources.values()) == {1}, sources
    assert not list((root / "failures").glob("part-*.parquet"))
    assert not list(root.rglob(".*.tmp"))


def _summary(stdout: str) -> dict:
    """The --json summary: the object that starts a line (after a node's death Ray's driver can
    print its own lines to stdout before it)."""
    start = 0 if stdout.startswith("{") else stdout.find("\n{") + 1
    assert start >= 0 and stdout[start:start + 1] == "{", f"no JSON summary on stdout: {stdout[-2000:]!r}"
    return json.JSONDecoder().raw_decode(stdout[start:])[0]


def _alive(cluster) -> list[dict]:
    return [n for n in cluster.node_states() if n["state"] == "ALIVE"]


def test_cluster_has_two_nodes(two_nodes):
    cluster, _ = two_nodes
    alive = _alive(cluster)
    assert sorted(k for n in alive for k in n["resources_total"] if k.endswith("_node")) == ["head_node", "worker_node"]
    assert [n["is_head_node"] for n in alive].count(True) == 1


def test_embed_exactly_once_across_nodes(two_nodes, archive, tmp_path):
    cluster, worker = two_nodes
    ws = tmp_path / "ws"
    with NodeWork(cluster.raylet_pid(worker)) as seen:
        r = subprocess.run(_cli(cluster, ["embed", str(archive), "-w", str(ws), "--no-index", "--encoders", "2",
                                          "--block-size", "1", "--batch-size", "1"]),
                           env=cluster.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert seen.ran("read_task", "EncoderUDF"), f"no embed work seen on the worker node: {seen.titles}"
    summary = _summary(r.stdout)
    assert (summary["embedded"], summary["failed"], summary["blocks_committed"]) == (len(RECORDS), 0, len(RECORDS))
    [root] = [p.parent for p in ws.glob("*/embed.json")]
    _exactly_once(root, "embeddings", len(RECORDS))


def _wait_alive_nodes(cluster, n: int, timeout_s: float = 180.0) -> None:
    """Until the cluster's GCS counts ``n`` alive nodes (a killed raylet is declared dead after its
    missed health checks, some seconds later: FAST_NODE_DEATH)."""
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        last = len(_alive(cluster))
        if last == n:
            return
        time.sleep(0.5)
    raise AssertionError(f"the cluster still counts {last} alive nodes after {timeout_s:.0f} s (wanted {n})")


def test_report_survives_a_killed_worker_node(two_nodes_then_retired, archive, llava_converted, tmp_path):
    cluster, worker = two_nodes_then_retired
    ws = tmp_path / "ws"
    cmd = _cli(cluster, ["report", "--input", str(archive), "-w", str(ws), "--model", str(llava_converted),
                         "--max-tokens", "2", "--block-size", "1", "--batch-size", "1"])
    proc = subprocess.Popen(cmd, env=cluster.env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        raylet = cluster.raylet_pid(worker)
        deadline = time.time() + 600
        with NodeWork(raylet) as seen:     # kill once a block is committed AND the worker node works
            while time.time() < deadline and proc.poll() is None and not (
                    list(ws.glob("report-*/reports/part-*")) and seen.ran("read_task", "ReportUDF")):
                time.sleep(0.1)
        assert proc.poll() is None, f"the job ended before the kill: {proc.communicate()[1][-3000:]}"
        assert list(ws.glob("report-*/reports/part-*")), "no block committed within the time limit"
        assert seen.ran("read_task", "ReportUDF"), f"no report work seen on the worker node: {seen.titles}"
        os.kill(raylet, signal.SIGKILL)                      # the worker node dies mid-run
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)
    [root] = [p.parent for p in ws.glob("report-*/report.json")]
    committed = len(list((root / "reports").glob("part-*.parquet")))
    assert 0 < committed, "nothing committed before the kill"
    print(f"killed run exit code {proc.returncode}; its stdout before the summary: {out[:out.find('{')]!r}")
    if proc.returncode != 0:
        # a run that Ray could not finish (an engine actor has max_restarts=0, pipelines/report.py:
        # a dead engine fails the run, no silent restart): the rerun on the surviving head reports
        # only what no committed block holds, once Ray has marked the killed node dead (until then
        # it may still place the new engine actor there)
        _wait_alive_nodes(cluster, 1)
        r = subprocess.run(cmd, env=cluster.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"killed run: {err[-2000:]}\nrerun: {r.stderr[-3000:]}"
        out = r.stdout
    summary = _summary(out)
    assert summary["failed"] == 0
    assert summary["already_done"] + summary["reported"] == len(RECORDS)
    _exactly_once(root, "reports", len(RECORDS))
