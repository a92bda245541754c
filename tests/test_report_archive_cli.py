"""`ecgbatch report --input`: argument errors that must come before Ray or vLLM start."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ecgbatch.cli import app


@pytest.mark.parametrize("args, msg", [
    (["--input", "sample_archive", "--ddp", "--rag", "2", "--reference", "x"], "pick one"),
    (["--input", "sample_archive", "--rag", "2"], "--rag K needs --reference"),
    (["sample_archive/cinc2021/A0689.hea", "--html", "out"], "need --input ARCHIVE"),
    (["sample_archive/cinc2021/A0689.hea", "--input", "sample_archive"], "not both"),
    ([], "give RECORD"),
])
def test_argument_errors(args, msg):
    r = CliRunner().invoke(app, ["report", *args])
    assert r.exit_code == 2 and msg in r.output, r.output


def test_resume_with_nothing_to_resume(tmp_path):
    r = CliRunner().invoke(app, ["report", "--resume", "-w", str(tmp_path)])
    assert r.exit_code == 2 and "nothing to resume" in r.output


def test_not_a_model_folder_refused_before_ray(tmp_path):
    r = CliRunner().invoke(app, ["report", "--input", "sample_archive/cinc2021", "-w", str(tmp_path),
                                 "--model", "sample_archive", "--ddp"])
    assert r.exit_code == 2 and "not an ECG-LLaVA model folder" in r.output
    assert not list(tmp_path.iterdir())                  # nothing written
