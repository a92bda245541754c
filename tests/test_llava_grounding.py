"""The grounded prompt (ecgbatch.llava.grounding) and the contradictions of a report with it
(ecgbatch.llava.contradictions), on real records in mV: PTB-XL (ptbxl2k) and the sample archive,
measured with the multilead method, with ecg-coca-mini's shipped probes on its real embeddings; the report texts
are hand-written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ecgbatch.io import read_record
from ecgbatch.llava.contradictions import contradictions, report_fields
from ecgbatch.llava.grounding import GROUND_AXIS_CONVENTION, GroundFinding, Grounding, finding_text, ground, ground_batch
from ecgbatch.signal import measure
from ecgbatch.signal.axis import AXIS_TEXT, axis_category

pytest.importorskip("neurokit2")


@pytest.fixture(scope="module")
def labeller():
    from ecgbatch.llava.diagnosis_prompt import FindingsLabeller

    return FindingsLabeller("ecg-coca-mini")


@pytest.fixture(scope="module")
def grounded(sample_archive, shared_data, labeller):
    """name -> (Measurements, Grounding) for a sinus bradycardia (PTB-XL 2), an atrial
    fibrillation (Challenge A0689), a sinus rhythm (HR03961) and a marked left axis with atrial
    fibrillation (PTB-XL 691, heart_axis LAD). Not LUDB: ../shared's copy has its leads rescaled
    one by one, so it has no axis and no voltages (test_shared_ludb_record_states_no_axis_and_no_voltage)."""
    from ecgbatch.llava.inputs import preprocess_for_model

    ptbxl = shared_data / "ptbxl2k" / "records100" / "00000"
    paths = {"brady": ptbxl / "00002_lr.hea", "af": sample_archive / "cinc2021" / "A0689.hea",
             "sinus": sample_archive / "cinc2021" / "HR03961.hea", "left": ptbxl / "00691_lr.hea"}
    recs = {k: read_record(p) for k, p in paths.items()}
    x = np.stack([preprocess_for_model(r, labeller.model.preprocess_config) for r in recs.values()])
    emb = labeller.embed(x)
    out = {}
    for (k, rec), e in zip(recs.items(), emb):
        m = measure(rec, method="multilead")
        out[k] = (m, ground(m, probes=labeller.probes, embedding=e))
    return out


def _said(cs) -> set[tuple[str, str]]:
    return {(c.finding, c.source) for c in cs}


def test_brady_record_prompt_states_rate_rhythm_axis_intervals_and_probes(grounded, labeller):
    m, g = grounded["brady"]
    lines = g.text.split("\n")
    assert len(lines) == 2 and len(g.text) < 400  # compact: the mini LM has 2,048 tokens
    assert lines[0].startswith(f"Measured: heart rate {round(m.hr_bpm)} bpm (bradycardia, regular RR); ")
    cat = axis_category(m.axis_deg, GROUND_AXIS_CONVENTION)
    assert f"QRS axis {round(m.axis_deg)} degrees ({AXIS_TEXT[cat]})" in lines[0]
    # PTB-XL is in mV: both LVH voltages are stated, to 0.1 mV
    assert f"; Sokolow-Lyon {m.sokolow_lyon_mv:.1f} mV, Cornell {m.cornell_mv:.1f} mV." in lines[0]
    assert f"PR {round(m.pr_ms)} ms, QRS {round(m.qrs_ms)} ms, QT/QTc {round(m.qt_ms)}/{round(m.qtc_ms)} ms;" in lines[0]
    assert lines[1].startswith("Classifier findings: sinus bradycardia (p=0.9")
    by = {f.label: f for f in g.findings}
    assert by["bradycardia"].source == "measurement" and by["bradycardia"].value == round(m.hr_bpm, 1)
    assert by["axis"].unit == "degrees" and by["axis"].category == cat
    assert by["SBRAD"].source == "probe" and by["SBRAD"].probability > 0.9
    # every probe finding stated is at or above its probe's cross-validated threshold
    thr = {(p.labelset, lab): t for p in labeller.probes for lab, t in zip(p.trained, p.thresholds)}
    probe = [f for f in g.findings if f.source == "probe"]
    assert probe and all(f.probability >= thr[(f.labelset, f.label)] for f in probe)
    assert set(g.probabilities) >= {"AFIB", "SR", "SBRAD", "LBBB", "HYP"}
    json.dumps(g.to_dict())  # report rows carry it as JSON


def test_af_record_states_irregular_rr_no_pr_and_the_af_probe(grounded):
    m, g = grounded["af"]
    assert "(irregular RR)" in g.text and "atrial fibrillation (p=" in g.text
    assert "PR " not in g.text and m.pr_ms != m.pr_ms  # multilead withholds PR in AF: never invented
    assert not any(f.label == "SR" for f in g.findings)


def test_deterministic_and_equal_from_a_row_dict(grounded, labeller):
    m, g = grounded["sinus"]
    row = {k: v for k, v in m.to_dict().items()}
    assert ground(row).text == ground(m).text == g.text.split("\n")[0]
    assert ground(m) == ground(m)


def test_failed_or_missing_measurements_are_omitted_never_invented():
    flat = (np.zeros((12, 5000)), 500, ("I", "II", "III", "aVR", "aVL", "aVF",
                                        "V1", "V2", "V3", "V4", "V5", "V6"))
    g = ground(measure(flat, method="multilead"))
    assert g.text == "" and g.findings == () and g.question("Describe.") == "Describe."
    assert ground(None).text == ""
    # ECG-Chat's method writes 0 for what failed; a row may hold None; an axis of 0 is real
    row = {"hr_bpm": 72.0, "rr_nrmssd": None, "axis_deg": 0.0, "pr_ms": 0, "qrs_ms": None,
           "qt_ms": 380.0, "qtc_ms": 9999.0, "quality": "ok"}
    g = ground(row)
    assert g.text == "Measured: heart rate 72 bpm; QRS axis 0 degrees (horizontal axis); QT 380 ms."
    assert ground(row, axis_convention="aha").text == g.text.replace("horizontal", "normal")
    assert ground({**row, "quality": "noisy"}).text == ""
    # ECG-Chat's method measures a PR in atrial fibrillation too: not stated with an irregular RR
    af = {"hr_bpm": 110.0, "rr_nrmssd": 0.3, "pr_ms": 160.0, "qrs_ms": 90.0, "method": "ecgchat"}
    assert "PR" not in ground(af).text and "PR 160 ms" in ground({**af, "method": "multilead"}).text
    assert "PR 160 ms" in ground({**af, "rr_nrmssd": 0.02}).text


def test_contradictions_with_measured_rate_axis_and_rhythm(grounded, sample_archive):
    _, brady = grounded["brady"]   # about 47 bpm, regular RR, axis about +67, QRS about 88 ms, PR about 165 ms
    assert _said(contradictions("Sinus rhythm. Normal ECG.", brady)) >= {("sinus_rhythm", "measurement")}
    assert contradictions("Sinus bradycardia. Normal ECG.", brady) == []
    assert ("sinus_tachycardia", "measurement") in _said(contradictions("Sinus tachycardia.", brady))
    af = contradictions("Atrial fibrillation.", brady)
    assert {("atrial_fibrillation", "measurement"), ("atrial_fibrillation", "probe")} <= _said(af)
    assert any("regular RR" in c.against for c in af) and any("constant PR" in c.reason for c in af)
    assert contradictions("Possible atrial fibrillation.", brady) == []  # hedged: not a statement
    assert ("axis_right", "measurement") in _said(contradictions("Right axis deviation.", brady))
    assert ("axis_left", "measurement") in _said(contradictions("Left axis deviation.", brady))
    assert contradictions("Sinus bradycardia. Normal electrical axis.", brady) == []
    low = ground(measure(read_record(sample_archive / "ptbxl" / "raw" / "00001_lr.hea"), method="multilead"))
    assert "QRS axis 18 degrees" in low.text   # PTB-XL 1, mV: axis about +18
    assert contradictions("Left axis deviation.", low) == []  # +18 is left in LUDB's/German usage
    lbbb = contradictions("Complete left bundle branch block.", brady)
    assert ("lbbb", "measurement") in _said(lbbb) and "120 ms" in lbbb[0].reason
    assert contradictions("Incomplete right bundle branch block.", brady) == []
    assert ("av_block", "measurement") in _said(contradictions("First degree AV block.", brady))


def test_contradictions_with_confident_probes(grounded):
    _, af = grounded["af"]         # AF probe 0.99
    no_af = contradictions("No atrial fibrillation. Sinus rhythm.", af)
    assert ("atrial_fibrillation", "probe") in _said(no_af) and ("sinus_rhythm", "probe") in _said(no_af)
    c = next(c for c in no_af if c.finding == "atrial_fibrillation")
    assert c.stated == "negated" and c.statement == "no atrial fibrillation" and "AFIB" in c.against
    assert contradictions("Atrial fibrillation with a normal ventricular rate.", af) == []
    _, left = grounded["left"]     # PTB-XL 691: left axis deviation, about -80 degrees
    assert ("axis_normal", "measurement") in _said(contradictions("Normal electrical axis.", left))
    assert contradictions("Left axis deviation.", left) == []


def test_contradictions_read_back_from_a_report_row(grounded):
    _, g = grounded["sinus"]       # about 90 bpm, regular, axis about +60
    text = "Sinus bradycardia. Left axis deviation. No sinus rhythm."
    direct = contradictions(text, g)
    assert contradictions(text, json.loads(json.dumps(g.to_dict()))) == direct
    assert {"sinus_bradycardia", "axis_left", "sinus_rhythm"} <= {c.finding for c in direct}
    assert all(set(c.to_dict()) == {"statement", "finding", "stated", "against", "source", "reason"}
               for c in direct)


def test_findings_list_alone_and_empty_inputs():
    fs = [GroundFinding("heart_rate", "heart rate", "measurement", 130.0, "bpm"),
          GroundFinding("AFIB", "atrial fibrillation", "probe", probability=0.97, labelset="ptbxl-rhythm")]
    said = _said(contradictions("Sinus rhythm. No atrial fibrillation.", fs))
    assert said == {("sinus_rhythm", "measurement"), ("sinus_rhythm", "probe"), ("atrial_fibrillation", "probe")}
    assert contradictions("", fs) == [] and contradictions("Sinus rhythm.", Grounding("")) == []
    with pytest.raises(ValueError, match="source"):
        GroundFinding("x", "x", "guess")


def test_batch_and_report_row_fields(grounded, labeller):
    ms = [grounded[k][0] for k in ("brady", "af")]
    gs = ground_batch(ms + [None])
    assert [g.text for g in gs[:2]] == [ground(m).text for m in ms] and gs[2].text == ""
    with pytest.raises(ValueError, match="embeddings"):
        ground_batch(ms, probes=labeller.probes, embeddings=np.zeros((3, 4)))
    row = report_fields("Sinus rhythm. Normal ECG.", grounded["brady"][1])
    assert json.loads(json.dumps(row)) == row
    assert any(f["source"] == "probe" for f in row["findings"])
    assert [c["finding"] for c in row["contradictions"]][:1] == ["sinus_rhythm"]


def test_conversation_grounds_the_first_question_once(grounded):
    from ecgbatch.llava.grounding import finding_text, ground_conversation

    g = grounded["brady"][1]
    assert ground_conversation(g, "Rate?") == (g.question("Rate?"), [])
    history = [("Describe.", "Sinus rhythm."), ("Axis?", "Normal.")]
    q, h = ground_conversation(g, "Rate?", history)
    assert q == "Rate?" and h == [(g.question("Describe."), "Sinus rhythm."), ("Axis?", "Normal.")]
    assert "".join(u for u, _ in h).count(g.text) == 1 and g.text.startswith("Measured:")
    rate = [f.to_dict() for f in g.findings if f.label == "heart_rate"][0]
    assert finding_text(rate) == f"heart rate {round(rate['value'])} bpm"


def test_labeller_for_an_ecg_llava_model_or_measurements_only(grounded, labeller):
    """grounds_labeller finds the tower encoder's probes as --ddp does; none: measurements only."""
    from ecgbatch.llava.grounding import ground_inputs, grounds_labeller

    assert grounds_labeller("/nonexistent/ecg-llava-folder") is None
    ms = [grounded["brady"][0]]
    assert ground_inputs(ms, None, None)[0].text == ground(ms[0]).text


