"""Every record in ../shared/data, read by ecgbatch.io and by the reference (wfdb.rdsamp where it
reads the record, else scipy.io.loadmat val/gain), plus a streaming scan of the whole tree.
Skipped, with the reason, when ../shared is not beside the checkout."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from ecgbatch.io import STANDARD_LEADS, Failure, read_header, read_record, scan

pytestmark = pytest.mark.shared
TOL = 1e-5  # mV


def _loadmat_reference(hea: Path) -> np.ndarray:
    """Physical values from the .mat's val and the header's gain/baseline (independent parse)."""
    lines = [ln for ln in hea.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    fields = [re.match(r"([\d.]+)(?:\((-?\d+)\))?", ln.split()[2]) for ln in lines[1:]]
    gain = np.array([float(m.group(1)) for m in fields])[:, None]
    base = np.array([int(m.group(2) or 0) for m in fields])[:, None]
    return (scipy.io.loadmat(str(hea.with_suffix(".mat")))["val"] - base) / gain


def test_every_wfdb_record_matches_reference(shared_data):
    heas = sorted(shared_data.rglob("*.hea"))
    assert len(heas) >= 228, "expected LUDB, CinC 2021 and PTB-XL raw headers"
    by_wfdb = by_loadmat = 0
    worst = 0.0
    for hea in heas:
        ours = read_record(hea)
        try:
            ref, fields = wfdb.rdsamp(str(hea)[:-4])
            ref = ref.T
            assert ours.fs == fields["fs"]
            by_wfdb += 1
        except Exception:  # wfdb rejects e.g. Georgia headers naming 'E00271.mat' as the record
            ref = _loadmat_reference(hea)
            by_loadmat += 1
        assert ours.signal.shape == ref.shape, hea
        np.testing.assert_array_equal(np.isnan(ours.signal), np.isnan(ref))
        diff = float(np.nanmax(np.abs(ours.signal - ref)))
        assert diff < TOL, f"{hea}: max abs diff {diff} mV"
        worst = max(worst, diff)
        assert not [f for f in ours.meta["quality"] if f.startswith("checksum")], hea
        # header-only path agrees with the full read
        h = read_header(hea)
        assert (h.n_samples, h.fs, h.leads) == (ours.n_samples, ours.fs, ours.leads)
    assert by_wfdb >= 200 and by_loadmat >= 1
    print(f"{by_wfdb} records vs wfdb.rdsamp, {by_loadmat} vs loadmat; worst |diff| {worst:.2e} mV")


def test_lead_mapping_on_real_records(shared_data):
    ludb = read_record(shared_data / "ludb" / "data" / "1.hea")        # i, ii, ..., avr, v1 in the file
    ptbxl = read_record(shared_data / "ptbxl" / "raw" / "00001_lr.hea")  # AVR, AVL, AVF in the file
    cinc = read_record(shared_data / "cinc2021" / "A0689.hea")          # already canonical
    for rec in (ludb, ptbxl, cinc):
        assert rec.leads == STANDARD_LEADS
    raw = wfdb.rdheader(str(shared_data / "ludb" / "data" / "1"))
    assert raw.sig_name[3] == "avr"
    np.testing.assert_allclose(ludb.lead("aVR"), wfdb.rdsamp(str(shared_data / "ludb/data/1"))[0][:, 3],
                               atol=TOL)


def test_cpsc_originals_and_challenge_copies(shared_data):
    """CPSC2018 originals: mV, 500 Hz, age/sex from the struct; values agree with loadmat."""
    for mat in sorted((shared_data / "cpsc2018").glob("*.mat")):
        rec = read_record(mat)
        data = scipy.io.loadmat(str(mat))["ECG"]["data"][0, 0]
        assert rec.signal.shape == data.shape and rec.fs == 500.0 and rec.units == "mV"
        assert np.abs(rec.signal - data).max() < TOL
        assert rec.meta["sex"] in ("M", "F") and 0 < rec.meta["age"] < 120


def test_ptbxl_npy_with_options(shared_data):
    files = sorted((shared_data / "ptbxl" / "records").glob("*.npy"))
    assert len(files) == 250
    for f in files[:25]:
        rec = read_record(f, fs=500, units="normalized")
        raw = np.load(f)
        assert raw.shape == (5000, 12) and rec.signal.shape == (12, 5000)
        np.testing.assert_array_equal(rec.signal, raw.T)
        assert rec.units == "normalized" and rec.leads == STANDARD_LEADS


def test_scan_of_shared_accounts_for_every_file(shared_data):
    s = scan(shared_data, headers_only=True, fs=500)
    items = list(s)
    n_files = sum(1 for p in shared_data.rglob("*") if p.is_file())
    assert s.stats.files == n_files == s.stats.accounted()
    # WFDB: LUDB (100), ptbxl/raw (1) and ptbxl2k (PTB-XL's 100 Hz release, 1,732 when it is
    # there): counted from the folders, so a larger shared/ keeps the test honest
    n_wfdb = sum(1 for d in ("ludb", "ptbxl/raw", "ptbxl2k") for _ in (shared_data / d).rglob("*.hea"))
    assert n_wfdb >= 101
    assert s.stats.by_format == {"wfdb": n_wfdb, "wfdb_mat": 127, "cpsc_mat": 10, "numpy": 250}
    assert not [i for i in items if isinstance(i, Failure)]
    assert s.stats.ignored["WFDB annotation or auxiliary file of a record"] == 1200  # LUDB .i ... .v6
