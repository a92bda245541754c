"""A trained-only ECG-LLaVA folder (what `ecgbatch train export` writes and what ships as
ecg-llava-mini: config + projector + lora/) through the one model resolution of the generative
commands (ecgbatch.models.llava_model): assembled into the cache once, its own adapter
found, loaded in HF and in vLLM with identical greedy tokens on real records, the adapter applied.
The vLLM half uses the session's one engine (conftest ``vllm_engine`` serves the assembled folder)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ecgbatch._paths import SAMPLE_ARCHIVE

RECORDS = [SAMPLE_ARCHIVE / "ludb" / "101.hea", SAMPLE_ARCHIVE / "cinc2021" / "HR03961.hea"]
N_NEW = 12

pytestmark = pytest.mark.shared


def test_trained_only_folder_is_what_export_writes(llava_trained_only, llava_converted):
    from safetensors.torch import load_file

    from ecgbatch.llava.assemble import is_trained_only

    cfg = json.loads((llava_trained_only / "config.json").read_text())
    assert is_trained_only(llava_trained_only) and cfg["base"] == {"folder": str(llava_converted)}
    assert set(cfg["base_sha256_16"]) == {"language_model", "ecg_tower"}
    names = set(load_file(str(llava_trained_only / "model.safetensors")))
    assert names and all(n.startswith("projector.") for n in names)      # no tower, no LM
    assert (llava_trained_only / "lora" / "adapter_model.safetensors").is_file()


def test_resolve_assembles_once_and_finds_the_adapter(llava_trained_only, llava_assembled, llava_cache,
                                                      monkeypatch):
    from ecgbatch.models import llava_model

    full, lora = llava_assembled
    assert full.parent == llava_cache / "models" and full.name.startswith("ecg-llava-tiny-")
    assert (full / "model.safetensors").is_file() and lora == full / "lora"
    monkeypatch.setenv("ECGBATCH_CACHE", str(llava_cache))
    said = []
    assert llava_model(llava_trained_only, log=said.append) == (full, lora)
    assert not said                                                       # the cached folder, no rebuild
    # the commands' resolver: the model's own adapter unless --lora names another
    assert llava_model(str(llava_trained_only)) == (full, lora)
    other = Path("/some/adapter")
    assert llava_model(str(llava_trained_only), other) == (full, other)


def test_assembled_folder_keeps_how_the_model_is_asked(llava_trained_only, tmp_path, monkeypatch):
    """A model trained with the grounded prompt says so in its trained-only config; the full
    folder assembled from it (what report, chat and serve load) must say so too."""
    import shutil

    from ecgbatch.llava.assemble import full_folder
    from ecgbatch.llava.loading import read_config

    src = tmp_path / "grounded-tiny"
    shutil.copytree(llava_trained_only, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["prompt"] = {"grounded": True}
    (src / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("ECGBATCH_CACHE", str(tmp_path / "cache"))
    full = full_folder(src, log=lambda m: None)
    assert read_config(full).grounded_prompt is True
    assert read_config(llava_trained_only).grounded_prompt is False


def test_resolve_errors_say_what_to_do(tmp_path, monkeypatch):
    from ecgbatch.llava.errors import ModelFolderError, ModelNotInstalledError
    from ecgbatch.models import llava_model, registry

    monkeypatch.setenv("ECGBATCH_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "package-weights")
    with pytest.raises(ModelNotInstalledError) as e:
        llava_model("ecg-llava-mini")
    msg = str(e.value)
    assert msg.startswith("ecg-llava-mini is not installed") and "train export" in msg
    assert str(tmp_path / "models" / "ecg-llava-mini") in msg
    with pytest.raises(ModelFolderError, match="ecg-coca model, not an ECG-LLaVA model"):
        llava_model("ecg-coca-mini")
    with pytest.raises(ModelFolderError, match="no config.json"):
        llava_model(str(tmp_path))
    # any name under $ECGBATCH_MODELS_DIR, beside the zoo's
    with pytest.raises(ModelNotInstalledError, match="ECGBATCH_MODELS_DIR"):
        llava_model("my-llava")


@pytest.fixture(scope="module")
def real_requests(vllm_engine):
    from ecgbatch.llava.inputs import read_for_model
    from ecgbatch.llava.questions import DEFAULT_QUESTION
    from ecgbatch.serving.engine import EcgRequest

    ecgs, failed = read_for_model([str(p) for p in RECORDS], vllm_engine.config)
    assert not failed
    ids = vllm_engine.prompt_ids(DEFAULT_QUESTION)
    return [EcgRequest(x, ids, id=p) for p, x in ecgs]


@pytest.mark.vllm
@pytest.mark.slow
def test_trained_only_hf_and_vllm_tokens_equal_with_its_adapter(llava_assembled, vllm_engine, real_requests):
    from ecgbatch.llava import load_ecg_llava

    full, lora = llava_assembled
    assert vllm_engine.model_dir == full
    with_lora = vllm_engine.generate(real_requests, max_tokens=N_NEW, lora=lora, ignore_eos=True)
    without = vllm_engine.generate(real_requests, max_tokens=N_NEW, ignore_eos=True)
    assert [r.token_ids for r in with_lora] != [r.token_ids for r in without]   # the adapter is applied
    model, tok = load_ecg_llava(full, lora=lora)
    for req, out in zip(real_requests, with_lora):
        hf = model.generate(torch.tensor([req.prompt_ids]), ecgs=torch.from_numpy(req.ecg[None]),
                            max_new_tokens=N_NEW, do_sample=False)[0].tolist()
        assert len(out.token_ids) == N_NEW and hf == out.token_ids[:len(hf)]
        assert len(hf) == N_NEW or hf[-1] == tok.eos_token_id                   # HF stops at EOS only
