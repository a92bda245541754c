"""ECG-LLaVA beyond the fixture's exact numbers: splicing rules, a tied-embedding LM with a
linear projector saved and loaded back, dtype, gradients (tower frozen), batched left-padded
generation, multi-turn training labels and the chat-template prompt path."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

IGN = -100


def _tiny_config(**over):
    from ecgbatch.encoders.config import EcgCfg
    from ecgbatch.llava import EcgLlavaConfig

    text = dict(model_type="llama", vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                max_position_embeddings=1024)
    ecg = {**asdict(EcgCfg(width=32, layers=1, head_width=16, seq_length=2500, patch_size=50)), "embed_dim": 16}
    kw = dict(text_config=text, ecg_config=ecg, preprocess={"n_samples": 2500, "fs": 250.0},
              projector_type="linear", ecg_token_id=1000, tie_word_embeddings=True)
    kw.update(over)
    return EcgLlavaConfig(**kw)


@pytest.fixture(scope="module")
def tiny():
    from ecgbatch.llava import EcgLlavaForCausalLM

    torch.manual_seed(0)
    return EcgLlavaForCausalLM(_tiny_config()).eval()


def test_config_derives_token_count_and_checks_fields():
    from ecgbatch.llava import num_ecg_tokens
    from ecgbatch.llava.configuration_ecg_llava import EcgLlavaConfig, EcgLlavaConfigError

    cfg = _tiny_config()
    assert num_ecg_tokens(cfg) == cfg.num_ecg_tokens == 51 == num_ecg_tokens(cfg.to_dict())
    assert EcgLlavaConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(EcgLlavaConfigError, match="num_ecg_tokens \\(101\\) disagrees"):
        _tiny_config(num_ecg_tokens=101)
    with pytest.raises(EcgLlavaConfigError, match="projector_type must be one of"):
        _tiny_config(projector_type="qformer")
    with pytest.raises(EcgLlavaConfigError, match="preprocess.n_samples \\(5000\\) must equal"):
        _tiny_config(preprocess={"n_samples": 5000})
    # the grounded prompt is the model's property (default off), kept through config.json
    assert cfg.grounded_prompt is False
    grounded = _tiny_config(prompt={"grounded": True})
    assert EcgLlavaConfig.from_dict(grounded.to_dict()).grounded_prompt is True
    with pytest.raises(EcgLlavaConfigError, match="prompt.grounded must be true or false"):
        _tiny_config(prompt={"grounded": "yes"})
    # decoding defaults (generation.repetition_penalty, 1.0 = none), kept through config.json
    assert cfg.default_repetition_penalty == 1.0
    rp = _tiny_config(generation={"repetition_penalty": 1.2})
    assert EcgLlavaConfig.from_dict(rp.to_dict()).default_repetition_penalty == 1.2
    for bad in (0, -1.0, "1.2", True):
        with pytest.raises(EcgLlavaConfigError, match="generation.repetition_penalty must be a number"):
            _tiny_config(generation={"repetition_penalty": bad})


def test_splice_places_ecg_rows_labels_and_positions(tiny):
    from ecgbatch.llava.modeling_ecg_llava import splice_ecg_embeddings

    emb = tiny.get_input_embeddings()
    ecg = torch.randn(2, 51, 64)
    ids = torch.tensor([[1, 5, 1000, 7, 0, 0], [1, 8, 9, -200, 3, 4]])   # our id and ECG-Chat's -200
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    labels = torch.where(mask.bool(), ids, torch.tensor(IGN))
    with torch.no_grad():
        right = splice_ecg_embeddings(ids, ecg, emb, 1000, mask, labels, padding_side="right")
        left = splice_ecg_embeddings(ids, ecg, emb, 1000, mask, None, padding_side="left")
    assert right.inputs_embeds.shape == (2, 56, 64)          # 6 - 1 + 51
    assert torch.equal(right.inputs_embeds[0, 2:53], ecg[0]) and torch.equal(right.inputs_embeds[1, 3:54], ecg[1])
    assert torch.equal(right.inputs_embeds[0, 53], emb.weight[7]) and not right.inputs_embeds[0, 54:].any()
    assert right.attention_mask.sum(1).tolist() == [54, 56]
    assert right.position_ids[0, :54].tolist() == list(range(54)) and right.position_ids[0, 54:].tolist() == [0, 0]
    assert right.labels[0, :2].tolist() == [1, 5] and (right.labels[0, 2:53] == IGN).all()
    assert right.labels[0, 53] == 7 and (right.labels[0, 54:] == IGN).all()
    assert torch.equal(left.inputs_embeds[0, 2:], right.inputs_embeds[0, :54])   # left: pads first
    assert left.position_ids[0, 2:].tolist() == list(range(54)) and not left.attention_mask[0, :2].any()


def test_frozen_tower_gets_no_gradient(tiny):
    ids = torch.tensor([[1, 5, 1000, 7, 9, 11]])
    out = tiny(input_ids=ids, ecgs=torch.randn(1, 12, 2500), labels=ids)
    out.loss.backward()
    assert all(p.grad is None for p in tiny.ecg_tower.parameters())
    assert tiny.projector[0].weight.grad is not None and tiny.projector[0].weight.grad.abs().sum() > 0
    tiny.zero_grad()


@pytest.mark.shared
def test_tied_linear_model_saves_and_loads(tiny, llava_converted, tmp_path):
    from ecgbatch.llava import load_ecg_llava, save_ecg_llava
    from ecgbatch.llava.loading import load_tokenizer, read_config, stored_shapes

    tok = load_tokenizer(llava_converted, read_config(llava_converted))
    out = save_ecg_llava(tiny, tok, tmp_path / "tiny")
    assert "language_model.lm_head.weight" not in stored_shapes(out)   # tied: stored once
    model, _ = load_ecg_llava(out)
    assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight
    ids, x = torch.tensor([[1, 5, 1000, 7, 9]]), torch.randn(1, 12, 2500)
    with torch.no_grad():
        ref = tiny(input_ids=ids, ecgs=x).logits
        assert torch.equal(model(input_ids=ids, ecgs=x).logits, ref)
        half, _ = load_ecg_llava(out, dtype=torch.bfloat16)
        got = half(input_ids=ids, ecgs=x).logits
    assert got.dtype == torch.bfloat16
    np.testing.assert_allclose(got.float().numpy(), ref.numpy(), atol=0.05 * float(ref.abs().max()))


@pytest.mark.shared
def test_batched_generation_equals_single(llava_converted, llava_fx):
    """Two prompts of different lengths in one left-padded generate call give each one's own tokens."""
    import json

    from ecgbatch.llava import load_ecg_llava

    model, _ = load_ecg_llava(llava_converted, lora=llava_converted / "lora", merge_lora=True)
    ids = json.loads((llava_fx / "input_ids.json").read_text())["input_ids"]
    x = torch.from_numpy(np.load(llava_fx / "inputs_ecg.npy"))
    expected = json.loads((llava_fx / "expected_generation.json").read_text())["new_token_ids"]
    a, b = ([1000 if t == -200 else t for t in r] for r in ids)
    batch = torch.tensor([a, [0] * (len(a) - len(b)) + b])
    mask = torch.tensor([[1] * len(a), [0] * (len(a) - len(b)) + [1] * len(b)])
    out = model.generate(batch, x, attention_mask=mask, max_new_tokens=16, do_sample=False)
    assert out.tolist() == expected


