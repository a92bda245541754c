"""WFDB reader: every signal format, multi-file records, byte offsets, invalid samples, header
parsing; values compared with wfdb.rdsamp on the same files (the reference reader)."""
from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
import wfdb

from ecgbatch.io import read_header, read_record
from ecgbatch.io.errors import LengthMismatchError, TruncatedSignalError
from ecgbatch.io.wfdb_decode import INVALID
from ecgbatch.io.wfdb_header import header_meta, parse_header

TOL = 1e-5  # mV


@pytest.fixture(scope="module")
def ludb1(sample_archive):
    """Digital samples, gains, baselines and names of real LUDB record 1 (first 2 s)."""
    rec = wfdb.rdrecord(str(sample_archive / "ludb" / "1"), physical=False)
    return rec.d_signal[:1000].astype(np.int64), list(rec.adc_gain), list(rec.baseline), rec.sig_name


def _compare_with_wfdb(hea_path: str):
    ours = read_record(hea_path)
    ref, fields = wfdb.rdsamp(hea_path[:-4])
    assert ours.signal.shape == ref.T.shape
    assert ours.fs == fields["fs"]
    np.testing.assert_array_equal(np.isnan(ours.signal), np.isnan(ref.T))
    diff = np.nanmax(np.abs(ours.signal - ref.T))
    assert diff < TOL, f"{hea_path}: max abs diff {diff}"
    return ours, ref


def _scaled(d, bits):
    """Real samples re-quantised to a format's bit depth (keeps the waveform, fills the range)."""
    shift = 16 - bits
    return d >> shift if shift > 0 else d << -shift


@pytest.mark.parametrize("fmt", ["16", "80", "212", "24", "32"])
def test_formats_written_by_wfdb(tmp_path, ludb1, fmt):
    d, gain, base, names = ludb1
    bits = {"80": 8, "212": 12, "16": 16, "24": 24, "32": 32}[fmt]
    dd = _scaled(d, bits)
    lim = 2 ** (bits - 1) - 1
    dd = np.clip(dd, -lim, lim)
    g = [x * 2.0 ** (bits - 16) for x in gain]
    wfdb.wrsamp(f"r{fmt}", fs=500, units=["mV"] * 12, sig_name=names, d_signal=dd, fmt=[fmt] * 12,
                adc_gain=g, baseline=[int(b * 2.0 ** (bits - 16)) for b in base], write_dir=str(tmp_path))
    ours, _ = _compare_with_wfdb(str(tmp_path / f"r{fmt}.hea"))
    assert ours.meta["quality"] == [], ours.meta["quality"]  # checksums written by wfdb agree
    assert ours.leads[:3] == ("I", "II", "III") and ours.leads[3] == "aVR"


def _pack(fmt: str, x: np.ndarray) -> bytes:
    """Independent, per-sample encoder following the WFDB signal(5) specification."""
    x = [int(v) for v in x]
    out = bytearray()
    if fmt == "61":
        return np.asarray(x, ">i2").tobytes()
    if fmt == "160":
        return (np.asarray(x, np.int64) + 32768).astype("<u2").tobytes()
    if fmt == "8":
        prev = 0
        for v in x:
            out.append((v - prev) & 0xFF)
            prev = v
        return bytes(out)
    for i in range(0, len(x), 3):
        a, b, c = (x[i:i + 3] + [0, 0])[:3]
        a, b, c = a & 0x3FF, b & 0x3FF, c & 0x3FF
        if fmt == "310":
            w1 = (a << 1) | ((c & 0x1F) << 11)
            w2 = (b << 1) | ((c >> 5) << 11)
            out += w1.to_bytes(2, "little") + w2.to_bytes(2, "little")
        else:  # 311
            out += (a | (b << 10) | (c << 20)).to_bytes(4, "little")
    return bytes(out)


