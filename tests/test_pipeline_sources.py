"""Record sources: ids unique inside an archive, URI listing grouped like the local scan."""
from __future__ import annotations

from pathlib import Path

from ecgbatch.io import list_records
from ecgbatch.pipelines import sources as src


def test_record_ids_are_relative_and_unique():
    root = "/a"
    ids = src.record_ids(["/a/x/1.hea", "/a/y/1.hea", "/a/x/2.npy", "/a/x/2.hea", "/a/c.h5#3"], root)
    assert ids["/a/x/1.hea"] == "x/1" and ids["/a/y/1.hea"] == "y/1"
    assert ids["/a/x/2.npy"] == "x/2.npy" and ids["/a/x/2.hea"] == "x/2.hea"  # same stem: suffix kept
    assert ids["/a/c.h5#3"] == "c#3"
    assert len(set(ids.values())) == len(ids)
    uri = "s3://bucket/arch"
    assert src.record_ids([f"{uri}/ludb/1.hea"], uri) == {f"{uri}/ludb/1.hea": "ludb/1"}


def test_uri_listing_matches_local_scan(sample_archive):
    local = {Path(s.path).relative_to(sample_archive).as_posix()
             for s in list_records(sample_archive / "ludb")}
    uri = "file://" + str((Path(sample_archive) / "ludb").resolve())
    remote = src.list_remote(uri)
    assert {s.path[len(uri) + 1:] for s in remote} == {p.split("/", 1)[1] for p in local}
    one = next(s for s in remote if s.path.endswith("/1.hea"))
    assert {"1.hea", "1.dat"} <= set(one.files)
    with src.local_source(one) as loc:  # copied with its signal file, format detected there
        rec = loc.read()
        assert Path(loc.path).is_file() and not loc.path.startswith("file:")
    assert rec.n_leads == 12 and rec.fs == 500
    assert not Path(loc.path).exists()  # the temporary copy is removed


def test_source_json_round_trip(sample_archive):
    s = next(iter(list_records(sample_archive / "ludb")))
    back = src.source_from_json(src.source_to_json(s))
    assert back == s and back.key == s.key