def test_report_udf_grounds_a_hand_built_batch(grounded, labeller):
    """ecgbatch.pipelines.report.batch_groundings (the ReportUDF's grounds): a read-stage batch
    with its measurement columns, one failed row; the probes on the model inputs."""
    from ecgbatch.pipelines.read_stage import MEASUREMENT_COLUMNS
    from ecgbatch.pipelines.report import batch_groundings

    ms = [grounded["brady"][0], None]
    batch = {k: np.array([getattr(ms[0], k), np.nan]) for k in MEASUREMENT_COLUMNS}
    batch["ok"] = np.array([True, False])
    x = np.zeros((2, 12, 5000), np.float32)
    gs = batch_groundings(batch, x)
    assert gs[0].text == ground(ms[0]).text and gs[1].text == "" and gs[1].findings == ()
    with_probes = batch_groundings(batch, x, labeller)
    assert with_probes[0].probabilities and with_probes[1].probabilities == {}


def test_lvh_voltage_criteria_stated_by_the_published_thresholds():
    row = {"hr_bpm": 70.0, "quality": "ok", "sokolow_lyon_mv": 3.2, "cornell_mv": 2.8}
    g = ground(row)
    assert g.text == "Measured: heart rate 70 bpm; Sokolow-Lyon 3.2 mV, Cornell 2.8 mV."   # 2.8 is not > 2.8
    assert "lvh_voltage" not in {f.label for f in g.findings}
    for extra in ({"sokolow_lyon_mv": 3.5}, {"cornell_mv": 2.81}):
        g = ground({**row, **extra})
        assert g.text.endswith(" mV (LVH voltage criteria met).")
        by = {f.label: f for f in g.findings}
        assert by["lvh_voltage"].category == "met" and by["sokolow_lyon"].unit == "mV"
        assert finding_text(by["sokolow_lyon"].to_dict()) == f"Sokolow-Lyon {by['sokolow_lyon'].value:.1f} mV"
    assert "Sokolow" not in ground({"hr_bpm": 70.0, "quality": "ok", "cornell_mv": float("nan")}).text


