"""The embed pipeline on the bundled sample archive: real Ray (the session's local one), real
readers, real model, real FAISS. The UDF tests at the top need no Ray. The archive's embed is the
session's one (conftest ``sample_embedded``); this module works on a copy of its workspace."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from ecgbatch.io import list_records
from ecgbatch.pipelines import embed, read_stage
from ecgbatch.pipelines import sources as src
from ecgbatch.pipelines.workspace import ModelTable, list_tables, open_table

MODEL = "ecg-coca-mini"


@pytest.fixture(scope="module")
def model_and_spec():
    return embed.load_model(MODEL, allow_random_init=True)


def _main_table(ws):
    """The table of the module's embed run (not the pretrained="random" one)."""
    return next(t for t in list_tables(ws) if t.read_meta()["create_args"].get("pretrained") != "random")


def _sources(root):
    return {s.key: s for s in list_records(root)}


# ------------------------------------------------------------------ UDFs, no Ray
def test_read_stage_rows_and_typed_failures(sample_archive, model_and_spec):
    model, _ = model_and_spec
    cfg = model.preprocess_config
    by_key = _sources(sample_archive)
    # a record in mV (PTB-XL via the Challenge): the sample's LUDB records have every lead rescaled
    # to the same peak to peak, so they have no axis and no voltages (tests/test_signal_axis.py)
    good = next(k for k in sorted(by_key) if k.endswith("cinc2021/HR03961.hea"))
    bad = next(k for k in sorted(by_key) if k.endswith("bad/truncated.hea"))
    batch = {"block": np.array(["b1"], dtype=object),
             "sources": np.array([[src.source_to_json(by_key[good]), src.source_to_json(by_key[bad])]],
                                 dtype=object),
             "ids": np.array([["cinc2021/x", "bad/truncated"]], dtype=object)}
    out = read_stage.read_and_preprocess(batch, preprocess=cfg.to_dict(), measure=True)
    assert list(out["ok"]) == [True, False]
    assert out["x"].shape == (2, len(cfg.leads), cfg.n_samples) and out["x"].dtype == np.float32
    assert np.abs(out["x"][0]).sum() > 0 and not out["x"][1].any()
    assert out["error_kind"][1] == "truncated_signal" and out["stage"][1] == "read"
    assert out["error_type"][1] == "TruncatedSignalError" and "truncated" in out["message"][1].lower()
    assert 20 < out["hr_bpm"][0] < 250 and out["age"][0] > 0 and out["sex"][0] in ("M", "F")
    assert "rhythm" in out["diagnoses"][0].lower()
    assert np.isnan(out["hr_bpm"][1])
    assert -180 < out["axis_deg"][0] <= 180 and 0 <= out["rr_nrmssd"][0] < 1 and np.isnan(out["axis_deg"][1])
    assert 0 < out["sokolow_lyon_mv"][0] < 10 and 0 < out["cornell_mv"][0] < 10 and np.isnan(out["cornell_mv"][1])
    # the same record through the model directly == what the encoder UDF returns
    udf = embed.EncoderUDF.__new__(embed.EncoderUDF)
    udf.model = model
    enc = udf(dict(out))
    assert enc["embedding"].shape == (2, model.embed_dim) and "x" not in enc
    np.testing.assert_allclose(np.linalg.norm(enc["embedding"][0]), 1.0, rtol=1e-5)
    assert not enc["embedding"][1].any()
    # rhythm-channel inputs computed in the read stage give the embeddings the model computes itself
    spec = model.rhythm_spec
    assert spec == {"lead_index": 1, "fs": 500.0}
    out2 = read_stage.read_and_preprocess(batch, preprocess=cfg.to_dict(), measure=False, rhythm=spec)
    assert out2["rhythm_features"].shape == (2, 7) and np.isnan(out2["rhythm_rr_ms"][1])
    assert 300 < out2["rhythm_rr_ms"][0] < 2000
    enc2 = udf(dict(out2))
    assert "rhythm_features" not in enc2 and "rhythm_rr_ms" not in enc2
    np.testing.assert_allclose(enc2["embedding"], enc["embedding"], atol=1e-6)


# ------------------------------------------------------------------ with Ray
@pytest.fixture(scope="module")
def embedded(sample_embedded, tmp_path_factory):
    """(a copy of the session's embedded sample workspace, the embed's summary: EmbedSummary's
    fields, from its --json)."""
    w, summary = sample_embedded
    return shutil.copytree(w, tmp_path_factory.mktemp("pipeline") / "ws"), SimpleNamespace(**summary)


