"""WFDB corpus built at test time (seeded): every signal format x layout (plain, skew, byte offset,
several samples per frame, all together), written by wfdb's own writer where it can (80, 212, 16,
24, 32, 508, 516, 524) and packed here from the signal(5) specification where it cannot (8, 61,
160, 310, 311); multi-segment records in fixed and variable layout with gaps; random bytes in the
bit-packed formats; absurd headers.

The reference is wfdb.rdsamp: ``read_record`` must return exactly its values rounded to the
Record's float32 (max |difference| 0), NaN exactly where it has NaN, the same fs and signal names.
One documented exception: a skewed signal with several samples per frame, whose last ``skew``
frames lie beyond the file; wfdb.rdsamp averages zero padding there, we return NaN (as the WFDB
C library returns its invalid-sample code). wfdb.rdsamp cannot read skewed format-8 or FLAC files
at all (TypeError / KeyError in wfdb 4.3); those are compared with wfdb.rdrecord(ignore_skew=True)
shifted by the skew.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import wfdb

from ecgbatch.io import read_header, read_record
from ecgbatch.io.errors import (EcgReadError, HeaderError, MissingSignalFileError, NotAnEcgError,
                                RecordTooLargeError, TruncatedSignalError, UnknownFormatError)
from ecgbatch.io.leads import canonical_leads

WFDB_WRITES = ("80", "212", "16", "24", "32", "508", "516", "524")
PACKED_HERE = ("8", "61", "160", "310", "311")
BITS = {"8": 8, "80": 8, "508": 8, "212": 12, "310": 10, "311": 10, "16": 16, "61": 16, "160": 16,
        "516": 16, "24": 24, "524": 24, "32": 32}
NAMES = ["I", "II", "V1"]
N = 301  # frames: odd, so bit-packed formats end in a partial group
LAYOUTS = {
    "plain": dict(spf=[1, 1, 1], skew=[0, 0, 0], offset=0),
    "skew": dict(spf=[1, 1, 1], skew=[0, 2, 2], offset=0),
    "offset": dict(spf=[1, 1, 1], skew=[0, 0, 0], offset=37),
    "spf": dict(spf=[1, 2, 4], skew=[0, 0, 0], offset=0),
    "all": dict(spf=[2, 1, 3], skew=[0, 3, 3], offset=11),
}
# FLAC: one samples-per-frame for the whole file, no byte offset (wfdb writes none)
FLAC_LAYOUTS = {"plain": dict(spf=[1, 1, 1], skew=[0, 0, 0], offset=0),
                "skew": dict(spf=[1, 1, 1], skew=[0, 2, 2], offset=0),
                "spf": dict(spf=[3, 3, 3], skew=[0, 0, 0], offset=0),
                "all": dict(spf=[2, 2, 2], skew=[0, 3, 3], offset=0)}
CASES = ([(f, lay) for f in WFDB_WRITES + PACKED_HERE if not f.startswith("5") for lay in LAYOUTS]
         + [(f, lay) for f in WFDB_WRITES if f.startswith("5") for lay in FLAC_LAYOUTS])


def _digital(rng, fmt: str, n: int) -> np.ndarray:
    """n digital samples that fill the format's range, with a few invalid-sample codes."""
    bits = BITS[fmt]
    if fmt == "8":  # first differences must fit in a byte
        return np.cumsum(rng.integers(-127, 128, n)) + int(rng.integers(-500, 500))
    lim = 2 ** (bits - 1) - 1
    x = rng.integers(-lim, lim + 1, n, dtype=np.int64)
    x[rng.choice(n, 3, replace=False)] = -lim - 1  # WFDB's invalid sample -> NaN
    return x


def _frames(signals: list[np.ndarray], spf: list[int]) -> np.ndarray:
    """Per-signal expanded samples -> the stored stream: each frame holds every signal's spf samples."""
    n = len(signals[0]) // spf[0]
    return np.concatenate([s.reshape(n, k) for s, k in zip(signals, spf)], axis=1).ravel()


