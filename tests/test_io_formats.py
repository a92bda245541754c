"""NumPy (layouts, sidecars, npz, 3-D), HDF5 (SPH-style single, CODE-15-style multi), CPSC .mat,
XML routing, leads and units: all built from real records of the sample archive."""
from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest

from ecgbatch.io import STANDARD_LEADS, canonical_lead, detect_format, list_records, read_header, read_record
from ecgbatch.io.errors import AmbiguousLayoutError, LeadMismatchError, MissingMetadataError


@pytest.fixture(scope="module")
def real(sample_archive):
    """LUDB record 1 in mV [12, 5000]."""
    return read_record(sample_archive / "ludb" / "1.hea")


def test_ptbxl_npy_with_directory_and_record_sidecars(sample_archive):
    rec = read_record(sample_archive / "ptbxl" / "records" / "318.npy")
    raw = np.load(sample_archive / "ptbxl" / "records" / "318.npy")
    assert raw.shape == (5000, 12)
    np.testing.assert_array_equal(rec.signal, raw.T)
    assert (rec.fs, rec.units, rec.leads) == (500.0, "normalized", STANDARD_LEADS)
    assert "AFIB" in rec.meta["dx_codes"] and rec.meta["sex"] in ("M", "F")
    assert "absurd_amplitude" not in " ".join(rec.meta["quality"])  # not a voltage: no mV limits


@pytest.mark.parametrize("layout", ["leads_first", "samples_first"])
def test_npy_layouts_auto_detected(tmp_path, real, layout):
    arr = real.signal if layout == "leads_first" else real.signal.T
    np.save(tmp_path / "x.npy", arr)
    rec = read_record(tmp_path / "x.npy", fs=500, units="mV")
    np.testing.assert_array_equal(rec.signal, real.signal)
    assert rec.meta["leads_assumed"] is True and rec.leads == STANDARD_LEADS
    assert rec.meta["storage"].endswith("leads x samples" if layout == "leads_first" else "samples x leads")
    forced = read_record(tmp_path / "x.npy", fs=500, layout=layout)
    np.testing.assert_array_equal(forced.signal, real.signal)


def test_npy_lead_count_decides_ambiguous_shapes(tmp_path, real):
    sq = real.signal[:8, :8]  # 8 x 8: both axes could be leads
    np.save(tmp_path / "sq.npy", sq)
    with pytest.raises(AmbiguousLayoutError):
        read_record(tmp_path / "sq.npy", fs=500)
    rec = read_record(tmp_path / "sq.npy", fs=500, layout="samples_first", leads=[f"V{i}" for i in range(1, 7)] + ["I", "II"])
    np.testing.assert_array_equal(rec.signal, sq.T)
    np.save(tmp_path / "six.npy", real.signal[:6].T)  # [5000, 6] with six names: axis from the names
    rec = read_record(tmp_path / "six.npy", fs=500, leads=["i", "ii", "iii", "avr", "avl", "avf"])
    assert rec.leads == STANDARD_LEADS[:6]
    with pytest.raises(LeadMismatchError):
        read_record(tmp_path / "six.npy", fs=500, leads=STANDARD_LEADS)


def test_npy_needs_a_rate(tmp_path, real):
    np.save(tmp_path / "x.npy", real.signal)
    with pytest.raises(MissingMetadataError, match="fs="):
        read_record(tmp_path / "x.npy")
    (tmp_path / "x.json").write_text(json.dumps({"fs": 500, "units": "uV"}))
    rec = read_record(tmp_path / "x.npy")
    # declared microvolts are converted to mV, the source units remembered
    np.testing.assert_allclose(rec.signal, real.signal / 1000, rtol=1e-6)
    assert rec.units == "mV" and rec.meta["source_units"] == "uV"


def test_npz_and_3d_npy(tmp_path, real):
    np.savez(tmp_path / "r.npz", signal=real.signal.T, fs=np.float64(500), leads=np.array(STANDARD_LEADS))
    rec = read_record(tmp_path / "r.npz")
    np.testing.assert_array_equal(rec.signal, real.signal)
    assert rec.fs == 500
    stack = np.stack([real.signal.T, real.signal.T * 2, real.signal.T * 3])  # [3, 5000, 12]
    np.save(tmp_path / "stack.npy", stack)
    (tmp_path / "stack.json").write_text(json.dumps({"fs": 500, "units": "mV"}))
    srcs = list(list_records(tmp_path / "stack.npy"))
    assert [s.index for s in srcs] == [0, 1, 2]
    third = srcs[2].read()
    np.testing.assert_allclose(third.signal, real.signal * 3, rtol=1e-6)
    assert third.record_id == "stack#2"
    assert read_record(f"{tmp_path / 'stack.npy'}#1").record_id == "stack#1"


