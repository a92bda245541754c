"""Diagnosis-driven prompting (ecgbatch.llava.diagnosis_prompt) on real records with ecg-coca-mini's shipped
probes: the findings, the prompt text, which encoder an ECG-LLaVA model's tower comes from, the
training option (data.ddp) and the `eval report --ddp` / `report RECORD --ddp` commands.

The ECG-LLaVA model with ecg-coca-mini's tower is built from the ecgllava_tiny fixture's small
language model (a real model, untrained projector), so generation is fast on CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgbatch.cli import app
from ecgbatch.llava.configuration_ecg_llava import IGNORE_INDEX

AF = ("A0689", "A1041")          # sample_archive/cinc2021 records whose header states AF (164889003)
SINUS = ("HR03961", "JS01048")   # sinus rhythm (426783006) and sinus bradycardia (426177001)
Q = "What does this 12-lead ECG show? Write a short diagnostic report."


def _run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def labeller():
    from ecgbatch.llava.diagnosis_prompt import FindingsLabeller

    return FindingsLabeller("ecg-coca-mini")


@pytest.fixture(scope="module")
def cinc(sample_archive, labeller):
    from ecgbatch.io import read_record
    from ecgbatch.llava.inputs import preprocess_for_model

    names = AF + SINUS
    paths = [sample_archive / "cinc2021" / f"{n}.hea" for n in names]
    x = np.stack([preprocess_for_model(read_record(p), labeller.model.preprocess_config) for p in paths])
    return names, paths, x


@pytest.fixture(scope="module")
def mini_tower_llava(llava_fx, tmp_path_factory):
    """A trained-only ECG-LLaVA folder: the fixture's LM + ecg-coca-mini's tower + a projector."""
    from ecgbatch.llava.assemble import new_ecg_llava, save_trained_only

    base = {"lm": str(llava_fx / "base_llm"), "tower": "ecg-coca-mini", "projector_type": "mlp2x_gelu",
            "prompt_format": "vicuna_v1", "max_context_length": 512}
    model, _ = new_ecg_llava(base["lm"], base["tower"], base["projector_type"], base["prompt_format"],
                             base["max_context_length"])
    return save_trained_only(model, tmp_path_factory.mktemp("ddp-llava") / "trained", base), base, model.config


def test_af_records_have_af_findings_with_probabilities(labeller, cinc):
    from ecgbatch.llava.diagnosis_prompt import PROMPT_INTRO, diagnosis_prompt

    names, _, x = cinc
    assert labeller.describe()["probes"] == ["ptbxl-rhythm", "cpsc2018", "ptbxl-super"]
    findings = labeller.findings(x)
    rhythm = labeller.probes[0]
    p_rhythm = rhythm.trained_probabilities(labeller.model.embed_ecgs(x))
    for name, fs, pr in zip(names, findings, p_rhythm):
        by_text = {f.text: f for f in fs}
        rhythm_found = [f for f in fs if f.labelset == "ptbxl-rhythm"]
        assert len(rhythm_found) <= 1                         # the top rhythm label only
        if name in AF:
            af = by_text["atrial fibrillation"]
            assert af.label == "AFIB" and 0.5 < af.probability <= 1.0
            # AF is said once (the rhythm and cpsc2018 probes both name it), with the higher probability
            assert [f.text for f in fs].count("atrial fibrillation") == 1
            assert af.probability >= pr[rhythm.trained.index("AFIB")] - 1e-6
        else:
            assert "atrial fibrillation" not in by_text
            assert {"sinus rhythm", "sinus bradycardia"} & set(by_text)
        q = diagnosis_prompt(Q, fs)
        assert q.startswith(PROMPT_INTRO) and q.endswith("\n" + Q)
        for f in fs:
            assert f"The {f.text} is present (p={f.probability:.2f})." in q
    assert diagnosis_prompt(Q, []) == Q


def test_tower_encoder_of_trained_only_full_and_foreign_folders(mini_tower_llava, llava_converted, tmp_path,
                                                                  monkeypatch):
    from ecgbatch.llava.assemble import full_folder
    from ecgbatch.llava.diagnosis_prompt import FindingsLabeller, DiagnosisPromptUnavailableError, tower_encoder

    folder, base, _ = mini_tower_llava
    name, tower_hash = tower_encoder(folder)
    assert name == "ecg-coca-mini" and tower_hash
    assert FindingsLabeller.for_model(folder).encoder == "ecg-coca-mini"     # tower hash and preprocessing agree
    monkeypatch.setenv("ECGBATCH_CACHE", str(tmp_path / "cache"))
    full = full_folder(folder)
    assert "base" not in json.loads((full / "config.json").read_text())
    assert tower_encoder(full) == ("ecg-coca-mini", tower_hash)        # matched by its tower weights
    with pytest.raises(DiagnosisPromptUnavailableError, match=r"base\.tower.*ecg-coca-mini \(installed\)"):
        tower_encoder(llava_converted)                                  # the fixture's own tower: no encoder
    with pytest.raises(DiagnosisPromptUnavailableError, match="not load the tower's encoder"):
        FindingsLabeller.for_base({"tower": str(tmp_path / "nowhere")})


# --- training: data.ddp ----------------------------------------------------------------------

def _items(sample_archive):
    """Real report and dialogue items on the sample archive's records (AF records included)."""
    from ecgbatch.training.instruct_format import InstructItem

    out = []
    for src in ("cinc2021", "ludb"):
        for p in sorted((sample_archive / src).glob("*.hea")):
            rid = p.stem
            out.append(InstructItem(f"{src}/{rid}/report", str(p), p, [
                {"from": "human", "value": f"<ecg>\n{Q}"}, {"from": "gpt", "value": f"Report of {rid}."}],
                {"kind": "report", "source": src, "record_id": rid, "split": "val"}))
            out.append(InstructItem(f"{src}/{rid}/dialogue0", str(p), p, [
                {"from": "human", "value": "<ecg>\nIs the rhythm regular?"}, {"from": "gpt", "value": "Yes."}],
                {"kind": "dialogue", "source": src, "record_id": rid, "split": "val"}))
    return out


