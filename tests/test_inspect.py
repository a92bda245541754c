"""`ecgbatch inspect` through typer's CliRunner on real records."""
from __future__ import annotations

import json

import pytest
import typer
from helpers.bench import bench_module
from typer.testing import CliRunner

from ecgbatch.commands.inspect import register
from ecgbatch.signal.plot import paper_size_px

pytest.importorskip("neurokit2")


@pytest.fixture(scope="module")
def app():
    # A group with a callback keeps `inspect` a sub-command even when it is the only one.
    a = typer.Typer()

    @a.callback()
    def _root():
        pass

    register(a)
    return a


@pytest.fixture(scope="module")
def ludb(shared_data):
    return shared_data / "ludb" / "data"


def _ludb_reference(path):
    return bench_module("ludb_intervals").reference_intervals(path)


def test_inspect_is_registered_in_the_cli():
    from ecgbatch.cli import app as cli_app

    names = {c.name for c in cli_app.registered_commands}
    assert "inspect" in names


def test_inspect_json(app, ludb):
    res = CliRunner().invoke(app, ["inspect", str(ludb / "1.hea"), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    r = info["record"]
    assert r["fs"] == 500 and r["n_samples"] == 5000 and r["duration_s"] == 10
    assert r["leads"][:4] == ["I", "II", "III", "aVR"] and r["units"] == "mV"
    assert info["quality_flags"] == []
    assert not any(k.lower() in ("name", "patient_id", "mrn", "dob") for k in info["meta"])
    ml, ec = info["measurements"]["multilead"], info["measurements"]["ecgchat"]
    assert ml["quality"] == "ok" and ec["quality"] == "ok"
    ref = _ludb_reference(ludb / "1")
    assert abs(ml["hr_bpm"] - ref["hr_bpm"]) < 3
    assert abs(ml["qrs_ms"] - ref["qrs_ms"]) < 25 and abs(ml["qt_ms"] - ref["qt_ms"]) < 40
    # ../shared's LUDB copy: every lead spans 1.000 mV peak to peak (rescaled one by one), so
    # neither an axis nor an LVH voltage is stated, though its units say mV
    assert set(r["peak_to_peak"].values()) == {1.0} and r["rescaled_per_lead"] is True
    for d in (ml, ec):  # LUDB 1: sinus bradycardia
        assert d["rr_irregular"] is False and d["axis_deg"] is None and d["axis_category"] is None
        assert d["sokolow_lyon_mv"] is None and d["cornell_mv"] is None and d["lvh_voltage"] is None
    assert info["ecgchat_wave_text"].startswith(" RR: ") and isinstance(ec["rr_ms"], int)
    text = CliRunner().invoke(app, ["inspect", str(ludb / "1.hea")])
    assert text.exit_code == 0 and "no QRS axis and no LVH voltages" in " ".join(text.stdout.split())


def test_inspect_json_axis_and_voltages_of_a_record_in_mv(app, shared_data):
    """PTB-XL 225 (ptbxl2k, 100 Hz, mV; heart_axis MID: a normal axis): both methods state the
    axis and the LVH voltages in mV."""
    path = shared_data / "ptbxl2k" / "records100" / "00000" / "00225_lr.hea"
    res = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["record"]["units"] == "mV" and info["record"]["rescaled_per_lead"] is False
    for d in info["measurements"].values():
        assert d["quality"] == "ok" and d["rr_irregular"] is False
        assert 30 < d["axis_deg"] < 90 and d["axis_category"] == "normal"
        assert 0.3 < d["sokolow_lyon_mv"] < 3.5 and 0.1 < d["cornell_mv"] <= 2.8 and d["lvh_voltage"] is False


def test_inspect_challenge_record_hides_exam_date(app, shared_data):
    path = shared_data / "cinc2021" / "A0689.hea"
    res = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert "12-May-2020" not in res.stdout and "2020-05-12" not in res.stdout
    assert info["meta"].get("acquired_year") == "2020"


def test_inspect_plot_and_table(app, ludb, tmp_path):
    from PIL import Image

    out = tmp_path / "plots" / "ludb1.png"
    res = CliRunner().invoke(app, ["inspect", str(ludb / "1.hea"), "--plot", str(out), "--dpi", "100"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and Image.open(out).size == paper_size_px(100)
    for word in ("QRS", "QTc", "multilead", "ecgchat", "plot written"):
        assert word in res.stdout


def test_inspect_bad_file_is_a_typed_error(app, tmp_path):
    bad = tmp_path / "empty.hea"
    bad.write_text("")
    res = CliRunner().invoke(app, ["inspect", str(bad)])
    assert res.exit_code == 2
    assert "error:" in res.output
