"""Building from workspace parquet shards, save/load, incremental update, streamed and sharded
builds, and the import boundary of ecgbatch.index. Data: the real PTB-XL + CinC 2021 records of
the shared data folder embedded by a fixed random Gaussian projection of their signals
(ecgbatch.index.random_projection, D=256), written as workspace shards like the embed pipeline
writes them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgbatch.index import (
    EcgIndex, EmbeddingTableError, IndexFormatError, IndexModelMismatchError, ModelSignature,
    build_index, update_index,
)
from ecgbatch.index.store import embeddings_to_numpy


@pytest.fixture(scope="module")
def table(real_index_vectors):
    return real_index_vectors[0]


def write_shards(ws: Path, t: pa.Table, bounds: list[tuple[int, int]], prefix="part") -> None:
    (ws / "embeddings").mkdir(parents=True, exist_ok=True)
    for i, (a, b) in enumerate(bounds):
        pq.write_table(t.slice(a, b - a), ws / "embeddings" / f"{prefix}-{i:05d}.parquet")


def test_streamed_and_sharded_builds_equal_one_shot_flat(table, tmp_path):
    n = table.num_rows
    write_shards(tmp_path, table, [(0, 100), (100, 250), (250, n)])
    one_shot = build_index(table, kind="flat")
    streamed = build_index(tmp_path, kind="flat", batch_rows=37)  # many small batches
    sharded = build_index(tmp_path, kind="flat", batch_rows=37, sharded=True,
                          out_dir=tmp_path / "index_sharded")
    q = embeddings_to_numpy(table["embedding"])[::7] + 0.01
    want = one_shot.search_arrays(q, 10)
    for idx in (streamed, sharded):
        assert idx.record_ids == one_shot.record_ids
        got = idx.search_arrays(q, 10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
        np.testing.assert_array_equal(np.asarray(idx.vectors), np.asarray(one_shot.vectors))
    assert streamed.path == tmp_path / "index"
    assert sorted(p.name for p in streamed.path.iterdir()) == [
        "ids.parquet", "index.faiss", "index.json", "vectors.npy"]  # no temporary files left
    assert not (tmp_path / "index_sharded" / "shards").exists()


def test_sharded_ivfpq_equals_streamed_ivfpq(table, tmp_path):
    """Per-shard IVF-PQ indexes merged with merge_from hold the same codes as one streamed add
    (same training sample and seed), so results are identical."""
    n = table.num_rows
    write_shards(tmp_path, table, [(0, 120), (120, n)])
    a = build_index(tmp_path, kind="ivfpq", nlist=8, pq_m=16, out_dir=tmp_path / "a")
    b = build_index(tmp_path, kind="ivfpq", nlist=8, pq_m=16, sharded=True, out_dir=tmp_path / "b")
    q = embeddings_to_numpy(table["embedding"])[::5]
    for nprobe, rerank in ((2, 1), (8, 10)):
        sa, ia = a.search_arrays(q, 10, nprobe=nprobe, rerank=rerank)
        sb, ib = b.search_arrays(q, 10, nprobe=nprobe, rerank=rerank)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_allclose(sa, sb, atol=1e-6)


def test_save_load_round_trip(table, tmp_path):
    for kind in ("flat", "ivfpq", "hnsw"):
        out = tmp_path / kind
        extra = {"nlist": 8, "pq_m": 16} if kind == "ivfpq" else {}
        idx = build_index(table, kind=kind, out_dir=out, **extra)
        manifest = json.loads((out / "index.json").read_text())
        assert manifest["kind"] == kind and manifest["count"] == table.num_rows
        assert manifest["signature"] == {"model": "random-projection-ecg",
                                         "weights_hash": "gaussian-seed0-dim256", "dim": 256,
                                         "preprocess_hash": "zscore-crop5000-mean10"}
        ids = pq.read_table(out / "ids.parquet")
        assert ids["faiss_id"].to_pylist() == list(range(table.num_rows))
        assert ids["record_id"].to_pylist() == table["record_id"].to_pylist()
        back = EcgIndex.load(out)
        assert back.kind == kind and back.signature == idx.signature and back.params == idx.params
        q = embeddings_to_numpy(table["embedding"])[:25]
        w = "sex == 'F'"
        for a, b in zip(idx.search(q, 5, where=w), back.search(q, 5, where=w)):
            assert [(h.record_id, round(h.score, 5), h.metadata) for h in a] == \
                   [(h.record_id, round(h.score, 5), h.metadata) for h in b]
    assert EcgIndex.load(tmp_path / "flat").record_ids == table["record_id"].to_pylist()


def test_load_detects_half_written_folder(table, tmp_path):
    out = tmp_path / "idx"
    build_index(table, kind="flat", out_dir=out)
    m = json.loads((out / "index.json").read_text())
    m["count"] += 5  # as if index.json belonged to a later update than index.faiss
    (out / "index.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="half-written"):
        EcgIndex.load(out)
    (out / "vectors.npy").unlink()
    with pytest.raises(IndexFormatError, match="vectors.npy"):
        EcgIndex.load(out)
    with pytest.raises(IndexFormatError, match="not an index folder"):
        EcgIndex.load(tmp_path / "nowhere")


def test_update_adds_only_new_records(table, tmp_path):
    n = table.num_rows
    write_shards(tmp_path, table, [(0, 150)], prefix="run1")
    first = build_index(tmp_path, kind="flat")
    assert len(first) == 150
    # embed rerun: a new shard that repeats 50 old records and brings the rest
    write_shards(tmp_path, table, [(100, n)], prefix="run2")
    rep = update_index(tmp_path)
    assert rep.added == n - 150 and rep.already_indexed == 150 + 50  # all rows seen before
    idx = EcgIndex.load(tmp_path)
    assert len(idx) == n and len(set(idx.record_ids)) == n
    assert idx.record_ids == table["record_id"].to_pylist()
    full = build_index(table, kind="flat")
    q = embeddings_to_numpy(table["embedding"])[::9]
    np.testing.assert_array_equal(idx.search_arrays(q, 10)[1], full.search_arrays(q, 10)[1])
    assert idx.search(q[:1], 1)[0][0].metadata["sex"] in ("F", "M")
    rep2 = update_index(tmp_path)  # nothing new: nothing changes
    assert rep2.added == 0 and rep2.already_indexed == n + 50 and len(EcgIndex.load(tmp_path)) == n


def test_update_ivfpq_keeps_training_and_adds(table, tmp_path):
    write_shards(tmp_path, table, [(0, 200)], prefix="run1")
    build_index(tmp_path, kind="ivfpq", nlist=8, pq_m=16)
    write_shards(tmp_path, table, [(200, table.num_rows)], prefix="run2")
    rep = update_index(tmp_path)
    assert rep.added == table.num_rows - 200
    idx = EcgIndex.load(tmp_path)
    q = embeddings_to_numpy(table["embedding"])[200:220]
    hits = idx.search(q, 1, nprobe=8)
    assert [h[0].record_id for h in hits] == table["record_id"].to_pylist()[200:220]


def test_update_refuses_another_model(table, tmp_path):
    write_shards(tmp_path, table, [(0, 100)], prefix="run1")
    build_index(tmp_path, kind="flat")
    other = table.slice(100, 50).set_column(
        table.schema.get_field_index("weights_hash"), "weights_hash", pa.array(["retrained"] * 50))
    write_shards(tmp_path, other, [(0, 50)], prefix="run2")
    with pytest.raises(IndexModelMismatchError, match="weights_hash"):
        update_index(tmp_path)  # the workspace now mixes two models


def test_workspace_errors_are_typed(table, tmp_path):
    with pytest.raises(EmbeddingTableError, match="no \\*.parquet"):
        build_index(tmp_path)
    write_shards(tmp_path, table.drop_columns(["model"]), [(0, 10)])
    with pytest.raises(EmbeddingTableError, match="missing columns"):
        build_index(tmp_path)
    ws2 = tmp_path / "ws2"
    write_shards(ws2, table, [(0, 10)], prefix="a")
    small = table.slice(10, 10)
    emb = embeddings_to_numpy(small["embedding"])[:, :128]
    small = small.set_column(small.schema.get_field_index("embedding"), "embedding",
                             pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 128))
    write_shards(ws2, small, [(0, 10)], prefix="b")
    with pytest.raises(IndexModelMismatchError, match="dimension"):
        build_index(ws2)


def test_in_memory_input_checks(table):
    v = embeddings_to_numpy(table["embedding"])
    sig = ModelSignature("m", "w", 256)
    with pytest.raises(ValueError, match="unique"):
        build_index(v[:3], ["a", "b", "a"], model=sig)
    with pytest.raises(ValueError, match="ids="):
        build_index(v[:3])
    idx = build_index(v[:3], ["a", "b", "c"], model=sig, kind="auto")
    assert idx.kind == "flat" and idx.path is None
    with pytest.raises(ValueError, match="needs a folder"):
        idx.save()


def test_index_package_imports_no_ray_torch_vllm():
    code = (
        "import sys, ecgbatch.index, ecgbatch.index.random_projection;"
        "bad = [m for m in ('ray', 'torch', 'vllm') if m in sys.modules];"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"ecgbatch.index imported {r.stdout.strip()} {r.stderr[-500:]}"