def test_ddp_selection_is_a_seeded_fraction_of_report_items(sample_archive):
    from ecgbatch.training.instruct_diagnosis_prompt import diagnosis_prompt_selection
    from ecgbatch.training.llava_config import LlavaJobConfig

    items = _items(sample_archive)
    reports = [i for i, it in enumerate(items) if it.meta["kind"] == "report"]
    assert len(reports) >= 10
    for frac in (0.25, 0.5, 0.8):
        a = diagnosis_prompt_selection(items, frac, seed=0)
        assert len(a) == round(frac * len(reports)) and set(a) <= set(reports)
        assert a == diagnosis_prompt_selection(items, frac, seed=0)              # deterministic
    assert diagnosis_prompt_selection(items, 0.5, 0) != diagnosis_prompt_selection(items, 0.5, 1)
    assert diagnosis_prompt_selection(items, 0.0, 0) == [] and diagnosis_prompt_selection(items, 1.0, 0) == reports
    with pytest.raises(ValueError, match=r"data\.ddp"):
        LlavaJobConfig.from_dict({"name": "x", "data": {"ddp": 1.5}})
    assert LlavaJobConfig.from_dict({"name": "x", "data": {"ddp": 0.5}}).data.ddp == 0.5
    # the config key is named for what it is; the paper's data.ddp stays an alias of it
    job = LlavaJobConfig.from_dict({"name": "x", "data": {"diagnosis_prompt": 0.25}})
    assert job.data.diagnosis_prompt == 0.25 and job.data.ddp == 0.25
    assert LlavaJobConfig.from_dict(job.to_dict()).data.diagnosis_prompt == 0.25      # a checkpoint's job
    with pytest.raises(ValueError, match="not both"):
        LlavaJobConfig.from_dict({"name": "x", "data": {"ddp": 0.5, "diagnosis_prompt": 0.5}})


