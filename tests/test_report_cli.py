"""`ecgbatch report`: end to end through vLLM on a real sample-archive record (the command in
this process, generating on the session's one engine: conftest ``record_reports_on_session_engine``),
and the errors that must come before any engine starts. (`python -m ecgbatch.cli` as a process with
an engine of its own: tests/test_diagnosis_prompt.py's `report RECORD --ddp`, quiet; what --verbose
lets through: tests/test_chat_cli.py's chat process, run with --verbose.)"""
from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from ecgbatch._paths import REPO_ROOT
from ecgbatch.cli import app

RECORD = "sample_archive/cinc2021/A0689.hea"


@pytest.mark.vllm
@pytest.mark.shared
def test_report_json_end_to_end(llava_trained_only, llava_assembled, llava_cache, record_reports_on_session_engine,
                                monkeypatch):
    """A trained-only folder (what `train export` writes) as --model and no --lora: the folder
    assembled in the cache and its own adapter are used. With --grounded the engine got the
    grounded question, and the row carries its findings and contradictions."""
    monkeypatch.setenv("ECGBATCH_CACHE", str(llava_cache))
    monkeypatch.chdir(REPO_ROOT)
    p = CliRunner().invoke(app, ["report", RECORD, "sample_archive/bad/garbage.hea", "--model",
                                 str(llava_trained_only), "--max-tokens", "8", "--json", "--grounded"])
    assert p.exit_code == 1, p.output[-3000:]            # one record failed, the other reported
    out = json.loads(p.stdout)                           # stdout is only the JSON (messages on stderr)
    assert out["adapter"] == str(llava_assembled[1])     # the model's own lora/
    [rep] = out["reports"]
    assert rep["record"] == RECORD and rep["text"].strip()
    assert rep["n_output_tokens"] == 8 and rep["finish_reason"] == "length"
    assert out["grounded"] is True
    by = {f["label"]: f for f in rep["findings"]}         # measured from the record (multilead)
    assert 40 < by["heart_rate"]["value"] < 150 and by["heart_rate"]["source"] == "measurement"
    assert all(f["source"] in ("measurement", "probe") and f["text"] for f in rep["findings"])
    assert isinstance(rep["contradictions"], list)
    assert all({"statement", "reason", "source"} <= set(c) for c in rep["contradictions"])
    from ecgbatch.io import read_record
    from ecgbatch.llava.grounding import ground, measure_for_grounds
    from ecgbatch.llava.loading import load_tokenizer, read_config
    from ecgbatch.llava.prompting import prompt_ids
    from ecgbatch.llava.questions import DEFAULT_QUESTION

    cfg = read_config(llava_assembled[0])
    assert cfg.grounded_prompt is False                   # the fixture was not trained with it
    g = ground(measure_for_grounds(read_record(str(REPO_ROOT / RECORD))))   # the fixture's tower: no probes
    assert rep["findings"] == [f.to_dict() for f in g.findings]
    # without --grounded: the fixture's 45 prompt ids - 1 + 101 ECG tokens = 145; with it, the
    # tokens of the grounded question
    n = len(prompt_ids(load_tokenizer(llava_assembled[0], cfg), g.question(DEFAULT_QUESTION), cfg))
    assert rep["n_prompt_tokens"] == n + 100 > 145 and g.text.startswith("Measured: heart rate")
    [fail] = out["failures"]
    assert fail["record"] == "sample_archive/bad/garbage.hea" and "bad_header" in fail["error"]
    assert "garbage.hea" in p.stderr


def test_report_default_model_not_installed(monkeypatch, tmp_path):
    from ecgbatch.models import registry

    monkeypatch.setenv("ECGBATCH_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "no-package-weights")   # as if not shipped
    r = CliRunner().invoke(app, ["report", RECORD])
    assert r.exit_code == 2
    msg = r.output
    assert "ecg-llava-mini is not installed" in msg and "train export" in msg and "convert-ecgchat-llava" in msg
    assert "Traceback" not in msg


@pytest.mark.shared
def test_report_refuses_bad_model_folder_before_starting_vllm(llava_converted, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(llava_converted, bad)
    t = load_file(str(bad / "model.safetensors"))
    del t["projector.2.weight"]
    t["projector.0.bias"] = t["projector.0.bias"][:10].clone()
    save_file(t, str(bad / "model.safetensors"))
    r = CliRunner().invoke(app, ["report", RECORD, "--model", str(bad)])
    assert r.exit_code == 2
    assert "projector.2.weight" in r.output and "projector.0.bias" in r.output
    assert "Traceback" not in r.output


@pytest.mark.shared
def test_report_no_readable_record(llava_converted):
    r = CliRunner().invoke(app, ["report", "sample_archive/bad/garbage.hea", "sample_archive/bad/single_lead.hea",
                                 "sample_archive/bad/flat_nan_absurd.hea", "--model", str(llava_converted)])
    assert r.exit_code == 2
    assert "garbage.hea" in r.output and "single_lead.hea" in r.output and "missing_lead" in r.output
    # readable, but no ECG in it: listed as a failure, never reported on
    assert "flat_nan_absurd.hea: no_physiological_content" in r.output
    assert "no record could be read" in r.output


def test_report_table_output_shows_findings_and_contradictions(capsys, sample_archive):
    """`report RECORD` without --json: each report's findings and the contradictions of its
    text (a crafted one: "Sinus rhythm" for LUDB 1's measured sinus bradycardia)."""
    from ecgbatch.commands.report import print_reports
    from ecgbatch.io import read_record
    from ecgbatch.llava.contradictions import report_fields
    from ecgbatch.llava.grounding import ground, measure_for_grounds
    from ecgbatch.serving.engine import EcgResult
    from ecgbatch.serving.record_reports import RecordReports

    text = "Sinus rhythm. Normal ECG."
    g = ground(measure_for_grounds(read_record(str(sample_archive / "ludb" / "1.hea"))))
    res = EcgResult("ludb/1", text, [], 150, 6, "stop")
    print_reports(RecordReports([res], [], None, grounds=[report_fields(text, g)]), "Describe.", as_json=False)
    out = capsys.readouterr().out
    assert "== ludb/1" in out and "findings: heart rate " in out and "bradycardia" in out
    assert "contradiction: 'sinus rhythm': a sinus rhythm below 60 bpm" in out
