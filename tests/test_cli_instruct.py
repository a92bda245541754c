"""`ecgbatch data instruct` and `ecgbatch eval report` end to end on the bundled sample archive."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from ecgbatch import testfold
from ecgbatch.cli import app
from ecgbatch.training.instruct_format import read_instruct


def _run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def test_data_instruct_then_eval_report(tmp_path, sample_archive):
    out = tmp_path / "instruct.jsonl"
    r = _run("data", "instruct", f"ludb={sample_archive / 'ludb'}", f"cinc={sample_archive / 'cinc2021'}",
             "-o", out, "--split-by-patient", "--val-fraction", "0.5", "--seed", "1", "--measure", "none",
             "--root", sample_archive)
    assert r.exit_code == 0, r.output
    assert "records left out" not in r.output, r.output
    items = read_instruct(out, ecg_root=sample_archive)      # valid ECG-Instruct, paths relative to root
    recs = {(it.meta["source"], it.meta["record_id"]) for it in items}
    # every sample record but those of the test fold (ecgbatch/testfold.py: the sample archive
    # holds copies of shared records, so the rule finds them by their folders' names)
    want = {(name, p.stem) for name, folder in (("ludb", "ludb"), ("cinc", "cinc2021"))
            for p in (sample_archive / folder).glob("*.hea") if not testfold.in_test_fold(folder, p.stem)}
    assert recs == want and ("cinc", "A0689") in recs
    assert len(want) < len(list(sample_archive.glob("ludb/*.hea"))) + len(list(sample_archive.glob("cinc2021/*.hea")))
    assert all(not it.ecg.startswith("/") for it in items)
    assert {it.meta["split"] for it in items} == {"train", "val"}
    assert not list(tmp_path.glob("*.tmp"))                   # atomic write left nothing behind
    af = next(it for it in items if it.id == "cinc/A0689/report")
    assert af.conversations[1]["value"] == "Atrial fibrillation."

    # references: the instruct file's report answers; predictions: the same texts for some ids,
    # a wrong one for another
    refs = {f"{it.meta['source']}/{it.meta['record_id']}": it.conversations[1]["value"]
            for it in items if it.meta["kind"] == "report"}
    pred = tmp_path / "pred.jsonl"
    ids = sorted(refs)
    lines = [{"id": k, "text": refs[k]} for k in ids[:-1]] + [{"id": ids[-1], "text": "Sinus rhythm. Normal ECG."}]
    pred.write_text("\n".join(json.dumps(d) for d in lines))
    res_path = tmp_path / "report.json"
    r = _run("eval", "report", "--predictions", pred, "--references", out, "--no-meteor", "-o", res_path)
    assert r.exit_code == 0, r.output
    assert "11.19" in r.output and "BLEU-4" in r.output and "CE-Rhythm" in r.output
    res = json.loads(res_path.read_text())
    assert res["n"] == len(ids) and 50 < res["bleu4"] < 100 and res["meteor"] is None


def test_eval_report_errors(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": "a", "text": "sinus rhythm"}))
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "b", "text": "sinus rhythm"}))
    r = _run("eval", "report", "--predictions", p, "--references", q, "--no-meteor")
    assert r.exit_code == 2 and "no reference" in r.output


def test_data_instruct_rejects_a_missing_source(tmp_path):
    r = _run("data", "instruct", tmp_path / "nope", "-o", tmp_path / "o.jsonl")
    assert r.exit_code == 2 and "neither a sources YAML/JSON nor a folder" in r.output
    assert not (tmp_path / "o.jsonl").exists()