@pytest.mark.ray
@pytest.mark.slow
def test_every_record_once_bad_files_in_failures(embedded, sample_archive, model_and_spec):
    ws, s = embedded
    t = _main_table(ws)
    want = set(_sources(sample_archive))
    got = t.read_table(["source", "record_id", "quality"]).to_pylist()
    fails = t.read_failures().to_pylist()
    sources = [r["source"] for r in got] + [f["source"] for f in fails]
    assert len(sources) == len(set(sources)), "a record was written twice"
    assert set(sources) == want
    assert s.embedded == len(got) and s.failed == len(fails) and s.total_records == len(want)
    assert len({r["record_id"] for r in got}) == len(got)
    bad = {k for k in want if "/bad/" in k}
    failed = {f["source"] for f in fails}
    assert failed <= bad, f"good records failed: {failed - bad}"
    flagged = {r["source"] for r in got if r["quality"]}
    assert bad <= failed | flagged, f"bad files neither failed nor flagged: {bad - failed - flagged}"
    assert all(f["error_kind"] and f["error_type"].endswith("Error") and f["message"] for f in fails)
    # schema: fixed-size float32 vectors, one model signature, index built
    sch = pq.read_schema(t.shard_files()[0])
    meta = t.read_meta()
    dim = model_and_spec[0].embed_dim
    assert dim == 352 and int(meta["dim"]) == dim     # 256 learned + 96 RR block (rhythm channel)
    assert str(sch.field("embedding").type) == f"fixed_size_list<element: float>[{dim}]"
    assert meta["archive"] == str(Path(sample_archive).resolve()) and meta["model"] == MODEL
    tb = t.read_table(["model", "weights_hash", "preprocess_hash"])
    assert {tuple(r.values()) for r in tb.to_pylist()} == {(MODEL, meta["weights_hash"], meta["preprocess_hash"])}
    assert s.index and s.index["rows"] == len(got)


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_skips_everything_committed(embedded, sample_archive):
    ws, first = embedded
    t = _main_table(ws)
    before = sorted(p.name for p in t.shard_files())
    s = embed.run(str(sample_archive), ws, MODEL, allow_random_init=True, progress=False)
    assert s.already_done == first.total_records and s.embedded == 0 and s.failed == 0
    assert sorted(p.name for p in t.shard_files()) == before


def _live_ledgers(ray) -> list[str]:
    """The read ledgers alive in the session (named actors: a killed one is gone from the list)."""
    from ecgbatch.pipelines.read_ledger import LEDGER_NAME_PREFIX

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(LEDGER_NAME_PREFIX))


