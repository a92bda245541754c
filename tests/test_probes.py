"""Linear probes: ground truth from each source's own labels, logistic regression fitted on real
embeddings with cross-validation by patient, the shipped probe files, save/load and refusal of
another model's embeddings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ecgbatch.encoders import label_sources as LS
from ecgbatch.encoders.probes import (LinearProbe, ProbeFormatError, ProbeMismatchError, find_probe,
                                      fit_softmax)
from ecgbatch.models import registry

SHIPPED = ("ptbxl-rhythm",)


# --- ground truth from the sources' own labels ----------------------------------------------

def test_ludb_rhythm_lines_map_to_rhythm_codes():
    f = lambda t: LS.labels_from_rhythm_text("ptbxl-rhythm", t)  # noqa: E731
    assert f(" Sinus bradycardia.") == {"SBRAD"}
    assert f("Atrial flutter, typical.") == {"AFLT"}
    assert f("Atrial fibrillation.") == {"AFIB"}
    assert f("Irregular sinus rhythm.") == {"SARRH"}
    assert f("Sinus rhythm.") == {"SR"}
    assert f("Something unheard of") is None and f(None) is None
    assert LS.labels_from_rhythm_text("cpsc2018", "Sinus rhythm.") is None   # no rhythm-text rule there


def test_snomed_and_scp_codes_map_per_label_set():
    assert LS.labels_from_snomed("ptbxl-rhythm", ["164934002", "427084000"]) == {"STACH"}
    assert LS.labels_from_snomed("ptbxl-rhythm", ["164934002"]) is None   # rhythm not stated: left out
    assert LS.labels_from_snomed("cpsc2018", ["426783006"]) == {"NORM"}   # sinus rhythm alone = normal
    assert LS.labels_from_snomed("cpsc2018", ["426783006", "59118001"]) == {"RBBB"}
    assert LS.labels_from_scp("cpsc2018", {"CLBBB": 100.0, "SR": 0.0}) == {"LBBB"}
    assert LS.labels_from_scp("ptbxl-rhythm", {"AFIB": 0.0, "NDT": 100.0}) == {"AFIB"}
    classes = {"IMI": {"diagnostic_class": "MI"}, "NORM": {"diagnostic_class": "NORM"}}
    assert LS.labels_from_scp("ptbxl-super", ["IMI", "SR"], classes) == {"MI"}
    with pytest.raises(ValueError, match="scp_classes"):
        LS.labels_from_scp("ptbxl-super", ["IMI"])
    assert LS.primary_label("ptbxl-rhythm", {"SR", "AFLT"}) == "AFLT"


# --- logistic regression --------------------------------------------------------------------

def test_fit_softmax_matches_the_optimality_condition():
    """At the optimum the gradient vanishes: X^T (P - Y) / N + l2 W = 0 and sum(P - Y) = 0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(int) + (x[:, 1] > 1)
    w, b = fit_softmax(x, y, 3, l2=0.1)
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - np.eye(3)[y]) / len(y)
    assert np.abs(g.T @ x + 0.1 * w).max() < 1e-4 and np.abs(g.sum(0)).max() < 1e-4
    assert (np.argmax(z, 1) == y).mean() > 0.7


# --- the shipped probes ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    folder = registry.find_weights("ecg-coca-mini")
    if folder is None:
        pytest.skip("ecg-coca-mini weights are not installed")
    path = find_probe(folder, "ptbxl-rhythm")
    assert path is not None, f"the ptbxl-rhythm probe should ship in {folder}/probes"
    return LinearProbe.load(path)


def test_shipped_probe_marks_unseen_rhythms_untrained(shipped):
    assert shipped.exclusive and shipped.labels == LS.load_labelset("ptbxl-rhythm").labels
    assert {"SR", "SBRAD", "STACH", "AFIB", "AFLT"} <= set(shipped.trained)
    assert {"TRIGU", "PSVT"} <= set(shipped.untrained)
    assert all(shipped.info["positives"][t] >= shipped.info["min_positives"] for t in shipped.trained)
    rng = np.random.default_rng(1)
    p = shipped.probabilities(rng.normal(size=(6, shipped.embed_dim)))
    cols = [shipped.labels.index(t) for t in shipped.untrained]
    assert np.isnan(p[:, cols]).all()
    trained = np.delete(p, cols, axis=1)
    np.testing.assert_allclose(trained.sum(1), 1.0, rtol=1e-5)
    for labs in shipped.predict_trained(np.nan_to_num(trained)):
        assert labs and not set(labs) & set(shipped.untrained)


def test_probe_save_load_round_trip_and_refusals(shipped, tmp_path):
    path = shipped.save(tmp_path / "p.json")
    back = LinearProbe.load(path)
    x = np.random.default_rng(2).normal(size=(4, shipped.embed_dim))
    np.testing.assert_allclose(back.probabilities(x), shipped.probabilities(x), rtol=1e-6, equal_nan=True)
    assert back.trained == shipped.trained and back.model == shipped.model
    back.check_model(shipped.model["weights_hash"])
    with pytest.raises(ProbeMismatchError, match="--zero-shot"):
        back.check_model("0" * 16)
    with pytest.raises(ValueError, match="expects"):
        back.probabilities(x[:, :10])
    d = json.loads(path.read_text())
    d["weights"] = d["weights"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ProbeFormatError, match="shapes"):
        LinearProbe.load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ProbeFormatError, match="junk.json"):
        LinearProbe.load(tmp_path / "junk.json")


