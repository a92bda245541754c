"""Faithfulness of ECG-LLaVA to ECG-Chat's own code (shared/fixtures/ecgllava_tiny): the fixture's
ECG-Chat LoRA run goes through the public converter and loader, and the tower features, the
projected ECG, the spliced inputs_embeds, full-sequence logits (LoRA unmerged and merged), the 16
greedy tokens, the prompt ids and the training labels and loss must match (CPU, float32)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

RTOL = 1e-5
ATOL_REL = 1e-5   # absolute floor = 1e-5 * max|reference|: thread counts change sums in the last bits


def assert_close(got, ref):
    got = got.detach().float().numpy() if torch.is_tensor(got) else np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL_REL * float(np.abs(ref).max()))


@pytest.fixture(scope="session")
def unmerged(llava_converted):
    from ecgbatch.llava import load_ecg_llava

    return load_ecg_llava(llava_converted, lora=llava_converted / "lora")


@pytest.fixture(scope="session")
def merged(llava_converted):
    from ecgbatch.llava import load_ecg_llava

    return load_ecg_llava(llava_converted, lora=llava_converted / "lora", merge_lora=True)[0]


@pytest.fixture(scope="session")
def ecgs(llava_fx):
    return torch.from_numpy(np.load(llava_fx / "inputs_ecg.npy"))


@pytest.fixture(scope="session")
def ref_ids(llava_fx):
    return json.loads((llava_fx / "input_ids.json").read_text())["input_ids"]


def _ids(ids, ecg_token_id):
    return torch.tensor([[ecg_token_id if t == -200 else t for t in ids]])


@pytest.mark.shared
def test_converted_folder_layout(llava_converted):
    converted = llava_converted
    from ecgbatch.llava import num_ecg_tokens
    from ecgbatch.llava.loading import read_config, stored_shapes

    cfg = read_config(converted)
    d = json.loads((converted / "config.json").read_text())
    assert d["model_type"] == "ecg_llava" and d["architectures"] == ["EcgLlavaForConditionalGeneration"]
    assert cfg.projector_type == "mlp2x_gelu" and cfg.mm_hidden_size == 64
    assert num_ecg_tokens(cfg) == cfg.num_ecg_tokens == 101
    assert cfg.ecg_token_id == 1000            # past the 1000-row embedding, never embedded
    shapes = stored_shapes(converted)
    assert shapes["language_model.model.embed_tokens.weight"] == (1000, 64)
    assert shapes["projector.2.weight"] == (64, 64)
    assert sum(k.startswith("ecg_tower.") for k in shapes) == 32   # all module.ecg.* keys
    assert not any("lora" in k for k in shapes)
    adapter = converted / "lora"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()


@pytest.mark.shared
def test_prompt_ids_match_ecgchat(llava_fx, unmerged, ref_ids):
    from ecgbatch.llava.prompting import build_prompt, prompt_ids, tokenize_with_ecg

    model, tok = unmerged
    prompts = json.loads((llava_fx / "prompts.json").read_text())
    for q, p, ids in zip(prompts["questions"], prompts["prompts"], ref_ids):
        assert build_prompt(q, "vicuna_v1") == p
        want = _ids(ids, model.config.ecg_token_id)[0].tolist()
        assert tokenize_with_ecg(tok, p, model.config.ecg_token_id) == want
        assert prompt_ids(tok, q, model.config) == want
        assert tokenize_with_ecg(tok, p, -200) == ids


@pytest.mark.shared
def test_ecg_features_and_projection(llava_fx, unmerged, ecgs):
    model, _ = unmerged
    with torch.no_grad():
        assert_close(model.ecg_features(ecgs), np.load(llava_fx / "expected_ecg_features.npy"))
        assert_close(model.encode_ecgs(ecgs), np.load(llava_fx / "expected_projected_ecg.npy"))


@pytest.mark.shared
@pytest.mark.parametrize("i", [0, 1])
def test_spliced_inputs_embeds(llava_fx, unmerged, ecgs, ref_ids, i):
    model, _ = unmerged
    for ecg_id in (model.config.ecg_token_id, -200):   # our id and ECG-Chat's -200 splice alike
        with torch.no_grad():
            sp = model.prepare_inputs(_ids(ref_ids[i], ecg_id), ecgs[i:i + 1])
        assert_close(sp.inputs_embeds[0], np.load(llava_fx / f"expected_inputs_embeds_{i}.npy"))
        assert bool(sp.attention_mask.all())


@pytest.mark.shared
@pytest.mark.parametrize("variant", ["unmerged", "merged"])
@pytest.mark.parametrize("i", [0, 1])
def test_logits(llava_fx, unmerged, merged, ecgs, ref_ids, variant, i):
    model = unmerged[0] if variant == "unmerged" else merged
    with torch.no_grad():
        logits = model(input_ids=_ids(ref_ids[i], model.config.ecg_token_id), ecgs=ecgs[i:i + 1]).logits[0]
    assert_close(logits, np.load(llava_fx / f"expected_logits_{i}.npy"))


@pytest.mark.shared
def test_batched_forward_equals_single(llava_fx, unmerged, ecgs, ref_ids):
    """Right-padded batch of both samples (pad id 0, attention_mask = ids != 0) as in the README."""
    model, _ = unmerged
    a, b = (_ids(r, model.config.ecg_token_id)[0] for r in ref_ids)
    ids = torch.zeros((2, len(a)), dtype=torch.long)
    ids[0, :len(a)], ids[1, :len(b)] = a, b
    with torch.no_grad():
        logits = model(input_ids=ids, ecgs=ecgs, attention_mask=ids != 0).logits
    assert_close(logits[0, :145], np.load(llava_fx / "expected_logits_0.npy"))
    assert_close(logits[1, :144], np.load(llava_fx / "expected_logits_1.npy"))


@pytest.mark.shared
@pytest.mark.parametrize("variant", ["unmerged", "merged"])
def test_greedy_generation(llava_fx, unmerged, merged, ecgs, ref_ids, variant):
    model = unmerged[0] if variant == "unmerged" else merged
    expected = json.loads((llava_fx / "expected_generation.json").read_text())["new_token_ids"]
    for i in range(2):
        out = model.generate(_ids(ref_ids[i], model.config.ecg_token_id), ecgs[i:i + 1],
                             max_new_tokens=16, do_sample=False, num_beams=1)
        assert out[0].tolist() == expected[i]


@pytest.mark.shared
def test_training_labels_and_loss(llava_fx, unmerged, ecgs):
    from ecgbatch.llava.conversation import label_vicuna_v1

    model, tok = unmerged
    ex = json.loads((llava_fx / "expected_train_example.json").read_text())
    lab = label_vicuna_v1(ex["sources"][0], tok, -200)
    assert lab.prompt == ex["prompt"] and not lab.mismatch
    assert lab.input_ids == ex["input_ids"] and lab.labels == ex["labels"]
    ids = torch.tensor([label_vicuna_v1(ex["sources"][0], tok, model.config.ecg_token_id).input_ids])
    labels = torch.tensor([lab.labels])
    with torch.no_grad():
        sp = model.prepare_inputs(ids, ecgs[1:2], ids != 0, labels)
        out = model(input_ids=ids, ecgs=ecgs[1:2], attention_mask=ids != 0, labels=labels)
    assert sp.labels[0].tolist() == ex["spliced_labels"]
    np.testing.assert_allclose(float(out.loss), ex["loss"], rtol=RTOL)


@pytest.mark.shared
def test_cli_convert_with_merge_lora(llava_fx, ecgs, ref_ids, tmp_path):
    """`ecgbatch models convert-ecgchat-llava --merge-lora`: one folder, no adapter, same logits."""
    from typer.testing import CliRunner

    from ecgbatch.cli import app
    from ecgbatch.llava import load_ecg_llava

    out = tmp_path / "merged"
    res = CliRunner().invoke(app, ["models", "convert-ecgchat-llava", "--base", str(llava_fx / "base_llm"),
                                   "--lora", str(llava_fx / "llava-lora"), "--ecg-coca",
                                   str(llava_fx.parent / "ecgcoca_tiny" / "checkpoint.pt"), "-o", str(out),
                                   "--merge-lora"])
    assert res.exit_code == 0, res.output
    assert "merged into the LM" in res.output and not (out / "lora").exists()
    model, _ = load_ecg_llava(out)
    with torch.no_grad():
        logits = model(input_ids=_ids(ref_ids[0], model.config.ecg_token_id), ecgs=ecgs[:1]).logits[0]
    assert_close(logits, np.load(llava_fx / "expected_logits_0.npy"))


@pytest.mark.shared
def test_older_peft_bin_adapter_and_linear_projector(llava_fx, ecgs, ref_ids, tmp_path):
    """ECG-Chat runs saved with older peft have adapter_model.bin; a stage-1 style 'linear'
    projector is a bare Linear in non_lora_trainables.bin (mm_projector.weight/bias)."""
    import shutil

    from safetensors.torch import load_file

    from ecgbatch.llava import convert_ecgchat_llava, load_ecg_llava
    from ecgbatch.llava.loading import stored_shapes

    lora = tmp_path / "llava-lora"
    shutil.copytree(llava_fx / "llava-lora", lora)
    torch.save(load_file(str(lora / "adapter_model.safetensors")), lora / "adapter_model.bin")
    (lora / "adapter_model.safetensors").unlink()
    ckpt = llava_fx.parent / "ecgcoca_tiny" / "checkpoint.pt"
    out = convert_ecgchat_llava(llava_fx / "base_llm", lora, ckpt, tmp_path / "bin")
    model, _ = load_ecg_llava(out, lora=out / "lora")
    with torch.no_grad():
        logits = model(input_ids=_ids(ref_ids[1], model.config.ecg_token_id), ecgs=ecgs[1:2]).logits[0]
    assert_close(logits, np.load(llava_fx / "expected_logits_1.npy"))

    g = torch.Generator().manual_seed(0)
    lin = {"base_model.model.model.mm_projector.weight": torch.randn(64, 64, generator=g) / 8,
           "base_model.model.model.mm_projector.bias": torch.randn(64, generator=g) / 50}
    torch.save(lin, lora / "non_lora_trainables.bin")
    cfg = json.loads((lora / "config.json").read_text())
    cfg.pop("mm_projector_type")            # absent: LLaVA's default, "linear"
    (lora / "config.json").write_text(json.dumps(cfg))
    out = convert_ecgchat_llava(llava_fx / "base_llm", lora, ckpt, tmp_path / "linear")
    assert {k for k in stored_shapes(out) if k.startswith("projector.")} == {"projector.0.weight", "projector.0.bias"}
    model, _ = load_ecg_llava(out)
    assert model.config.projector_type == "linear"
    with torch.no_grad():
        got = model.encode_ecgs(ecgs[:1])
        want = model.ecg_features(ecgs[:1]) @ lin["base_model.model.model.mm_projector.weight"].T \
            + lin["base_model.model.model.mm_projector.bias"]
    assert_close(got, want.numpy())
