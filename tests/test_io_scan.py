"""Scanning the bundled sample archive: every file accounted for, manifest and failures tables,
header-only and decoding scans agree, the `ecgbatch scan` command."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from ecgbatch.io import Failure, Record, RecordHeader, list_records, scan, write_manifest

EXPECTED_FAILURES = {"truncated_signal": 1, "empty_file": 1, "not_an_ecg": 3, "missing_header": 1,
                     "length_mismatch": 1, "missing_signal_file": 1, "unknown_format": 1,
                     "bad_header": 1, "ambiguous_layout": 1, "missing_metadata": 1}


def _all_files(root):
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out += [os.path.join(dirpath, f) for f in files]
    return out


@pytest.mark.parametrize("headers_only", [False, True])
def test_sample_archive_every_file_accounted(sample_archive, headers_only):
    s = scan(sample_archive, headers_only=headers_only)
    items = list(s)
    files = _all_files(sample_archive)
    recs = [i for i in items if not isinstance(i, Failure)]
    fails = [i for i in items if isinstance(i, Failure)]
    # every file is in exactly one record, one failure, or the ignored counts
    listed = [os.path.join(os.path.dirname(i.source.split("#")[0]), f) for i in recs for f in i.meta["scan"]["files"]]
    listed += [os.path.join(os.path.dirname(f.path), n) for f in fails for n in f.files]
    assert len(listed) == len(set(listed))
    assert s.stats.files == len(files) == len(listed) + sum(s.stats.ignored.values())
    assert set(listed) <= set(files)
    assert dict(s.stats.failures_by_type) == EXPECTED_FAILURES
    assert s.stats.ignored["WFDB annotation or auxiliary file of a record"] == 12  # LUDB 1.i ... 1.v6
    assert {"ludb", "cinc2021", "cpsc2018", "ptbxl", "xml", "bad"} <= {
        os.path.basename(os.path.dirname(r.source)) for r in recs} | {"ptbxl"}
    fmt = s.stats.by_format
    assert fmt["wfdb"] >= 9 and fmt["wfdb_mat"] == 8 and fmt["cpsc_mat"] == 2 and fmt["numpy"] == 4
    kinds = {type(r) for r in recs}
    assert kinds == ({RecordHeader} if headers_only else {Record})


def test_header_and_full_scans_agree(sample_archive):
    full = {r.meta["scan"]["key"]: r for r in scan(sample_archive) if not isinstance(r, Failure)}
    head = {r.meta["scan"]["key"]: r for r in scan(sample_archive, headers_only=True)
            if not isinstance(r, Failure)}
    assert full.keys() == head.keys()
    for k, r in full.items():
        h = head[k]
        assert (h.record_id, h.fs, h.leads, h.n_samples, h.units) == (
            r.record_id, r.fs, r.leads, r.n_samples, r.units), k


def test_list_records_is_cheap_and_picklable(sample_archive):
    import pickle

    srcs = list(list_records(sample_archive))
    assert len(srcs) == 30 + sum(EXPECTED_FAILURES.values())  # records + sources that will fail
    assert len({s.key for s in srcs}) == len(srcs)
    ludb = next(s for s in srcs if s.path.endswith(os.path.join("ludb", "1.hea")))
    assert ludb.files == ("1.hea", "1.dat") and ludb.format == "wfdb"
    s = pickle.loads(pickle.dumps(ludb))
    assert s.read().n_samples == 5000
    assert all(isinstance(v, (str, int, list, type(None))) for v in srcs[0].to_dict().values())
    from ecgbatch.io import RecordSource

    assert [RecordSource.from_dict(x.to_dict()) for x in srcs] == srcs


def test_write_manifest(sample_archive, tmp_path):
    s = scan(sample_archive)
    res = write_manifest(s, tmp_path / "m.parquet", tmp_path / "f.parquet")
    man = pq.read_table(res.manifest_path).to_pylist()
    fails = pq.read_table(res.failures_path).to_pylist()
    assert len(man) == s.stats.records and len(fails) == s.stats.failures == sum(EXPECTED_FAILURES.values())
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # atomic: no leftovers
    by_id = {r["record_id"]: r for r in man}
    a = by_id["A0689"]
    assert (a["format"], a["fs"], a["n_samples"], a["duration_s"], a["sex"], a["age"]) == (
        "wfdb_mat", 500.0, 5000, 10.0, "M", 80)
    assert a["dx_codes"] == ["164889003"] and a["files"] == ["A0689.hea", "A0689.mat"]
    assert "Atrial fibrillation" in by_id["101"]["diagnoses"]
    assert by_id["318"]["units"] == "normalized" and "AFIB" in by_id["318"]["dx_codes"]
    assert by_id["JS11438"]["quality"] == [f"flat:V{i}" for i in range(1, 7)]
    assert {f["error_type"] for f in fails} == set(EXPECTED_FAILURES)
    stats = json.loads(pq.read_metadata(res.manifest_path).metadata[b"ecgbatch.scan_stats"])
    assert stats["records"] == len(man)
    # no patient identifiers anywhere in the manifest
    text = json.dumps(man).lower()
    assert "patient_id" not in text and "mrn" not in text


def test_failed_write_leaves_no_manifest(sample_archive, tmp_path):
    def items():
        yield from scan(sample_archive / "ludb")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_manifest(items(), tmp_path / "m.parquet")
    assert os.listdir(tmp_path) == []


def test_scan_cli(sample_archive, tmp_path):
    from typer.testing import CliRunner

    from ecgbatch.cli import app

    out = tmp_path / "manifest.parquet"
    result = CliRunner().invoke(app, ["scan", str(sample_archive), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "30 records" in result.output and "truncated_signal" in result.output
    assert "accounting error" not in result.output
    assert pq.read_table(out).num_rows == 30
    assert pq.read_table(tmp_path / "manifest.failures.parquet").num_rows == 12
    result = CliRunner().invoke(app, ["scan", str(sample_archive), "-o", str(out), "--headers-only",
                                      "--failures", str(tmp_path / "f.parquet"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "f.parquet").num_rows == 12
