"""Training checkpoints and the shipped "trained-only" weights folder.

A training checkpoint (one per epoch, reported to Ray Train) is a directory::

    model/              our model folder (ecgbatch.encoders.save_pretrained): weights only;
                        ``ecgbatch.models.create_model(<ckpt>)`` loads it
    train_state.pt      optimizer + GradScaler state, LR-schedule step, epoch, torch RNG state,
                        the job config and the epoch's metrics (torch.load(weights_only=True))
    progress.json       {"epoch", "global_step"[, "step_in_epoch"]}: lets a resume find the latest
                        checkpoint; "step_in_epoch" (steps of that epoch done) marks one taken
                        within the epoch
                        without opening the large files
    manifest.json       {relative path: size in bytes} of every other file, written last

Ray Train copies a reported checkpoint into the run folder file by file, in no set order; a worker
killed during that copy (a crashed node, or another rank's error tearing the group down) leaves a
folder with some files missing or cut short. ``latest_checkpoint`` takes only checkpoints whose
files match their manifest, so a resume continues from the last whole one instead of failing on a
torn ``train_state.pt`` (checkpoints written before the manifest existed are taken as before).

A trained-only folder (what ships in ecgbatch/models/weights/<name>/) is the same folder
format, but ``model.safetensors`` holds only the tensors training changed; config.json's
``base_weights`` says where the rest comes from (the frozen text transformer: the locally
installed text encoder, checked by hash) and ``omitted`` lists modules not stored at all (an
untrained caption decoder). ``load_trained_only`` rebuilds the full model from both.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ecgbatch.encoders import save_pretrained
from ecgbatch.models.registry import CHECKPOINT_MODEL_SUBDIR as MODEL_SUBDIR
# One hash rule for base weights and one marker, shared with the loader that checks them.
from ecgbatch.encoders.checkpoint import TRAINED_ONLY, load_folder, tensors_hash

STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "manifest.json"


def write_checkpoint(folder: str | Path, model, optimizer, scaler, state: dict, save_model=None) -> Path:
    """Write one training checkpoint (see module doc) into ``folder``. ``save_model(model,
    folder)`` writes the model part (default: the ECG-CoCa folder; the ECG-LLaVA job passes its
    trained-only writer)."""

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (save_model or save_pretrained)(model, out / MODEL_SUBDIR)
    payload = dict(state)
    payload["optimizer"] = optimizer.state_dict()
    payload["scaler"] = scaler.state_dict() if scaler is not None else None
    payload["torch_rng"] = torch.get_rng_state()
    torch.save(payload, out / STATE_FILE)
    progress = {"epoch": int(state["epoch"]), "global_step": int(state["global_step"])}
    if state.get("step_in_epoch"):      # a checkpoint within the epoch (optim.checkpoint_every_steps)
        progress["step_in_epoch"] = int(state["step_in_epoch"])
    (out / PROGRESS_FILE).write_text(json.dumps(progress))
    (out / MANIFEST_FILE).write_text(json.dumps(file_sizes(out)))
    return out


def file_sizes(folder: Path) -> dict[str, int]:
    """{path relative to ``folder``: size in bytes} of every file under it but the manifest."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST_FILE}


def is_whole(ck: Path, legacy: bool = False) -> bool:
    """Whether checkpoint folder ``ck`` holds every file of its manifest at its written size.
    ``legacy``: a folder without a manifest (written before it existed) counts when it has the train
    state and the model folder."""
    if not ((ck / STATE_FILE).is_file() and (ck / MODEL_SUBDIR).is_dir()):
        return False
    m = ck / MANIFEST_FILE
    if not m.exists():
        return legacy
    try:
        want = json.loads(m.read_text())
        return all((ck / rel).stat().st_size == size for rel, size in want.items())
    except (OSError, ValueError, AttributeError):
        return False


def read_train_state(folder: str | Path) -> dict:
    p = Path(folder) / STATE_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a training checkpoint (no {STATE_FILE})")
    return torch.load(p, map_location="cpu", weights_only=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest global step under ``run_dir`` (None when there is none).
    Only whole checkpoints count (``is_whole``: a copy cut short by a crash is passed over; a run
    whose checkpoints all predate the manifest is read as before)."""
    root = Path(run_dir)
    if not root.is_dir():
        return None
    found = []
    for prog in root.rglob(PROGRESS_FILE):
        try:
            d = json.loads(prog.read_text())
            found.append(((int(d["global_step"]), int(d["epoch"])), prog.parent))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    legacy = not any((ck / MANIFEST_FILE).exists() for _, ck in found)
    whole = [(key, ck) for key, ck in found if is_whole(ck, legacy)]
    return max(whole, key=lambda kc: kc[0])[1] if whole else None


# --- trained-only folders --------------------------------------------------------------------


def save_trained_only(model, folder: str | Path, trained: set[str], base_prefix: str = "text.transformer.",
                      omit_prefixes: tuple[str, ...] = (), dtype: torch.dtype | None = torch.float16,
                      extra: dict | None = None) -> Path:
    """Write ``model`` keeping only the tensors named in ``trained`` (plus any tensor under
    neither ``base_prefix`` nor ``omit_prefixes``). Tensors under ``base_prefix`` are recorded by
    hash and must come back identical from the locally installed text encoder."""
    from safetensors.torch import save_file

    out = Path(folder)
    save_pretrained(model, out)            # config.json + text_encoder/ (+ full weights, replaced below)
    sd = model.state_dict()
    keep, base = {}, {}
    for k, v in sd.items():
        if k in trained or not (k.startswith(base_prefix) or k.startswith(omit_prefixes)):
            t = v.detach().cpu()
            keep[k] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
        elif k.startswith(base_prefix):
            base[k] = v
    save_file(keep, str(out / "model.safetensors"), metadata={"format": "ecgbatch-coca",
                                                              "stored_weights": TRAINED_ONLY})
    (out / "model.safetensors").chmod(0o644)   # shipped in the package: readable by everyone
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(stored_weights=TRAINED_ONLY, dtype=str(dtype).replace("torch.", "") if dtype else "float32",
               base_weights={base_prefix: {"source": model.cfg.text_cfg.hf_model_name,
                                           "n_tensors": len(base), "sha256_16": tensors_hash(base)}},
               omitted=list(omit_prefixes))
    cfg.pop("weights_hash", None)
    cfg.update(extra or {})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def is_trained_only(folder: str | Path) -> bool:
    p = Path(folder) / "config.json"
    try:
        return json.loads(p.read_text()).get("stored_weights") == TRAINED_ONLY
    except (OSError, json.JSONDecodeError):
        return False


def load_trained_only(folder: str | Path, device=None, text_encoder_dir=None):
    """Rebuild the model of a trained-only folder (the encoders' loader does it: base text
    weights from the installed text encoder, hash-checked; stored tensors on top; strict about
    anything else)."""

    if not is_trained_only(folder):
        raise ValueError(f"{str(folder)!r} is not a trained-only folder")
    return load_folder(folder, device=device, text_encoder_dir=text_encoder_dir)
