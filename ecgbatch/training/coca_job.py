"""ECG-CoCa contrastive (+ caption) training as a Ray Train job (Train V2 ``TorchTrainer``).

The driver (``run_job``) builds the pair cache once, splits it by patient, puts the arrays in
the Ray object store and launches ``train_loop_per_worker`` on N workers. Each worker:

- builds the model (same seed on every rank), freezes what the recipe freezes, wraps the step
  module in DDP (``ray.train.torch.prepare_model``);
- each step takes its slice of one global batch (same global batch for any N), augments it
  (seeded by (seed, epoch, position)), computes ECG-Chat's losses with features gathered from
  all workers (``ecgbatch.encoders.loss``), AdamW + warmup/cosine + gradient clipping +
  logit-scale clamp, AMP on GPU;
- after each epoch rank 0 validates and reports metrics with a checkpoint (model folder +
  optimizer state, ``ecgbatch.training.checkpointing``); the other ranks report metrics only.

``--resume`` loads the latest checkpoint of the run (model, optimizer, GradScaler, LR step,
RNG) and continues at the next epoch; since every random draw is keyed by (seed, epoch), the
run ends with the weights an uninterrupted run would have.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ecgbatch.pipelines.ray_connect import init_ray, is_local
from ecgbatch.training.job_config import CocaJobConfig, lr_at


class SimulatedCrash(RuntimeError):
    """Raised by ``fail_after_steps`` (tests of resume)."""


# --- worker side ---------------------------------------------------------------------------

def _amp_context(job: CocaJobConfig, device):
    import contextlib

    import torch

    mode = job.amp
    if mode == "auto":
        mode = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "off"
    if mode == "off":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if (mode == "fp16" and device.type == "cuda") else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _build_model(job: CocaJobConfig):
    """The job's starting model: ``init`` (a model folder, a training checkpoint, an ECG-Chat .pt
    or "default" for the zoo's weights of ``model``), else ``model``'s seeded fresh weights."""
    import torch

    from ecgbatch.models import create_model
    from ecgbatch.training.pairs import resolve_path

    torch.manual_seed(job.seed)
    if "{shared}" in job.model or job.model.endswith(".json"):
        job.model = str(resolve_path(job.model))
    if job.init:
        job.init = str(resolve_path(job.init))
        if Path(job.init).is_dir():        # a model folder or training checkpoint: its own weights
            model = create_model(job.init)
        else:                              # an ECG-Chat .pt or "default": weights for job.model
            model = create_model(job.model, pretrained=job.init)
    else:
        model = create_model(job.model, seed=job.seed)
    if model.tokenizer is None:
        raise ValueError(f"model {job.model!r} has no tokenizer (its text encoder is not installed locally)")
    return model


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from ecgbatch.encoders.loss import ClipLoss, CoCaLoss
    from ecgbatch.training import checkpointing as C
    from ecgbatch.training import coca_task as K
    from ecgbatch.training import data as D
    from ecgbatch.training.validation import validate

    job = CocaJobConfig.from_dict(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config["threads"]))
    device = ray.train.torch.get_device()
    arrays = ray.get(config["arrays"])
    x_all, base_texts, waves = arrays["x"], arrays["text"], arrays["wave"]
    train_idx, val_idx = np.asarray(config["train_idx"]), np.asarray(config["val_idx"])
    fs = float(config["fs"])

    model = _build_model(job)
    tok = model.tokenizer
    count, ctx_len = D.token_counter(tok), model.cfg.text_cfg.context_length
    wv = waves if job.data.wde else None
    texts = D.fit_texts(base_texts, wv, count, ctx_len)           # "full": validation, checkpoints
    kinds = list(job.data.text_variants)
    probs = [float(job.data.text_variants[k]) for k in kinds]
    ids_var = torch.stack([tok(D.fit_texts(*D.variant_texts(base_texts, wv, k), count, ctx_len), lower=True)
                           for k in kinds])                         # [V, N, L]
    use_decoder = job.loss.caption_weight > 0
    K.configure_trainable(model, job.text_tower.lock, job.text_tower.freeze_layer_norm, use_decoder)
    cached = job.text_tower.cache_frozen_features and K.text_tower_frozen(model)
    pooled_var = states_var = None
    if cached:   # [V, N_train, width] (+ token states for the decoder)
        feats = [K.cache_text_features(model, ids_var[v][train_idx], with_states=use_decoder)
                 for v in range(len(kinds))]
        pooled_var = torch.stack([f[0] for f in feats])
        states_var = torch.stack([f[1] for f in feats]) if use_decoder else None
    model.to(device)
    task = ray.train.torch.prepare_model(K.CocaTask(model, use_decoder), move_to_device=True)
    optimizer = torch.optim.AdamW(K.param_groups(model, job.optim.weight_decay), lr=job.optim.lr,
                                  betas=job.optim.betas, eps=job.optim.eps)
    amp, scaler = _amp_context(job, device)
    if use_decoder:
        loss_fn = CoCaLoss(caption_loss_weight=job.loss.caption_weight, clip_loss_weight=job.loss.clip_weight,
                           pad_id=model.text.pad_token_id, rank=rank, world_size=world)
    else:
        loss_fn = ClipLoss(rank=rank, world_size=world)
    label_w = float(job.loss.label_weight)
    pos_labels = None
    if label_w > 0:
        from ecgbatch.training.label_loss import multi_positive_clip_loss
        from ecgbatch.training.texts import keyword_labels

        names = list(job.loss.label_positives)
        pos_labels = torch.tensor([[keyword_labels(t, names)[n] for n in names] for t in base_texts],
                                  dtype=torch.float32)

    n_train = len(train_idx)
    x_train = x_all[train_idx]
    weights = None
    if job.sampling.balance:
        weights = D.balance_weights([base_texts[i] for i in train_idx],
                                    [arrays["source"][i] for i in train_idx], job.sampling.balance)
    per_epoch = job.sampling.samples_per_epoch or n_train
    B = job.optim.batch_size
    steps = D.steps_per_epoch(per_epoch, B)
    if job.optim.max_steps_per_epoch:
        steps = min(steps, job.optim.max_steps_per_epoch)
    if steps < 1:
        raise ValueError(f"{per_epoch} samples per epoch give no full batch of {B}")
    total_steps = steps * job.optim.epochs
    mine = D.local_slice(B, rank, world)

    start_epoch, global_step = 0, 0
    resume = ray.train.get_checkpoint()
    resume_dir = None
    if resume is not None:
        resume_dir = resume.to_directory()
    elif config.get("resume_from"):
        resume_dir = config["resume_from"]
    if resume_dir is not None:
        state = C.read_train_state(resume_dir)
        from safetensors.torch import load_file

        sd = load_file(str(Path(resume_dir) / C.MODEL_SUBDIR / "model.safetensors"))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, global_step = int(state["epoch"]) + 1, int(state["global_step"])

    metrics_path = Path(config["run_path"]) / "metrics.jsonl"
    for epoch in range(start_epoch, job.optim.epochs):
        t0 = time.time()
        torch.manual_seed(job.seed * 100003 + epoch * 101 + rank)   # dropout etc.: keyed by epoch
        order = D.epoch_order(n_train, epoch, job.seed, weights, per_epoch)
        task.train()
        if cached:
            model.text.eval()
        sums = {"loss": 0.0, "contrastive_loss": 0.0, "caption_loss": 0.0}
        for s in range(steps):
            positions = range(s * B, (s + 1) * B)[mine]
            xb = torch.from_numpy(D.augmented_batch(x_train, order, positions, fs, job.augment,
                                                    job.seed, epoch)).to(device)
            local = order[list(positions)]
            var = (D.choose_variants(positions, job.seed, epoch, probs) if len(kinds) > 1
                   else np.zeros(len(local), dtype=int))
            vt, lt = torch.as_tensor(var), torch.as_tensor(local)
            ib = ids_var[vt, torch.as_tensor(train_idx)[lt]].to(device)
            kw = {}
            if cached:
                kw["pooled"] = pooled_var[vt, lt].to(device)
                if use_decoder:
                    kw["states"] = states_var[vt, lt].to(device)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(global_step, job.optim.lr, job.optim.warmup_steps, total_steps)
            with amp():
                out = task(xb, ib, **kw)
                if use_decoder:
                    losses = loss_fn(**out, output_dict=True)
                elif pos_labels is not None:
                    lb = pos_labels[torch.as_tensor(train_idx)[lt]].to(device)
                    losses = {"contrastive_loss": job.loss.clip_weight * multi_positive_clip_loss(
                        out["ecg_features"].float(), out["text_features"].float(), out["logit_scale"].float(),
                        lb, label_w, rank=rank, world_size=world)}
                else:
                    losses = {"contrastive_loss": job.loss.clip_weight * loss_fn(
                        out["ecg_features"], out["text_features"], out["logit_scale"])}
                loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if job.optim.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                               job.optim.grad_clip_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            K.clamp_logit_scale(model, job.optim.max_logit_scale)
            global_step += 1
            sums["loss"] += float(loss.detach())
            for k, v in losses.items():
                sums[k] += float(v.detach())
            if job.fail_after_steps is not None and global_step >= job.fail_after_steps:
                raise SimulatedCrash(f"simulated crash after {global_step} steps")

        metrics = {"epoch": epoch, "global_step": global_step, "lr": optimizer.param_groups[0]["lr"],
                   "logit_scale": float(model.logit_scale.detach().exp()), "epoch_s": time.time() - t0,
                   **{f"train/{k}": v / steps for k, v in sums.items()}}
        last = epoch == job.optim.epochs - 1
        if rank == 0:
            if len(val_idx) and (last or (epoch + 1) % max(job.val.every, 1) == 0):
                model.eval()
                metrics.update(validate(model, x_all[val_idx], [texts[i] for i in val_idx],
                                        [base_texts[i] for i in val_idx], job.val.labels, job.val.query,
                                        job.val.query_label, job.val.query_k, tokenizer=tok, device=str(device)))
            with tempfile.TemporaryDirectory() as tmp:
                C.write_checkpoint(tmp, model, optimizer, scaler,
                                   {"epoch": epoch, "global_step": global_step, "metrics": metrics,
                                    "job": job.to_dict(), "world_size": world})
                try:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
                except OSError:
                    pass   # the run folder is not shared with this node: metrics live in Ray's results
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


# --- driver side ---------------------------------------------------------------------------

def prepare_data(job: CocaJobConfig, progress=None):
    """Pair cache + patient-level split -> (PairSet, train_idx, val_idx, cache path)."""
    from ecgbatch.training.data import kfold_by_group, split_by_group
    from ecgbatch.training.pairs import load_or_build
    from ecgbatch.training.texts import keyword_labels

    pre = _model_preprocess(job)
    pairs, cache = load_or_build(job.data.sources, pre, job.data.cache_dir, job.data.measure_method,
                                 job.data.on_error)
    strat_label = job.val.query_label if job.val.query_label else None
    labels = [keyword_labels(t, [strat_label])[strat_label] for t in pairs.text] if strat_label else None
    if job.split.folds is not None:
        tr, va = kfold_by_group(pairs.group, pairs.source, int(job.split.folds), int(job.split.fold),
                                job.split.seed, labels)
    else:
        tr, va = split_by_group(pairs.group, pairs.source, job.split.val_fraction, job.split.seed, labels)
    return pairs, tr, va, cache


def _model_preprocess(job: CocaJobConfig):
    """The PreprocessConfig of the job's model (its ``init`` folder's when it starts from one)."""
    from ecgbatch.encoders.factory import resolve_config
    from ecgbatch.training.pairs import resolve_path

    init = resolve_path(job.init) if job.init else None
    return resolve_config(init if init is not None and init.is_dir() else resolve_path(job.model))[0].preprocess


def run_job(job: CocaJobConfig, num_workers: int = 1, gpus_per_worker: float = 0.0, address: str | None = None,
            resume: bool = False, log=print):
    """Launch the TorchTrainer; returns the Ray ``Result``. ``address``: None/"local" starts a
    local Ray; "auto" or "ray://host:10001" joins a cluster (the run folder must then be on
    storage every node can reach)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ecgbatch.training.checkpointing import latest_checkpoint

    if num_workers < 1:
        raise ValueError(f"--workers must be >= 1, got {num_workers!r}")
    run_path = job.run_path()
    existing = latest_checkpoint(run_path)
    if existing is not None and not resume:
        raise FileExistsError(f"run {str(run_path)!r} already has checkpoints (latest {existing.name}); "
                              "pass --resume to continue it, or choose another name")
    if resume and existing is not None:
        done = json.loads((existing / "progress.json").read_text())
        log(f"resuming from {existing} (epoch {done['epoch']}, step {done['global_step']})")
        if done["epoch"] + 1 >= job.optim.epochs:
            log("that checkpoint is the last epoch: nothing left to train")
            return None
    run_path.mkdir(parents=True, exist_ok=True)
    pairs, tr, va, cache = prepare_data(job)
    log(f"pairs: {len(pairs)} from {cache.name} ({len(tr)} train / {len(va)} val, split by patient)")
    (run_path / "split.json").write_text(json.dumps(
        {"train": [pairs.path[i] for i in tr], "val": [pairs.path[i] for i in va]}, indent=0))
    (run_path / "job.json").write_text(json.dumps(job.to_dict(), indent=2, default=str))

    local = is_local(address)
    started = False
    if not ray.is_initialized():
        init_ray(address, num_cpus=max(os.cpu_count() or 1, num_workers), log_to_driver=True, log=log)
        started = True
    try:
        cpus = max(1, (os.cpu_count() or 1) // num_workers) if local else 1
        threads = job.threads_per_worker or cpus
        arrays = ray.put({"x": pairs.x, "text": pairs.text, "wave": pairs.wave, "source": pairs.source})
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"job": job.to_dict(), "arrays": arrays, "train_idx": tr.tolist(),
                               "val_idx": va.tolist(), "fs": float(_model_preprocess(job).fs),
                               "threads": threads, "run_path": str(run_path),
                               "resume_from": str(existing) if (resume and existing is not None) else None},
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                                         resources_per_worker={"CPU": 1, **({"GPU": gpus_per_worker}
                                                                            if gpus_per_worker > 0 else {})}),
            run_config=RunConfig(name="train", storage_path=str(run_path),
                                 failure_config=FailureConfig(max_failures=0),
                                 checkpoint_config=CheckpointConfig(num_to_keep=job.keep_checkpoints)),
        )
        return trainer.fit()
    finally:
        if started:
            ray.shutdown()
