"""The package's own MAT v4/v5 reader (ecgbatch.io.matfile): the same values as scipy.io.loadmat
on the real Challenge and CPSC2018 files, and typed errors (never an allocation the file cannot
back) on corrupt ones. SciPy serves here only as the reference on trusted files."""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ecgbatch.io import read_header, read_record
from ecgbatch.io.errors import NotAnEcgError, TruncatedSignalError, UnknownFormatError
from ecgbatch.io.matfile import read_mat


def _mats(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.mat"))


def _same_as_scipy(path: Path) -> None:
    ref = scipy.io.loadmat(path)
    mine = read_mat(str(path))
    assert mine.names == [k for k in ref if not k.startswith("__")]
    if "val" in ref:
        assert mine["val"].dtype == ref["val"].dtype and np.array_equal(mine["val"], ref["val"])
    else:
        ecg = ref["ECG"][0, 0]
        assert np.array_equal(mine["ECG"]["data"], ecg["data"])
        assert mine["ECG"]["sex"] == ecg["sex"][0] and mine["ECG"]["age"][0, 0] == ecg["age"][0, 0]


def test_sample_archive_mat_files_match_scipy(sample_archive):
    files = _mats(sample_archive / "cinc2021") + _mats(sample_archive / "cpsc2018")
    assert len(files) >= 10
    for f in files:
        _same_as_scipy(f)


@pytest.mark.shared
def test_all_shared_cinc_and_cpsc_mat_files_match_scipy(shared_data):
    files = _mats(shared_data / "cinc2021") + _mats(shared_data / "cpsc2018")
    assert len(files) >= 130
    for f in files:
        _same_as_scipy(f)


@pytest.mark.shared
def test_cpsc_records_identical_to_the_scipy_reading(shared_data):
    """What read_cpsc_mat returned when it used scipy.io.loadmat: data as float32, age, sex."""
    for f in _mats(shared_data / "cpsc2018"):
        ecg = scipy.io.loadmat(f)["ECG"][0, 0]
        rec = read_record(f)
        assert np.array_equal(rec.signal, ecg["data"].astype(np.float32))
        assert rec.meta["age"] == int(ecg["age"][0, 0])
        assert rec.meta["sex"] == {"male": "M", "female": "F"}[str(ecg["sex"][0]).lower()]
        assert read_header(f).n_samples == ecg["data"].shape[1]


def test_challenge_val_as_mat_v5_plain_and_compressed_reads_like_v4(sample_archive, tmp_path):
    """A Challenge record whose .mat is MAT v5 (the header's 16+24 offset no longer matches) is
    read through matfile and gives exactly the MAT v4 record."""
    ref = read_record(sample_archive / "cinc2021/E00271.hea")
    val = read_mat(str(sample_archive / "cinc2021/E00271.mat"))["val"]
    for compress in (False, True):
        d = tmp_path / f"v5{compress}"
        d.mkdir()
        (d / "E00271.hea").write_bytes((sample_archive / "cinc2021/E00271.hea").read_bytes())
        scipy.io.savemat(d / "E00271.mat", {"val": val}, do_compression=compress)
        rec = read_record(d / "E00271.hea")
        assert np.array_equal(rec.signal, ref.signal) and rec.leads == ref.leads


def test_reading_a_cpsc_file_never_imports_scipy(sample_archive):
    code = ("import sys; from ecgbatch.io import read_record; "
            f"read_record({str(sample_archive / 'cpsc2018/A1980.mat')!r}); "
            "print('scipy.io' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- corrupt files -------------------------------------------------------------------------

def _v5_header() -> bytes:
    return b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"


def _element(mtype: int, payload: bytes) -> bytes:
    return struct.pack("<II", mtype, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _matrix(name: bytes, dims, data: bytes, mx_class=10, mi_type=3) -> bytes:
    body = (_element(6, struct.pack("<II", mx_class, 0)) + _element(5, struct.pack(f"<{len(dims)}i", *dims))
            + _element(1, name) + _element(mi_type, data))
    return _element(14, body)


def test_v5_dimensions_larger_than_the_data_are_refused(tmp_path):
    p = tmp_path / "big.mat"
    p.write_bytes(_v5_header() + _matrix(b"val", (12, 2_000_000_000), b"\0" * 48))
    with pytest.raises(NotAnEcgError, match="do not fill"):
        read_mat(str(p))
    p.write_bytes(_v5_header() + _matrix(b"val", (12, 2), b"\0" * 48)[:-40])
    with pytest.raises(TruncatedSignalError):
        read_mat(str(p))


def test_v5_compressed_element_bounded_and_checked(tmp_path):
    inner = _matrix(b"val", (2, 2), struct.pack("<4h", 1, 2, 3, 4))
    ok = tmp_path / "ok.mat"
    z = zlib.compress(inner)
    ok.write_bytes(_v5_header() + struct.pack("<II", 15, len(z)) + z)  # no padding after miCOMPRESSED
    assert read_mat(str(ok))["val"].tolist() == [[1, 3], [2, 4]]
    liar = bytearray(inner)
    liar[4:8] = struct.pack("<I", 1 << 31)  # the inner element claims 2 GiB
    p = tmp_path / "liar.mat"
    z = zlib.compress(bytes(liar))
    p.write_bytes(_v5_header() + struct.pack("<II", 15, len(z)) + z)
    with pytest.raises(NotAnEcgError, match="claims"):
        read_mat(str(p))
    z = bytearray(zlib.compress(inner))
    z[-1] ^= 0xFF  # Adler-32 checksum broken: garbage that inflates must not pass
    p.write_bytes(_v5_header() + struct.pack("<II", 15, len(z)) + bytes(z))
    with pytest.raises(NotAnEcgError):
        read_mat(str(p))


def test_v5_unsupported_and_v73_files_are_typed(tmp_path):
    p = tmp_path / "cplx.mat"
    body = (_element(6, struct.pack("<II", 6 | 0x800, 0)) + _element(5, struct.pack("<2i", 1, 1))
            + _element(1, b"val") + _element(9, b"\0" * 8) + _element(9, b"\0" * 8))
    p.write_bytes(_v5_header() + _element(14, body))
    with pytest.raises(UnknownFormatError, match="complex"):
        read_mat(str(p))
    p.write_bytes(_v5_header()[:124] + b"\x00\x02IM" + b"\0" * 64)
    with pytest.raises(UnknownFormatError, match="7.3"):
        read_mat(str(p))


def test_v5_nesting_is_bounded(tmp_path):
    leaf = _matrix(b"", (1, 1), struct.pack("<h", 7))
    for _ in range(40):  # cells inside cells
        body = (_element(6, struct.pack("<II", 1, 0)) + _element(5, struct.pack("<2i", 1, 1))
                + _element(1, b"") + leaf)
        leaf = _element(14, body)
    p = tmp_path / "deep.mat"
    p.write_bytes(_v5_header() + leaf)
    with pytest.raises(NotAnEcgError, match="nesting"):
        read_mat(str(p))


def test_v4_matrix_larger_than_the_file_is_refused(sample_archive, tmp_path):
    data = bytearray((sample_archive / "cinc2021/A0689.mat").read_bytes())
    data[8:12] = struct.pack("<i", 2_000_000_000)  # columns
    p = tmp_path / "A0689.mat"
    p.write_bytes(bytes(data))
    with pytest.raises(TruncatedSignalError):
        read_mat(str(p))
