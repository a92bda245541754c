"""`report --rag K --reference W`: the prompt of each record carries the reports of its K nearest
reference records (ECG-to-ECG cosine over real-signal vectors of ../shared/data, FAISS index of W),
best first, never the record itself; a record without an embedding becomes a failure. No Ray, no
vLLM: the prompt-stage actor class is called directly."""
from __future__ import annotations

import numpy as np
import pytest

from ecgbatch.pipelines.report_prompts import RAG_INTRO, RagPromptUDF, rag_question
from ecgbatch.pipelines.workspace import ModelTable, ReportTable

pytestmark = [pytest.mark.shared]  # the rag test reads ../shared; ddp uses the sample archive
K = 3


def _table(ws, key, t):
    table = ModelTable(ws, key)
    with table:
        table.write_meta({"model": t.column("model")[0].as_py()})
        table.commit_block("b0", t, None)
    return table


@pytest.fixture(scope="module")
def setup(real_index_vectors, tmp_path_factory):
    from ecgbatch.index import build_index

    import pyarrow as pa

    t, v = real_index_vectors
    n = t.num_rows
    # one source per record, as the pipeline has (the stand-in table names a dataset's file)
    t = t.set_column(t.column_names.index("source"), "source",
                     pa.array([f"/archive/{r}.hea" for r in t.column("record_id").to_pylist()]))
    ref_rows = np.arange(0, n - 6)                   # the reference archive
    query_rows = np.arange(n - 10, n)                # 4 records also in the reference, 6 new ones
    base = tmp_path_factory.mktemp("rag")
    ref = _table(base / "ref", "enc", t.take(ref_rows))
    build_index(ref.root, kind="flat", out_dir=ref.index_dir)
    reports = ReportTable(base / "ref", "report-x")
    with reports:
        reports.write_meta({})
        ids = t.take(ref_rows).column("record_id").to_pylist()
        reports.commit_block("b0", pa.table({"record_id": ids, "report": [f"REPORT<{i}>" for i in ids]}), None)
    query = _table(base / "ws", "enc", t.take(query_rows))
    return t, v, ref_rows, query_rows, ref, query


def test_rag_prompt_holds_the_nearest_reference_reports(setup):
    t, v, ref_rows, query_rows, ref, query = setup
    udf = RagPromptUDF(str(ref.root), str(query.root), K, "Please describe this ECG.")
    sources = t.column("source").to_pylist()
    ids = t.column("record_id").to_pylist()
    rows = list(query_rows) + [0]                    # + one record the job's workspace never embedded
    src_col = [sources[i] if i != 0 else "/nowhere/never_embedded.hea" for i in rows]
    batch = {"source": np.array(src_col, dtype=object), "record_id": np.array([ids[i] for i in rows], dtype=object),
             "ok": np.ones(len(rows), bool), **{c: np.array([""] * len(rows), dtype=object)
                                                  for c in ("stage", "error_type", "error_kind", "message")}}
    out = udf(batch)
    vn = v / np.linalg.norm(v, axis=1, keepdims=True)
    for j, i in enumerate(query_rows):
        sims = vn[ref_rows] @ vn[i]
        order = [int(ref_rows[r]) for r in np.argsort(-sims) if int(ref_rows[r]) != i][:K]
        expected = rag_question("Please describe this ECG.", [f"REPORT<{ids[r]}>" for r in order])
        assert out["question"][j] == expected
        assert f"REPORT<{ids[i]}>" not in out["question"][j]          # never the record itself
        assert out["question"][j].startswith(RAG_INTRO) and out["ok"][j]
    assert not out["ok"][-1] and out["error_kind"][-1] == "not_embedded"
    assert "ecgbatch embed" in out["message"][-1]


@pytest.fixture(scope="module")
def coca_table(sample_archive, tmp_path_factory):
    """Real records embedded by ecg-coca-mini (trained weights + shipped probes) in a workspace."""
    import pyarrow as pa

    from ecgbatch.encoders import create_model
    from ecgbatch.io import read_record
    from ecgbatch.signal import preprocess

    model = create_model("ecg-coca-mini", pretrained="default")
    paths = sorted(str(p) for p in (sample_archive / "cinc2021").glob("*.hea"))
    x = np.stack([preprocess(read_record(p), model.preprocess_config).x for p in paths])
    emb = model.embed_ecgs(x)
    t = pa.table({"record_id": [p.rsplit("/", 1)[1] for p in paths], "source": paths,
                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), emb.shape[1]),
                  "model": ["ecg-coca-mini"] * len(paths),
                  "weights_hash": [str(model.weights_hash)] * len(paths), "preprocess_hash": ["p"] * len(paths)})
    table = ModelTable(tmp_path_factory.mktemp("ddp"), "enc")
    with table:
        table.write_meta({"model": "ecg-coca-mini", "weights_hash": str(model.weights_hash)})
        table.commit_block("b0", t, None)
    return table, paths, emb


def test_ddp_prompt_holds_the_probes_labels(coca_table, tmp_path):
    """The archive's DDP actor: the shared findings (ecgbatch.llava.diagnosis_prompt) of each record's
    workspace embedding, in the shared sentence form; the top rhythm label with its probability."""
    from ecgbatch.encoders.probes import LinearProbe, ProbeMismatchError
    from ecgbatch.encoders.zeroshot import label_text
    from ecgbatch.llava.diagnosis_prompt import PROMPT_INTRO
    from ecgbatch.pipelines.report import PromptSettings
    from ecgbatch.pipelines.report_prompts import DiagnosisPromptUDF, prepare_diagnosis_prompts

    table, paths, emb = coca_table
    fn, kw = prepare_diagnosis_prompts(PromptSettings(mode="ddp"), table.workspace, "ARCHIVE")
    assert fn is DiagnosisPromptUDF and len(kw["fn_constructor_kwargs"]["probe_files"]) == 3
    udf = DiagnosisPromptUDF(**kw["fn_constructor_kwargs"])
    batch = {"source": np.array(paths, dtype=object), "record_id": np.array(paths, dtype=object),
             "ok": np.ones(len(paths), bool), **{c: np.array([""] * len(paths), dtype=object)
                                                  for c in ("stage", "error_type", "error_kind", "message")}}
    out = udf(batch)
    rhythm = LinearProbe.load(kw["fn_constructor_kwargs"]["probe_files"][0])
    assert rhythm.labelset == "ptbxl-rhythm"
    p = rhythm.trained_probabilities(emb)
    for q, probs in zip(out["question"], p):
        assert q.startswith(PROMPT_INTRO) and q.endswith("\nPlease describe this ECG.")
        top = int(np.argmax(probs))     # the paper's rule: the top rhythm label
        assert f"The {label_text(rhythm.trained[top])} is present (p={probs[top]:.2f})." in q
    af = [q for src, q in zip(paths, out["question"]) if src.endswith(("A0689.hea", "A1041.hea"))]
    assert len(af) == 2 and all("The atrial fibrillation is present" in q for q in af)
    assert out["ok"].all()
    meta = table.read_meta()
    table2 = ModelTable(tmp_path, "other")
    with table2:                     # embeddings of other weights: the probes refuse them
        table2.write_meta({**meta, "weights_hash": "0" * 16})
        table2.commit_block("b0", table.read_table(), None)
    with pytest.raises(ProbeMismatchError, match="refit it"):
        DiagnosisPromptUDF(str(table2.root), kw["fn_constructor_kwargs"]["probe_files"], "Q")