def test_ddp_items_rewrite_questions_once_and_keep_the_loss_mask(mini_tower_llava, sample_archive, tmp_path,
                                                                  llava_converted):
    from ecgbatch.llava.assemble import load_trained_only
    from ecgbatch.llava.diagnosis_prompt import PROMPT_INTRO, DiagnosisPromptUnavailableError
    from ecgbatch.training.instruct_diagnosis_prompt import diagnosis_prompt_selection
    from ecgbatch.training.llava_config import LlavaJobConfig
    from ecgbatch.training.llava_job import ddp_items
    from ecgbatch.training.llava_task import label_conversation

    folder, base, config = mini_tower_llava
    items = _items(sample_archive)
    job = LlavaJobConfig.from_dict({"name": "ddp", "model": base, "seed": 3,
                                    "data": {"ddp": 0.5, "cache_dir": str(tmp_path / "cache")}})
    logs = []
    out = ddp_items(job, items, config, log=logs.append)
    changed = [i for i, (a, b) in enumerate(zip(items, out)) if a.conversations != b.conversations]
    assert changed == diagnosis_prompt_selection(items, 0.5, 3) and len(changed) == round(0.5 * len(items) / 2)
    assert any("DDP: " in m for m in logs)
    cache = list((tmp_path / "cache").glob("ddp_embeddings-*.npz"))
    assert len(cache) == 1
    model, tok = load_trained_only(folder)
    for i in changed:
        a, b = items[i], out[i]
        assert b.conversations[0]["value"].startswith(f"<ecg>\n{PROMPT_INTRO} The ")
        assert b.conversations[0]["value"].endswith("\n" + Q) and b.conversations[1:] == a.conversations[1:]
        assert b.meta["ddp"] and b.meta["ddp"][0]["probability"] > 0
        if a.meta["record_id"] in AF:
            assert "The atrial fibrillation is present" in b.conversations[0]["value"]
        ids_a, lab_a, _ = label_conversation(a.conversations, tok, model.config)
        ids_b, lab_b, mis = label_conversation(b.conversations, tok, model.config)
        assert not mis and len(ids_b) > len(ids_a)
        # the answer is labelled exactly as before; every prompt token (the findings too) is masked
        assert [t for t in lab_b if t != IGNORE_INDEX] == [t for t in lab_a if t != IGNORE_INDEX]
        n_prompt = len(ids_b) - sum(t != IGNORE_INDEX for t in lab_b)
        assert all(t == IGNORE_INDEX for t in lab_b[:n_prompt - 1])
    # cached: a second pass reads no record
    mtime = cache[0].stat().st_mtime_ns
    assert [it.conversations for it in ddp_items(job, items, config, log=logs.append)] == \
        [it.conversations for it in out]
    assert cache[0].stat().st_mtime_ns == mtime
    foreign = LlavaJobConfig.from_dict({"name": "f", "model": {"folder": str(llava_converted)},
                                        "data": {"ddp": 0.5, "cache_dir": str(tmp_path / "c2")}})
    with pytest.raises(DiagnosisPromptUnavailableError, match="ECG-CoCa encoder"):
        ddp_items(foreign, items, config)


# --- commands ----------------------------------------------------------------------------------