def _pack(fmt: str, x: np.ndarray) -> bytes:
    """Independent per-sample encoder following the WFDB signal(5) specification (unused bits 0)."""
    if fmt == "61":
        return np.asarray(x, ">i2").tobytes()
    if fmt == "160":
        return (np.asarray(x, np.int64) + 32768).astype("<u2").tobytes()
    if fmt == "8":
        return np.asarray(x, np.int64).astype(np.int8).tobytes()  # already differences
    out = bytearray()
    vals = [int(v) for v in x]
    for i in range(0, len(vals), 3):
        group = vals[i:i + 3]
        a, b, c = [v & 0x3FF for v in group + [0] * (3 - len(group))]
        if fmt == "310":
            chunk = ((a << 1) | ((c & 0x1F) << 11)).to_bytes(2, "little") + \
                    ((b << 1) | ((c >> 5) << 11)).to_bytes(2, "little")
            out += chunk if len(group) > 1 else chunk[:2]
        else:  # 311
            out += (a | (b << 10) | (c << 20)).to_bytes(4, "little")[:{1: 2, 2: 3, 3: 4}[len(group)]]
    return bytes(out)


def _write_packed(tmp_path, name, fmt, signals, spf, skew, offset, gains, bases, rng):
    """A record in a format wfdb cannot write: bytes packed here, header written here."""
    if fmt == "8":  # per signal: differences in time order; the header's initial value starts them
        diffs = [np.diff(s, prepend=s[0] - d0) for s, d0 in zip(signals, rng.integers(-9, 9, 3))]
        init = [int(s[0] - d[0]) for s, d in zip(signals, diffs)]
        payload = _pack(fmt, _frames(diffs, spf))
    else:
        init = [int(s[0]) for s in signals]
        payload = _pack(fmt, _frames(signals, spf))
    (tmp_path / f"{name}.dat").write_bytes(rng.integers(0, 256, offset, np.uint8).tobytes() + payload)
    lines = [f"{name} {len(signals)} 500 {len(signals[0]) // spf[0]}"]
    for i, s in enumerate(signals):
        spec = fmt + (f"x{spf[i]}" if spf[i] > 1 else "") + (f":{skew[i]}" if skew[i] else "") + \
            (f"+{offset}" if offset else "")
        lines.append(f"{name}.dat {spec} {gains[i]}({bases[i]})/mV {BITS[fmt]} 0 {init[i]} "
                     f"{int(s.sum()) % 65536} 0 {NAMES[i]}")
    (tmp_path / f"{name}.hea").write_text("\n".join(lines) + "\n")


def _write_with_wfdb(tmp_path, name, fmt, signals, spf, skew, offset, gains, bases):
    k = len(signals)
    rec = wfdb.Record(record_name=name, n_sig=k, fs=500, sig_len=len(signals[0]) // spf[0],
                      file_name=[f"{name}.dat"] * k, fmt=[fmt] * k, samps_per_frame=spf, skew=skew,
                      byte_offset=[offset] * k if offset else None, adc_gain=gains,
                      baseline=bases, units=["mV"] * k, sig_name=NAMES[:k],
                      adc_res=[BITS[fmt]] * k, adc_zero=[0] * k, block_size=[0] * k,
                      e_d_signal=signals)
    rec.set_d_features(expanded=True)
    rec.wrsamp(expanded=True, write_dir=str(tmp_path))


def write_record(tmp_path, name, fmt, layout, seed, n=N, whole_gains=False):
    """whole_gains: gains exact in float32 (the reader's float32 arithmetic), else 3 decimals
    (its float64 arithmetic)."""
    rng = np.random.default_rng(seed)
    spf, skew, offset = layout["spf"], layout["skew"], layout["offset"]
    signals = [_digital(rng, fmt, n * k) for k in spf]
    gains = [round(float(g), 0 if whole_gains else 3) for g in rng.uniform(5, 2000, len(spf))]
    bases = [int(b) for b in rng.integers(-1000, 1000, len(spf))]
    if fmt in PACKED_HERE:
        _write_packed(tmp_path, name, fmt, signals, spf, skew, offset, gains, bases, rng)
    else:
        _write_with_wfdb(tmp_path, name, fmt, signals, spf, skew, offset, gains, bases)
    return tmp_path / f"{name}.hea"


