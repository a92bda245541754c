"""An archive with about 10 % corrupt files (the kinds issue 9 found: an .npz whose entry is not an
array, an HDF5 header claiming 10 million records, a corrupt compressed MAT v5, a NaN rate in a
sidecar, ...) plus one record whose read kills the worker process: `scan` and `embed` (real Ray,
real model) finish, every good record is embedded exactly once, every bad file is a failure."""
from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.worker_crash_hook import CRASH_MARK
from typer.testing import CliRunner

from ecgbatch.cli import app
from ecgbatch.io import list_records
from ecgbatch.pipelines import embed
from ecgbatch.pipelines.workspace import list_tables


GOOD = {  # folder in sample_archive -> record stems (36 records)
    "ludb": ["1", "3", "5", "7", "9", "11", "101", "103"],
    "cinc2021": ["A0689", "A1041", "E00271", "E07500", "HR03961", "JS01048", "JS09740", "JS11438"],
    "ptbxl/records": ["318", "533", "668", "846"],
    "cpsc2018": ["A1980", "A1982"],
    "xml": ["ludb_1_muse", "cinc2021_A0689_muse", "ludb_3_aecg", "cinc2021_HR03961_aecg"],
}


def _copy_good(arc: Path, out: Path) -> set[str]:
    keys = set()
    for folder, stems in GOOD.items():
        dst = out / folder.replace("/", "_")
        dst.mkdir(parents=True, exist_ok=True)
        for stem in stems:
            for f in (arc / folder).glob(f"{stem}.*"):
                if f.suffix in (".hea", ".dat", ".mat", ".npy", ".json", ".xml"):
                    shutil.copyfile(f, dst / f.name)
            has_header = (dst / f"{stem}.hea").exists()  # then the .hea is the record's key
            main = next(p for p in sorted(dst.glob(f"{stem}.*")) if p.suffix not in (".json", ".dat")
                        and not (p.suffix == ".mat" and has_header))
            keys.add(str(main))
        if (arc / folder / "ecgbatch.json").exists():
            shutil.copyfile(arc / folder / "ecgbatch.json", dst / "ecgbatch.json")
    # 4 more good records: the three ptbxl arrays as one 3-D container, and an SPH-style HDF5
    ptb = np.stack([np.load(arc / f"ptbxl/records/{i}.npy") for i in (318, 533, 668)])
    with h5py.File(out / "code15.hdf5", "w") as f:
        f.create_dataset("tracings", data=ptb[:, :4096])
        f.attrs["fs"] = 500.0
    keys.update(f"{out / 'code15.hdf5'}#{i}" for i in range(3))
    return keys


def _bad_files(arc: Path, out: Path) -> set[str]:
    bad = out / "bad"
    bad.mkdir()
    # 1. an .npz whose "signal" entry is not a .npy (np.load hands back bytes: issue 9's AttributeError)
    with zipfile.ZipFile(bad / "bytes_entry.npz", "w") as z:
        z.writestr("signal", b"\x00" * 4000)
    # 2. an HDF5 file whose dataspace claims 10,000,000 records
    p = bad / "ten_million.hdf5"
    with h5py.File(p, "w") as f:
        f.create_dataset("tracings", data=np.zeros((3, 256, 12), np.float32))
    raw = p.read_bytes().replace(struct.pack("<QQQ", 3, 256, 12), struct.pack("<QQQ", 10_000_000, 256, 12))
    p.write_bytes(raw)
    # 3. a CPSC2018 MAT v5 file with bytes changed inside its compressed element
    data = bytearray((arc / "cpsc2018/A1980.mat").read_bytes())
    data[5000:5016] = b"\xff" * 16
    (bad / "A1980_corrupt.mat").write_bytes(bytes(data))
    # 4. a .npy whose sidecar gives a NaN sampling rate
    shutil.copyfile(arc / "ptbxl/records/846.npy", bad / "nan_rate.npy")
    (bad / "nan_rate.json").write_text('{"fs": NaN, "layout": "samples_first"}')
    return {str(bad / n) for n in ("bytes_entry.npz", "ten_million.hdf5", "A1980_corrupt.mat", "nan_rate.npy")}