def _instruct_file(path, sample_archive):
    rows = [{"id": f"cinc2021/{n}/report", "ecg": str(sample_archive / "cinc2021" / f"{n}.hea"),
             "conversations": [{"from": "human", "value": f"<ecg>\n{Q}"},
                               {"from": "gpt", "value": "Atrial fibrillation." if n in AF else "Sinus rhythm."}],
             "meta": {"kind": "report", "source": "cinc2021", "record_id": n, "split": "val"}}
            for n in AF + SINUS[:1]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_report_with_ddp(mini_tower_llava, llava_converted, sample_archive, tmp_path, monkeypatch):
    folder, _, _ = mini_tower_llava
    monkeypatch.setenv("ECGBATCH_CACHE", str(tmp_path / "cache"))
    data = _instruct_file(tmp_path / "instruct.jsonl", sample_archive)
    res = tmp_path / "res.json"
    pred = tmp_path / "pred.jsonl"
    r = _run("eval", "report", "--model", folder, "--data", data, "--ddp", "--max-new-tokens", "4",
             "--no-meteor", "-o", res, "--save-predictions", pred)
    assert r.exit_code == 0, r.output
    assert "DDP (diagnosis-driven prompts): on: findings of ecg-coca-mini's probes" in r.output
    d = json.loads(res.read_text())
    assert d["ddp"]["encoder"] == "ecg-coca-mini" and d["n"] == 3
    asked = {row["id"]: row["question"] for row in map(json.loads, pred.read_text().splitlines())}
    for n in AF:      # the reports were generated from the DDP questions
        assert "The atrial fibrillation is present (p=" in asked[f"cinc2021/{n}"]
    assert "atrial fibrillation" not in asked[f"cinc2021/{SINUS[0]}"]
    assert all(q.endswith("\n" + Q) for q in asked.values())
    rows = {row["id"]: row for row in map(json.loads, pred.read_text().splitlines())}
    for n in AF:      # every prediction carries its grounds (measured; the same probes as DDP)
        found = rows[f"cinc2021/{n}"]["findings"]
        assert found[0]["label"] == "heart_rate" and found[0]["source"] == "measurement"
        assert "atrial fibrillation" in [f["text"] for f in found if f["source"] == "probe"]
        assert isinstance(rows[f"cinc2021/{n}"]["contradictions"], list)
    r = _run("eval", "report", "--model", folder, "--data", data, "--ddp", "--grounded", "--no-meteor")
    assert r.exit_code == 2 and "--grounded and --ddp" in r.output, r.output
    r = _run("eval", "report", "--model", llava_converted, "--data", data, "--ddp", "--no-meteor")
    assert r.exit_code == 2 and "ddp" in r.output and "base.tower" in r.output, r.output
    r = _run("eval", "report", "--predictions", data, "--references", data, "--ddp", "--no-meteor")
    assert r.exit_code == 2 and "--ddp needs --model" in r.output


def test_report_record_ddp_without_probes_is_refused_before_the_engine(llava_converted, sample_archive):
    r = _run("report", sample_archive / "cinc2021" / "A0689.hea", "--model", llava_converted, "--ddp")
    assert r.exit_code == 2 and "ddp_unavailable" in r.output and "base.tower" in r.output, r.output
    r = _run("report", sample_archive / "cinc2021" / "A0689.hea", "--model", llava_converted, "--rag", "2")
    assert r.exit_code == 2 and "need --input ARCHIVE" in r.output


@pytest.mark.vllm
@pytest.mark.slow
def test_report_record_with_ddp_through_vllm(mini_tower_llava, sample_archive, tmp_path, monkeypatch):
    """`ecgbatch report RECORD --ddp` (its own process: vLLM CPU) on a full folder whose tower is
    ecg-coca-mini, found through its tower weights."""
    pytest.importorskip("vllm")
    import os
    import subprocess
    import sys

    from ecgbatch._paths import REPO_ROOT
    from ecgbatch.llava.assemble import full_folder

    monkeypatch.setenv("ECGBATCH_CACHE", str(tmp_path / "cache"))
    full = full_folder(mini_tower_llava[0])
    recs = [str(sample_archive / "cinc2021" / f"{n}.hea") for n in (AF[0], SINUS[0])]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), VLLM_CPU_KVCACHE_SPACE="1",
               ECGBATCH_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-m", "ecgbatch.cli", "report", *recs, "--model", str(full), "--ddp",
                        "--max-tokens", "4", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(p.stdout[p.stdout.index("{"):])
    assert d["ddp"]["encoder"] == "ecg-coca-mini"
    from helpers.quiet import assert_quiet

    assert_quiet(p.stderr)                                 # no vLLM noise, a clean engine shutdown
    af, sinus = d["reports"]
    assert "atrial fibrillation" in [f["text"] for f in af["ddp_findings"]]
    assert "atrial fibrillation" not in [f["text"] for f in sinus["ddp_findings"]]
    from ecgbatch.llava.diagnosis_prompt import Finding, diagnosis_prompt
    from ecgbatch.llava.loading import load_tokenizer, read_config
    from ecgbatch.llava.prompting import prompt_ids
    from ecgbatch.pipelines.report import DEFAULT_QUESTION

    cfg = read_config(full)
    tok = load_tokenizer(full, cfg)
    for r in d["reports"]:      # the engine was sent the DDP question (its tokens, +/- the ECG's expansion)
        fs = [Finding(f["label"], f["text"], f["probability"], f["labelset"]) for f in r["ddp_findings"]]
        n = len(prompt_ids(tok, diagnosis_prompt(DEFAULT_QUESTION, fs), cfg))
        assert r["n_prompt_tokens"] - n in (0, cfg.num_ecg_tokens - 1), (r["n_prompt_tokens"], n)


def test_prepare_asks_with_ddp_and_keeps_the_examples(mini_tower_llava, sample_archive, tmp_path, monkeypatch):
    """The job's driver-side data with data.ddp = 1: every report item asked with its findings."""
    from ecgbatch.llava.assemble import load_trained_only
    from ecgbatch.training.llava_config import LlavaJobConfig
    from ecgbatch.training.llava_job import prepare

    folder, base, _ = mini_tower_llava
    data = _instruct_file(tmp_path / "instruct.jsonl", sample_archive)
    job = LlavaJobConfig.from_dict({"name": "p", "model": base, "data": {
        "instruct": str(data), "split": None, "ddp": 1.0, "max_length": 512, "cache_dir": str(tmp_path / "c")}})
    examples, tokens, rec_of, ids = prepare(job, log=lambda m: None)
    assert len(examples) == 3 and tokens.shape[0] == 3 and sorted(rec_of) == [0, 1, 2]
    _, tok = load_trained_only(folder)
    for (input_ids, labels), item_id in zip(examples, ids):
        prompt = tok.decode([t for t, l in zip(input_ids, labels) if l == IGNORE_INDEX])
        answer = tok.decode([t for t in labels if t != IGNORE_INDEX])
        assert "is present (p=" in prompt and "is present" not in answer
        assert ("atrial fibrillation" in prompt) == (item_id.split("/")[1] in AF)


