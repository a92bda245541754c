"""Decompression bombs: each reader compares the decoded size a file declares with the per-record
budget BEFORE inflating (HDF5 gzip chunks, .npz members by their zip headers, MAT v5 zlib
elements, WFDB FLAC). Measured in a fresh process: each bomb is refused in well under a second,
and the process's peak resident memory (VmHWM) grows by a few MB, not by the bomb's size."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

from ecgbatch._paths import REPO_ROOT
from ecgbatch.io import read_record
from ecgbatch.io.errors import RecordTooLargeError

BUDGET = 1 << 20                 # 1 MiB per record in these tests; every bomb declares >= 64 MiB
SHAPE = (12, 2_000_000)          # float32: 96 MB decoded


def _hdf5(path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.create_dataset("ecg", data=np.zeros(SHAPE, np.float32), chunks=(12, 1_000_000),
                         compression="gzip", compression_opts=9)
        f.attrs["fs"] = 500


def _npz_as_npy(path):
    """An .npz (zip) sent under a .npy name, as the issue's upload did."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros(SHAPE, np.float32))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("signal.npy", buf.getvalue())
        z.writestr("fs.npy", _npy(np.array(500.0)))


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


def _mat(path):
    """MAT v5 with one miCOMPRESSED element holding int16 'val' [12, 2M] of zeros."""
    def element(mtype, data):
        return struct.pack("<II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)

    rows, cols = 12, 2_000_000
    body = (element(6, struct.pack("<II", 10, 0)) + element(5, struct.pack("<2i", rows, cols))
            + element(1, b"val") + element(3, bytes(rows * cols * 2)))
    inner = struct.pack("<II", 14, len(body)) + body
    z = zlib.compress(inner, 9)
    head = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    path.write_bytes(head + struct.pack("<II", 15, len(z)) + z)


def _flac(path):
    sf = pytest.importorskip("soundfile")
    n = 2_000_000
    sf.write(str(path.with_suffix(".flac")), np.zeros((n, 8), np.int16), 500, subtype="PCM_16", format="FLAC")
    path.with_suffix(".flac").rename(path.with_suffix(".dat"))
    lines = [f"{path.stem} 8 500 {n}"] + [f"{path.stem}.dat 516 1000/mV 16 0 0 0 0 ch{i}" for i in range(8)]
    path.write_text("\n".join(lines) + "\n")


MAKERS = {"hdf5.h5": _hdf5, "npz.npy": _npz_as_npy, "mat.mat": _mat, "flac.hea": _flac}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    out = {}
    for name, make in MAKERS.items():
        p = d / name
        make(p)
        out[name] = p
    return out


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_bomb_is_refused_by_its_declared_size(bombs, name):
    p = bombs[name]
    assert p.stat().st_size < 3_000_000          # a few hundred KB that declare ~100 MB
    with pytest.raises(RecordTooLargeError) as e:
        read_record(str(p), max_bytes=BUDGET)
    assert e.value.kind == "record_too_large" and str(BUDGET) in str(e.value)


_PROBE = r"""
import json, sys, time
from ecgbatch.io import read_record
from ecgbatch.io.errors import RecordTooLargeError

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
import h5py, soundfile, zipfile, zlib                                  # the readers' libraries
from ecgbatch.io import hdf5, matfile, matlab, numpy_reader, wfdb_reader   # loaded before measuring
out = {}
for path in sys.argv[2:]:
    before, t = hwm(), time.perf_counter()
    try:
        read_record(path, max_bytes=int(sys.argv[1]))
        kind = "read"
    except RecordTooLargeError as exc:
        kind = exc.kind
    out[path] = {"kind": kind, "s": time.perf_counter() - t, "grew": hwm() - before}
print(json.dumps(out))
"""


def test_bombs_are_refused_fast_with_flat_memory(bombs):
    paths = [str(bombs[n]) for n in sorted(MAKERS)]
    r = subprocess.run([sys.executable, "-c", _PROBE, str(BUDGET), *paths], capture_output=True, text=True,
                       cwd=REPO_ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for path, m in res.items():
        assert m["kind"] == "record_too_large", (path, m)
        assert m["s"] < 0.5, (path, m)                   # refused from the header, not inflated
        assert m["grew"] < 16 << 20, (path, m)           # the bomb inflates to 64-96 MB
