"""Seed records for the fuzzer: real records of every supported format, one folder each.

Most seeds are files of ``sample_archive/`` copied as they are (WFDB format 16 at 500 and 100 Hz,
Challenge .hea + MAT v4, CPSC2018 MAT v5 struct, PTB-XL .npy with sidecars, GE MUSE and HL7
aECG XML). Formats the archive has no file of are written here from those real records with the
formats' ordinary writers: WFDB format 212 (wfdb.wrsamp), Challenge MAT v5 plain and compressed
(scipy.io.savemat, a trusted writer), .npz stored and deflated, a 3-D .npy container, and HDF5
one-record (SPH style) and many-record (CODE-15 style, chunked + gzip) files.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgbatch._paths import SAMPLE_ARCHIVE
from ecgbatch.io import read_record
from ecgbatch.io.matfile import read_mat
from ecgbatch.io.record import STANDARD_LEADS


@dataclass(frozen=True)
class Seed:
    name: str      # e.g. "wfdb_mat_v5z"
    format: str    # the reader family it exercises (a column of the counts table)
    folder: str    # every file of the record, nothing else
    dims: tuple[int, ...] = (12, 5000)  # its shape numbers, which mutators look for in headers

    @property
    def files(self) -> list[str]:
        return sorted(p.name for p in Path(self.folder).iterdir())


def build_seeds(out_dir, archive=SAMPLE_ARCHIVE) -> list[Seed]:
    """Write the seed folders under ``out_dir`` (idempotent) and return them."""
    out, arc = Path(out_dir), Path(archive)
    seeds: list[Seed] = []

    def folder(name: str, fmt: str, copies=(), dims=(12, 5000)) -> Path:
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for src in copies:
            shutil.copyfile(arc / src, d / Path(src).name)
        seeds.append(Seed(name, fmt, str(d), tuple(dims)))
        return d

    folder("wfdb16", "wfdb", ["ludb/1.hea", "ludb/1.dat"])
    folder("wfdb16_100hz", "wfdb", ["ptbxl/raw/00001_lr.hea", "ptbxl/raw/00001_lr.dat"], (12, 1000))
    _wfdb212(folder("wfdb212", "wfdb", dims=(12, 2000)), arc)
    folder("wfdb_mat_v4", "wfdb_mat", ["cinc2021/A0689.hea", "cinc2021/A0689.mat"])
    for name, compress in (("wfdb_mat_v5", False), ("wfdb_mat_v5z", True)):
        _challenge_v5(folder(name, "wfdb_mat", ["cinc2021/E00271.hea"]), arc, compress)
    folder("cpsc_mat", "cpsc_mat", ["cpsc2018/A1980.mat"])
    folder("npy", "numpy", ["ptbxl/records/318.npy", "ptbxl/records/318.json",
                            "ptbxl/records/ecgbatch.json"])
    ptb = [np.load(arc / f"ptbxl/records/{i}.npy") for i in (318, 533, 668)]
    _npz(folder("npz", "numpy", dims=(12, 2500)), ptb[0], compressed=False)
    _npz(folder("npz_deflated", "numpy", dims=(12, 2500)), ptb[0], compressed=True)
    d = folder("npy3d", "numpy", ["ptbxl/records/ecgbatch.json"], (3, 12, 2000))
    np.save(d / "ptb3.npy", np.stack(ptb)[:, :2000])
    _hdf5_sph(folder("hdf5_sph", "hdf5", dims=(12, 2500)), arc)
    _hdf5_code15(folder("hdf5_code15", "hdf5", dims=(3, 1024, 12)), ptb)
    folder("muse", "muse", ["xml/ludb_1_muse.xml"])
    folder("hl7_aecg", "hl7_aecg", ["xml/ludb_3_aecg.xml"])
    return seeds


def _real(arc: Path, rel: str):
    return read_record(arc / rel)


def _wfdb212(d: Path, arc: Path) -> None:
    import wfdb

    rec = _real(arc, "ludb/1.hea")
    wfdb.wrsamp("ludb1_212", fs=rec.fs, units=["mV"] * rec.n_leads, sig_name=list(rec.leads),
                p_signal=rec.signal[:, :2000].T.astype(np.float64), fmt=["212"] * rec.n_leads,
                write_dir=str(d))


def _challenge_v5(d: Path, arc: Path, compress: bool) -> None:
    """E00271 with its .mat rewritten as MAT v5 (the header's 16+24 offset no longer matches, so
    the reader takes its MAT-parser path)."""
    import scipy.io

    val = read_mat(str(arc / "cinc2021/E00271.mat"), ("val",))["val"]
    scipy.io.savemat(d / "E00271.mat", {"val": val}, do_compression=compress, format="5")


def _npz(d: Path, samples_by_leads: np.ndarray, compressed: bool) -> None:
    save = np.savez_compressed if compressed else np.savez
    save(d / "ptb318.npz", signal=samples_by_leads[:2500], fs=np.float64(500),
         leads=np.array(STANDARD_LEADS), units=np.array("normalized"))


def _hdf5_sph(d: Path, arc: Path) -> None:
    import h5py

    rec = _real(arc, "ludb/3.hea")
    with h5py.File(d / "ludb3.h5", "w") as f:
        f.create_dataset("ecg", data=rec.signal[:, :2500])
        f.attrs["sampling_rate"] = rec.fs
        f.attrs["units"] = "mV"


def _hdf5_code15(d: Path, ptb: list[np.ndarray]) -> None:
    import h5py

    with h5py.File(d / "exams_part0.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.stack([p[:1024] for p in ptb]), chunks=(1, 1024, 12),
                         compression="gzip")
        f.create_dataset("exam_id", data=np.array([1001, 1002, 1003], np.int64))
    (d / "exams_part0.json").write_text(json.dumps({"fs": 500, "units": "normalized"}))


__all__ = ["Seed", "build_seeds"]