def _ecgchat_preprocess_v1(conversation, tokenizer, legacy):
    """ECG-Chat's train.py::preprocess_v1 for one conversation, transcribed line by line (torch
    tensors, has_ecg=True, tokenizers >= 0.14) as an independent reference for multi-turn."""
    from ecgbatch.llava.prompting import tokenize_with_ecg

    def tok(s):
        return tokenize_with_ecg(tokenizer, s, -200)
    input_ids = torch.tensor(tok(conversation))
    target = input_ids.clone()
    sep = " " + "ASSISTANT" + ": "
    total_len = int(target.ne(tokenizer.pad_token_id).sum())
    rounds = conversation.split("</s>")
    cur_len = 1
    target[:cur_len] = IGN
    for i, rou in enumerate(rounds):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tok(rou))
        instruction_len = len(tok(parts[0])) - 2
        if i != 0 and not legacy:
            round_len -= 1
            instruction_len -= 1
        target[cur_len: cur_len + instruction_len] = IGN
        cur_len += round_len
    target[cur_len:] = IGN
    if cur_len < tokenizer.model_max_length and cur_len != total_len:
        target[:] = IGN
    return input_ids.tolist(), target.tolist()


@pytest.mark.shared
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("n_turns", [1, 2, 3])
def test_training_labels_follow_ecgchat_preprocess_v1(llava_converted, legacy, n_turns):
    from ecgbatch.llava.conversation import label_vicuna_v1
    from ecgbatch.llava.loading import load_tokenizer, read_config

    tok = load_tokenizer(llava_converted, read_config(llava_converted))
    qa = [("<ecg>\nWhat is the rhythm?", "Sinus rhythm."), ("Is the axis normal?", "Left axis deviation."),
          ("Any ST changes?", "No.")][:n_turns]
    source = [t for q, a in qa for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
    ex = label_vicuna_v1(source, tok, -200, legacy=legacy)
    ids, labels = _ecgchat_preprocess_v1(ex.prompt, tok, legacy)
    assert ex.prompt.endswith(f"ASSISTANT: {qa[-1][1]}</s>")
    assert ex.input_ids == ids and ex.labels == labels
    assert ex.mismatch == all(lab == IGN for lab in labels)
    assert n_turns > 1 or not ex.mismatch   # this tokenizer splits "USER" after "</s>" unlike "▁USER":
    # ECG-Chat flags its later rounds as a tokenization mismatch and masks them, and so do we
    if not ex.mismatch:   # what is learnt is exactly the answers and their </s>
        kept = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGN]
        assert tok.decode(kept).replace(" ", "") == "".join(a.replace(" ", "") + "</s>" for _, a in qa)


@pytest.mark.shared
def test_chat_template_prompt_path(llava_converted):
    from ecgbatch.llava.loading import load_tokenizer, read_config
    from ecgbatch.llava.prompting import build_prompt, prompt_ids

    cfg = read_config(llava_converted)
    tok = load_tokenizer(llava_converted, cfg)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    prompt = build_prompt("Is the rhythm regular?", "chat_template", tok)
    assert prompt == "<s><|user|><ecg>\nIs the rhythm regular?</s><|assistant|>"
    cfg.prompt_format = "chat_template"
    ids = prompt_ids(tok, "Is the rhythm regular?", cfg)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids.count(cfg.ecg_token_id) == 1


@pytest.mark.slow   # a fresh interpreter importing torch + transformers + peft: 20-70 s on a busy 2-core box
def test_llava_imports_no_ray_vllm_faiss():
    import subprocess
    import sys

    code = ("import sys; from ecgbatch.llava import load_ecg_llava, convert_ecgchat_llava, EcgLlavaForCausalLM, "
            "prompt_ids, preprocess_for_model, label_vicuna_v1; "
            "bad = [n for n in ('ray', 'vllm', 'faiss') if n in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
