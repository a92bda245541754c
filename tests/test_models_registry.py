"""The one way to load a model (ecgbatch.models): the zoo of both families, family detection,
create_args / load_model rules, training checkpoints loading directly, and `ecgbatch models list`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from typer.testing import CliRunner  # noqa: E402

from ecgbatch.cli import app  # noqa: E402
from ecgbatch.models import families, registry  # noqa: E402

runner = CliRunner()


def _llava_folder(root, name="ecg-llava-test"):
    """A folder in the ECG-LLaVA format's shape (config.json with model_type ecg_llava + a real
    safetensors file): what `models list` and family detection look at."""
    from safetensors.torch import save_file

    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "ecg_llava",
                                               "architectures": ["EcgLlavaForConditionalGeneration"]}))
    save_file({"projector.0.weight": torch.zeros(8, 4)}, str(d / "model.safetensors"))
    return d


@pytest.fixture()
def llava_entry(monkeypatch, tmp_path):
    """A zoo entry of the generative family whose weights sit in $ECGBATCH_MODELS_DIR."""
    monkeypatch.setenv(registry.ENV_DIR, str(tmp_path))
    monkeypatch.setattr(registry, "ZOO", dict(registry.ZOO))
    e = registry.register(registry.ZooEntry(name="ecg-llava-test", kind="ecg-llava", params=1234,
                                            source="converted from ECG-Chat's LLaVA release",
                                            license="test", description="test entry"))
    return e, _llava_folder(tmp_path)


def test_families_and_kinds(tmp_path, llava_entry):
    _, llava_dir = llava_entry
    assert families.family("ecg-coca").loader == "ecgbatch.encoders.factory:create_model"
    assert families.family("ecg-llava").loader == "ecgbatch.llava:load_ecg_llava"
    assert families.detect_kind("ecg-coca-mini") == "ecg-coca"
    assert families.detect_kind(registry.WEIGHTS_DIR / "ecg-coca-mini") == "ecg-coca"   # a folder
    assert families.detect_kind("ecg-llava-test") == "ecg-llava"                         # a zoo name
    assert families.detect_kind(llava_dir) == "ecg-llava"                                # a folder
    assert families.detect_kind("some-config.json") == "ecg-coca"
    with pytest.raises(ValueError, match="unknown model family"):
        families.family("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.ZooEntry("ecg-coca", "ecg-llava", "x", "x", "x"))


def test_declared_parameter_counts_match_the_architectures():
    """The zoo's `params` is what the architecture builds (on the meta device: no memory, no weights)."""
    from ecgbatch.encoders.factory import build_model, resolve_config

    for name in registry.names("ecg-coca"):
        cfg, _ = resolve_config(name)
        with torch.device("meta"):
            m = build_model(cfg, text_weights=False)
        assert registry.ZOO[name].params == sum(p.numel() for p in m.parameters()), name


def test_models_list_shows_both_families(llava_entry, monkeypatch, tmp_path):
    e, llava_dir = llava_entry
    r = runner.invoke(app, ["models", "list", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(registry.names()) >= {"ecg-coca", "ecg-coca-mini", "ecg-llava-test"}
    ll = rows["ecg-llava-test"]
    assert ll["kind"] == "ecg-llava" and ll["installed"] and ll["weights"] == str(llava_dir)
    on_disk = sum(p.stat().st_size for p in llava_dir.iterdir())
    assert ll["size_mb"] == round(on_disk / 1e6, 1) and ll["params"] == 1234 and ll["ecg_tower"] is None
    mini = rows["ecg-coca-mini"]
    assert mini["kind"] == "ecg-coca" and mini["installed"] and mini["size_mb"] > 1
    assert mini["weights"] == str(registry.find_weights("ecg-coca-mini"))
    coca = rows["ecg-coca"]                        # $ECGBATCH_MODELS_DIR holds no ecg-coca here
    assert coca["installed"] is False and coca["weights"] is None and coca["size_mb"] is None
    assert "convert-ecgchat" in coca["install"]

    r = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    line = {ln.split("│")[1].strip(): ln for ln in r.stdout.splitlines() if ln.count("│") > 3}
    assert "ecg-llava" in line["ecg-llava-test"] and "yes:" in line["ecg-llava-test"]
    assert "403.3 M" in line["ecg-coca"] and " no " in line["ecg-coca"]


def test_create_args_rules(tmp_path):
    from ecgbatch.models import RANDOM_INIT, create_args

    mini = registry.WEIGHTS_DIR / "ecg-coca-mini"
    assert create_args("ecg-coca-mini") == {"pretrained": "default"}
    assert create_args("ecg-coca-mini", random_init=True) == RANDOM_INIT
    assert create_args("ecg-coca-mini", "random") == {"pretrained": "random", "seed": 0}
    assert create_args(str(mini)) == {"pretrained": None}                     # a folder's own weights
    assert create_args(str(mini), random_init=True) == {"pretrained": None}   # ... even with --random
    cfg = tmp_path / "arch.json"
    cfg.write_text("{}")
    with pytest.raises(FileNotFoundError, match="names no trained weights"):
        create_args(str(cfg))                                                 # no silent random weights
    assert create_args(str(cfg), "random") == {"pretrained": "random", "seed": 0}


@pytest.mark.shared
def test_training_checkpoint_loads_directly(fixtures_dir, tmp_path):
    """A training checkpoint directory is a model name everywhere (create_model, load_model,
    resolve_config): it stands for its model/ folder."""
    from ecgbatch.encoders import create_model as encoder_factory
    from ecgbatch.encoders.factory import resolve_config
    from ecgbatch.models import create_model, load_model
    from ecgbatch.training import checkpointing as C

    cfg = fixtures_dir / "ecgcoca_tiny" / "model_config.json"
    if not cfg.is_file():
        pytest.skip("tiny ECG-CoCa fixture missing")
    model = encoder_factory(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ck = C.write_checkpoint(tmp_path / "ck", model, opt, None, {"epoch": 0, "global_step": 1})
    a = create_model(ck)
    b, args = load_model(str(ck))
    assert a.weights_hash == b.weights_hash == model.weights_hash and args == {"pretrained": None}
    assert resolve_config(ck)[0].to_dict() == model.cfg.to_dict()
    with pytest.raises(ValueError, match="own weights"):
        create_model(ck, pretrained="random")


def test_load_model_falls_back_to_random_init_loudly(monkeypatch, tmp_path):
    from ecgbatch.models import RANDOM_INIT, load_model

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "none")   # nothing installed anywhere
    monkeypatch.setenv(registry.ENV_DIR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no weights for 'ecg-coca-mini'"):
        load_model("ecg-coca-mini")
    said = []
    m, args = load_model("ecg-coca-mini", allow_random_init=True, warn=said.append)
    assert args == RANDOM_INIT and len(said) == 1 and "RANDOM INITIALISATION" in said[0]
    again, _ = load_model("ecg-coca-mini", random_init=True)
    assert again.weights_hash == m.weights_hash                   # seeded: the same in every process


def test_models_package_imports_without_torch():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'): raise ImportError('torch blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import ecgbatch.models as M\n"
            "assert M.detect_kind('ecg-coca-mini') == 'ecg-coca' and M.find_weights('ecg-coca-mini')\n"
            "assert M.create_args('ecg-coca') == {'pretrained': 'default'}\n"
            "assert 'torch' not in sys.modules\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