# --- fitted on real embeddings, judged on held-out patients ----------------------------------

@pytest.mark.shared
@pytest.mark.slow
def test_probe_on_real_embeddings_beats_chance_on_held_out_patients(shared_data):
    from ecgbatch.encoders import create_model
    from ecgbatch.training.probe_eval import evaluate
    from ecgbatch.training.job_config import load_job_config
    from ecgbatch.training.probes import labelled_records, probe_data
    from ecgbatch._paths import REPO_ROOT

    if registry.find_weights("ecg-coca-mini") is None:
        pytest.skip("ecg-coca-mini weights are not installed")
    specs = load_job_config(REPO_ROOT / "configs" / "coca-mini.yaml").data.sources
    specs = [s for s in specs if s.name in ("ludb", "ptbxl")]
    specs = [s if s.name == "ludb" else type(s)(**{**s.__dict__, "limit": 100}) for s in specs]
    model = create_model("ecg-coca-mini", pretrained="default")
    pairs = labelled_records(specs, model.preprocess_config)
    data = probe_data(model, pairs, specs, "ptbxl-rhythm")
    # LUDB's 74 training records (26 are in the test fold) + 100 PTB-XL, 6 of them without a rhythm
    assert data.left_out.get("ludb", 0) == 0 and len(data.y) >= 165
    res = evaluate(data, {}, folds=3)
    af = res["per_label"]["AFIB"]
    assert af["n_pos"] >= 40 and af["auc"] > 0.85
    always_sr = float(data.y[:, data.labels.index("SR")].mean())
    top1 = res["probe"]["top1_goal_classes"]["accuracy"]
    assert top1 > always_sr + 0.05, (top1, always_sr)
    assert res["probe"]["binary_groups"]["accuracy"] > 0.9
    assert not res["per_label"]["TRIGU"]["trained"]


@pytest.mark.slow
def test_model_probe_finds_the_shipped_probe_of_an_in_memory_model(shipped):
    from ecgbatch.encoders import create_model
    from ecgbatch.encoders.probes import model_probe

    model = create_model("ecg-coca-mini", pretrained="default")
    probe = model_probe(model, "ptbxl-rhythm")
    assert probe is not None and probe.trained == shipped.trained
    assert model_probe(model, "ptbxl-form") is None                      # no probe shipped for it
    random = create_model("ecg-coca-mini", pretrained="random", seed=0)
    assert model_probe(random, "ptbxl-rhythm") is None                   # no weights folder


@pytest.mark.shared
@pytest.mark.slow
def test_train_probe_and_eval_classify_commands(shared_data, tmp_path):
    """The two commands end to end on a small slice of the shared records (a config of our own)."""
    import yaml
    from typer.testing import CliRunner

    from ecgbatch.cli import app

    if registry.find_weights("ecg-coca-mini") is None:
        pytest.skip("ecg-coca-mini weights are not installed")
    cfg = {"name": "probe-test", "data": {"sources": [
        {"name": "ludb", "records": str(shared_data / "ludb" / "data"), "text": "header", "limit": 40},
        {"name": "ptbxl", "records": str(shared_data / "ptbxl" / "records"), "text": "ptbxl", "limit": 50,
         "metadata": str(shared_data / "ptbxl" / "ptbxl_database_subset.csv"),
         "statements": str(shared_data / "ptbxl" / "scp_statements.csv"),
         "read_options": {"fs": 500, "layout": "samples_first"}}]}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "ptbxl-rhythm.json"
    r = CliRunner().invoke(app, ["train", "probe", "--labels", "ptbxl-rhythm", "-c", str(tmp_path / "cfg.yaml"),
                                 "--folds", "3", "-o", str(out)])
    assert r.exit_code == 0, r.output
    probe = LinearProbe.load(out)
    assert "SR" in probe.trained and "TRIGU" in probe.untrained
    n_fitted = sum(probe.info["records_by_source"].values())
    assert n_fitted + probe.info["left_out_untrained_label"] == 40 + 50 - probe.info["no_label_by_source"].get("ptbxl", 0)
    assert probe.info["folds"] == 3 and str(probe.info["l2"]) in probe.info["cv_log_loss"]
    r = CliRunner().invoke(app, ["eval", "classify", "--labels", "ptbxl-rhythm", "-c", str(tmp_path / "cfg.yaml"),
                                 "--folds", "3", "-o", str(tmp_path / "eval.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["records"] == n_fitted + probe.info["left_out_untrained_label"]   # untrained rhythms count as errors
    assert set(res["probe"]) >= {"top1_all", "top1_goal_classes", "binary_groups", "confusion"}
    assert "zero_shot" in res and "sinus vs AF/flutter" in r.output
    r = CliRunner().invoke(app, ["train", "probe", "--labels", "no-such-set", "-o", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "no mapping" in r.output
