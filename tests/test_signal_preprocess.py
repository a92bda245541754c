"""preprocess() on real records: ECG-Chat bit-exactness, resampling, leads by name, missing
leads, NaN policy, units, crop/pad, filters, z-score, batching."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ecgbatch.io.errors import BadSignalError, EcgReadError, MissingLeadError
from ecgbatch.io.record import STANDARD_LEADS, Record
from ecgbatch.signal import ECGCHAT, PreprocessConfig, preprocess, preprocess_batch
from ecgbatch.signal.filters import resample

wfdb = pytest.importorskip("wfdb")


def _rdsamp(path):
    sig, f = wfdb.rdsamp(str(path))
    return sig, f


def _record(path, **kw) -> Record:
    sig, f = _rdsamp(path)
    return Record(signal=sig.T.astype(np.float32), fs=float(f["fs"]), leads=tuple(f["sig_name"]),
                  units=f["units"][0], record_id=path.name, **kw)


@pytest.fixture(scope="module")
def ludb(shared_data):
    return shared_data / "ludb" / "data"


def _ecgchat_reference(sig: np.ndarray) -> np.ndarray:
    """ECG-Chat's loader: nan/inf -> 0, transpose, first 5000 samples or zero-pad at the end."""
    x = np.nan_to_num(sig, nan=0, posinf=0, neginf=0).T[:, :5000].astype(np.float32)
    out = np.zeros((x.shape[0], 5000), dtype=np.float32)
    out[:, :x.shape[1]] = x
    return out


@pytest.mark.parametrize("rel", ["ludb/data/1", "ludb/data/137", "cinc2021/A0689"])
def test_ecgchat_bit_exact_on_real_records(shared_data, rel):
    path = shared_data / rel
    if not path.with_suffix(".hea").exists():
        pytest.skip(f"{rel} not in shared data")
    try:
        sig, f = _rdsamp(path)
    except Exception as exc:  # wfdb may reject Challenge headers/.mat signals
        pytest.skip(f"wfdb.rdsamp cannot read {rel}: {exc}")
    rec = Record(signal=sig.T, fs=float(f["fs"]), leads=tuple(f["sig_name"]), units="mV")
    got = preprocess(rec, ECGCHAT).x
    ref = _ecgchat_reference(sig)
    assert got.dtype == np.float32 and got.shape == (12, 5000)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))  # bit for bit


def test_ecgchat_bit_exact_with_nan_inf_and_padding(ludb):
    sig, f = _rdsamp(ludb / "1")
    sig = sig[:3700].copy()  # short record -> zero-padded at the end
    sig[10, 3] = np.nan
    sig[20:25, 0] = np.inf
    sig[30, 11] = -np.inf
    rec = Record(signal=sig.T, fs=500.0, leads=tuple(f["sig_name"]))
    p = preprocess(rec, ECGCHAT)
    assert np.array_equal(p.x, _ecgchat_reference(sig))
    assert p.x[:, 3700:].max() == 0 and p.x[:, 3700:].min() == 0
    assert any("NaN/inf" in n for n in p.notes) and any("zero-padded" in n for n in p.notes)
    # long record: only the first 5000 samples, as ECG-Chat's Resize
    long = np.concatenate([sig, sig], axis=0)
    p = preprocess(Record(signal=long.T, fs=500.0, leads=tuple(f["sig_name"])), ECGCHAT)
    assert np.array_equal(p.x, _ecgchat_reference(long))


def test_ptbxl_100hz_resampled_to_500hz(shared_data):
    rec = _record(shared_data / "ptbxl" / "raw" / "00001_lr")
    assert rec.fs == 100 and rec.n_samples == 1000
    p = preprocess(rec, ECGCHAT)
    assert p.x.shape == (12, 5000) and p.resampled_from == 100.0 and p.n_samples_orig == 1000
    # The 500 Hz version passes through the 100 Hz samples (polyphase, integer factor 5) closely
    idx = np.arange(0, 5000, 5)
    r = np.corrcoef(p.x[1, idx], rec.signal[1])[0, 1]
    assert r > 0.99


