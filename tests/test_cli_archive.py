"""`ecgbatch embed / index build / search / classify` through the real CLI (typer runner, the
session's local Ray), on the bundled sample archive: the embed is the session's one
(conftest ``sample_embedded``, `ecgbatch embed --measure --json`), this module works on a copy."""
from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ecgbatch.cli import app
from ecgbatch.pipelines.workspace import open_table

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ws(sample_embedded, tmp_path_factory):
    """(a copy of the session's embedded sample workspace, the embed's JSON summary)."""
    w, summary = sample_embedded
    return shutil.copytree(w, tmp_path_factory.mktemp("cli") / "ws"), summary


def _run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def test_embed_summary_json(ws):
    w, s = ws
    assert s["embedded"] > 0 and s["failed"] > 0 and s["embedded"] + s["failed"] == s["total_records"]
    assert s["index"]["rows"] == s["embedded"] and s["records_per_s"] > 0
    t = open_table(w)
    qtc = t.read_table(["qtc_ms"]).column("qtc_ms").to_pylist()
    assert sum(v is not None for v in qtc) >= s["embedded"] // 2  # --measure filled the columns


def test_search_text_json_where_and_csv(ws):
    w, s = ws
    r = _run("search", "atrial fibrillation", "-w", w, "-k", 5, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["mode"] == "text" and "ptbxl-rhythm:AFIB" in out["matched_labels"]
    assert out["ranked_by"] == "probe:ptbxl-rhythm:AFIB"           # the shipped rhythm probe ranks it
    assert all(0.0 <= h["score"] <= 1.0 for h in out["rows"])
    assert out["prompts"] == ["atrial fibrillation"] and [h["rank"] for h in out["rows"]] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in out["rows"]]
    assert scores == sorted(scores, reverse=True)
    r = _run("search", "atrial fibrillation", "-w", w, "-k", 50, "--where", "age >= 60 and sex == 'F'", "--csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert rows and all(float(x["age"]) >= 60 and x["sex"] == "F" for x in rows)
    assert list(rows[0]) == ["rank", "score", "record_id", "source", "age", "sex", "diagnoses", "quality"]
    cohort = open_table(w).read_table(["age", "sex"]).to_pylist()
    assert len(rows) == sum(1 for c in cohort if c["age"] is not None and c["age"] >= 60 and c["sex"] == "F")
    r = _run("search", "sinus rhythm", "-w", w)  # rich table on stdout
    assert r.exit_code == 0 and "record_id" in r.stdout


def test_search_contrast_is_the_explicit_vector_difference(ws):
    """The default ranks by the query as typed; --expand by its label's prompts ensembled;
    --contrast against its label set's normal class (normalise(q - c)); --versus against any
    other text. Scores are those vectors over the stored embeddings."""
    from ecgbatch.pipelines.queries import contrast_prompts, load_table_model, query_prompts

    w, _ = ws
    table = open_table(w)
    model = load_table_model(table)
    tab = table.read_table(["record_id", "embedding"]).to_pydict()
    ids, emb = tab["record_id"], np.asarray(tab["embedding"], dtype=np.float32)

    def unit(prompts):
        v = model.embed_texts(prompts, normalize=True).mean(axis=0)
        return v / np.linalg.norm(v)

    def expected(q, k=5):
        s = emb @ (q / np.linalg.norm(q))
        o = np.argsort(-s, kind="stable")[:k]
        return [ids[i] for i in o], s[o]

    prompts, matched = query_prompts("atrial fibrillation")
    counter = contrast_prompts(matched)
    assert counter[0] == "sinus rhythm" and "normal ecg" in counter
    assert contrast_prompts(query_prompts("sinus rhythm")[1]) == []     # a normal class is not contrasted
    assert contrast_prompts([]) == []                                     # free text: no contrast
    q = unit(["atrial fibrillation"])
    cases = [(("--no-probe",), q), (("--expand",), unit(prompts)), (("--contrast",), q - unit(counter)),
             (("--expand", "--contrast"), unit(prompts) - unit(counter)),
             (("--versus", "left bundle branch block"), q - unit(["left bundle branch block"]))]
    for extra, q in cases:
        r = _run("search", "atrial fibrillation", "-w", w, "-k", 5, "--json", *extra)
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        want_ids, want_scores = expected(q)
        assert [h["record_id"] for h in out["rows"]] == want_ids, extra
        assert np.allclose([h["score"] for h in out["rows"]], want_scores, atol=2e-4), extra
        assert bool(out["contrast"]) == ("--contrast" in extra or "--versus" in extra)
        assert (len(out["prompts"]) > 1) == ("--expand" in extra)
        assert out["ranked_by"] == "vector"
    r = _run("search", "atrial fibrillation", "-w", w, "-k", 3, "--contrast")
    assert r.exit_code == 0 and "ranked against 'sinus rhythm'" in r.output


def test_search_by_probe_is_the_probability_ranking_inside_the_cohort(ws):
    from ecgbatch.encoders.probes import LinearProbe
    from ecgbatch.pipelines.classify import table_probe

    w, _ = ws
    table = open_table(w)
    probe = LinearProbe.load(table_probe(table, "ptbxl-rhythm"))
    tab = table.read_table(["record_id", "embedding", "age"]).to_pydict()
    p = probe.trained_probabilities(np.asarray(tab["embedding"], np.float32))[:, probe.trained.index("SBRAD")]
    keep = np.array([a is not None and a >= 50 for a in tab["age"]])
    order = [i for i in np.argsort(-p, kind="stable") if keep[i]][:4]
    r = _run("search", "sinus bradycardia", "-w", w, "-k", 4, "--where", "age >= 50", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["ranked_by"] == "probe:ptbxl-rhythm:SBRAD"
    assert [h["record_id"] for h in out["rows"]] == [tab["record_id"][i] for i in order]
    np.testing.assert_allclose([h["score"] for h in out["rows"]], p[order], atol=1e-4)
    r = _run("search", "TRIGU", "-w", w, "-k", 3, "--json")   # a rhythm absent from training
    out = json.loads(r.stdout)
    assert out["ranked_by"] == "vector" and any("ptbxl-rhythm:TRIGU" in n for n in out["notes"])


def test_search_like_id_and_file_and_plot(ws, sample_archive, tmp_path):
    w, _ = ws
    t = open_table(w)
    rows = t.read_table(["record_id", "source"]).to_pylist()
    rid, source = next((r["record_id"], r["source"]) for r in rows if r["record_id"].startswith("ludb/"))
    r = _run("search", "--like", rid, "-w", w, "-k", 3, "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["rows"]
    assert len(hits) == 3 and rid not in [h["record_id"] for h in hits]
    r = _run("search", "--like", source, "-w", w, "-k", 3, "--json", "--plot", tmp_path / "plots")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["rows"]
    assert hits[0]["record_id"] == rid and hits[0]["score"] > 0.999  # the file itself, re-encoded
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    drawable = [h for h in hits if not h["source"].endswith(".npy")]  # z-scored PTB-XL: no mV scale
    assert len(pngs) == len(drawable) >= 1 and all(p.stat().st_size > 10_000 for p in pngs)
    assert r.output.count("not plotted") == 3 - len(drawable)


def test_search_errors_are_clear(ws, tmp_path):
    w, _ = ws
    r = _run("search", "x", "-w", w, "--where", "nonexistent_col > 1")
    assert r.exit_code == 2 and "nonexistent_col" in r.output
    r = _run("search", "-w", w, "--like", "no/such/record")
    assert r.exit_code == 2 and "neither a record id" in r.output
    r = _run("search", "x", "-w", tmp_path / "empty")
    assert r.exit_code == 2 and "ecgbatch embed" in r.output
    r = _run("search", "-w", w)
    assert r.exit_code == 2


def test_classify_writes_predictions_agreeing_with_zero_shot(ws, sample_archive, tmp_path):
    from ecgbatch.encoders import ZeroShotClassifier
    from ecgbatch.io import read_record
    from ecgbatch.pipelines.queries import load_table_model
    from ecgbatch.signal import preprocess

    w, s = ws
    out = tmp_path / "preds.parquet"
    r = _run("classify", "-w", w, "--labels", "ptbxl-rhythm", "--zero-shot", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["method"] == "zero-shot"
    assert summary["records"] == s["embedded"] and sum(x["records"] for x in summary["rows"]) == s["embedded"]
    preds = pq.read_table(out).to_pylist()
    assert len(preds) == s["embedded"] and all(len(p["predicted"]) == 1 for p in preds)
    # zero-shot on freshly read + preprocessed + encoded records gives the same scores
    t = open_table(w)
    model = load_table_model(t)
    zs = ZeroShotClassifier(model, "ptbxl-rhythm")
    some = [p for p in preds if p["source"].endswith(".hea")][:4]
    x = np.stack([preprocess(read_record(p["source"]), model.preprocess_config).x for p in some])
    fresh = zs.classify(x)
    stored = np.array([[p[f"score_{lab}"] for lab in zs.labels] for p in some])
    np.testing.assert_allclose(stored, fresh, atol=1e-4)
    assert [p["predicted"][0] for p in some] == [zs.labels[i] for i in fresh.argmax(1)]
    # multi-label threshold
    r = _run("classify", "-w", w, "--labels", "cpsc2018", "--zero-shot", "--threshold", "0.0",
             "-o", tmp_path / "all.parquet")
    assert r.exit_code == 0, r.output
    assert all(len(p["predicted"]) == 9 for p in pq.read_table(tmp_path / "all.parquet").to_pylist())


def test_classify_uses_the_shipped_probe_and_marks_untrained_labels(ws, tmp_path):
    from ecgbatch.encoders.probes import LinearProbe
    from ecgbatch.io import read_record
    from ecgbatch.pipelines.classify import table_probe
    from ecgbatch.pipelines.queries import load_table_model
    from ecgbatch.signal import preprocess

    w, s = ws
    t = open_table(w)
    path = table_probe(t, "ptbxl-rhythm")
    assert path is not None, "ecg-coca-mini ships a ptbxl-rhythm probe"
    probe = LinearProbe.load(path)
    out = tmp_path / "probe.parquet"
    r = _run("classify", "-w", w, "--labels", "ptbxl-rhythm", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["method"] == "probe" and summary["untrained"] == list(probe.untrained)
    rows = {x["label"]: x for x in summary["rows"]}
    assert all(rows[u]["records"] is None and "untrained" in rows[u]["note"] for u in probe.untrained)
    assert sum(rows[lab]["records"] for lab in probe.trained) == s["embedded"]   # one top rhythm each
    preds = pq.read_table(out).to_pylist()
    for p in preds:
        assert p["top"] == p["predicted"][0] and not set(p["predicted"]) & set(probe.untrained)
        assert all(p[f"prob_{u}"] is None for u in probe.untrained)
        assert abs(sum(p[f"prob_{lab}"] for lab in probe.trained) - 1.0) < 1e-4
    # the same probabilities from freshly read, preprocessed and encoded records
    model = load_table_model(t)
    some = [p for p in preds if p["source"].endswith(".hea")][:4]
    x = np.stack([preprocess(read_record(p["source"]), model.preprocess_config).x for p in some])
    fresh = probe.probabilities(model.embed_ecgs(x))
    cols = [probe.labels.index(lab) for lab in probe.trained]
    stored = np.array([[p[f"prob_{lab}"] for lab in probe.trained] for p in some])
    np.testing.assert_allclose(stored, fresh[:, cols], atol=1e-3)
    # zero-shot knobs do not silently apply to a probe
    r = _run("classify", "-w", w, "--labels", "ptbxl-rhythm", "--softmax")
    assert r.exit_code == 2 and "--zero-shot" in r.output


def test_index_build_kinds(ws):
    from ecgbatch.index import EcgIndex

    w, s = ws
    r = _run("index", "build", "-w", w, "--kind", "hnsw")
    assert r.exit_code == 0, r.output
    idx = EcgIndex.load(open_table(w).index_dir)
    assert idx.kind == "hnsw" and len(idx) == s["embedded"]
    r = _run("search", "atrial fibrillation", "-w", w, "-k", 3, "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["rows"]) == 3
    r = _run("index", "build", "-w", w, "--kind", "nope")
    assert r.exit_code == 2


def test_embed_resume_without_archive_and_rerun_noop(ws):
    w, s = ws
    r = _run("embed", "--resume", "-w", w, "--allow-random-init", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout.split("\n", 1)[1] if r.stdout.startswith("resuming") else r.stdout)
    assert again["already_done"] == s["total_records"] and again["embedded"] == 0
    r = _run("embed", "-w", w)
    assert r.exit_code == 2 and "ARCHIVE" in r.output