def _deskewed_reference(hea, skew: list[int]):
    """wfdb.rdrecord(ignore_skew=True), each signal shifted by its skew (NaN beyond the file)."""
    rec = wfdb.rdrecord(str(hea)[:-4], ignore_skew=True)
    ref = np.full(rec.p_signal.T.shape, np.nan)
    for i, k in enumerate(skew):
        ref[i, :ref.shape[1] - k] = rec.p_signal[k:, i]
    return ref.T, {"fs": rec.fs, "sig_name": rec.sig_name}


def assert_like_wfdb(hea, unknown_tail: dict[int, int] | None = None, deskew: list[int] | None = None):
    """read_record == wfdb.rdsamp rounded to float32, NaN for NaN; unknown_tail: {signal: frames}
    where wfdb averages padding beyond the file and we return NaN; deskew: compare with
    ``_deskewed_reference`` instead of rdsamp."""
    ours = read_record(hea)
    ref, fields = _deskewed_reference(hea, deskew) if deskew else wfdb.rdsamp(str(hea)[:-4])
    ref32 = ref.T.astype(np.float32)
    assert ours.fs == fields["fs"]
    assert list(ours.leads) == list(canonical_leads(fields["sig_name"]))  # LUDB's 'avf' -> 'aVF'

    assert ours.signal.shape == ref32.shape
    for i, k in (unknown_tail or {}).items():
        assert np.isnan(ours.signal[i, -k:]).all()
        ref32[i, -k:] = np.nan
    np.testing.assert_array_equal(np.isnan(ours.signal), np.isnan(ref32))
    both = ~np.isnan(ref32)
    assert np.abs(ours.signal[both] - ref32[both]).max(initial=0) == 0
    return ours


@pytest.mark.parametrize("fmt,layout", CASES, ids=[f"{f}-{lay}" for f, lay in CASES])
def test_corpus_reads_like_wfdb(tmp_path, fmt, layout):
    lay = (FLAC_LAYOUTS if fmt.startswith("5") else LAYOUTS)[layout]
    seed = int(fmt) * 100 + list(LAYOUTS).index(layout)
    hea = write_record(tmp_path, f"r{fmt}", fmt, lay, seed, whole_gains=layout in ("plain", "spf"))
    skewed = any(lay["skew"])
    if skewed and (fmt == "8" or fmt.startswith("5")):  # wfdb.rdsamp fails on these
        ours = assert_like_wfdb(hea, deskew=lay["skew"])
    else:
        tail = {i: k for i, (k, s) in enumerate(zip(lay["skew"], lay["spf"])) if k and s > 1}
        ours = assert_like_wfdb(hea, tail)
    assert not [q for q in ours.meta["quality"] if q.startswith("checksum")], ours.meta["quality"]
    assert ours.meta["storage"] == f"wfdb {fmt}"
    averaged = {NAMES[i]: k for i, k in enumerate(lay["spf"]) if k > 1}
    assert ours.meta.get("samples_per_frame", {}) == averaged
    h = read_header(hea)
    assert (h.n_samples, h.fs, h.leads) == (ours.n_samples, ours.fs, ours.leads)


def test_real_ludb_records_match_wfdb_exactly(sample_archive):
    for hea in sorted((sample_archive / "ludb").glob("*.hea")):
        assert_like_wfdb(hea)


@pytest.mark.parametrize("fmt", ["212", "310", "311", "24", "16", "61", "80", "160", "32"])
def test_every_byte_pattern_decodes_like_wfdb(tmp_path, fmt):
    """Random bytes (unused bits set too) in 1-4 interleaved signals of odd and even lengths."""
    from ecgbatch.io.wfdb_decode import n_bytes

    rng = np.random.default_rng(int(fmt))
    for n_sig in (1, 2, 3, 4):
        for n in (299, 300, 301):
            (tmp_path / "b.dat").write_bytes(
                rng.integers(0, 256, n_bytes(int(fmt), n * n_sig), np.uint8).tobytes())
            (tmp_path / "b.hea").write_text(f"b {n_sig} 250 {n}\n" + "".join(
                f"b.dat {fmt} 200/mV {BITS[fmt]} 0 0 0 0 {NAMES[i % 3]}\n" for i in range(n_sig)))
            ref, _ = wfdb.rdsamp(str(tmp_path / "b"))
            ours = read_record(tmp_path / "b.hea", target_units=None)
            np.testing.assert_array_equal(ours.signal, ref.T.astype(np.float32))


