"""ECG-LLaVA through vLLM (ecgbatch.serving) on the ecgllava_tiny fixture: parity with ECG-Chat's
own generations (LoRA) and with the HF model (base), LoRA really applied, and bad input refused
with typed errors. All vLLM tests share ONE engine (conftest ``vllm_engine``)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ecgbatch.serving.engine import EcgRequest
from ecgbatch.serving.errors import (AdapterMismatchError, ContextLengthError, EcgInputError,
                                     EcgPromptError, UnsupportedLoraRankError)

pytestmark = [pytest.mark.vllm, pytest.mark.shared, pytest.mark.slow]

N_NEW = 16


@pytest.fixture(scope="module")
def fx(llava_fx):
    d = llava_fx
    return {"ecgs": np.load(d / "inputs_ecg.npy"),
            "ids": json.loads((d / "input_ids.json").read_text())["input_ids"],
            "questions": json.loads((d / "prompts.json").read_text())["questions"],
            "expected": json.loads((d / "expected_generation.json").read_text())["new_token_ids"]}


@pytest.fixture(scope="module")
def requests_(fx, vllm_engine):
    eid = vllm_engine.config.ecg_token_id
    return [EcgRequest(fx["ecgs"][i], [eid if t == -200 else t for t in fx["ids"][i]], id=f"sample{i}")
            for i in range(2)]


@pytest.fixture(scope="module")
def adapter(llava_converted):
    return llava_converted / "lora"


@pytest.fixture(scope="module")
def base_out(vllm_engine, requests_):
    return vllm_engine.generate(requests_, max_tokens=N_NEW, ignore_eos=True)


@pytest.fixture(scope="module")
def lora_out(vllm_engine, requests_, adapter):
    return vllm_engine.generate(requests_, max_tokens=N_NEW, lora=adapter, ignore_eos=True)


def test_prompt_ids_are_ecgchats(fx, vllm_engine, requests_):
    for i, q in enumerate(fx["questions"]):
        assert vllm_engine.prompt_ids(q) == requests_[i].prompt_ids


def test_lora_tokens_equal_ecgchat(fx, lora_out):
    assert [r.token_ids for r in lora_out] == fx["expected"]
    assert all(r.n_output_tokens == N_NEW and r.finish_reason == "length" for r in lora_out)
    # the <ecg> placeholder became the tower's 101 positions: 45 ids -> 145 positions
    assert [r.n_prompt_tokens for r in lora_out] == [145, 144]


@pytest.mark.parametrize("with_lora", [False, True])
def test_tokens_equal_hf(llava_converted, requests_, base_out, lora_out, adapter, with_lora):
    from ecgbatch.llava import load_ecg_llava

    model, _ = load_ecg_llava(llava_converted, lora=adapter if with_lora else None)
    for req, out in zip(requests_, lora_out if with_lora else base_out):
        hf = model.generate(torch.tensor([req.prompt_ids]), ecgs=torch.from_numpy(req.ecg[None]),
                            max_new_tokens=N_NEW, do_sample=False)
        assert hf[0].tolist() == out.token_ids


def test_adapter_changes_the_output(base_out, lora_out):
    assert [r.token_ids for r in base_out] != [r.token_ids for r in lora_out]


def test_ecg_changes_the_output(vllm_engine, requests_, lora_out):
    swapped = [EcgRequest(requests_[1].ecg, requests_[0].prompt_ids)]
    out = vllm_engine.generate(swapped, max_tokens=N_NEW, ignore_eos=True)
    assert out[0].token_ids != lora_out[0].token_ids


# -- bad input ------------------------------------------------------------------------------------
def test_prompt_without_or_with_two_placeholders(vllm_engine, requests_):
    eid = vllm_engine.config.ecg_token_id
    ids = requests_[0].prompt_ids
    none = [t for t in ids if t != eid]
    two = ids[:5] + [eid] + ids[5:]
    for bad, n in ((none, 0), (two, 2)):
        with pytest.raises(EcgPromptError, match=f"holds {n} <ecg>"):
            vllm_engine.generate([EcgRequest(requests_[0].ecg, bad)], max_tokens=4)


@pytest.mark.parametrize("shape", [(12, 4000), (8, 5000), (5000, 12)])
def test_wrong_ecg_shape(vllm_engine, requests_, shape):
    with pytest.raises(EcgInputError, match=r"12 leads, 5000 samples"):
        vllm_engine.generate([EcgRequest(np.zeros(shape, np.float32), requests_[0].prompt_ids, id="rec7")],
                             max_tokens=4)


def test_plugin_parser_refuses_wrong_shape_without_the_wrapper(vllm_engine, requests_):
    """The "ecg" data parser checks too (for callers of vllm.LLM directly)."""
    from vllm import SamplingParams

    prompt = {"prompt_token_ids": requests_[0].prompt_ids,
              "multi_modal_data": {"ecg": np.zeros((12, 100), np.float32)}}
    with pytest.raises(ValueError, match=r"expected shape \(12, 5000\)"):
        vllm_engine.llm.generate([prompt], SamplingParams(max_tokens=2), use_tqdm=False)


def test_prompt_longer_than_context(vllm_engine, requests_):
    ids = requests_[0].prompt_ids
    long = ids + [ids[-1]] * (vllm_engine.max_model_len - len(ids))
    with pytest.raises(ContextLengthError, match="context of 512"):
        vllm_engine.generate([EcgRequest(requests_[0].ecg, long)], max_tokens=4)


def _rewrite_adapter(src, dst, rank=None, cut_in=None):
    """A copy of a peft adapter with a smaller rank, or with lora_A made for a narrower base."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    t = load_file(str(dst / "adapter_model.safetensors"))
    if rank is not None:
        cfg["r"] = rank
        t = {k: (v[:rank] if ".lora_A." in k else v[:, :rank]).contiguous() for k, v in t.items()}
    if cut_in is not None:
        t = {k: (v[:, :cut_in] if ".lora_A." in k else v).contiguous() for k, v in t.items()}
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(t, str(dst / "adapter_model.safetensors"))
    return dst


