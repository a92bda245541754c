"""Local means local: without --address a job starts its own Ray, whatever other local cluster
exists (a live `ray start --head`, also named by $RAY_ADDRESS) or existed (the state file of a
killed one); `--address auto` attaches to the live one on purpose. The driver is the code `embed`
and `report --input` run (pipelines.ray_common.ray_session), each in its own process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers.ray_cluster import LocalRayCluster, free_ports

from ecgbatch._paths import REPO_ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DRIVER = """
import json, sys
import ray
from ecgbatch.pipelines.ray_common import ray_session
with ray_session(sys.argv[1] or None, num_cpus=1):
    print(json.dumps({"gcs": ray.get_runtime_context().gcs_address,
                      "nodes": sum(n["Alive"] for n in ray.nodes())}))
"""


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])      # Ray reports the node's own IP, not 127.0.0.1


def _driver(address: str, env: dict[str, str]) -> dict:
    env = {**env, "PYTHONPATH": str(REPO_ROOT), "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-c", DRIVER, address], env=env, cwd=REPO_ROOT, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def live_head():
    with LocalRayCluster(env={"RAY_AUTH_MODE": "disabled"}) as cluster:
        cluster.start_head(num_cpus=1)
        yield cluster


def test_no_address_ignores_a_live_head_and_ray_address(live_head):
    # the live head is both in the state file and in $RAY_ADDRESS: a plain ray.init() attaches
    # and then refuses num_cpus
    assert (Path(live_head.root) / "ray" / "ray_current_cluster").is_file()
    got = _driver("", {**live_head.env, "RAY_ADDRESS": live_head.address})
    assert _port(got["gcs"]) != live_head.gcs_port and got["nodes"] == 1


def test_address_auto_attaches_on_purpose(live_head):
    got = _driver("auto", live_head.env)
    assert _port(got["gcs"]) == live_head.gcs_port


def test_no_address_ignores_a_stale_state_file():
    root = Path(tempfile.mkdtemp(prefix="ecgr", dir="/tmp"))
    try:
        (root / "ray").mkdir()
        dead = free_ports(1)[0]                              # a killed head's GCS: nobody listens
        (root / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead}")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        got = _driver("", {**env, "RAY_TMPDIR": str(root)})
        assert _port(got["gcs"]) != dead and got["nodes"] == 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
