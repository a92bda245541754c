"""Every reader, as an attacker would use it: a record that names a file outside its own folder
(``../``, an absolute path, a symbolic link that leads out) is refused with the typed error
``signal_file_outside`` (ecgbatch.io.confine), by read_record, read_header and a scan alike, and
the message shows neither the outside file's contents nor its size. Links that stay inside the
folder still work."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ecgbatch.io import read_header, read_record
from ecgbatch.io.errors import SignalFileOutsideError
from ecgbatch.io.scanner import Failure, scan

SECRET = b"TOPSECRET-42 abc\n" * 200      # a file outside the archive


def _header(name: str, signal_file: str, n: int = 1000, fmt: int = 16) -> str:
    lines = [f"{name} 2 500 {n}"]
    lines += [f"{signal_file} {fmt} 1000/mV 16 0 0 0 0 {lead}" for lead in ("I", "II")]
    return "\n".join(lines) + "\n"


def _signal(n: int = 1000) -> bytes:
    t = np.arange(n)
    x = np.stack([300 * np.sin(t / 20), 200 * np.cos(t / 15)], axis=1)  # [samples, signals]
    return x.astype("<i2").tobytes()


@pytest.fixture
def dirs(tmp_path):
    archive, outside = tmp_path / "archive", tmp_path / "outside"
    archive.mkdir()
    outside.mkdir()
    (outside / "secret.dat").write_bytes(SECRET)
    (outside / "good.dat").write_bytes(_signal())
    return archive, outside


def _refused(path, **kw):
    for read in (read_record, read_header):
        with pytest.raises(SignalFileOutsideError) as e:
            read(str(path), **kw)
        assert e.value.kind == "signal_file_outside"
        msg = str(e.value)
        assert "TOPSECRET" not in msg and "bytes" not in msg and "outside" in msg
    [item] = list(scan(path.parent, **kw))
    assert isinstance(item, Failure) and item.error_type == "signal_file_outside"


@pytest.mark.parametrize("name", ["../outside/good.dat", "{outside}/good.dat", "/etc/passwd",
                                  "../outside/secret.dat"])
def test_wfdb_header_naming_a_file_outside(dirs, name):
    archive, outside = dirs
    (archive / "r.hea").write_text(_header("r", name.format(outside=outside)))
    _refused(archive / "r.hea")
    _refused(archive / "r")     # the record name without its extension: the same rule


def test_wfdb_signal_file_that_links_outside(dirs):
    archive, outside = dirs
    (archive / "r.hea").write_text(_header("r", "r.dat"))
    (archive / "r.dat").symlink_to(outside / "good.dat")
    _refused(archive / "r.hea")
    # a link that stays inside the folder is an ordinary file
    os.unlink(archive / "r.dat")
    (archive / "data.bin").write_bytes(_signal())
    (archive / "r.dat").symlink_to("data.bin")
    assert read_record(str(archive / "r.hea")).signal.shape == (2, 1000)


def test_signal_file_whose_header_links_outside(dirs):
    """Reading r.dat opens r.hea on its behalf: that header must be in r.dat's folder too."""
    archive, outside = dirs
    (outside / "r.hea").write_text(_header("r", "r.dat"))
    (archive / "r.hea").symlink_to(outside / "r.hea")
    (archive / "r.dat").write_bytes(_signal())
    with pytest.raises(SignalFileOutsideError):
        read_record(str(archive / "r.dat"))


def test_challenge_mat_that_links_outside(dirs):
    from scipy.io import savemat

    archive, outside = dirs
    savemat(outside / "A1.mat", {"val": np.zeros((2, 1000), np.int16) + 5})
    (archive / "A1.hea").write_text(_header("A1.mat", "A1.mat", fmt=16).replace(" 16 1000/mV", " 16+24 1000/mV"))
    (archive / "A1.mat").symlink_to(outside / "A1.mat")
    _refused(archive / "A1.hea")


def test_multisegment_segment_header_that_links_outside(dirs):
    archive, outside = dirs
    (outside / "seg1.hea").write_text(_header("seg1", "good.dat"))
    (archive / "seg1.hea").symlink_to(outside / "seg1.hea")
    (archive / "m.hea").write_text("m/1 2 500 1000\nseg1 1000\n")
    _refused(archive / "m.hea")


@pytest.mark.parametrize("sidecar", ["ecgbatch.json", "x.json"])
def test_sidecar_that_links_outside(dirs, sidecar):
    archive, outside = dirs
    (outside / "settings.json").write_text(json.dumps({"fs": 500}))
    np.save(archive / "x.npy", np.zeros((12, 1000), np.float32) + np.arange(1000, dtype=np.float32) / 1000)
    (archive / sidecar).symlink_to(outside / "settings.json")
    with pytest.raises(SignalFileOutsideError):
        read_record(str(archive / "x.npy"))
    with pytest.raises(SignalFileOutsideError):
        read_header(str(archive / "x.npy"))


def test_hdf5_external_storage_is_refused(dirs):
    h5py = pytest.importorskip("h5py")
    from ecgbatch.io.errors import NotAnEcgError

    archive, outside = dirs
    (outside / "raw.bin").write_bytes(np.zeros(12 * 1000, "<f4").tobytes())
    with h5py.File(archive / "x.h5", "w") as f:
        f.create_dataset("ecg", shape=(12, 1000), dtype="<f4", external=[(str(outside / "raw.bin"), 0, 48000)])
        f.attrs["fs"] = 500
    with pytest.raises(NotAnEcgError, match="other files"):
        read_record(str(archive / "x.h5"))