def test_unsupported_lora_rank(vllm_engine, requests_, adapter, tmp_path):
    rank4 = _rewrite_adapter(adapter, tmp_path / "r4", rank=4)
    with pytest.raises(UnsupportedLoraRankError, match="rank 4 is not one vLLM serves"):
        vllm_engine.generate(requests_[:1], max_tokens=2, lora=rank4)


def test_adapter_for_another_base(vllm_engine, requests_, adapter, tmp_path):
    other = _rewrite_adapter(adapter, tmp_path / "other", cut_in=32)
    with pytest.raises(AdapterMismatchError, match="another base"):
        vllm_engine.generate(requests_[:1], max_tokens=2, lora=other)


def test_repetition_penalty_from_the_option_or_the_models_config(vllm_engine, requests_, base_out, monkeypatch):
    """The engine decodes with its repetition_penalty option, else the model config's
    generation.repetition_penalty (1.0: none): a strong penalty changes the greedy tokens of the
    unpenalized run (the tiny fixture repeats itself within 16 tokens), and the config default
    gives the same tokens as the option."""
    plain = [r.token_ids for r in base_out]
    assert any(len(set(t)) < len(t) for t in plain)          # something to penalize
    monkeypatch.setattr(vllm_engine.options, "repetition_penalty", 3.0)
    opt = [r.token_ids for r in vllm_engine.generate(requests_, max_tokens=N_NEW, ignore_eos=True)]
    monkeypatch.setattr(vllm_engine.options, "repetition_penalty", None)
    monkeypatch.setattr(vllm_engine.config, "generation", {"repetition_penalty": 3.0})
    assert vllm_engine.repetition_penalty == 3.0
    cfg = [r.token_ids for r in vllm_engine.generate(requests_, max_tokens=N_NEW, ignore_eos=True)]
    assert opt == cfg and opt != plain
    assert sum(len(set(t)) for t in opt) > sum(len(set(t)) for t in plain)