def _segment(tmp_path, name, fmt, n, seed, names, spf=None):
    lay = dict(spf=spf or [1] * len(names), skew=[0] * len(names), offset=0)
    hea = write_record(tmp_path, name, fmt, lay, seed, n=n)
    text = hea.read_text().splitlines()
    for i, sig in enumerate(names):  # rename the signals for a variable layout
        text[1 + i] = text[1 + i].rsplit(" ", 1)[0] + " " + sig
    hea.write_text("\n".join(text) + "\n")


def test_multisegment_fixed_layout(tmp_path):
    _segment(tmp_path, "s1", "16", 120, 1, NAMES)
    _segment(tmp_path, "s2", "212", 81, 2, NAMES, spf=[1, 2, 1])
    _segment(tmp_path, "s3", "310", 64, 3, NAMES)
    (tmp_path / "fixed.hea").write_text("fixed/3 3 500 265\ns1 120\ns2 81\ns3 64\n# Age: 61\n")
    ours = assert_like_wfdb(tmp_path / "fixed.hea")
    assert ours.meta["age"] == 61 and "multi-segment" in ours.meta["storage"]
    assert read_header(tmp_path / "fixed.hea").n_samples == 265
    # a gap ('~'): wfdb.rdsamp cannot assemble a fixed layout with one (AttributeError in wfdb
    # 4.3); the reference is then each segment's rdsamp end to end, NaN over the gap
    (tmp_path / "gap.hea").write_text("gap/4 3 500 315\ns1 120\n~ 50\ns2 81\ns3 64\n")
    parts = [wfdb.rdsamp(str(tmp_path / "s1"))[0], np.full((50, 3), np.nan),
             wfdb.rdsamp(str(tmp_path / "s2"))[0], wfdb.rdsamp(str(tmp_path / "s3"))[0]]
    gap = read_record(tmp_path / "gap.hea")
    np.testing.assert_array_equal(gap.signal, np.concatenate(parts).T.astype(np.float32))
    assert np.isnan(gap.signal[:, 120:170]).all()


def test_multisegment_variable_layout(tmp_path):
    _segment(tmp_path, "v1", "16", 100, 4, ["II", "I"])
    _segment(tmp_path, "v2", "80", 70, 5, ["V1"])
    _segment(tmp_path, "v3", "24", 90, 6, ["I", "II", "V1"])
    (tmp_path / "var_layout.hea").write_text(
        "var_layout 3 500 0\n" + "".join(f"~ 0 200/mV 16 0 0 0 0 {n}\n" for n in NAMES))
    (tmp_path / "var.hea").write_text(
        "var/5 3 500 300\nvar_layout 0\nv1 100\n~ 40\nv2 70\nv3 90\n")
    ours = assert_like_wfdb(tmp_path / "var.hea")
    assert np.isnan(ours.signal[2, :100]).all() and np.isnan(ours.signal[:2, 140:210]).all()
    assert read_header(tmp_path / "var.hea").leads == ("I", "II", "V1")


def _small_record(tmp_path, header_line=None, signal_line=None):
    write_record(tmp_path, "x", "16", LAYOUTS["plain"], 7, n=100)
    lines = (tmp_path / "x.hea").read_text().splitlines()
    if header_line:
        lines[0] = header_line
    if signal_line:
        lines[1] = signal_line
    (tmp_path / "x.hea").write_text("\n".join(lines) + "\n")
    return tmp_path / "x.hea"