@pytest.mark.parametrize("fmt", ["61", "160", "8", "310", "311"])
def test_formats_wfdb_cannot_write(tmp_path, ludb1, fmt):
    d, gain, base, names = ludb1
    bits = {"61": 16, "160": 16, "8": 8, "310": 10, "311": 10}[fmt]
    dd = np.clip(_scaled(d, bits), -(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
    if fmt == "8":  # first differences must fit in a byte: keep a slowly varying real waveform
        dd = np.cumsum(np.clip(np.diff(dd, axis=0, prepend=0), -127, 127), axis=0)
    if fmt in ("310", "311"):
        dd[5, 2] = INVALID[int(fmt)]  # one missing sample -> NaN in both readers
    payload = _pack(fmt, dd.ravel())
    (tmp_path / f"r{fmt}.dat").write_bytes(payload)
    lines = [f"r{fmt} 12 500 {len(dd)}"]
    for i in range(12):
        g = gain[i] * 2.0 ** (bits - 16)
        init = int(dd[0, i]) if fmt == "8" else 0
        lines.append(f"r{fmt}.dat {fmt} {g}({int(base[i] * 2.0 ** (bits - 16))})/mV {bits} 0 {init} 0 0 {names[i]}")
    (tmp_path / f"r{fmt}.hea").write_text("\n".join(lines) + "\n")
    ours, ref = _compare_with_wfdb(str(tmp_path / f"r{fmt}.hea"))
    if fmt in ("310", "311"):
        assert np.isnan(ours.signal[2, 5]) and "nan_samples:III" in ours.meta["quality"]


def test_multi_file_record_with_byte_offsets_and_mixed_formats(tmp_path, ludb1):
    d, gain, base, names = ludb1
    header_bytes = b"\x00" * 37  # a prologue the header's +37 skips
    (tmp_path / "a.dat").write_bytes(header_bytes + d[:, :6].astype("<i2").tobytes())
    d32 = d[:, 6:] * 65536 + 12345
    (tmp_path / "b.dat").write_bytes(b"\xff" * 8 + d32.astype("<i4").tobytes())
    lines = ["multi 12 250 1000"]
    for i in range(12):
        if i < 6:
            lines.append(f"a.dat 16+37 {gain[i]}({base[i]})/mV 16 0 0 0 0 {names[i]}")
        else:
            lines.append(f"b.dat 32+8 {gain[i] * 65536}({base[i] * 65536 + 12345})/mV 32 0 0 0 0 {names[i]}")
    (tmp_path / "multi.hea").write_text("\n".join(lines) + "\n")
    ours, _ = _compare_with_wfdb(str(tmp_path / "multi.hea"))
    assert ours.fs == 250.0 and ours.n_leads == 12
    # the same record through the reader's header-only path
    h = read_header(tmp_path / "multi.hea")
    assert (h.n_samples, h.fs, h.leads) == (1000, 250.0, ours.leads)


def test_invalid_samples_become_nan_like_wfdb(tmp_path, sample_archive):
    src = sample_archive / "ludb"
    raw = np.fromfile(src / "1.dat", "<i2").reshape(-1, 12).copy()
    raw[100:110, 4] = -32768
    raw.tofile(tmp_path / "1.dat")
    text = (src / "1.hea").read_text()
    (tmp_path / "1.hea").write_text(text)
    ours, ref = _compare_with_wfdb(str(tmp_path / "1.hea"))
    assert np.isnan(ours.signal[4, 100:110]).all() and not np.isnan(ours.signal[4, :100]).any()
    # the header's checksum no longer matches the edited lead: flagged, other leads clean
    assert "checksum_mismatch:aVL" in ours.meta["quality"]
    assert not any(f.startswith("checksum_mismatch") and not f.endswith("aVL") for f in ours.meta["quality"])


def test_length_checks(tmp_path, sample_archive):
    for ext in ("hea", "dat"):
        shutil.copy(sample_archive / "ludb" / f"1.{ext}", tmp_path / f"1.{ext}")
    data = (tmp_path / "1.dat").read_bytes()
    (tmp_path / "1.dat").write_bytes(data + data[:24 * 10])  # 10 whole extra frames
    with pytest.raises(LengthMismatchError, match="5010 samples"):
        read_record(tmp_path / "1.hea")
    assert read_record(tmp_path / "1.hea", check_length=False).n_samples == 5000
    (tmp_path / "1.dat").write_bytes(data[:-1])
    with pytest.raises(TruncatedSignalError):
        read_header(tmp_path / "1.hea")  # caught from the file size alone


def test_ludb_header_comments_to_meta(sample_archive):
    rec = read_record(sample_archive / "ludb" / "101.hea")
    assert rec.meta["age"] == int((sample_archive / "ludb" / "101.hea").read_text().split("#<age>:")[1].split()[0])
    assert rec.meta["sex"] in ("M", "F")
    assert rec.meta["diagnoses"][0] == "Rhythm: Atrial fibrillation."
    assert rec.leads == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def test_challenge_header_variants():
    text = ("E00271.mat 12 500 5000 05-May-2020 14:50:55\n"
            + "".join(f"E00271.mat 16x1+24 1000.0(0)/mv 16 0 0 0 0 {n}\n" for n in
                      ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"])
            + "# Age: 78\n# Sex: Female\n# Dx: 67741000119109,426177001\n# Rx: Unknown\n"
            + "# Patient ID: 12345\n# Name: Jane Doe\n")
    h = parse_header(text, "x.hea")
    assert h.signals[0].units == "mv" and h.signals[0].byte_offset == 24 and h.signals[0].spf == 1
    meta = header_meta(h)
    assert meta == {"acquired": "2020-05-05T14:50:55", "age": 78, "sex": "F",
                    "dx_codes": ["67741000119109", "426177001"],
                    "dx_names": ["left atrial enlargement", "sinus bradycardia"]}  # no identifiers, no 'Unknown'


def test_georgia_header_that_wfdb_rejects(sample_archive):
    hea = sample_archive / "cinc2021" / "E00271.hea"
    with pytest.raises(Exception):
        wfdb.rdsamp(str(hea)[:-4])  # wfdb-python cannot parse 'E00271.mat' as a record name
    import scipy.io

    rec = read_record(hea)
    val = scipy.io.loadmat(str(hea)[:-4] + ".mat")["val"]
    fields = [re.match(r"([\d.]+)(?:\((-?\d+)\))?/", ln.split()[2]) for ln in hea.read_text().splitlines()[1:13]]
    gains = [float(m.group(1)) for m in fields]
    base = [int(m.group(2) or 0) for m in fields]  # no baseline given: ADC zero (0 here)
    ref = (val - np.array(base)[:, None]) / np.array(gains)[:, None]
    assert np.abs(rec.signal - ref).max() < TOL
    assert rec.record_id == "E00271" and rec.units == "mV"


def test_mat_v5_signal_file_goes_through_loadmat(tmp_path, sample_archive):
    """A Challenge-style record whose .mat is MATLAB v5 (offset in the header is then meaningless):
    read with scipy.io.loadmat and the header's gains; same values as the v4 original."""
    import scipy.io

    src = sample_archive / "cinc2021" / "A0689"
    val = scipy.io.loadmat(str(src) + ".mat")["val"]
    scipy.io.savemat(tmp_path / "A0689.mat", {"val": val}, format="5")
    shutil.copy(str(src) + ".hea", tmp_path / "A0689.hea")
    v5 = read_record(tmp_path / "A0689.hea")
    v4 = read_record(str(src) + ".hea")
    np.testing.assert_array_equal(v5.signal, v4.signal)
    assert os.path.getsize(tmp_path / "A0689.mat") != os.path.getsize(str(src) + ".mat")


def test_samples_per_frame_averaged_like_wfdb(tmp_path, ludb1):
    """'16x2': lead II stored at twice the frame rate; wfdb.rdsamp (smooth_frames) averages."""
    d, gain, base, names = ludb1
    frames = np.empty((500, 3), np.int64)  # lead I once, lead II twice per frame
    frames[:, 0] = d[:500, 0]
    frames[:, 1] = d[0:1000:2, 1]
    frames[:, 2] = d[1:1000:2, 1]
    (tmp_path / "spf.dat").write_bytes(frames.astype("<i2").tobytes())
    (tmp_path / "spf.hea").write_text(
        "spf 2 250 500\n"
        f"spf.dat 16 {gain[0]}({base[0]})/mV 16 0 0 0 0 I\n"
        f"spf.dat 16x2 {gain[1]}({base[1]})/mV 16 0 0 0 0 II\n")
    ours, _ = _compare_with_wfdb(str(tmp_path / "spf.hea"))
    assert ours.signal.shape == (2, 500)