@pytest.fixture(scope="module")
def archive(sample_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("corrupt_archive")
    good = _copy_good(Path(sample_archive), out)
    bad = _bad_files(Path(sample_archive), out)
    assert 0.08 <= len(bad) / (len(good) + len(bad)) <= 0.15
    return out, good, bad


def test_listing_and_scan_account_for_every_file(archive, tmp_path):
    root, good, bad = archive
    keys = {s.key for s in list_records(root)}
    assert keys == good | bad  # the 10-million-record file is one source, not ten million
    manifest = tmp_path / "m.parquet"
    r = CliRunner().invoke(app, ["scan", str(root), "-o", str(manifest), "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(manifest).to_pylist()
    fails = pq.read_table(str(manifest).replace(".parquet", ".failures.parquet")).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(good)
    assert {f["path"] for f in fails} == bad
    kinds = {Path(f["path"]).name: f["error_type"] for f in fails}
    assert kinds["ten_million.hdf5"] in ("truncated_signal", "not_an_ecg")  # HDF5 may refuse it first
    assert kinds["nan_rate.npy"] == "bad_header" and kinds["bytes_entry.npz"] == "not_an_ecg"
    assert "unexpected_error" not in kinds.values() and "reader_crash" not in kinds.values()


@pytest.mark.ray
@pytest.mark.slow
def test_embed_records_bad_files_and_a_dead_worker_as_failures(archive, ray_local,
                                                                sample_archive, tmp_path):
    root, good, bad = archive
    crash = root / "ludb" / f"13{CRASH_MARK}.hea"  # a good WFDB record whose read kills the worker
    shutil.copyfile(Path(sample_archive) / "ludb/11.hea", crash)
    shutil.copyfile(Path(sample_archive) / "ludb/11.dat", crash.with_suffix(".dat"))
    crash.write_text(crash.read_text().replace("11.dat", f"13{CRASH_MARK}.dat"))
    try:
        s = embed.run(str(root), tmp_path / "ws", "ecg-coca-mini", allow_random_init=True,
                      progress=False, batch_size=8, build_index=False)
    finally:
        crash.unlink()
        crash.with_suffix(".dat").unlink()
    t = list_tables(tmp_path / "ws")[0]
    got = [r["source"] for r in t.read_table(["source"]).to_pylist()]
    fails = {f["source"]: f for f in t.read_failures().to_pylist()}
    assert sorted(got) == sorted(good), "every good record embedded exactly once"
    assert set(fails) == bad | {str(crash)}
    dead = fails[str(crash)]
    assert dead["error_kind"] == "reader_crash" and "worker process died" in dead["message"]
    assert all(f["error_kind"] not in ("unexpected", "reader_crash")
               for k, f in fails.items() if k != str(crash))
    assert s.embedded == len(good) and s.failed == len(bad) + 1


def test_read_ledger_blames_the_record_a_careful_retry_died_on():
    """The ledger's bookkeeping (the plain class; Ray runs it as an actor): attempt 1 dies
    somewhere in block b, attempt 2 reads carefully and dies on k2, attempt 3 skips k2."""
    from ecgbatch.pipelines.read_ledger import ReadLedger

    led = ReadLedger()
    assert led.begin("b") == (False, [])           # attempt 1: no per-record calls
    assert led.begin("b") == (True, [])            # attempt 2: attempt 1 never finished
    led.reading("b", "k1")
    led.reading("b", "k2")                         # ... and the worker dies here
    assert led.begin("b") == (True, ["k2"])        # attempt 3 writes k2 as a failure
    led.reading("b", "k3")
    led.finish("b")
    assert led.begin("b") == (False, ["k2"]) and led.begin("other") == (False, [])


def test_read_ledger_bounds_the_retries_of_a_block():
    """Ray Data retries a dead read task without end; the ledger refuses the attempt after
    READ_TASK_RETRIES retries (Ray's own max_retries did before)."""
    from ecgbatch.pipelines.read_ledger import READ_TASK_RETRIES, ReadLedger, ReadRetriesExhausted

    led = ReadLedger()
    for _ in range(READ_TASK_RETRIES + 1):          # the first attempt and its retries, all dying
        led.begin("b")
    with pytest.raises(ReadRetriesExhausted, match=f"died {READ_TASK_RETRIES + 1} times"):
        led.begin("b")
    assert led.begin("other") == (False, [])
