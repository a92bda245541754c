"""progress.json of `embed` / `report --input` tables and `ecgbatch status` (no Ray: the writer is
driven by hand here; the Ray job tests check the file a real job leaves)."""
from __future__ import annotations

import json

import pyarrow as pa
from typer.testing import CliRunner

from ecgbatch.cli import app
from ecgbatch.pipelines.job_progress import PROGRESS_NAME, JobProgress, workspace_status
from ecgbatch.pipelines.workspace import ModelTable, ReportTable


def _rows(ok: int, bad: int) -> list[dict]:
    return [{"ok": True}] * ok + [{"ok": False}] * bad


def test_progress_file_per_block_and_end(tmp_path):
    with ModelTable(tmp_path, "m-1-2") as table:
        table.write_meta({"model": "m"})
        prog = JobProgress(table, total=10, already_done=2)
        first = json.loads((table.root / PROGRESS_NAME).read_text())
        assert (first["state"], first["done"], first["this_run"], first["eta_s"]) == ("running", 2, 0, None)
        table.commit_block("b1", pa.table({"source": ["a", "b", "c"]}), None)
        prog.block(_rows(2, 1))
        mid = json.loads((table.root / PROGRESS_NAME).read_text())
        assert (mid["done"], mid["failed"], mid["this_run"], mid["blocks_committed"]) == (5, 1, 3, 1)
        assert mid["records_per_s"] > 0 and mid["eta_s"] > 0 and mid["job"] == "embed"
        prog.block(_rows(5, 0))
        prog.close(ok=True)
    end = json.loads((table.root / PROGRESS_NAME).read_text())
    assert (end["state"], end["done"], end["eta_s"]) == ("finished", 10, 0.0)
    assert not list(table.root.glob(".*.tmp"))        # atomic: no temporaries left


def test_status_command(tmp_path):
    with ModelTable(tmp_path, "m-1-2") as t:
        t.write_meta({"model": "m"})
        t.commit_block("b1", pa.table({"source": ["a", "b"]}), pa.table({"source": ["c"]}))
        JobProgress(t, total=4, already_done=0).close(ok=False)
    with ReportTable(tmp_path, "report-x-1-2") as r:
        r.write_meta({"model": "x"})
    [emb, rep] = workspace_status(tmp_path)
    assert (emb["job"], emb["committed"], emb["failed"], emb["progress"]["state"]) == ("embed", 2, 1, "failed")
    assert (rep["job"], rep["committed"], rep["progress"]) == ("report --input", 0, None)
    res = CliRunner().invoke(app, ["status", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["tables"] == [emb, rep]
    res = CliRunner().invoke(app, ["status", str(tmp_path)])
    assert res.exit_code == 0 and "2 committed, 1 failed" in res.output and "last job failed" in res.output
    res = CliRunner().invoke(app, ["status", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no workspace" in res.output