@pytest.mark.parametrize("record_line,signal_line,error", [
    ("x 3 nan 100", None, HeaderError),
    ("x 3 inf 100", None, HeaderError),
    ("x 3 -500 100", None, HeaderError),
    ("x 3 0 100", None, HeaderError),
    ("x 1000000000 500 100", None, HeaderError),
    ("x 3 500 1000000000000", None, TruncatedSignalError),
    (None, "x.dat 16 1e999/mV 16 0 0 0 0 I", HeaderError),
    (None, "x.dat 16 nan/mV 16 0 0 0 0 I", HeaderError),
    (None, "x.dat 16 1e-300/mV 16 0 0 0 0 I", HeaderError),
    (None, "x.dat 16 200(99999999999)/mV 16 0 0 0 0 I", HeaderError),
    (None, "x.dat 16x0 200/mV 16 0 0 0 0 I", HeaderError),
    (None, "x.dat 16+1000000000000000 200/mV 16 0 0 0 0 I", TruncatedSignalError),
    (None, "x.dat 999 200/mV 16 0 0 0 0 I", UnknownFormatError),
])
def test_absurd_header_fields_give_typed_errors(tmp_path, record_line, signal_line, error):
    hea = _small_record(tmp_path, record_line, signal_line)
    with pytest.raises(error):
        read_record(hea)
    with pytest.raises(EcgReadError):
        read_header(hea)


def test_zero_gain_is_uncalibrated_and_huge_skew_is_nan(tmp_path):
    hea = _small_record(tmp_path, signal_line="x.dat 16 0/mV 16 0 0 0 0 I")
    assert_like_wfdb(hea)  # gain 0 = uncalibrated = 200 adu/mV, as wfdb and the WFDB library read it
    plain = read_record(_small_record(tmp_path))
    hea = _small_record(tmp_path, signal_line="x.dat 16:1000000000 200/mV 16 0 0 0 0 I")
    rec = read_record(hea)  # no allocation for the skew: the whole signal lies beyond the file
    assert np.isnan(rec.signal[0]).all()  # (wfdb.rdsamp would allocate a billion frames here)
    np.testing.assert_array_equal(rec.signal[1:], plain.signal[1:])


def test_bad_multisegment_and_flac_records_give_typed_errors(tmp_path):
    _segment(tmp_path, "s1", "16", 50, 1, NAMES)
    # a gap of 10^12 samples: over the per-record budget before anything is allocated
    cases = {"gap": ("g/2 3 500\ns1 50\n~ 1000000000000\n", RecordTooLargeError),
             "missing": ("m/2 3 500\ns1 50\nnope 50\n", MissingSignalFileError),
             "length": ("l/1 3 500\ns1 60\n", EcgReadError),
             "nested": ("n/1 3 500\ng 50\n", HeaderError)}
    for name, (text, error) in cases.items():
        (tmp_path / f"{name[0]}.hea").write_text(text)
        with pytest.raises(error):
            read_record(tmp_path / f"{name[0]}.hea")
    (tmp_path / "f.dat").write_bytes(b"fLaC" + bytes(range(200)))
    (tmp_path / "f.hea").write_text("f 1 500 10\nf.dat 516 200/mV 16 0 0 0 0 I\n")
    with pytest.raises(NotAnEcgError):
        read_record(tmp_path / "f.hea")


def test_scan_lists_a_multisegment_record_once(tmp_path):
    """The scanner groups a master header with its segment headers and their signal files: one
    record, every file accounted for, the segments not listed again on their own."""
    from ecgbatch.io.scanner import ScanStats, list_records

    _segment(tmp_path, "v1", "16", 100, 4, ["II", "I"])
    _segment(tmp_path, "v3", "24", 90, 6, ["I", "II", "V1"])
    (tmp_path / "var_layout.hea").write_text(
        "var_layout 3 500 0\n" + "".join(f"~ 0 200/mV 16 0 0 0 0 {n}\n" for n in NAMES))
    (tmp_path / "var.hea").write_text("var/4 3 500 230\nvar_layout 0\nv1 100\n~ 40\nv3 90\n")
    stats = ScanStats()
    sources = list(list_records(tmp_path, stats=stats))
    assert [os.path.basename(s.path) for s in sources] == ["var.hea"]
    assert sorted(sources[0].files) == sorted(p.name for p in tmp_path.iterdir())
    assert read_record(sources[0].path).n_samples == 230