def test_the_prompt_words_follow_the_models_wording_version():
    """WORDINGS: version 2 states a met LVH voltage criterion in the training reports' words; every
    other word is version 1's, and a
    model config without prompt.wording is served with version 1, the words it was trained with."""
    from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfigError
    from ecgbatch.llava.grounding import LEGACY_WORDING, WORDINGS
    from ecgbatch.pipelines.report import batch_groundings
    from ecgbatch.text.findings import positive_findings
    from ecgbatch.training.instruct import MEASURED_LVH

    row = {"hr_bpm": 70.0, "quality": "ok", "axis_deg": -45.0, "sokolow_lyon_mv": 3.6, "cornell_mv": 1.1}
    v1, v2 = ground(row), ground(row, wording=2)
    assert ground(row, wording=LEGACY_WORDING).text == v1.text and v1.text.endswith("(LVH voltage criteria met).")
    assert v2.text == v1.text.replace("LVH voltage criteria met", "left ventricular hypertrophy by voltage criteria")
    assert WORDINGS[2]["lvh_voltage"] == MEASURED_LVH[1]                 # the training reports' words
    assert positive_findings(v2.text, ("lvh",)) == {"lvh"}
    assert [f.label for f in v2.findings] == [f.label for f in v1.findings]
    batch = {"ok": np.array([True]), **{k: np.array([v]) for k, v in row.items()}}
    assert batch_groundings(batch, np.zeros((1, 12, 5000), np.float32), None, 2)[0].text == v2.text
    with pytest.raises(ValueError, match="unknown grounding wording 3"):
        ground(row, wording=3)
    from test_llava_model import _tiny_config

    cfg = _tiny_config()
    assert cfg.grounding_wording == 1
    assert type(cfg)(**{**cfg.to_dict(), "prompt": {"grounded": True, "wording": 2}}).grounding_wording == 2
    with pytest.raises(EcgLlavaConfigError, match="prompt.wording: unknown grounding wording 7"):
        type(cfg)(**{**cfg.to_dict(), "prompt": {"grounded": True, "wording": 7}})


