"""The README's "Submitted as Ray jobs" recipe, run as written: a local head with its dashboard
and Ray 2.60 token auth (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN on the cluster, the bearer header
on the job client), then `embed`, `index build` and `report --input` as three Ray jobs through
the job SDK with the checkout as working directory. 2 records, 2 new tokens per report. The
cluster is the test run's one `ray start` cluster (conftest ``ray_cluster``: its head has the
dashboard and token auth; test_ray_multinode uses its worker node too), stopped by its own
process groups (tests/helpers/ray_cluster.py)."""
from __future__ import annotations

import json
import re

import pytest
from helpers.ray_cluster import copy_cinc_records
from helpers.vllm_env import VLLM_TEST_ENV
from typer.testing import CliRunner

from ecgbatch._paths import REPO_ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RECORDS = ["A0689", "E07500"]
MAX_TOKENS = 2


def readme_recipe() -> dict:
    """The python block after the README's ``<!-- ray-job-recipe -->`` marker, executed."""
    text = (REPO_ROOT / "README.md").read_text()
    m = re.search(r"<!-- ray-job-recipe -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its ray-job-recipe block"
    ns: dict = {}
    exec(compile(m.group(1), "README.md:ray-job-recipe", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def archive(sample_archive, tmp_path_factory):
    return copy_cinc_records(sample_archive, RECORDS, tmp_path_factory.mktemp("jobs-archive"))


@pytest.fixture
def head(ray_cluster):
    """The cluster (its head has the dashboard and token auth; the nodes have no PYTHONPATH: the
    jobs import ecgbatch from their working_dir) and its token."""
    cluster, _ = ray_cluster.get()
    return cluster, ray_cluster.token


def test_job_server_refuses_a_client_without_the_token(head):
    from ray.job_submission import JobSubmissionClient

    cluster, _ = head
    with pytest.raises(Exception, match="(?i)401|unauthori|authenticat"):
        JobSubmissionClient(cluster.dashboard_url).list_jobs()


def test_readme_recipe_embed_index_report(head, archive, llava_converted, tmp_path, monkeypatch):
    cluster, token = head
    ns = readme_recipe()
    ws = tmp_path / "ws"
    monkeypatch.chdir(REPO_ROOT)                              # the recipe's working_dir "."
    done = ns["run_jobs"](cluster.dashboard_url, token, archive, ws, model=llava_converted, max_tokens=MAX_TOKENS,
                          env={**ns["ENV"], **VLLM_TEST_ENV}, timeout_s=900)
    statuses = [(e.split()[1], str(s)) for e, s, _ in done]
    assert [s for _, s in statuses] == ["SUCCEEDED"] * 3, (statuses, done[-1][2][-4000:])
    (_, _, embed_log), (_, _, index_log), (_, _, report_log) = done

    from ecgbatch.pipelines.workspace import ModelTable, ReportTable

    [emb] = [p for p in ws.glob("*/embed.json")]
    assert ModelTable(ws, emb.parent.name).count() == (len(RECORDS), 0)
    assert re.search(rf'"embedded": {len(RECORDS)}\b', embed_log) and "index" in index_log
    assert (emb.parent / "index" / "index.json").is_file()
    [rep] = [p for p in ws.glob("report-*/report.json")]
    table = ReportTable(ws, rep.parent.name)
    assert table.count() == (len(RECORDS), 0)
    assert re.search(rf'"reported": {len(RECORDS)}\b', report_log)
    assert all(r["n_output_tokens"] <= MAX_TOKENS for r in table.read_table(["n_output_tokens"]).to_pylist())
    # both jobs left their progress in the workspace; `ecgbatch status` reads it
    from ecgbatch.cli import app

    res = CliRunner().invoke(app, ["status", str(ws), "--json"])
    assert res.exit_code == 0, res.output
    prog = {t["job"]: t["progress"] for t in json.loads(res.output)["tables"]}
    for job in ("embed", "report --input"):
        n = len(RECORDS)
        assert (prog[job]["state"], prog[job]["done"], prog[job]["total"]) == ("finished", n, n), prog