def test_training_prompt_equals_the_serving_prompt_with_grounded(mini_tower_llava, sample_archive, tmp_path,
                                                                  monkeypatch):
    """data.grounded = 1: each report item is asked with the SAME string `report RECORD --grounded`
    sends for that record (read_for_model's measurements, the tower encoder's probes, ground)."""
    from ecgbatch.llava.assemble import load_trained_only
    from ecgbatch.llava.grounding import ground_inputs, grounds_labeller
    from ecgbatch.llava.inputs import read_for_model
    from ecgbatch.llava.prompting import prompt_ids
    from ecgbatch.training.llava_config import LlavaJobConfig
    from ecgbatch.training.llava_job import prepare

    monkeypatch.setenv("ECGBATCH_CACHE", str(tmp_path / "cache"))
    folder, base, cfg = mini_tower_llava
    data = _instruct_file(tmp_path / "instruct.jsonl", sample_archive)
    job = LlavaJobConfig.from_dict({"name": "g", "model": base, "data": {
        "instruct": str(data), "split": None, "grounded": 1.0, "max_length": 512, "cache_dir": str(tmp_path / "c")}})
    examples, _, _, ids = prepare(job, log=lambda m: None)
    _, tok = load_trained_only(folder)
    records = [str(sample_archive / "cinc2021" / f"{i.split('/')[1]}.hea") for i in ids]
    measured: list = []
    ecgs, failed = read_for_model(records, cfg, measured)          # the serving path's steps
    assert not failed
    served = ground_inputs(measured, [x for _, x in ecgs], grounds_labeller(folder))
    for (input_ids, labels), g, item_id in zip(examples, served, ids):
        assert g.text.startswith("Measured: heart rate") and "Classifier findings:" in g.text
        prompt = [t for t, l in zip(input_ids, labels) if l == IGNORE_INDEX]
        serving = prompt_ids(tok, g.question(Q), cfg)
        assert tok.decode(prompt) == tok.decode(serving) and prompt == serving, item_id
    with pytest.raises(ValueError, match="not both"):
        LlavaJobConfig.from_dict({"name": "g", "model": base, "data": {"grounded": 0.5, "ddp": 0.5}})


def test_grounded_training_grounds_every_kind_and_caps_each_kind(mini_tower_llava, sample_archive, tmp_path,
                                                                 monkeypatch):
    """data.grounded grounds the first question of dialogues too (chat and serve ground every
    conversation), and data.max_items {kind: n} keeps a seeded n of each kind."""
    from ecgbatch.training.llava_config import LlavaJobConfig
    from ecgbatch.training.llava_job import grounded_items, select_items
    from ecgbatch.llava.assemble import load_trained_only

    monkeypatch.setenv("ECGBATCH_CACHE", str(tmp_path / "cache"))
    folder, base, cfg = mini_tower_llava
    data = _instruct_file(tmp_path / "instruct.jsonl", sample_archive)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dialogue = {**rows[0], "id": rows[0]["id"].replace("report", "dialogue0"),
                "conversations": [{"from": "human", "value": "<ecg>\nWhat is the heart rate?"},
                                  {"from": "gpt", "value": "About 70 beats per minute."},
                                  {"from": "human", "value": "Is there atrial fibrillation?"},
                                  {"from": "gpt", "value": "No."}],
                "meta": {**rows[0]["meta"], "kind": "dialogue"}}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + [dialogue]))
    job = LlavaJobConfig.from_dict({"name": "g", "model": base, "data": {
        "instruct": str(data), "split": None, "grounded": 1.0, "max_items": {"report": 2},
        "cache_dir": str(tmp_path / "c")}})
    items = select_items(job)
    kinds = [it.meta["kind"] for it in items]
    assert kinds.count("report") == 2 and kinds.count("dialogue") == 1
    grounded = grounded_items(job, items, load_trained_only(folder)[0].config, log=lambda m: None)
    for it in grounded:
        first = it.conversations[0]["value"]
        assert first.startswith("<ecg>\nMeasured: heart rate") and "grounding" in it.meta, it.id
    d = next(it for it in grounded if it.meta["kind"] == "dialogue")
    assert d.conversations[0]["value"].endswith("What is the heart rate?")
    assert d.conversations[2]["value"] == "Is there atrial fibrillation?"      # later turns unchanged