def test_resample_down_and_up_preserves_waveform(ludb):
    rec = _record(ludb / "1")
    down = dataclasses.replace(rec, signal=resample(rec.signal, 500, 250).astype(np.float32), fs=250.0)
    assert down.n_samples == 2500
    p = preprocess(down, ECGCHAT)
    assert p.x.shape == (12, 5000) and p.resampled_from == 250.0
    for k in range(12):
        r = np.corrcoef(p.x[k, 50:-50], rec.signal[k, 50:-50])[0, 1]
        assert r > 0.99, (k, r)
    # a non-integer ratio (257 Hz -> 500 Hz) is approximated by a fraction and keeps the duration
    odd = dataclasses.replace(rec, signal=resample(rec.signal, 500, 257), fs=257.0)
    p = preprocess(odd, PreprocessConfig(n_samples=None))
    assert abs(p.x.shape[1] - 5000) <= 1


def test_leads_mapped_by_name_lowercase_and_shuffled(ludb):
    rec = _record(ludb / "1")
    assert rec.leads[3] == "avr"  # LUDB spells leads in lower case
    base = preprocess(rec, ECGCHAT).x
    assert np.array_equal(base, rec.signal)  # same order, same values
    rng = np.random.default_rng(0)
    perm = rng.permutation(12)
    names = [STANDARD_LEADS[i].upper() if i % 2 else STANDARD_LEADS[i] for i in perm]  # 'AVR', 'V1', ...
    shuffled = Record(signal=rec.signal[perm], fs=rec.fs, leads=tuple(names))
    assert np.array_equal(preprocess(shuffled, ECGCHAT).x, base)
    # a model that wants a subset in another order gets exactly those rows
    cfg = PreprocessConfig(leads=("V6", "aVF", "I"))
    x = preprocess(shuffled, cfg).x
    assert np.array_equal(x, rec.signal[[11, 5, 0]])


def test_missing_lead_policy_error_and_zero(ludb):
    rec = _record(ludb / "1")
    keep = [i for i in range(12) if rec.leads[i] not in ("avl", "v3")]
    partial = Record(signal=rec.signal[keep], fs=rec.fs, leads=tuple(rec.leads[i] for i in keep),
                     record_id="partial")
    with pytest.raises(MissingLeadError) as ei:
        preprocess(partial, ECGCHAT)
    assert isinstance(ei.value, EcgReadError) and ei.value.kind == "missing_lead"
    assert "aVL" in str(ei.value) and "V3" in str(ei.value)
    p = preprocess(partial, dataclasses.replace(ECGCHAT, missing_leads="zero"))
    assert p.missing_leads == ("aVL", "V3")
    assert not p.x[4].any() and not p.x[8].any()
    assert np.array_equal(p.x[[0, 1, 2, 3, 5, 6, 7, 9, 10, 11]], rec.signal[keep])


def test_nan_policies(ludb):
    rec = _record(ludb / "1")
    sig = rec.signal.copy()
    sig[1, 100:110] = np.nan
    sig[2, :] = np.nan  # a lead with no finite sample at all
    bad = dataclasses.replace(rec, signal=sig)
    with pytest.raises(BadSignalError, match="NaN"):
        preprocess(bad, dataclasses.replace(ECGCHAT, nan_policy="error"))
    z = preprocess(bad, ECGCHAT).x
    assert np.isfinite(z).all() and not z[1, 100:110].any()
    ip = preprocess(bad, dataclasses.replace(ECGCHAT, nan_policy="interpolate"))
    assert np.isfinite(ip.x).all() and not ip.x[2].any()
    expected = np.interp(np.arange(100, 110), [99, 110], [sig[1, 99], sig[1, 110]])
    np.testing.assert_allclose(ip.x[1, 100:110], expected, rtol=1e-5)


