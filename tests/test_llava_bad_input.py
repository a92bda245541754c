"""Bad input on the model side of ECG-LLaVA is explained, never a traceback from deep inside
torch/transformers/peft: broken model folders, adapters for another base, ECG-Chat checkpoints
with missing or mis-shaped parts, prompts whose <ecg> count does not match the ECGs, prompts
longer than the context, and records that cannot be brought to the model's input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def model_tok(llava_converted):
    from ecgbatch.llava import load_ecg_llava

    return load_ecg_llava(llava_converted, lora=llava_converted / "lora")


@pytest.fixture(scope="module")
def ecgs(llava_fx):
    return torch.from_numpy(np.load(llava_fx / "inputs_ecg.npy"))


def _copy_folder(src, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def _edit_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


# -- model folders ------------------------------------------------------------------------------
@pytest.mark.shared
def test_missing_tensor_is_named(llava_converted, tmp_path):
    from ecgbatch.encoders.checkpoint import CheckpointMismatchError
    from ecgbatch.llava import load_ecg_llava

    folder = _copy_folder(llava_converted, tmp_path)
    _edit_weights(folder, lambda sd: sd.pop("language_model.model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\).*layers\.1\.mlp\.down_proj\.weight"):
        load_ecg_llava(folder)


@pytest.mark.shared
def test_misshaped_projector_is_named(llava_converted, tmp_path):
    from ecgbatch.encoders.checkpoint import CheckpointMismatchError
    from ecgbatch.llava import load_ecg_llava

    folder = _copy_folder(llava_converted, tmp_path)
    _edit_weights(folder, lambda sd: sd.__setitem__("projector.0.weight", torch.zeros(64, 768)))
    with pytest.raises(CheckpointMismatchError, match=r"projector\.0\.weight: checkpoint \(64, 768\) vs model \(64, 64\)"):
        load_ecg_llava(folder)


@pytest.mark.shared
def test_tokenizer_without_ecg_token_is_refused(llava_converted, tmp_path):
    from ecgbatch.llava import ModelFolderError, load_ecg_llava

    folder = _copy_folder(llava_converted, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["ecg_token_id"] = 5
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="maps '<ecg>' to 1000 but the config says ecg_token_id=5"):
        load_ecg_llava(folder)


@pytest.mark.shared
def test_ecgchat_folder_given_to_loader_points_to_converter(llava_fx):
    from ecgbatch.llava import ModelFolderError, load_ecg_llava

    with pytest.raises(ModelFolderError, match="convert-ecgchat-llava"):
        load_ecg_llava(llava_fx / "llava-lora")


def _adapter_variant(src, dst, cfg_edit=None, tensor_edit=None):
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    cfg = json.loads((src / "adapter_config.json").read_text())
    if cfg_edit:
        cfg_edit(cfg)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    sd = load_file(str(src / "adapter_model.safetensors"))
    if tensor_edit:
        sd = tensor_edit(sd)
    save_file(sd, str(dst / "adapter_model.safetensors"))
    return dst


@pytest.mark.shared
def test_adapter_for_another_hidden_size(llava_converted, tmp_path):
    from ecgbatch.llava import AdapterMismatchError, load_ecg_llava

    def wider(sd):   # an adapter trained on a 128-wide model: A [8, 128]
        return {k: torch.zeros(v.shape[0], 128) if "lora_A" in k and "down_proj" not in k else v
                for k, v in sd.items()}

    bad = _adapter_variant(llava_converted / "lora", tmp_path / "adapter", tensor_edit=wider)
    with pytest.raises(AdapterMismatchError, match=r"(?s)another base.*q_proj\.lora_A\.weight: A is \(8, 128\), "
                                                   r"model\.layers\.0\.self_attn\.q_proj takes 64 inputs"):
        load_ecg_llava(llava_converted, lora=bad)


@pytest.mark.shared
def test_adapter_with_foreign_target_modules(llava_converted, tmp_path):
    from ecgbatch.llava import AdapterMismatchError, load_ecg_llava

    def gpt2_names(sd):   # GPT-2 style module names
        return {k.replace("self_attn.q_proj", "attn.c_attn"): v for k, v in sd.items()}

    bad = _adapter_variant(llava_converted / "lora", tmp_path / "adapter",
                           cfg_edit=lambda c: c.__setitem__("target_modules", ["c_attn", "c_proj"]),
                           tensor_edit=gpt2_names)
    with pytest.raises(AdapterMismatchError, match=r"no module 'model\.layers\.0\.attn\.c_attn'(.|\n)*"
                                                   r"target_modules \['c_attn', 'c_proj'\] do not exist"):
        load_ecg_llava(llava_converted, lora=bad)


# -- prompts ------------------------------------------------------------------------------------
@pytest.mark.shared
@pytest.mark.parametrize("n_placeholders", [0, 2])
def test_placeholder_count_must_match_ecgs(model_tok, ecgs, n_placeholders):
    from ecgbatch.llava import EcgPromptError
    from ecgbatch.llava.prompting import build_prompt, tokenize_with_ecg

    model, tok = model_tok
    prompt = build_prompt("Is the rhythm regular?").replace("<ecg>\n", "<ecg>\n" * n_placeholders)
    ids = torch.tensor([tokenize_with_ecg(tok, prompt, model.config.ecg_token_id)])
    with pytest.raises(EcgPromptError, match="placeholder"):
        model(input_ids=ids, ecgs=ecgs[:1])
    with pytest.raises(EcgPromptError, match="placeholder"):
        model.generate(ids, ecgs[:1], max_new_tokens=2)


@pytest.mark.shared
def test_placeholders_without_ecgs_are_refused(model_tok):
    from ecgbatch.llava import EcgPromptError
    from ecgbatch.llava.prompting import build_prompt, prompt_ids

    model, tok = model_tok
    ids = torch.tensor([prompt_ids(tok, "Describe.", model.config)])
    with pytest.raises(EcgPromptError, match="no ECG was given"):
        model(input_ids=ids)
    with pytest.raises(EcgPromptError, match="exactly one <ecg>"):
        prompt_ids(tok, "Compare <ecg> with <ecg>", model.config)
    assert build_prompt("Q?", history=[("first <ecg>", "A.")]).count("<ecg>") == 1


@pytest.mark.shared
def test_prompt_longer_than_context_is_explained(model_tok, ecgs):
    from ecgbatch.llava import ContextLengthError
    from ecgbatch.llava.prompting import prompt_ids

    model, tok = model_tok
    limit = model.config.context_length
    assert limit == 512    # min(ECG-Chat's 2048, the tiny Llama's max_position_embeddings)
    ids = torch.tensor([prompt_ids(tok, "Please describe this ECG. " * 120, model.config)])
    with pytest.raises(ContextLengthError, match=r"longer than the model's context of 512"):
        model(input_ids=ids, ecgs=ecgs[:1])
    short = torch.tensor([prompt_ids(tok, "Please describe this ECG.", model.config)])
    with pytest.raises(ContextLengthError, match=r"max_new_tokens \(400\) exceed the model's context of 512"):
        model.generate(short, ecgs[:1], max_new_tokens=400)


# -- ECG-Chat checkpoints given to the converter ------------------------------------------------
@pytest.fixture()
def lora_copy(llava_fx, tmp_path):
    dst = tmp_path / "llava-lora"
    shutil.copytree(llava_fx / "llava-lora", dst)
    return dst


def _convert(llava_fx, lora_dir, tmp_path, ckpt=None):
    from ecgbatch.llava import convert_ecgchat_llava

    return convert_ecgchat_llava(llava_fx / "base_llm", lora_dir,
                                 ckpt or llava_fx.parent / "ecgcoca_tiny" / "checkpoint.pt", tmp_path / "out")


def _edit_config(lora_dir, **changes):
    cfg = json.loads((lora_dir / "config.json").read_text())
    cfg.update(changes)
    (lora_dir / "config.json").write_text(json.dumps(cfg))


@pytest.mark.shared
@pytest.mark.parametrize("change, message", [
    ({"mm_projector_type": "linear"}, r"mm_projector_type is 'linear' but .* holds projector tensors"),
    ({"mm_hidden_size": 768}, r"mm_hidden_size is 768 .* ECG tower is 64 wide"),
    ({"mm_use_ecg_patch_token": True}, r"mm_use_ecg_patch_token.* not supported"),
    ({"hidden_size": 5120}, r"not made on this base model \(hidden_size: LoRA config 5120 vs base 64\)"),
    ({"model_type": "llama"}, r"expected ECG-Chat's 'llava_llama'"),
])
def test_converter_refuses_inconsistent_configs(llava_fx, lora_copy, tmp_path, change, message):
    from ecgbatch.llava import ConversionError

    _edit_config(lora_copy, **change)
    with pytest.raises(ConversionError, match=message):
        _convert(llava_fx, lora_copy, tmp_path)


@pytest.mark.shared
def test_converter_names_missing_and_misshaped_parts(llava_fx, lora_copy, tmp_path):
    from ecgbatch.llava import ConversionError

    sd = torch.load(lora_copy / "non_lora_trainables.bin", weights_only=True)
    sd["base_model.model.model.mm_projector.2.weight"] = torch.zeros(64, 32)
    torch.save(sd, lora_copy / "non_lora_trainables.bin")
    with pytest.raises(ConversionError, match=r"mm_projector\.2\.weight: checkpoint \(64, 32\) vs model \(64, 64\)"):
        _convert(llava_fx, lora_copy, tmp_path)
    (lora_copy / "non_lora_trainables.bin").unlink()
    with pytest.raises(ConversionError, match="non_lora_trainables.bin' not found"):
        _convert(llava_fx, lora_copy, tmp_path)


@pytest.mark.shared
def test_converter_names_missing_tower_keys(llava_fx, lora_copy, tmp_path):
    from ecgbatch.llava import ConversionError

    ck = torch.load(llava_fx.parent / "ecgcoca_tiny" / "checkpoint.pt", weights_only=True)
    ck["state_dict"].pop("module.ecg.ln_pre.weight")
    bad = tmp_path / "ckpt" / "checkpoint.pt"
    bad.parent.mkdir()
    torch.save(ck, bad)
    shutil.copyfile(llava_fx.parent / "ecgcoca_tiny" / "model_config.json", bad.parent / "model_config.json")
    with pytest.raises(ConversionError, match=r"(?s)ECG tower .*missing keys \(1\): \['ecg\.ln_pre\.weight'\]"):
        _convert(llava_fx, lora_copy, tmp_path, ckpt=bad)


@pytest.mark.shared
def test_cli_reports_conversion_errors_without_traceback(llava_fx, tmp_path):
    from typer.testing import CliRunner

    from ecgbatch.cli import app

    res = CliRunner().invoke(app, ["models", "convert-ecgchat-llava", "--base", str(llava_fx / "base_llm"),
                                   "--lora", str(tmp_path / "nowhere"), "--ecg-coca",
                                   str(llava_fx.parent / "ecgcoca_tiny" / "checkpoint.pt"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "error: ECG-Chat LLaVA config not found" in res.output
    assert "Traceback" not in res.output


# -- ECG records --------------------------------------------------------------------------------
def _record(signal, fs, leads, rid="rec-7"):
    from ecgbatch.io.record import Record

    return Record(signal=np.asarray(signal, np.float32), fs=fs, leads=tuple(leads), record_id=rid)


def test_preprocess_for_model_maps_leads_by_name_and_rate():
    from ecgbatch.io.record import STANDARD_LEADS
    from ecgbatch.llava import preprocess_for_model
    from ecgbatch.signal.config import ECGCHAT

    rng = np.random.default_rng(0)
    sig = rng.normal(size=(12, 2500)).astype(np.float32)
    order = list(reversed(STANDARD_LEADS))
    x = preprocess_for_model(_record(sig[::-1], 250.0, order), ECGCHAT)   # reversed leads, 250 Hz
    assert x.shape == (12, 5000) and x.dtype == np.float32
    y = preprocess_for_model(_record(sig, 250.0, STANDARD_LEADS), ECGCHAT)
    np.testing.assert_array_equal(x, y)
    z = preprocess_for_model(sig[:, :1000], ECGCHAT)    # an array is taken as the model's leads/rate
    assert z.shape == (12, 5000) and np.array_equal(z[:, :1000], sig[:, :1000]) and not z[:, 1000:].any()


def test_preprocess_for_model_errors_name_the_record():
    from ecgbatch.io.errors import MissingLeadError
    from ecgbatch.llava import EcgInputError, preprocess_for_model
    from ecgbatch.signal.config import ECGCHAT

    sig = np.zeros((3, 5000), np.float32)
    with pytest.raises(MissingLeadError, match=r"record 'rec-7' lacks lead\(s\)"):
        preprocess_for_model(_record(sig, 500.0, ["I", "II", "V1"]), ECGCHAT)
    with pytest.raises(EcgInputError, match=r"ECG 'holter-3': an array must be \[12 leads"):
        preprocess_for_model(sig, ECGCHAT, record_id="holter-3")
    from ecgbatch.io.errors import BadSignalError
    from ecgbatch.io.record import STANDARD_LEADS

    with pytest.raises(BadSignalError, match=r"record 'rec-7': sampling rate must be > 0, got nan"):
        preprocess_for_model(_record(np.zeros((12, 5000)), float("nan"), STANDARD_LEADS), ECGCHAT)


@pytest.mark.shared
def test_converter_refuses_to_overwrite(llava_fx, tmp_path):
    from ecgbatch.llava import ConversionError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    with pytest.raises(ConversionError, match="already exists and is not empty"):
        _convert(llava_fx, llava_fx / "llava-lora", tmp_path)
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
