"""Issue 9's guarantees at the door of read_record / read_header: typed errors only, and never a
record with inf samples, an impossible rate or no samples; sizes declared by headers checked
against the file before allocating or enumerating."""
from __future__ import annotations

import json
import re
import shutil
import struct
import time
import zipfile

import h5py
import numpy as np
import pytest

from ecgbatch.io import list_records, read_header, read_record
from ecgbatch.io.errors import (BadSignalError, HeaderError, NotAnEcgError, ReaderCrashError,
                                ReadOptionError, RecordIndexError, TruncatedSignalError)
from ecgbatch.io.validate import MAX_FS, check_rate, typed_errors


@pytest.fixture()
def ptb(sample_archive):
    return np.load(sample_archive / "ptbxl/records/318.npy")  # (5000, 12) float32


def test_unforeseen_exceptions_become_reader_crash_naming_type_and_file():
    with pytest.raises(ReaderCrashError, match=r"x\.dat: .*KeyError") as e:
        with typed_errors("x.dat"):
            {}["missing"]
    assert e.value.kind == "reader_crash" and e.value.path == "x.dat"
    with pytest.raises(ReadOptionError):  # the caller's mistake passes through
        with typed_errors("x.dat"):
            raise ReadOptionError("layout must be ...")


def test_bad_arguments_stay_value_errors(sample_archive):
    with pytest.raises(ValueError, match="layout"):
        read_record(sample_archive / "ptbxl/records/318.npy", layout="diagonal")
    with pytest.raises(ValueError, match="index"):
        read_record(sample_archive / "ptbxl/records/318.npy", index=-1)


@pytest.mark.parametrize("fs", [float("nan"), float("inf"), 0.0, -500.0, 1e-300, 1e300])
def test_impossible_rates_are_header_errors(tmp_path, ptb, fs):
    np.save(tmp_path / "r.npy", ptb)
    with pytest.raises(HeaderError, match="sampling rate"):
        read_record(tmp_path / "r.npy", fs=fs, layout="samples_first")
    (tmp_path / "r.json").write_text(json.dumps({"fs": fs, "layout": "samples_first"}))  # NaN/Infinity
    with pytest.raises(HeaderError):
        read_header(tmp_path / "r.npy")
    assert check_rate(500, "x") == 500.0 and check_rate(MAX_FS, "x") == MAX_FS


@pytest.mark.parametrize("sidecar", ['{"fs": "fast"}', '{"fs": [1, 2]}', '{"leads": 12, "fs": 500}',
                                     '{"leads": [1, 2], "fs": 500}', '{"layout": "diagonal", "fs": 500}',
                                     '{"meta": [1], "fs": 500}', "[" * 100000 + "]" * 100000])
def test_malformed_sidecars_are_header_errors(tmp_path, ptb, sidecar):
    np.save(tmp_path / "r.npy", ptb)
    (tmp_path / "r.json").write_text(sidecar)
    with pytest.raises(HeaderError):
        read_record(tmp_path / "r.npy")


def test_values_beyond_float32_are_bad_signal_not_inf(tmp_path, ptb):
    x = ptb.astype(np.float64)
    x[100, 3] = 1e300
    np.save(tmp_path / "r.npy", x)
    with pytest.raises(BadSignalError, match="infinite"):
        read_record(tmp_path / "r.npy", fs=500, layout="samples_first")


def test_tiny_wfdb_gain_gives_bad_signal_not_inf(sample_archive, tmp_path):
    text = (sample_archive / "ludb/1.hea").read_text().replace("1716(6)/mV", "1e-40(6)/mV")
    (tmp_path / "1.hea").write_text(text)
    shutil.copyfile(sample_archive / "ludb/1.dat", tmp_path / "1.dat")
    # the WFDB header parser refuses the gain itself; the record check would catch it otherwise
    with pytest.raises((BadSignalError, HeaderError)):
        read_record(tmp_path / "1.hea")


