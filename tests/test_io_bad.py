"""Every bad-input case: a specific typed error (or a quality flag that strict=True turns into
one), never a crash of the scan."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from ecgbatch.io import Failure, read_header, read_record, scan
from ecgbatch.io import errors as E


@pytest.fixture(scope="module")
def bad(sample_archive):
    return sample_archive / "bad"


@pytest.mark.parametrize("name,error", [
    ("truncated.hea", E.TruncatedSignalError),
    ("empty.hea", E.EmptyFileError),
    ("not_numpy.npy", E.NotAnEcgError),
    ("not_matlab.mat", E.NotAnEcgError),
    ("not_ecg.xml", E.NotAnEcgError),
    ("orphan.dat", E.MissingHeaderError),
    ("long_signal.hea", E.LengthMismatchError),
    ("missing_signal.hea", E.MissingSignalFileError),
    ("unknown_format.hea", E.UnknownFormatError),
    ("garbage.hea", E.HeaderError),
    ("square.npy", E.AmbiguousLayoutError),
    ("no_rate.npy", E.MissingMetadataError),
])
def test_bad_files_raise_typed_errors(bad, name, error):
    with pytest.raises(error) as info:
        read_record(bad / name)
    assert info.value.path and str(bad) in str(info.value)
    if name not in ("not_ecg.xml",):  # header-only reads find the same problem
        with pytest.raises(error):
            read_header(bad / name)


def test_quality_flags_and_strict(bad):
    rec = read_record(bad / "flat_nan_absurd.hea")
    assert sorted(rec.meta["quality"]) == ["absurd_amplitude:V5", "all_nan:V4", "flat:V3"]
    with pytest.raises(E.BadSignalError, match="flat:V3"):
        read_record(bad / "flat_nan_absurd.hea", strict=True)
    one = read_record(bad / "single_lead.hea")
    assert one.leads == ("II",) and one.meta["quality"] == ["single_lead"]
    with pytest.raises(E.TooFewLeadsError):
        read_record(bad / "single_lead.hea", strict=True)
    with pytest.raises(E.TooFewLeadsError):
        read_record(bad / "single_lead.hea", min_leads=12)
    unk = read_record(bad / "unknown_leads.hea")
    assert unk.leads[0] == "CH1" and "unknown_lead:CH1" in unk.meta["quality"]
    with pytest.raises(E.UnknownLeadError):
        read_record(bad / "unknown_leads.hea", strict=True)
    # renaming the channels fixes it
    fixed = read_record(bad / "unknown_leads.hea", strict=True,
                        leads=["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"])
    assert fixed.meta["quality"] == []


def test_unknown_format_and_empty_and_directory(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x01\x02\x03 random bytes")
    with pytest.raises(E.UnknownFormatError):
        read_record(tmp_path / "x.bin")
    (tmp_path / "e.npy").write_bytes(b"")
    with pytest.raises(E.EmptyFileError):
        read_record(tmp_path / "e.npy")
    with pytest.raises(E.UnreadableError):
        read_record(tmp_path)
    with pytest.raises(E.UnreadableError):
        read_record(tmp_path / "does_not_exist.hea")


def test_header_signal_count_disagreement(tmp_path, sample_archive):
    text = (sample_archive / "ludb" / "1.hea").read_text().replace("1 12 500 5000", "1 13 500 5000", 1)
    (tmp_path / "1.hea").write_text(text)
    shutil.copy(sample_archive / "ludb" / "1.dat", tmp_path / "1.dat")
    with pytest.raises(E.HeaderError, match="13 signals"):
        read_record(tmp_path / "1.hea")


def test_binary_file_named_hea_and_wrong_npy_dtype(tmp_path, sample_archive):
    shutil.copy(sample_archive / "ludb" / "1.dat", tmp_path / "x.hea")
    with pytest.raises(E.HeaderError):
        read_record(tmp_path / "x.hea")
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(E.NotAnEcgError):
        read_record(tmp_path / "s.npy", fs=500)


def test_unreadable_directory_is_a_failure_not_a_crash(tmp_path, sample_archive):
    shutil.copytree(sample_archive / "ludb", tmp_path / "ok")
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(sample_archive / "ludb" / "3.hea", locked / "3.hea")
    os.chmod(locked, 0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: directory permissions are not enforced here")
        s = scan(tmp_path, headers_only=True)
        items = list(s)
        fails = [i for i in items if isinstance(i, Failure)]
        assert [f.error_type for f in fails] == ["unreadable"] and fails[0].path == str(locked)
        assert s.stats.records == 8
    finally:
        os.chmod(locked, 0o755)


def test_scan_survives_unexpected_reader_errors(tmp_path, sample_archive):
    """An HDF5 file whose dataset cannot be sliced as expected is a failure, not a crash."""
    import h5py

    with h5py.File(tmp_path / "weird.h5", "w") as f:
        f.create_dataset("ecg", data=np.zeros((3, 3, 3), np.float32))  # 3-D without a lead axis
    shutil.copy(sample_archive / "ludb" / "1.hea", tmp_path)
    shutil.copy(sample_archive / "ludb" / "1.dat", tmp_path)
    s = scan(tmp_path)
    items = list(s)
    assert s.stats.records == 1 and s.stats.failures == 3  # one failure per contained record
    assert {i.error_type for i in items if isinstance(i, Failure)} == {"ambiguous_layout"}


def test_directory_vanishing_during_a_scan_is_a_failure(tmp_path, sample_archive):
    """The same code path as an unreadable directory, reachable as root too: a directory that
    disappears between being listed and being read (archives change under long scans)."""
    from ecgbatch.io import list_records

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        for ext in ("hea", "dat"):
            shutil.copy(sample_archive / "ludb" / f"1.{ext}", tmp_path / sub / f"1.{ext}")
    it = list_records(tmp_path)
    first = next(it)
    assert first.path.endswith(os.path.join("a", "1.hea"))
    shutil.rmtree(tmp_path / "b")
    rest = list(it)
    assert len(rest) == 1 and rest[0].error_kind == "unreadable"
    with pytest.raises(E.UnreadableError, match="cannot list directory"):
        rest[0].read()
