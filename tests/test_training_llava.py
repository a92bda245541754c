"""ECG-LLaVA training: loss masks, the ECG-token cache, and the Ray Train jobs (align, sft,
resume, export) on the converted ecgllava_tiny fixture and real sample-archive records.

The module's three Ray Train runs (sft: crash, resume; align) are started at once by the
``llava_runs`` fixture (tests/helpers/train_runs.py); the tests assert what the runs left."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.train_runs import concurrent_runs, raised
from typer.testing import CliRunner

from ecgbatch.cli import app
from ecgbatch.llava.configuration_ecg_llava import IGNORE_INDEX


def _run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def instruct_file(tmp_path_factory, sample_archive):
    out = tmp_path_factory.mktemp("instr") / "instruct.jsonl"
    r = _run("data", "instruct", f"ludb={sample_archive / 'ludb'}", f"cinc={sample_archive / 'cinc2021'}",
             "-o", out, "--measure", "none", "--part", "all")   # job mechanics: every sample record
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def tiny(llava_converted):
    from ecgbatch.llava import load_ecg_llava

    return load_ecg_llava(llava_converted)


def test_vicuna_labels_are_ecgchat_preprocess_v1(llava_fx, tiny):
    """The job labels a Vicuna model's conversation exactly as ECG-Chat (the fixture's example)."""
    from ecgbatch.training.llava_task import label_conversation

    model, tok = tiny
    ex = json.loads((llava_fx / "expected_train_example.json").read_text())
    ids, labels, mismatch = label_conversation(ex["sources"][0], tok, model.config)
    eid = model.config.ecg_token_id
    assert not mismatch
    assert ids == [eid if t == -200 else t for t in ex["input_ids"]]
    assert labels == ex["labels"]


def test_chat_template_labels_cover_only_the_answers():
    """ChatML labels: each assistant answer and its end-of-turn token, nothing of the prompts."""
    from transformers import AutoTokenizer

    from ecgbatch.llava.base_models import smollm2_base
    from ecgbatch.training.llava_task import label_chat_template

    try:
        base = smollm2_base()
    except Exception as exc:   # noqa: BLE001 - the package is an optional install
        pytest.skip(f"SmolLM2 base not available: {exc}")
    tok = AutoTokenizer.from_pretrained(str(base))
    tok.add_special_tokens({"additional_special_tokens": ["<ecg>"]})
    eid = tok.convert_tokens_to_ids("<ecg>")
    conv = [{"from": "human", "value": "<ecg>\nWhat is the rhythm?"}, {"from": "gpt", "value": "Sinus rhythm."},
            {"from": "human", "value": "Is there atrial fibrillation?"},
            {"from": "gpt", "value": "No, the ECG does not show atrial fibrillation."}]
    ids, labels, mismatch = label_chat_template(conv, tok, eid, "<ecg>")
    assert not mismatch and ids.count(eid) == 1
    kept = [t for t in labels if t != IGNORE_INDEX]
    text = tok.decode(kept)
    assert text == ("Sinus rhythm.<|im_end|>No, the ECG does not show atrial fibrillation.<|im_end|>")
    # the labelled tokens are exactly those positions of the input
    assert all(l == i for l, i in zip(labels, ids) if l != IGNORE_INDEX)


def test_ecg_token_cache_is_reused_and_keyed(tmp_path, tiny, sample_archive):
    from ecgbatch.io import read_record
    from ecgbatch.llava.inputs import preprocess_for_model
    from ecgbatch.training.ecg_tokens import cache_file, ecg_tokens

    model, _ = tiny
    paths = [str(p) for p in sorted((sample_archive / "ludb").glob("*.hea"))[:2]]
    calls = []

    def read(p):
        calls.append(p)
        return preprocess_for_model(read_record(p), model.config)

    a = ecg_tokens(model, paths, read, tmp_path)
    assert a.shape[0] == 2 and len(calls) == 2
    direct = model.ecg_features(torch.from_numpy(np.stack([read(p) for p in paths])))
    assert torch.allclose(a, direct.float(), atol=2e-3 * float(direct.abs().max()))
    calls.clear()
    b = ecg_tokens(model, paths[::-1], read, tmp_path)
    assert not calls and torch.equal(b, a.flip(0))           # served from the cache
    f = cache_file(tmp_path, model)
    with torch.no_grad():
        model.ecg_tower.ln_pre.weight.add_(1.0)              # other tower weights: another file
    try:
        assert cache_file(tmp_path, model) != f
    finally:
        with torch.no_grad():
            model.ecg_tower.ln_pre.weight.sub_(1.0)


def _job(tmp_path, llava_converted, instruct_file, stage, **over):
    from ecgbatch.training.llava_config import LlavaJobConfig

    d = {"name": f"tiny-{stage}", "stage": stage, "run_dir": str(tmp_path / "runs"), "amp": "off",
         "threads_per_worker": 1,    # the sft and align runs train at once on the session's 2 CPUs
         "model": {"folder": str(llava_converted)},
         "data": {"instruct": str(instruct_file), "split": None, "kinds": ["report"], "max_length": 256,
                  "cache_dir": str(tmp_path / "cache")},
         "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
         "optim": {"epochs": 2, "batch_size": 4, "lr": 5e-3, "max_steps_per_epoch": 3}}
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    return LlavaJobConfig.from_dict(d)


def _sft_crash_and_resume(tmp_path, llava_converted, instruct_file):
    """The sft test's runs: a crash in epoch 1 (after epoch 0's checkpoint), then --resume to
    the end; what each left behind."""
    from ecgbatch.training.checkpointing import latest_checkpoint
    from ecgbatch.training.llava_job import run_job

    job = _job(tmp_path, llava_converted, instruct_file, "sft", fail_after_steps=4)
    seen = {"job": job, "crash": raised(run_job, job, num_workers=1, log=lambda m: None)}
    seen["first"] = json.loads((latest_checkpoint(job.run_path()) / "progress.json").read_text())
    job.fail_after_steps = None
    seen["result"] = run_job(job, num_workers=1, resume=True, log=lambda m: None)
    return seen


def _align(tmp_path, llava_converted, instruct_file):
    from ecgbatch.training.llava_job import run_job

    job = _job(tmp_path, llava_converted, instruct_file, "align", optim={"lr": 1e-2})
    return job, run_job(job, num_workers=1, log=lambda m: None)


@pytest.fixture(scope="module")
def llava_runs(tmp_path_factory, llava_converted, instruct_file, ray_local):
    """The module's runs, started at once (futures: sft, align)."""
    sft, align = tmp_path_factory.mktemp("sft"), tmp_path_factory.mktemp("align")
    with concurrent_runs(sft=lambda: _sft_crash_and_resume(sft, llava_converted, instruct_file),
                         align=lambda: _align(align, llava_converted, instruct_file)) as futures:
        yield futures