def test_npy_header_claiming_more_than_the_file_holds(tmp_path, ptb):
    p = tmp_path / "r.npy"
    np.save(p, ptb)
    raw = p.read_bytes().replace(b"(5000, 12)", b"(5000000000, 12)".ljust(10)[:16], 1)
    p.write_bytes(raw)
    t0 = time.perf_counter()
    with pytest.raises((TruncatedSignalError, NotAnEcgError)):
        read_record(p, fs=500, layout="samples_first")
    assert time.perf_counter() - t0 < 2


def test_npz_entry_that_is_not_an_array(tmp_path):
    """np.load hands back bytes for such an entry (issue 9: AttributeError in count_records)."""
    with zipfile.ZipFile(tmp_path / "r.npz", "w") as z:
        z.writestr("signal", b"\0" * 400)
    [src] = list(list_records(tmp_path))
    assert src.error_kind == "not_an_ecg"
    with pytest.raises(NotAnEcgError):
        read_record(tmp_path / "r.npz", fs=500)


def test_npz_entry_declaring_gigabytes_is_refused_before_inflating(tmp_path, ptb):
    """A zip entry whose directory claims ~4 GiB for a few KiB of deflate data (a zip bomb or a
    corrupt size field) is refused from the declared sizes alone."""
    np.savez_compressed(tmp_path / "r.npz", signal=ptb[:500])
    raw = bytearray((tmp_path / "r.npz").read_bytes())
    for sig, at in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):  # central and local headers
        i = raw.find(sig)
        raw[i + at:i + at + 4] = struct.pack("<I", 0xFFFFFFF0)
    (tmp_path / "r.npz").write_bytes(bytes(raw))
    with pytest.raises(NotAnEcgError, match="declares"):
        read_record(tmp_path / "r.npz", fs=500)


def test_hdf5_claiming_ten_million_records_is_not_enumerated(tmp_path):
    p = tmp_path / "code15.hdf5"
    with h5py.File(p, "w") as f:
        f.create_dataset("tracings", data=np.random.default_rng(0).standard_normal((3, 1024, 12), np.float32))
    raw = p.read_bytes()
    assert raw.count(struct.pack("<QQQ", 3, 1024, 12)) >= 1
    p.write_bytes(raw.replace(struct.pack("<QQQ", 3, 1024, 12), struct.pack("<QQQ", 10_000_000, 1024, 12)))
    t0 = time.perf_counter()
    sources = list(list_records(tmp_path))
    assert len(sources) == 1 and sources[0].error_kind in ("truncated_signal", "not_an_ecg")
    assert time.perf_counter() - t0 < 2


def test_hdf5_container_without_index_is_a_typed_value_error(tmp_path):
    with h5py.File(tmp_path / "c.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.zeros((2, 64, 12), np.float32) + 0.1)
    with pytest.raises(RecordIndexError) as e:
        read_record(tmp_path / "c.hdf5")
    assert isinstance(e.value, ValueError) and e.value.kind == "record_index"


def test_muse_huge_exponent_and_zero_gain(sample_archive, tmp_path):
    text = (sample_archive / "xml/ludb_1_muse.xml").read_text()
    p = tmp_path / "m.xml"
    huge = "<SampleExponent>999999</SampleExponent>"
    p.write_text(re.sub(r"<SampleExponent>[^<]*</SampleExponent>", huge, text, count=1)
                 if "<SampleExponent>" in text else text.replace("</SampleBase>", "</SampleBase>" + huge, 1))
    with pytest.raises(HeaderError):
        read_record(p)
    start = text.index("<LeadAmplitudeUnitsPerBit>") + len("<LeadAmplitudeUnitsPerBit>")
    p.write_text(text[:start] + "0" + text[text.index("</LeadAmplitudeUnitsPerBit>"):])
    with pytest.raises(HeaderError, match="non-zero"):
        read_record(p)


def test_aecg_nan_increment(sample_archive, tmp_path):
    text = (sample_archive / "xml/ludb_3_aecg.xml").read_text()
    p = tmp_path / "a.xml"
    p.write_text(re.sub(r'(<increment value=")[^"]*"', r'\1NaN"', text, count=1))
    with pytest.raises(HeaderError):
        read_record(p)