def test_zscore_and_flat_lead(ludb):
    rec = _record(ludb / "1")
    sig = rec.signal.copy()
    sig[7] = 0.25  # flat lead
    p = preprocess(dataclasses.replace(rec, signal=sig), PreprocessConfig(normalize="zscore"))
    assert np.isfinite(p.x).all()
    assert not p.x[7].any()
    others = [k for k in range(12) if k != 7]
    np.testing.assert_allclose(p.x[others].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(p.x[others].std(axis=1), 1, atol=1e-4)
    s = preprocess(rec, PreprocessConfig(normalize="scale", scale=2.0)).x
    np.testing.assert_allclose(s, 2 * rec.signal, rtol=1e-6)


def test_units_converted_to_mv(ludb):
    rec = _record(ludb / "1")
    uv = dataclasses.replace(rec, signal=rec.signal * 1000.0, units="uV")
    p = preprocess(uv, ECGCHAT)
    np.testing.assert_allclose(p.x, rec.signal, rtol=1e-5, atol=1e-6)
    assert any("uV -> mV" in n for n in p.notes)
    v = dataclasses.replace(rec, signal=rec.signal / 1000.0, units="V")
    np.testing.assert_allclose(preprocess(v, ECGCHAT).x, rec.signal, rtol=1e-5, atol=1e-6)


def test_crop_center_and_pad_both(ludb):
    rec = _record(ludb / "1")
    p = preprocess(rec, PreprocessConfig(n_samples=1000, crop="center"))
    assert np.array_equal(p.x, rec.signal[:, 2000:3000])
    p = preprocess(rec, PreprocessConfig(n_samples=6000, pad="both"))
    assert np.array_equal(p.x[:, 500:5500], rec.signal)
    assert not p.x[:, :500].any() and not p.x[:, 5500:].any()


def test_filters_remove_baseline_and_mains(ludb):
    rec = _record(ludb / "1")
    t = np.arange(rec.n_samples) / rec.fs
    drift = 0.8 * np.sin(2 * np.pi * 0.15 * t) + 0.3 * np.sin(2 * np.pi * 50 * t)
    noisy = dataclasses.replace(rec, signal=(rec.signal + drift).astype(np.float32))
    clean = preprocess(rec, PreprocessConfig(bandpass=(0.5, 40.0), notch_hz=50.0)).x
    filt = preprocess(noisy, PreprocessConfig(bandpass=(0.5, 40.0), notch_hz=50.0)).x
    err = np.abs(filt - clean)[:, 250:-250].mean()
    assert err < 0.02, err  # the added 0.15 Hz wander and 50 Hz hum are gone
    spec = np.abs(np.fft.rfft(filt[1]))
    f = np.fft.rfftfreq(filt.shape[1], 1 / 500)
    assert spec[np.argmin(np.abs(f - 50))] < 0.05 * spec.max()
    bl = preprocess(noisy, PreprocessConfig(remove_baseline=True)).x
    assert np.abs(np.median(bl, axis=1)).max() < 0.1


def test_dtypes_and_bfloat16(ludb):
    rec = _record(ludb / "1")
    assert preprocess(rec, PreprocessConfig(dtype="float16")).x.dtype == np.float16
    assert preprocess(rec, PreprocessConfig(dtype="bfloat16")).x.dtype == np.float32
    assert preprocess(rec, PreprocessConfig(dtype="float64")).x.dtype == np.float64


def test_bad_inputs_raise_typed_errors(ludb):
    rec = _record(ludb / "1")
    with pytest.raises(BadSignalError):
        preprocess(dataclasses.replace(rec, signal=np.zeros((12, 0), np.float32)), ECGCHAT)
    with pytest.raises(BadSignalError):
        preprocess(dataclasses.replace(rec, leads=rec.leads[:5]), ECGCHAT)
    with pytest.raises(ValueError, match="Nyquist"):
        preprocess(rec, PreprocessConfig(bandpass=(300.0, 400.0)))


def test_preprocess_batch(ludb):
    recs = [_record(ludb / n) for n in ("1", "3", "5")]
    x, info = preprocess_batch(recs, ECGCHAT)
    assert x.shape == (3, 12, 5000) and x.dtype == np.float32
    assert [i["record_id"] for i in info] == ["1", "3", "5"]
    assert np.array_equal(x[1], preprocess(recs[1], ECGCHAT).x)
    short = dataclasses.replace(recs[0], signal=recs[0].signal[:, :4000])
    with pytest.raises(ValueError, match="different lengths"):
        preprocess_batch([recs[1], short], PreprocessConfig(n_samples=None))


@pytest.mark.parametrize("rel", ["ludb/data/1", "ludb/data/57", "ludb/data/199", "cinc2021/A0689"])
def test_ecgchat_bit_exact_through_read_record(shared_data, rel):
    """The project's own reader + preprocess == ECG-Chat's wfdb.rdsamp loader, bit for bit."""
    from ecgbatch.io import read_record

    path = shared_data / rel
    if not path.with_suffix(".hea").exists():
        pytest.skip(f"{rel} not in shared data")
    sig, _ = _rdsamp(path)
    got = preprocess(read_record(str(path) + ".hea"), ECGCHAT).x
    assert np.array_equal(got, _ecgchat_reference(sig))
