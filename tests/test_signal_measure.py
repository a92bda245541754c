"""Waveform measurements: ECG-Chat faithfulness, the --wfep text, failure handling, resampled
input, and agreement with LUDB's cardiologist delineation."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from helpers.bench import bench_module

from ecgbatch.io.errors import MissingLeadError
from ecgbatch.io.record import Record
from ecgbatch.signal import Measurements, ecgchat_wave_text, measure
from ecgbatch.signal.filters import resample

wfdb = pytest.importorskip("wfdb")
nk = pytest.importorskip("neurokit2")


def _bench():
    return bench_module("ludb_intervals")


@pytest.fixture(scope="module")
def ludb(shared_data):
    return shared_data / "ludb" / "data"


def _record(path) -> Record:
    sig, f = wfdb.rdsamp(str(path))
    return Record(signal=sig.T, fs=float(f["fs"]), leads=tuple(f["sig_name"]), record_id=path.name)


def _ecgchat_independent(path) -> tuple[int, ...]:
    """The same numbers as ECG-Chat's signal_analysis, written independently with numpy nanmean
    over per-beat arrays (lead II = column 1 of wfdb.rdsamp, as ECG-Chat reads it)."""
    sig = wfdb.rdsamp(str(path))[0][:, 1].copy()
    sig[~np.isfinite(sig)] = 0
    fs = 500
    clean = nk.ecg_clean(sig, sampling_rate=fs)
    _, rp = nk.ecg_peaks(clean, sampling_rate=fs, method="neurokit")
    _, w = nk.ecg_delineate(clean, rp, sampling_rate=fs, method="dwt")
    r = np.asarray(rp["ECG_R_Peaks"], float)
    a = {k: np.asarray(v, float) for k, v in w.items()}
    rr = np.nanmean(np.diff(r)) / fs
    pr = np.nanmean(a["ECG_Q_Peaks"] - a["ECG_P_Onsets"]) / fs
    qrs = np.nanmean(a["ECG_S_Peaks"] - a["ECG_Q_Peaks"]) / fs
    qt = np.nanmean(a["ECG_T_Offsets"] - a["ECG_R_Onsets"]) / fs
    return (rr * 1000, pr * 1000, qrs * 1000, qt * 1000, qt / np.sqrt(rr) * 1000,
            np.nanmean(a["ECG_P_Peaks"]), np.nanmean(r), np.nanmean(a["ECG_T_Peaks"]))


@pytest.mark.parametrize("name", ["1", "9", "101"])
def test_ecgchat_method_matches_independent_neurokit_computation(ludb, name):
    m = measure(_record(ludb / name), method="ecgchat")
    ref = _ecgchat_independent(ludb / name)
    got = (m.rr_ms, m.pr_ms, m.qrs_ms, m.qt_ms, m.qtc_ms, m.p_wave, m.r_wave, m.t_wave)
    assert all(isinstance(v, int) for v in got)
    for g, r in zip(got, ref):
        assert abs(g - int(r)) <= 1, (got, ref)  # int() truncation of a float mean: at most 1 apart
    assert m.quality == "ok" and m.n_beats >= 5
    assert 1500 < m.r_wave < 3500  # a mean R *position* in samples, not an amplitude


def test_wave_text_exact_format():
    m = Measurements(75.0, 800, 160, 92, 384, 429, 2548, 2620, 2748, n_beats=12, quality="ok",
                     method="ecgchat")
    assert ecgchat_wave_text(m) == " RR: 800 PR: 160 QRS: 92 QT/QTc: 384/429 P/R/T Wave: 2548/2620/2748"


def test_wave_text_on_real_record(ludb):
    text = ecgchat_wave_text(measure(_record(ludb / "1"), method="ecgchat"))
    assert re.fullmatch(r" RR: \d+ PR: \d+ QRS: \d+ QT/QTc: \d+/\d+ P/R/T Wave: \d+/\d+/\d+", text)


def test_flat_signal_fails_like_ecgchat():
    flat = (np.zeros((12, 5000)), 500, ("I", "II", "III", "aVR", "aVL", "aVF",
                                        "V1", "V2", "V3", "V4", "V5", "V6"))
    m = measure(flat, method="ecgchat")
    assert m.quality == "failed"
    assert ecgchat_wave_text(m) == " RR: 0 PR: 0 QRS: 0 QT/QTc: 0/0 P/R/T Wave: 0/0/0"
    ml = measure(flat, method="multilead")
    assert ml.quality == "failed" and ml.to_dict()["qrs_ms"] is None


def test_missing_lead_ii_and_bad_method(ludb):
    rec = _record(ludb / "1")
    no_ii = dataclasses.replace(rec, signal=rec.signal[[0, 2]], leads=("i", "iii"))
    with pytest.raises(MissingLeadError):
        measure(no_ii)
    with pytest.raises(ValueError, match="method"):
        measure(rec, method="pan-tompkins")


def test_resampled_record_measures_like_the_original(ludb):
    rec = _record(ludb / "9")
    at250 = (resample(rec.signal, 500, 250), 250.0, rec.leads)
    a, b = measure(rec, method="multilead"), measure(at250, method="multilead")
    assert b.quality == "ok" and abs(a.hr_bpm - b.hr_bpm) < 1
    for k in ("pr_ms", "qrs_ms", "qt_ms"):
        assert abs(getattr(a, k) - getattr(b, k)) <= 10, k


def test_multilead_vs_ludb_cardiologists_fast(ludb):
    """30 LUDB records, multi-lead method (about 4 s)."""
    b = _bench()
    s = b.summary(b.evaluate(("multilead",), limit=30))["multilead"]
    assert s["hr_bpm"]["mae"] < 3.0
    assert s["pr_ms"]["mae"] < 12.0
    assert s["qrs_ms"]["mae"] < 18.0
    assert s["qt_ms"]["mae"] < 30.0
    assert s["qrs_ms"]["missing"] <= 2


@pytest.mark.slow
def test_all_ludb_records_both_methods(ludb):
    """All 100 LUDB records (about 25 s). Bounds = what bench/ludb_intervals.py measured plus a
    margin: multilead HR 1.7 bpm / PR 5.9 / QRS 10.8 / QT 19.7 ms; ecgchat 1.7 / 13.9 / 38.6 /
    46.9 (NeuroKit2's dwt puts R onsets early, so ECG-Chat's QRS and QT run long)."""
    b = _bench()
    res = b.evaluate(("ecgchat", "multilead"))
    s = b.summary(res)
    ml, ec = s["multilead"], s["ecgchat"]
    withheld, no_p = res["pr_withheld"]["multilead"]
    assert no_p >= 5 and withheld >= no_p / 2  # no PR invented in atrial fibrillation
    assert ml["pr_ms"]["missing"] <= 3  # ... while sinus records keep theirs
    assert ml["hr_bpm"]["mae"] < 3 and ml["pr_ms"]["mae"] < 10
    assert ml["qrs_ms"]["mae"] < 15 and ml["qt_ms"]["mae"] < 28
    assert ec["hr_bpm"]["mae"] < 3 and ec["pr_ms"]["mae"] < 20
    assert ec["qrs_ms"]["mae"] < 50 and ec["qt_ms"]["mae"] < 60
    assert ml["qrs_ms"]["mae"] < ec["qrs_ms"]["mae"] and ml["qt_ms"]["mae"] < ec["qt_ms"]["mae"]
    assert res["n_records"] / res["seconds"]["multilead"] > 2  # records/s, one process
