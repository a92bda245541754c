"""`report --input ARCHIVE --rag K --reference WS` and `--ddp` end to end through the command
line app: `ecgbatch embed` (ecg-coca-mini), `ecgbatch index build`, then `ecgbatch report --input`
through Ray Data and a vLLM engine actor (the converted ECG-Chat fixture model). The commands run
in this process on the session's one Ray (conftest ``ray_local``; a process with a Ray of its own:
tests/test_report_archive.py), each engine actor running vLLM in its own process
(tests/helpers/vllm_env.py). Four real cinc2021 records of the sample archive, two of them AF.

--rag: the reference is the job's own workspace (texts: the records' header diagnoses, as
reference_texts falls back to when the workspace has no report table yet); each row's prompt
must hold the diagnoses of its K nearest other records, nearest first, computed here with NumPy
from the embedding table, and never its own. --ddp: each row's prompt must hold the findings the
shipped probes give its embedding (atrial fibrillation for the two AF records)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers.ray_cluster import copy_cinc_records
from helpers.vllm_env import engine_actor_env
from typer.testing import CliRunner

from ecgbatch.cli import app

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.slow]

K = 2
AF = {"A0689", "A1041"}
RECORDS = [*sorted(AF), "E00271", "HR03961"]      # AF, AF, a Georgia and a PTB-XL record
MAX_TOKENS = 4


def _run(*args):
    r = CliRunner().invoke(app, [*map(str, args)])
    assert r.exit_code == 0, f"{args[0]} failed:\n{r.output[-4000:]}"
    return r


@pytest.fixture(scope="module")
def ws(sample_archive, tmp_path_factory, ray_local):
    """The records embedded by ecg-coca-mini and indexed: (archive, workspace, table)."""
    from ecgbatch.pipelines.workspace import open_table

    base = tmp_path_factory.mktemp("rag-ddp")
    arc = base / "archive"
    arc.mkdir()
    copy_cinc_records(sample_archive, RECORDS, arc)
    ws = base / "ws"
    _run("embed", arc, "-w", ws, "--model", "ecg-coca-mini", "--no-progress")
    _run("index", "build", "-w", ws)
    return arc, ws, open_table(ws)


def _report(arc, ws, model, *mode):
    from ecgbatch.pipelines.workspace import ReportTable

    before = {p.name for p in ws.glob("report-*")}
    with engine_actor_env():
        r = _run("report", "--input", arc, "-w", ws, "--model", model, "--max-tokens", MAX_TOKENS, "--no-progress",
                 *mode)
    [new] = [p for p in ws.glob("report-*") if p.name not in before]
    t = ReportTable(ws, new.name)
    fails = t.read_failures()
    return t.read_table().to_pylist(), [] if fails is None else fails.to_pylist(), " ".join(r.stderr.split())


def test_rag_prompts_hold_the_nearest_records_texts(ws, llava_converted):
    from ecgbatch.index.store import embeddings_to_numpy
    from ecgbatch.pipelines.report import DEFAULT_QUESTION
    from ecgbatch.pipelines.report_prompts import rag_question

    arc, w, table = ws
    emb = table.read_table(["record_id", "embedding", "diagnoses"])
    ids = emb.column("record_id").to_pylist()
    texts = emb.column("diagnoses").to_pylist()
    v = embeddings_to_numpy(emb.column("embedding"))
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert sum(1 for t in texts if t) > K, "the records' headers should give diagnoses texts"
    rows, fails, _ = _report(arc, w, llava_converted, "--rag", K, "--reference", w)
    assert not fails and sorted(r["record_id"] for r in rows) == sorted(ids)
    for r in rows:
        i = ids.index(r["record_id"])
        order = [j for j in np.argsort(-(v @ v[i])) if j != i and texts[j]][:K]
        assert r["prompt_mode"] == "rag"
        assert r["question"] == rag_question(DEFAULT_QUESTION, [texts[j] for j in order]), r["record_id"]
        assert r["n_output_tokens"] >= 1 and r["finish_reason"] in ("stop", "length")


def test_ddp_prompts_hold_the_probes_findings(ws, llava_converted):
    from ecgbatch.encoders.probes import LinearProbe
    from ecgbatch.index.store import embeddings_to_numpy
    from ecgbatch.llava.diagnosis_prompt import PROMPT_INTRO, diagnosis_prompt, findings_from_embeddings, probe_files
    from ecgbatch.models import model_folder
    from ecgbatch.pipelines.report import DEFAULT_QUESTION

    arc, w, table = ws
    emb = table.read_table(["record_id", "embedding"])
    ids = emb.column("record_id").to_pylist()
    v = embeddings_to_numpy(emb.column("embedding"))
    probes = [LinearProbe.load(p) for p in probe_files(model_folder("ecg-coca-mini"), "ecg-coca-mini")]
    expected = dict(zip(ids, (diagnosis_prompt(DEFAULT_QUESTION, f) for f in findings_from_embeddings(probes, v))))
    rows, fails, err = _report(arc, w, llava_converted, "--ddp")
    # the fixture model's tower (ecgcoca_tiny) is no zoo encoder: the findings' encoder differs
    assert "warning: --ddp findings come from ecg-coca-mini's probes" in err and "no installed zoo encoder" in err
    assert not fails and sorted(r["record_id"] for r in rows) == sorted(ids)
    for r in rows:
        assert r["prompt_mode"] == "ddp" and r["question"].startswith(PROMPT_INTRO)
        assert r["question"] == expected[r["record_id"]]
    af = [r["question"] for r in rows if r["record_id"].rsplit("/", 1)[-1] in AF]
    assert len(af) == 2 and all("The atrial fibrillation is present" in q for q in af), af
