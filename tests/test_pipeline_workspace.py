"""The workspace's exactly-once commit protocol (no Ray needed)."""
from __future__ import annotations

import multiprocessing as mp

import pyarrow as pa
import pytest

from ecgbatch.pipelines.workspace import (ModelTable, WorkspaceLockedError, block_key, default_workspace,
                                          list_tables, make_blocks, model_key, open_table)


def _emb(sources):
    return pa.table({"record_id": [s.rsplit(".", 1)[0] for s in sources], "source": sources,
                     "embedding": pa.FixedSizeListArray.from_arrays(
                         pa.array([float(i) for i in range(2 * len(sources))], pa.float32()), 2)})


def _fail(sources):
    return pa.table({"source": sources, "stage": ["read"] * len(sources)})


def test_blocks_are_deterministic_and_order_free():
    keys = [f"r{i:03d}.hea" for i in range(10)]
    a = make_blocks(keys, 4)
    b = make_blocks(list(reversed(keys)) + keys[:3], 4)  # order and duplicates do not matter
    assert a == b
    assert [len(k) for _, k in a] == [4, 4, 2]
    assert a[0][0] == block_key(reversed(a[0][1]))
    assert len({k for k, _ in a}) == 3
    with pytest.raises(ValueError, match="block_size"):
        make_blocks(keys, 0)


def test_model_key_separates_models_weights_and_preprocessing():
    k = model_key("ecg-coca-mini", "a" * 64, "b" * 16)
    assert k != model_key("ecg-coca-mini", "c" * 64, "b" * 16)
    assert k != model_key("ecg-coca-mini", "a" * 64, "d" * 16)
    assert k != model_key("other", "a" * 64, "b" * 16)
    assert "/" not in model_key("/some/dir/ckpt", "a" * 8, "b" * 8)
    with pytest.raises(ValueError, match="weights_hash"):
        model_key("m", "", "b")


def test_default_workspace_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ECGBATCH_WORKSPACE", str(tmp_path / "ws"))
    assert default_workspace() == tmp_path / "ws"
    monkeypatch.delenv("ECGBATCH_WORKSPACE")
    assert default_workspace().name == "workspace"


def test_commit_protocol(tmp_path):
    t = ModelTable(tmp_path, "m-1-2")
    with pytest.raises(RuntimeError, match="lock"):
        t.commit_block("k1", _emb(["a.hea"]), None)
    with t:
        t.write_meta({"model": "m"})
        t.commit_block("k1", _emb(["a.hea", "b.hea"]), _fail(["c.hea"]))
        t.commit_block("k2", _emb([]), _fail(["d.hea"]))  # a block where everything failed
        # a crash between the failures file and the shard: failures of k3 must be ignored
        (t.failures_dir / "part-k3.parquet").write_bytes(
            (t.failures_dir / "part-k1.parquet").read_bytes())
        # a temporary left by a killed writer
        (t.shards_dir / ".part-k4.parquet.123.tmp").write_bytes(b"partial")
    assert t.committed_blocks() == {"k1", "k2"}
    assert t.committed_sources() == {"a.hea", "b.hea", "c.hea", "d.hea"}
    assert t.count() == (2, 2)
    assert sorted(t.read_failures().column("source").to_pylist()) == ["c.hea", "d.hea"]
    assert t.read_table().num_rows == 2
    with t:  # re-acquiring sweeps temporaries
        assert not list(t.shards_dir.glob(".*.tmp"))
        t.commit_block("k3", _emb(["e.hea"]), None)  # redo k3 without failures: stale file removed
    assert not (t.failures_dir / "part-k3.parquet").exists()
    assert t.count() == (3, 2)
    assert [x.key for x in list_tables(tmp_path)] == ["m-1-2"]
    assert open_table(tmp_path).key == "m-1-2" and open_table(tmp_path, "m").key == "m-1-2"
    with pytest.raises(ValueError, match="no table for model"):
        open_table(tmp_path, "other")


def _try_lock(root, q):
    try:
        ModelTable(root, "m").acquire()
        q.put("acquired")
    except WorkspaceLockedError:
        q.put("locked")


def test_one_writer_at_a_time(tmp_path):
    with ModelTable(tmp_path, "m"):
        q = mp.get_context("fork").Queue()
        p = mp.get_context("fork").Process(target=_try_lock, args=(tmp_path, q))
        p.start(); p.join(10)
        assert q.get(timeout=5) == "locked"
    p = mp.get_context("fork").Process(target=_try_lock, args=(tmp_path, q))
    p.start(); p.join(10)
    assert q.get(timeout=5) == "acquired"


def test_remote_workspace_refused():
    with pytest.raises(ValueError, match="local folder"):
        ModelTable("s3://bucket/ws", "m")
