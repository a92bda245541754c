"""The rhythm channel of ecgbatch's own ECG-CoCa variants (ecgbatch.encoders.rhythm): R peaks
from the NeuroKit2 chain ECG-Chat's measurement suffix uses, the fixed RR block and the RR read
from texts, on the bundled real records."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecgbatch.encoders.config import CocaConfig, arch_config
from ecgbatch.encoders.rhythm import RhythmCfg, RhythmChannel, r_peaks, rhythm_features, text_rr_ms
from ecgbatch.io import read_record
from ecgbatch.signal import preprocess
from ecgbatch.signal.measure import ecgchat_wave_text, measure


@pytest.mark.parametrize("text, expected", [
    ("sinus rhythm. rr: 845 pr: 160 qrs: 92 qt/qtc: 380/413 p/r/t wave: 2480/2530/2650", 845.0),
    ("sinus rhythm rr : 845 pr : 160 qrs : 92", 845.0),                 # detokenised
    (" RR: 0 PR: 0 QRS: 0 QT/QTc: 0/0 P/R/T Wave: 0/0/0", math.nan),     # ECG-Chat's failed measurement
    ("RR interval 1000 ms", 1000.0),
    ("heart rate 75 bpm", 800.0),
    ("HR: 60", 1000.0),
    ("atrial fibrillation with rapid ventricular rate of 120", 500.0),
    ("atrial fibrillation", math.nan),
    ("qrs: 92 qt/qtc: 380/413", math.nan),                               # no rate stated
    ("heart rate 4000", math.nan),                                       # not a heart rate
])
def test_text_rr_ms(text, expected):
    got = text_rr_ms(text)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


def _channel(**kw):
    return RhythmChannel(RhythmCfg(**kw), width=8, lead_index=1, fs=500.0)


def test_rr_block_is_a_gaussian_kernel_of_log_rr():
    ch = _channel()
    bw = ch.cfg.bandwidth
    rr = np.array([845.0, 900.0, 600.0, 1500.0, math.nan])
    ecg = ch.rr_block(rr, unknown_slot=True)
    text = ch.rr_block(rr, unknown_slot=False)
    assert ecg.shape == (5, ch.dim) == (5, ch.cfg.n_bins + 1)
    norms = ecg.norm(dim=1)
    assert torch.allclose(norms, torch.ones(5), atol=1e-6)        # every ECG block has unit norm
    assert ecg[4, -1] == 1 and ecg[:4, -1].abs().max() == 0       # NaN -> the "unknown" slot
    assert text[4].abs().max() == 0                               # a text with no RR adds nothing
    k = (ecg[:4] @ text[:4].T).numpy()
    assert np.allclose(np.diag(k), 1.0, atol=1e-6)
    for a, b in [(0, 1), (0, 2), (2, 3)]:
        expect = math.exp(-math.log(rr[a] / rr[b]) ** 2 / (4 * bw ** 2))
        assert k[a, b] == pytest.approx(expect, abs=0.02)
    assert k[2, 3] < 1e-6                                         # 600 vs 1500 ms: unrelated
    assert (ecg[4:] @ text.T).abs().max() == 0                    # unknown rhythm never matches a stated RR


@pytest.mark.parametrize("cfg", [dict(weight=0.0), dict(weight=1.0), dict(rr_min_ms=900, rr_max_ms=800),
                                 dict(n_bins=1), dict(bandwidth=0.0)])
def test_rhythm_cfg_rejects_bad_values(cfg):
    with pytest.raises(ValueError, match="rhythm_cfg"):
        RhythmCfg(**cfg)


def test_rhythm_cfg_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown rhythm_cfg keys"):
        RhythmCfg.from_dict({"weight": 0.5, "bins": 3})


def test_flat_and_short_signals_have_no_rhythm():
    for x in (np.zeros(5000), np.full(5000, np.nan), np.random.default_rng(0).normal(size=100)):
        p = r_peaks(x, 500.0)
        f, rr = rhythm_features(p, 500.0)
        assert len(p) < 3 and math.isnan(rr) and not f.any()


def test_model_measurement_matches_the_ecgchat_suffix_rr(sample_archive):
    """The channel measures the model's preprocessed input; ECG-Chat's suffix is measured on
    the raw record. On real records both give the same mean RR, and the AF record is the
    irregular one."""
    cfg = arch_config("ecg-coca-mini")
    ch = RhythmChannel(cfg.rhythm_cfg, cfg.ecg_cfg.width, list(cfg.preprocess.leads).index("II"),
                       cfg.preprocess.fs)
    paths = sorted((sample_archive / "ludb").glob("*.hea"))
    assert len(paths) >= 5
    xs, suffix_rr = [], []
    for p in paths:
        rec = read_record(p)
        xs.append(preprocess(rec, cfg.preprocess).x)
        suffix_rr.append(text_rr_ms(ecgchat_wave_text(measure(rec, method="ecgchat"))))
    feats, rr = ch.measure(torch.as_tensor(np.stack(xs)))
    assert np.isfinite(rr).all()
    assert np.abs(rr - np.array(suffix_rr)).max() < 5.0
    cv = feats[:, 1].numpy() / 5.0                                  # RR coefficient of variation
    rhythm = [next(ln for ln in p.read_text().splitlines() if ln.startswith("#Rhythm")) for p in paths]
    af = [i for i, r in enumerate(rhythm) if "fibrillation" in r.lower()]
    regular = [i for i, p in enumerate(paths)   # sinus rhythm without extrasystoles
               if rhythm[i].lower().startswith("#rhythm: sinus") and "extrasystole" not in p.read_text().lower()]
    assert af and len(regular) >= 3
    assert cv[af].min() > 0.1 > 0.05 > cv[regular].max()


def test_config_round_trip_and_ecgchat_config_unchanged():
    mini = arch_config("ecg-coca-mini")
    assert mini.rhythm_cfg is not None and mini.output_dim == mini.embed_dim + mini.rhythm_cfg.dim
    again = CocaConfig.from_dict(mini.to_dict())
    assert again.rhythm_cfg == mini.rhythm_cfg
    ecgchat = arch_config("ecg-coca")
    assert ecgchat.rhythm_cfg is None and "rhythm_cfg" not in ecgchat.to_dict()
    bad = mini.to_dict()
    bad["rhythm_cfg"] = dict(bad["rhythm_cfg"], lead="V7")
    with pytest.raises(ValueError, match="rhythm_cfg.lead"):
        CocaConfig.from_dict(bad)


def test_model_embeddings_with_the_rhythm_channel(sample_archive):
    from ecgbatch.encoders import create_model

    try:
        m = create_model("ecg-coca-mini", seed=0)
    except (FileNotFoundError, ValueError) as exc:   # text encoder package not installed
        pytest.skip(f"ecg-coca-mini text tower unavailable: {exc}")
    m.eval()
    rec = read_record(sample_archive / "ludb" / "1.hea")
    x = preprocess(rec, m.preprocess_config).x[None]
    e = m.embed_ecgs(x)
    assert e.shape == (1, m.embed_dim) and m.embed_dim == m.cfg.embed_dim + m.rhythm.dim
    assert np.linalg.norm(e, axis=1) == pytest.approx(1.0, abs=1e-5)
    rr = measure(rec, method="ecgchat").rr_ms
    texts = ["sinus bradycardia", f"sinus bradycardia rr: {rr} pr: 160",
             f"sinus bradycardia rr: {int(rr * 0.5)} pr: 160"]
    t = m.embed_texts(texts, lower=True)
    block = slice(m.cfg.embed_dim, None)
    assert np.abs(t[0, block]).max() == 0                           # no RR stated: learned part only
    s = (e @ t.T)[0]
    assert s[1] - s[2] > 0.3                                        # own RR vs half of it
    # A fresh model's rhythm MLP is zero: its learned part is the tower's alone.
    with torch.no_grad():
        latent, _ = m.ecg(torch.as_tensor(x))
    unit = torch.nn.functional.normalize(latent, dim=-1).numpy()
    w = m.cfg.rhythm_cfg.weight
    assert np.allclose(e[:, :m.cfg.embed_dim], math.sqrt(1 - w) * unit, atol=1e-5)