@pytest.mark.ray
@pytest.mark.slow
def test_grown_uri_archive_adds_only_new_records(embedded, ray_local, sample_archive, tmp_path):
    """A pyarrow-URI archive (file://) that gains a record between two runs: the second run embeds
    only that record and updates the index; every row's source is under the URI and its embedding
    is the local archive's. And each run kills its own read ledger: the session's Ray (long-lived,
    as a cluster) keeps none of them. (One test for the URI archive and the grown archive: each
    embed run starts an encoder actor, 5-10 s on 2 cores.)"""
    ledgers = _live_ledgers(ray_local)
    arch = tmp_path / "ludb"
    shutil.copytree(Path(sample_archive) / "ludb", arch)
    uri = "file://" + str(arch.resolve())
    ws = tmp_path / "ws"
    files = sorted(arch.glob("*.hea"))
    hidden = files[len(files) // 2]
    keep = {hidden.with_suffix(e).name: hidden.with_suffix(e).read_bytes() for e in (".hea", ".dat")}
    for name in keep:
        (arch / name).unlink()
    s1 = embed.run(uri, ws, MODEL, allow_random_init=True, progress=False, block_size=2)
    assert s1.failed == 0 and s1.embedded == len(files) - 1
    for name, data in keep.items():  # the archive gains a record: sorted blocks shift
        (arch / name).write_bytes(data)
    s2 = embed.run(uri, ws, MODEL, allow_random_init=True, progress=False, block_size=2)
    assert s2.already_done == s1.total_records and s2.embedded == 1 and s2.failed == 0
    remote = open_table(ws).read_table(["source", "embedding"]).to_pylist()
    ids = [r["source"] for r in remote]
    assert len(ids) == len(set(ids)) == len(files)
    assert all(i.startswith(uri + "/") for i in ids)
    assert s2.index["action"] == "updated" and s2.index["rows"] == len(files)
    local = _main_table(embedded[0]).read_table(["source", "embedding"]).to_pylist()
    loc = {r["source"]: r["embedding"] for r in local}
    for r in remote:
        lp = str(Path(sample_archive).resolve() / "ludb" / r["source"][len(uri) + 1:])
        np.testing.assert_allclose(r["embedding"], loc[lp], atol=1e-5)
    deadline = time.time() + 60                  # ray.kill returns before the actor is gone
    while _live_ledgers(ray_local) != ledgers and time.time() < deadline:
        time.sleep(0.5)
    assert _live_ledgers(ray_local) == ledgers


@pytest.mark.ray
@pytest.mark.slow
def test_another_model_gets_another_table_and_the_index_refuses_it(embedded, ray_local, sample_archive):
    from ecgbatch.index import EcgIndex, IndexModelMismatchError, ModelSignature, update_index

    ws, _ = embedded
    by_key = _sources(sample_archive)
    few = [by_key[k] for k in sorted(by_key) if "/ludb/" in k][:3]
    # same architecture, other weights (fully random text tower too) -> another embedding space
    s = embed.run(str(sample_archive), ws, MODEL, pretrained="random", progress=False, sources=few)
    tables = list_tables(ws)
    assert len(tables) == 2 and len({t.key for t in tables}) == 2
    a = _main_table(ws)
    b = ModelTable(ws, Path(s.table).name)
    assert b.count() == (3, 0)
    idx = EcgIndex.load(a.index_dir)
    mb = b.read_meta()
    vec = np.asarray(b.read_table(["embedding"]).column("embedding").to_pylist(), np.float32)
    with pytest.raises(IndexModelMismatchError):
        idx.search(vec, k=3, model=ModelSignature(mb["model"], mb["weights_hash"], mb["dim"], mb["preprocess_hash"]))
    with pytest.raises(IndexModelMismatchError):
        update_index(b.root, index_dir=a.index_dir)


@pytest.mark.ray
@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_exactly_once(ray_local, sample_archive, tmp_path):
    """A separate driver process, attached to the session's Ray, is SIGKILLed after its first
    commits (Ray then ends its job: its read tasks, encoder actor and read ledger); a rerun of the
    same job (in this process) finishes it without duplicating any record. (Attached rather than
    with a local Ray of its own: that Ray's start cost 10-15 s more on 2 cores.)"""
    ws = tmp_path / "ws"
    job = dict(allow_random_init=True, progress=False, block_size=2, batch_size=2, build_index=False)
    code = ("import sys; from ecgbatch.pipelines import embed; "
            f"embed.run(sys.argv[1], sys.argv[2], {MODEL!r}, address=sys.argv[3], **{job!r})")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TRANSFORMERS_VERBOSITY="error")
    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-c", code, str(sample_archive), str(ws), address], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600       # a loaded 2-core machine: the model, an encoder actor
        shards: list[Path] = []
        while time.time() < deadline and proc.poll() is None:
            shards = list(ws.glob("*/embeddings/part-*.parquet"))
            if len(shards) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job finished (or died) before it could be killed"
        assert shards, "no block committed within the time limit"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver (its Ray workers belong to the session's Ray)
        except ProcessLookupError:
            pass
        proc.wait(30)
    table = list_tables(ws)[0]
    n_ok, n_bad = table.count()
    total = len(_sources(sample_archive))
    assert 0 < n_ok + n_bad < total, "the kill did not interrupt the job"
    s = embed.run(str(sample_archive), ws, MODEL, **job)
    assert s.already_done == n_ok + n_bad and s.already_done + s.embedded + s.failed == total
    sources = (table.read_table(["source"]).column("source").to_pylist()
               + table.read_failures().column("source").to_pylist())
    assert len(sources) == len(set(sources)) == total
    assert not list(table.root.rglob("*.tmp"))


@pytest.mark.ray
@pytest.mark.slow
def test_classify_as_ray_job_equals_in_process(embedded, ray_local):
    from ecgbatch.pipelines import classify
    from ecgbatch.pipelines.queries import load_table_model

    ws, _ = embedded
    t = _main_table(ws)
    model = load_table_model(t)
    res = classify.run(t, "cpsc2018", model=model, output=ws / "preds.parquet", zero_shot=True)
    _, udf = classify.make_udf(model, "cpsc2018")
    rows = {}
    for b in classify.build_dataset(t, udf).iter_batches(batch_size=None, batch_format="numpy"):
        for rid, s, p in zip(b["record_id"], b["scores"], b["predicted"]):
            rows[rid] = (s, p)
    local = res.preds.to_pylist()
    assert len(rows) == len(local) == res.n_records
    for r in local:
        s, p = rows[r["record_id"]]
        np.testing.assert_allclose(s, [r[f"score_{lab}"] for lab in res.labels], rtol=1e-6)
        assert p.split(";") == r["predicted"]
    # the linear-probe path: same answers from the Ray actors as in-process
    probe_file = classify.table_probe(t, "ptbxl-rhythm")
    assert probe_file is not None
    res = classify.run(t, "ptbxl-rhythm", output=ws / "probe.parquet")
    assert res.method == "probe" and res.untrained
    udf = classify.ProbeUDF(classify.load_probe_for(t, probe_file))
    rows = {}
    for b in classify.build_dataset(t, udf).iter_batches(batch_size=None, batch_format="numpy"):
        for rid, s, p, top in zip(b["record_id"], b["scores"], b["predicted"], b["top"]):
            rows[rid] = (s, p, top)
    local = res.preds.to_pylist()
    assert len(rows) == len(local) == res.n_records
    for r in local:
        s, p, top = rows[r["record_id"]]
        want = np.array([np.nan if r[f"prob_{lab}"] is None else r[f"prob_{lab}"] for lab in res.labels])
        np.testing.assert_allclose(s, want, rtol=1e-6, equal_nan=True)
        assert p.split(";") == r["predicted"] and top == r["top"]