@pytest.mark.slow
@pytest.mark.ray
def test_sft_job_learns_crashes_resumes_and_exports(tmp_path, llava_runs, tiny):
    """Real Ray: LoRA+projector loss goes down; a crash after epoch 0 resumes from its
    checkpoint and finishes; the export loads in HF with the adapter and changes the outputs."""
    from ecgbatch.llava import load_ecg_llava
    from ecgbatch.llava.assemble import full_folder
    from ecgbatch.training.llava_job import SimulatedCrash

    seen = llava_runs["sft"].result()
    err = seen["crash"]
    assert "SimulatedCrash" in repr(err) or isinstance(err, SimulatedCrash), err
    assert seen["first"] == {"epoch": 0, "global_step": 3}

    job, res = seen["job"], seen["result"]
    lines = [json.loads(x) for x in (job.run_path() / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1] and lines[-1]["global_step"] == 6
    assert res.metrics["epoch"] == 1
    assert lines[-1]["train/loss"] < lines[0]["train/first_loss"]   # it learns

    out = tmp_path / "export"
    r = _run("train", "export", "--checkpoint", job.run_path(), "-o", out)
    assert r.exit_code == 0, r.output
    assert (out / "lora" / "adapter_model.safetensors").is_file()
    full = full_folder(out, "tiny-export")
    trained, tok = load_ecg_llava(full, lora=full / "lora")
    base, _ = tiny
    ids = torch.tensor([[1, 334, 535, base.config.ecg_token_id, 13, 974]])
    ecg = torch.randn(1, 12, 5000)
    with torch.no_grad():
        a = trained(input_ids=ids, ecgs=ecg).logits
        b = base(input_ids=ids, ecgs=ecg).logits
    assert not torch.allclose(a, b)
    assert full_folder(out, "tiny-export") == full                # second use: the cached folder
    # a decoding default chosen after training ships in the config and survives assembly
    out2 = tmp_path / "export-rp"
    r = _run("train", "export", "--checkpoint", job.run_path(), "-o", out2, "--repetition-penalty", "1.15")
    assert r.exit_code == 0, r.output
    assert json.loads((out2 / "config.json").read_text())["generation"] == {"repetition_penalty": 1.15}
    from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfig

    assembled = EcgLlavaConfig.from_pretrained(full_folder(out2, "tiny-export-rp"))
    assert assembled.default_repetition_penalty == 1.15 and trained.config.default_repetition_penalty == 1.0


@pytest.mark.slow
@pytest.mark.ray
def test_align_job_trains_the_projector_only(llava_runs, tiny):
    from safetensors.torch import load_file

    from ecgbatch.training.checkpointing import latest_checkpoint

    job, res = llava_runs["align"].result()
    ck = latest_checkpoint(job.run_path())
    assert not (ck / "model" / "lora").exists()
    proj = load_file(str(ck / "model" / "model.safetensors"))
    base, _ = tiny
    assert set(proj) == {f"projector.{k}" for k in base.projector.state_dict()}
    assert not torch.equal(proj["projector.0.weight"], base.projector[0].weight)
    lines = [json.loads(x) for x in (job.run_path() / "metrics.jsonl").read_text().splitlines()]
    assert res.metrics["epoch"] == 1 and lines[-1]["train/loss"] < lines[0]["train/first_loss"]


def test_repeat_puts_reports_stating_a_rare_finding_k_times():
    """data.repeat: a report item whose answer states the finding (not one that negates it, and
    not a dialogue) is seen k times; an unknown finding key or a k below 1 is refused."""
    from ecgbatch.training.instruct_format import InstructItem
    from ecgbatch.training.llava_job import repeat_items

    def item(i, kind, answer):
        return InstructItem(id=f"r{i}", ecg=f"{i}.hea", ecg_path=f"/x/{i}.hea", meta={"kind": kind},
                            conversations=[{"from": "human", "value": "<ecg>\nDescribe."},
                                           {"from": "gpt", "value": answer}])

    items = [item(0, "report", "Sinus rhythm. Left ventricular hypertrophy."),
             item(1, "report", "Sinus rhythm. No left ventricular hypertrophy."),
             item(2, "dialogue", "Left ventricular hypertrophy."),
             item(3, "report", "Atrial fibrillation. Left ventricular hypertrophy.")]
    got = [it.id for it in repeat_items(items, {"lvh": 3, "atrial_fibrillation": 2})]
    assert got == ["r0", "r0", "r0", "r1", "r2", "r3", "r3", "r3"]
    assert [it.id for it in repeat_items(items, {})] == ["r0", "r1", "r2", "r3"]
    with pytest.raises(ValueError, match="whole number"):
        repeat_items(items, {"lvh": 0})
    with pytest.raises(ValueError):
        repeat_items(items, {"no-such-finding": 2})


def _grounded_item(i, kind, answers, findings):
    """An instruction item r{i} with one answer per turn, asked with a grounding of ``findings``
    (GroundFinding dicts; None: asked without grounding)."""
    from ecgbatch.training.instruct_format import InstructItem

    conv = []
    for j, a in enumerate(answers):
        conv += [{"from": "human", "value": ("<ecg>\n" if j == 0 else "") + "Q?"}, {"from": "gpt", "value": a}]
    meta = {"kind": kind} | ({"grounding": {"text": "t", "findings": findings}} if findings is not None else {})
    return InstructItem(id=f"r{i}", ecg=f"{i}.hea", ecg_path=f"/x/{i}.hea", meta=meta, conversations=conv)


def test_repeat_grounded_puts_items_whose_prompt_and_answer_state_the_finding_k_times():
    """data.repeat_grounded: an item (report or dialogue) is repeated when its grounded prompt states
    the finding (the LVH voltage criteria met) and its answers state it; not when only one of them
    does, nor when the answer denies it, nor an item asked without grounding. A config that gives it
    without data.grounded is refused."""
    from ecgbatch.llava.grounding import GroundFinding, stated_report
    from ecgbatch.training.llava_config import LlavaDataConfig, LlavaJobConfig
    from ecgbatch.training.llava_job import repeat_grounded_items

    met = [GroundFinding("heart_rate", "heart rate", "measurement", 72.0, "bpm").to_dict(),
           GroundFinding("lvh_voltage", "LVH voltage criteria met", "measurement", category="met").to_dict()]
    silent = met[:1]
    assert stated_report(met) == "Left ventricular hypertrophy." and stated_report(silent) == ""

    items = [_grounded_item(0, "report", ["Sinus rhythm. Left ventricular hypertrophy."], met),
             _grounded_item(1, "report", ["Sinus rhythm. Left ventricular hypertrophy."], silent),     # prompt silent
             _grounded_item(2, "report", ["Sinus rhythm. No left ventricular hypertrophy."], met),     # answer denies
             _grounded_item(3, "dialogue", ["72 bpm.", "Yes, the ECG shows left ventricular hypertrophy."], met),
             _grounded_item(4, "report", ["Sinus rhythm. Left ventricular hypertrophy."], None),       # not grounded
             _grounded_item(5, "report", ["Sinus rhythm."], met)]
    got = [it.id for it in repeat_grounded_items(items, {"lvh": 3})]
    assert got == ["r0"] * 3 + ["r1", "r2"] + ["r3"] * 3 + ["r4", "r5"]
    assert [it.id for it in repeat_grounded_items(items, {})] == [f"r{i}" for i in range(6)]
    with pytest.raises(ValueError, match="repeat_grounded wants a whole number"):
        repeat_grounded_items(items, {"lvh": 0})
    with pytest.raises(ValueError, match="unknown findings"):
        repeat_grounded_items(items, {"no-such-finding": 2})
    with pytest.raises(ValueError, match="needs data.grounded"):
        LlavaJobConfig(name="x", data=LlavaDataConfig(repeat_grounded={"lvh": 3}))
    LlavaJobConfig(name="x", data=LlavaDataConfig(repeat_grounded={"lvh": 3}, grounded=0.5))


def test_drop_disagreeing_leaves_out_items_whose_answers_disagree_with_their_own_prompt():
    """data.drop_disagreeing: a report that leaves out the LVH its prompt states, or states one its
    prompt does not, is left out, as is a dialogue that denies the prompt's LVH or names another axis
    category than the measured one; a dialogue silent on LVH, an axis where none was measured, and
    items without grounding are kept. Unknown names and a config without data.grounded are refused."""
    from ecgbatch.llava.grounding import GroundFinding
    from ecgbatch.training.llava_config import LlavaDataConfig, LlavaJobConfig
    from ecgbatch.training.llava_job import disagreements, drop_disagreeing_items

    hr = GroundFinding("heart_rate", "heart rate", "measurement", 72.0, "bpm").to_dict()
    lvh = GroundFinding("lvh_voltage", "LVH voltage criteria met", "measurement", category="met").to_dict()
    lad = GroundFinding("axis", "left axis deviation", "measurement", -45.0, "degrees", "left").to_dict()
    horizontal = GroundFinding("axis", "horizontal axis", "measurement", 10.0, "degrees", "horizontal").to_dict()

    items = [_grounded_item(0, "report", ["Sinus rhythm. Left ventricular hypertrophy."], [hr, lvh]),        # agrees
             _grounded_item(1, "report", ["Sinus rhythm."], [hr, lvh]),                                      # leaves it out
             _grounded_item(2, "report", ["Sinus rhythm. Left ventricular hypertrophy."], [hr]),             # adds it
             _grounded_item(3, "report", ["Sinus rhythm. Normal electrical axis."], [hr, horizontal]),       # normal = horizontal
             _grounded_item(4, "report", ["Sinus rhythm. Normal electrical axis."], [hr, lad]),              # another axis
             _grounded_item(5, "report", ["Sinus rhythm. Left axis deviation."], [hr]),                      # no axis measured
             _grounded_item(6, "dialogue", ["72 bpm.", "No, the ECG does not show left ventricular hypertrophy."], [hr, lvh]),
             _grounded_item(7, "dialogue", ["72 bpm.", "Yes, the ECG shows left axis deviation."], [hr, lad]),
             _grounded_item(8, "dialogue", ["72 bpm."], [hr, lvh]),                                          # silent on LVH
             _grounded_item(9, "dialogue", ["No, the electrical axis is normal."], [hr, lad]),
             _grounded_item(10, "report", ["Sinus rhythm. Left ventricular hypertrophy."], None)]            # not grounded
    assert [sorted(disagreements(it, ["lvh", "axis"])) for it in items] == [
        [], ["lvh"], ["lvh"], [], ["axis"], [], ["lvh"], [], [], ["axis"], []]
    logged = []
    kept = drop_disagreeing_items(items, ["lvh", "axis"], log=logged.append)
    assert [it.id for it in kept] == ["r0", "r3", "r5", "r7", "r8", "r10"]
    assert "5 of 11 items left out" in logged[0] and "'axis': 2" in logged[0] and "'lvh': 3" in logged[0]
    assert [it.id for it in drop_disagreeing_items(items, ["axis"], log=logged.append)] == [
        "r0", "r1", "r2", "r3", "r5", "r6", "r7", "r8", "r10"]
    assert drop_disagreeing_items(items, []) == items
    with pytest.raises(ValueError, match="names \\['rhythm'\\]"):
        drop_disagreeing_items(items, ["rhythm"])
    with pytest.raises(ValueError, match="needs data.grounded"):
        LlavaJobConfig(name="x", data=LlavaDataConfig(drop_disagreeing=["lvh"]))
    job = LlavaJobConfig(name="x", data=LlavaDataConfig(drop_disagreeing="lvh", grounded=0.5))
    assert job.data.drop_disagreeing == ["lvh"]


def test_data_wording_is_checked_and_recorded_in_the_model_config(tiny, tmp_path):
    """data.wording (the grounded prompt's words) must be a known version and needs data.grounded;
    a grounded run's checkpoint records it in the model config, so it is served in those words."""
    from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfig
    from ecgbatch.training.llava_config import LlavaDataConfig, LlavaJobConfig, ModelSpec
    from ecgbatch.training.llava_job import save_trained

    assert LlavaJobConfig(name="x").data.wording == 1
    with pytest.raises(ValueError, match="data.wording: unknown grounding wording 9"):
        LlavaJobConfig(name="x", data=LlavaDataConfig(wording=9, grounded=0.9))
    with pytest.raises(ValueError, match="needs data.grounded"):
        LlavaJobConfig(name="x", data=LlavaDataConfig(wording=2))
    model, _ = tiny
    before = dict(model.config.prompt)
    try:
        for wording in (1, 2):
            job = LlavaJobConfig(name="x", model=ModelSpec(folder=str(tmp_path)),
                                 data=LlavaDataConfig(wording=wording, grounded=0.9))
            cfg = json.loads((save_trained(job)(model, tmp_path / f"w{wording}") / "config.json").read_text())
            assert cfg["prompt"] == {"grounded": True, "wording": wording}
            assert EcgLlavaConfig(**{**model.config.to_dict(), "prompt": cfg["prompt"]}).grounding_wording == wording
    finally:
        model.config.prompt = before


@pytest.mark.slow
@pytest.mark.ray
def test_an_sft_run_starts_from_another_runs_adapter(tmp_path, llava_runs, llava_converted, instruct_file):
    """``init`` naming an earlier sft run: the new run starts from its projector and LoRA adapter
    (a continuation); naming an align run: from its projector only."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from ecgbatch.training.checkpointing import latest_checkpoint
    from ecgbatch.training.llava_job import build_model, init_adapter
    from ecgbatch.training.llava_task import LoraConfig, configure_stage

    src = llava_runs["sft"].result()["job"]
    job = _job(tmp_path, llava_converted, instruct_file, "sft", init=str(src.run_path()))
    model, _ = build_model(job)
    lo = job.lora
    configure_stage(model, "sft", LoraConfig(lo.r, lo.alpha, lo.dropout, list(lo.target_modules)))
    before = {k: v.clone() for k, v in get_peft_model_state_dict(model.language_model).items()}
    assert init_adapter(job, model)
    saved = load_file(str(latest_checkpoint(src.run_path()) / "model" / "lora" / "adapter_model.safetensors"))
    mine = get_peft_model_state_dict(model.language_model)
    assert set(mine) == set(saved) and all(torch.equal(mine[k], saved[k]) for k in saved)
    assert any(not torch.equal(before[k], saved[k]) for k in saved)
    proj = load_file(str(latest_checkpoint(src.run_path()) / "model" / "model.safetensors"))
    assert torch.equal(model.projector[0].weight, proj["projector.0.weight"])

    align_job, _ = llava_runs["align"].result()
    job = _job(tmp_path, llava_converted, instruct_file, "sft", init=str(align_job.run_path()))
    model, _ = build_model(job)
    configure_stage(model, "sft", LoraConfig(lo.r, lo.alpha, lo.dropout, list(lo.target_modules)))
    assert not init_adapter(job, model)