def test_a_record_not_in_a_voltage_unit_states_no_voltage(sample_archive):
    rec = read_record(sample_archive / "ptbxl" / "raw" / "00001_lr.hea")   # PTB-XL 1, 100 Hz, mV
    in_mv = measure(rec, method="multilead")
    rec.units = "unknown"                      # e.g. a z-scored array
    m = measure(rec, method="multilead")
    assert np.isfinite(in_mv.sokolow_lyon_mv) and np.isnan(m.sokolow_lyon_mv) and np.isnan(m.cornell_mv)
    assert m.lvh_voltage is None and "Sokolow" not in ground(m).text
    rec.units, rec.signal = "uV", rec.signal * 1000.0
    assert measure(rec, method="multilead").sokolow_lyon_mv == pytest.approx(in_mv.sokolow_lyon_mv, abs=0.011)


def test_shared_ludb_record_states_no_axis_and_no_voltage(sample_archive):
    """LUDB 1 as ../shared (and the sample archive) carry it: "mV", but every lead rescaled to
    1.000 mV peak to peak. The prompt states its rate, rhythm and intervals, no axis and no
    voltage, and an axis statement in a report has nothing to contradict."""
    rec = read_record(sample_archive / "ludb" / "1.hea")
    m = measure(rec, method="multilead")
    g = ground(m)
    assert rec.units == "mV" and np.isnan(m.axis_deg) and np.isnan(m.sokolow_lyon_mv) and np.isnan(m.cornell_mv)
    assert g.text.startswith(f"Measured: heart rate {round(m.hr_bpm)} bpm (bradycardia, regular RR); PR ")
    assert "axis" not in g.text and "Sokolow" not in g.text and "Cornell" not in g.text
    assert not {"axis", "sokolow_lyon", "cornell", "lvh_voltage"} & {f.label for f in g.findings}
    assert contradictions("Right axis deviation.", g) == [] and contradictions("Left axis deviation.", g) == []
    assert ("sinus_rhythm", "measurement") in _said(contradictions("Sinus rhythm. Normal ECG.", g))