def test_hdf5_single_record_sph_style(tmp_path, real):
    with h5py.File(tmp_path / "A00001.h5", "w") as f:
        f.create_dataset("ecg", data=real.signal)  # [12, N] as in SPH
        f.attrs["sampling_rate"] = 500
        f.attrs["units"] = "mV"
    rec = read_record(tmp_path / "A00001.h5")
    np.testing.assert_array_equal(rec.signal, real.signal)
    assert (rec.record_id, rec.fs, rec.units, rec.leads) == ("A00001", 500.0, "mV", STANDARD_LEADS)
    h = read_header(tmp_path / "A00001.h5")
    assert (h.n_samples, h.n_leads) == (5000, 12)


def test_hdf5_multi_record_code15_style(tmp_path, sample_archive):
    recs = [read_record(sample_archive / "ludb" / f"{i}.hea") for i in (1, 3, 5)]
    tracings = np.zeros((3, 4096, 12), np.float32)
    for i, r in enumerate(recs):
        tracings[i] = r.signal[:, :4096].T
    with h5py.File(tmp_path / "exams_part0.hdf5", "w") as f:
        f.create_dataset("tracings", data=tracings)
        f.create_dataset("exam_id", data=np.array([1001, 1002, 1003]))
    srcs = list(list_records(tmp_path))
    assert [s.key.rsplit("#", 1)[1] for s in srcs] == ["0", "1", "2"]
    second = srcs[1].read()
    np.testing.assert_array_equal(second.signal, recs[1].signal[:, :4096])
    assert second.record_id == "exams_part0.hdf5#1002"
    assert second.fs == 400.0 and "400" in second.meta["assumed"]  # CODE-15 convention, stated
    assert read_record(tmp_path / "exams_part0.hdf5", index=2, fs=500).fs == 500.0  # override
    h = read_header(f"{tmp_path / 'exams_part0.hdf5'}#0")
    assert (h.record_id, h.n_samples, h.leads) == ("exams_part0.hdf5#1001", 4096, STANDARD_LEADS)


def test_cpsc_original(sample_archive):
    import scipy.io

    rec = read_record(sample_archive / "cpsc2018" / "A1980.mat")
    data = scipy.io.loadmat(str(sample_archive / "cpsc2018" / "A1980.mat"))["ECG"]["data"][0, 0]
    assert np.abs(rec.signal - data).max() < 1e-5
    assert (rec.fs, rec.units, rec.leads) == (500.0, "mV", STANDARD_LEADS)
    assert rec.meta["sex"] == "M" and rec.meta["age"] == 52


def test_detect_format_routes_xml_by_root(sample_archive, tmp_path):
    xml = sample_archive / "xml"
    for f in xml.glob("*.xml"):
        fmt, _ = detect_format(str(f))
        assert fmt == ("muse" if "muse" in f.name else "hl7_aecg")
    (tmp_path / "a.xml").write_text("<?xml version='1.0'?>\n<!-- c -->\n<AnnotatedECG xmlns='urn:hl7-org:v3'/>")
    assert detect_format(str(tmp_path / "a.xml"))[0] == "hl7_aecg"
    assert detect_format(str(sample_archive / "ludb" / "1.dat")) == ("wfdb", str(sample_archive / "ludb" / "1.hea"))
    assert detect_format(str(sample_archive / "ludb" / "1"))[0] == "wfdb"
    assert detect_format(str(sample_archive / "cinc2021" / "A0689.mat"))[0] == "wfdb"  # has a .hea
    assert detect_format(str(sample_archive / "cpsc2018" / "A1980.mat"))[0] == "cpsc_mat"


def test_xml_records_through_read_record(sample_archive):
    rec = read_record(sample_archive / "xml" / "ludb_1_muse.xml")
    ludb = read_record(sample_archive / "ludb" / "1.hea")
    assert set(STANDARD_LEADS) <= set(rec.leads) and rec.fs == 500
    # MUSE stores 4.88 uV steps: agreement to the quantisation step
    assert np.abs(rec.lead("V1") - ludb.lead("V1")).max() < 0.005
    assert isinstance(rec.meta["quality"], list)


def test_lead_names():
    assert [canonical_lead(x) for x in ("i", "II", "avr", "AVL", "aVf", "v1", "V6", "Lead III",
                                        "DI", "ECG V2", "MLII", "V4R", "CH3")] == \
        ["I", "II", "aVR", "aVL", "aVF", "V1", "V6", "III", "I", "V2", "MLII", "V4R", "CH3"]


def test_import_without_heavy_dependencies():
    import subprocess

    code = ("import sys, ecgbatch.io as io; io.read_record; "
            "bad = [m for m in ('torch', 'ray', 'faiss', 'vllm', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
