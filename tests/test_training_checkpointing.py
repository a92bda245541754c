"""Checkpoint helpers: latest checkpoint by step, trained-only folders (what ships) round trip
to the same outputs and refuse a different text encoder; the train state loads weights_only."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    from ecgbatch.encoders import create_model

    cfg = fixtures_dir / "ecgcoca_tiny" / "model_config.json"
    if not cfg.is_file():
        pytest.skip("tiny ECG-CoCa fixture missing")
    return create_model(cfg, seed=0), fixtures_dir / "ecgcoca_tiny" / "text_encoder"


def test_write_and_find_latest_checkpoint(tiny, tmp_path):
    from ecgbatch.training import checkpointing as C

    model, _ = tiny
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step, epoch in ((2, 0), (6, 2), (4, 1)):
        C.write_checkpoint(tmp_path / f"ck{step}", model, opt, None, {"epoch": epoch, "global_step": step})
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "progress.json").write_text(json.dumps({"epoch": 9, "global_step": 99}))
    assert C.latest_checkpoint(tmp_path) == tmp_path / "ck6"      # the incomplete one is ignored
    st = C.read_train_state(tmp_path / "ck6")
    assert st["epoch"] == 2 and "optimizer" in st and isinstance(st["torch_rng"], torch.Tensor)
    assert C.latest_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        C.read_train_state(tmp_path / "partial")


def test_a_checkpoint_torn_by_a_crash_mid_copy_is_passed_over(tiny, tmp_path):
    """Ray copies a reported checkpoint file by file: a worker killed during the copy leaves files
    cut short or missing, whatever the order. The resume takes the last whole checkpoint."""
    from ecgbatch.training import checkpointing as C

    model, _ = tiny
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in (2, 4, 6):
        C.write_checkpoint(tmp_path / f"ck{step}", model, opt, None, {"epoch": step // 2 - 1, "global_step": step})
    manifest = json.loads((tmp_path / "ck6" / C.MANIFEST_FILE).read_text())
    assert {C.STATE_FILE, C.PROGRESS_FILE} <= set(manifest) and any(k.startswith("model/") for k in manifest)
    assert C.latest_checkpoint(tmp_path) == tmp_path / "ck6"
    state = tmp_path / "ck6" / C.STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])       # cut short
    assert C.latest_checkpoint(tmp_path) == tmp_path / "ck4"
    weights = next(p for p in (tmp_path / "ck4" / "model").rglob("*") if p.is_file())
    weights.unlink()                                                          # not copied yet
    assert C.latest_checkpoint(tmp_path) == tmp_path / "ck2"
    (tmp_path / "ck2" / C.MANIFEST_FILE).unlink()                             # the manifest not copied yet
    assert C.latest_checkpoint(tmp_path) is None
    for ck in ("ck4", "ck6"):                                                 # a run from before manifests
        (tmp_path / ck / C.MANIFEST_FILE).unlink()
    assert C.latest_checkpoint(tmp_path) == tmp_path / "ck6"


def test_trained_only_round_trip(tiny, tmp_path):
    from ecgbatch.training import checkpointing as C
    from ecgbatch.training.coca_task import configure_trainable, trainable_names

    model, text_dir = tiny
    configure_trainable(model, lock_text=True, freeze_layer_norm=True, use_decoder=False)
    with torch.no_grad():
        model.ecg.proj.add_(0.01)                                   # "training" changed the ECG tower
    folder = C.save_trained_only(model, tmp_path / "mini", trainable_names(model),
                                 omit_prefixes=("text_decoder.",), dtype=None)
    from safetensors.torch import load_file

    stored = load_file(str(folder / "model.safetensors"))
    assert not any(k.startswith(("text.transformer.", "text_decoder.")) for k in stored)
    assert "ecg.proj" in stored and "text.proj.weight" in stored and "logit_scale" in stored
    back = C.load_trained_only(folder, text_encoder_dir=text_dir)
    x = torch.randn(2, 12, 5000, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(back.embed_ecgs(x), model.embed_ecgs(x), atol=1e-6)
    ids = model.tokenizer(["atrial fibrillation", "sinus rhythm"])
    with torch.no_grad():
        np.testing.assert_allclose(back.encode_text(ids).numpy(), model.encode_text(ids).numpy(), atol=1e-6)
    # a different text encoder (changed weights) is refused, never silently used
    cfg = json.loads((folder / "config.json").read_text())
    cfg["base_weights"]["text.transformer."]["sha256_16"] = "0" * 16
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="differ"):
        C.load_trained_only(folder, text_encoder_dir=text_dir)
