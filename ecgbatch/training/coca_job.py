"""ECG-CoCa contrastive (+ caption) training as a Ray Train job (Train V2 ``TorchTrainer``).

The driver (``run_job``) builds the pair cache once, splits it by patient, puts the arrays in
the Ray object store and launches ``train_loop_per_worker`` on N workers. Each worker runs the
shared loop (``ecgbatch.training.loop``) around ``CocaTrainTask``:

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
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ecgbatch.encoders.factory import resolve_config
from ecgbatch.encoders.loss import ClipLoss, CoCaLoss
from ecgbatch.models import create_model
from ecgbatch.text.labels import keyword_labels
from ecgbatch.training import coca_task as K
from ecgbatch.training import data as D
from ecgbatch.training.job_config import CocaJobConfig
from ecgbatch.training.label_loss import multi_positive_clip_loss
from ecgbatch.training.loop import SimulatedCrash, TrainTask, Worker, epoch_steps, launch, plan_run, run_worker
from ecgbatch.training.pairs import load_or_build, resolve_path
from ecgbatch.training.validation import validate

__all__ = ["CocaTrainTask", "SimulatedCrash", "build_model", "prepare_data", "run_job", "train_loop_per_worker"]


# --- worker side ---------------------------------------------------------------------------

def build_model(job: CocaJobConfig):
    """The job's starting model: ``init`` (a model folder, a training checkpoint, an ECG-Chat .pt
    or "default" for the zoo's weights of ``model``), else ``model``'s seeded fresh weights."""
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


class CocaTrainTask(TrainTask):
    """ECG-CoCa's part of the loop: text variants tokenised (and, with a frozen text tower,
    encoded) once, augmented ECG batches, CLIP / CoCa / multi-positive label losses, logit-scale
    clamp, validation on the held-out pairs."""

    loss_names = ("contrastive_loss", "caption_loss")

    def __init__(self, w: Worker):
        import ray.train.torch

        job = self.job = CocaJobConfig.from_dict(w.config["job"])
        self.w, arrays = w, w.arrays
        self.x_all, self.base_texts, waves = arrays["x"], arrays["text"], arrays["wave"]
        self.train_idx, self.val_idx = np.asarray(w.config["train_idx"]), np.asarray(w.config["val_idx"])
        self.fs = float(w.config["fs"])

        model = self.model = build_model(job)
        tok = self.tok = model.tokenizer
        count, ctx_len = D.token_counter(tok), model.cfg.text_cfg.context_length
        wv = waves if job.data.wde else None
        self.texts = D.fit_texts(self.base_texts, wv, count, ctx_len)     # "full": validation, checkpoints
        self.kinds = list(job.data.text_variants)
        self.probs = [float(job.data.text_variants[k]) for k in self.kinds]
        self.ids_var = torch.stack([tok(D.fit_texts(*D.variant_texts(self.base_texts, wv, k), count, ctx_len),
                                        lower=True) for k in self.kinds])  # [V, N, L]
        self.use_decoder = job.loss.caption_weight > 0
        K.configure_trainable(model, job.text_tower.lock, job.text_tower.freeze_layer_norm, self.use_decoder)
        self.cached = job.text_tower.cache_frozen_features and K.text_tower_frozen(model)
        self.pooled_var = self.states_var = None
        if self.cached:   # [V, N_train, width] (+ token states for the decoder)
            feats = [K.cache_text_features(model, self.ids_var[v][self.train_idx], with_states=self.use_decoder)
                     for v in range(len(self.kinds))]
            self.pooled_var = torch.stack([f[0] for f in feats])
            self.states_var = torch.stack([f[1] for f in feats]) if self.use_decoder else None
        model.to(w.device)
        self.module = ray.train.torch.prepare_model(K.CocaTask(model, self.use_decoder), move_to_device=True)
        self.optimizer = torch.optim.AdamW(K.param_groups(model, job.optim.weight_decay), lr=job.optim.lr,
                                           betas=job.optim.betas, eps=job.optim.eps)
        if self.use_decoder:
            self.loss_fn = CoCaLoss(caption_loss_weight=job.loss.caption_weight,
                                    clip_loss_weight=job.loss.clip_weight, pad_id=model.text.pad_token_id,
                                    rank=w.rank, world_size=w.world)
        else:
            self.loss_fn = ClipLoss(rank=w.rank, world_size=w.world)
        self.label_w = float(job.loss.label_weight)
        self.pos_labels = None
        if self.label_w > 0:
            names = list(job.loss.label_positives)
            self.pos_labels = torch.tensor([[keyword_labels(t, names)[n] for n in names] for t in self.base_texts],
                                           dtype=torch.float32)

        self.n_train = len(self.train_idx)
        self.x_train = self.x_all[self.train_idx]
        self.weights = None
        if job.sampling.balance:
            self.weights = D.balance_weights([self.base_texts[i] for i in self.train_idx],
                                             [arrays["source"][i] for i in self.train_idx], job.sampling.balance)
        self.per_epoch = job.sampling.samples_per_epoch or self.n_train
        self.steps = epoch_steps(self.per_epoch, job)
        self.total_steps = self.steps * job.optim.epochs
        self.warmup_steps = job.optim.warmup_steps
        self.mine = D.local_slice(job.optim.batch_size, w.rank, w.world)

    def begin_epoch(self, epoch: int) -> None:
        self.order = D.epoch_order(self.n_train, epoch, self.job.seed, self.weights, self.per_epoch)
        self.module.train()
        if self.cached:
            self.model.text.eval()

    def batch(self, epoch: int, step: int):
        job, B, device = self.job, self.job.optim.batch_size, self.w.device
        positions = range(step * B, (step + 1) * B)[self.mine]
        xb = torch.from_numpy(D.augmented_batch(self.x_train, self.order, positions, self.fs, job.augment,
                                                job.seed, epoch)).to(device)
        local = self.order[list(positions)]
        var = (D.choose_variants(positions, job.seed, epoch, self.probs) if len(self.kinds) > 1
               else np.zeros(len(local), dtype=int))
        vt, lt = torch.as_tensor(var), torch.as_tensor(local)
        rows = torch.as_tensor(self.train_idx)[lt]
        ib = self.ids_var[vt, rows].to(device)
        kw = {}
        if self.cached:
            kw["pooled"] = self.pooled_var[vt, lt].to(device)
            if self.use_decoder:
                kw["states"] = self.states_var[vt, lt].to(device)
        lb = self.pos_labels[rows].to(device) if self.pos_labels is not None else None
        return xb, ib, kw, lb

    def losses(self, batch) -> dict:
        xb, ib, kw, lb = batch
        out = self.module(xb, ib, **kw)
        if self.use_decoder:
            return self.loss_fn(**out, output_dict=True)
        w = self.job.loss.clip_weight
        if lb is not None:
            return {"contrastive_loss": w * multi_positive_clip_loss(
                out["ecg_features"].float(), out["text_features"].float(), out["logit_scale"].float(),
                lb, self.label_w, rank=self.w.rank, world_size=self.w.world)}
        return {"contrastive_loss": w * self.loss_fn(out["ecg_features"], out["text_features"], out["logit_scale"])}

    def clip_parameters(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad]

    def after_step(self) -> None:
        K.clamp_logit_scale(self.model, self.job.optim.max_logit_scale)

    def epoch_metrics(self) -> dict:
        return {"logit_scale": float(self.model.logit_scale.detach().exp())}

    def validate(self, epoch: int, last: bool) -> dict:
        job, val_idx = self.job, self.val_idx
        if not len(val_idx) or not (last or (epoch + 1) % max(job.val.every, 1) == 0):
            return {}
        self.model.eval()
        return validate(self.model, self.x_all[val_idx], [self.texts[i] for i in val_idx],
                        [self.base_texts[i] for i in val_idx], job.val.labels, job.val.query,
                        job.val.query_label, job.val.query_k, tokenizer=self.tok, device=str(self.w.device))

    def restore_model(self, folder: Path) -> None:
        sd = load_file(str(folder / "model.safetensors"))
        self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                                   strict=True)


def train_loop_per_worker(config: dict) -> None:
    run_worker(config, CocaTrainTask)


# --- driver side ---------------------------------------------------------------------------

def prepare_data(job: CocaJobConfig, progress=None):
    """Pair cache + patient-level split -> (PairSet, train_idx, val_idx, cache path)."""
    pre = _model_preprocess(job)
    pairs, cache = load_or_build(job.data.sources, pre, job.data.cache_dir, job.data.measure_method,
                                 job.data.on_error)
    strat_label = job.val.query_label if job.val.query_label else None
    labels = [keyword_labels(t, [strat_label])[strat_label] for t in pairs.text] if strat_label else None
    strata = D.group_strata(pairs.group, pairs.source)   # a patient in two sources is split once
    if job.split.folds is not None:
        tr, va = D.kfold_by_group(pairs.group, strata, int(job.split.folds), int(job.split.fold),
                                  job.split.seed, labels)
    else:
        tr, va = D.split_by_group(pairs.group, strata, job.split.val_fraction, job.split.seed, labels)
    return pairs, tr, va, cache


def _model_preprocess(job: CocaJobConfig):
    """The PreprocessConfig of the job's model (its ``init`` folder's when it starts from one)."""
    init = resolve_path(job.init) if job.init else None
    return resolve_config(init if init is not None and init.is_dir() else resolve_path(job.model))[0].preprocess


def run_job(job: CocaJobConfig, num_workers: int = 1, gpus_per_worker: float = 0.0, address: str | None = None,
            resume: bool = False, log=print):
    """Launch the TorchTrainer; returns the Ray ``Result`` (None when a resumed run is done).
    ``address``: None/"local" starts a local Ray; "auto" or "ray://host:10001" joins a cluster
    (the run folder must then be on storage every node can reach)."""
    existing, todo = plan_run(job, num_workers, resume, log)
    if not todo:
        return None
    run_path = job.run_path()
    run_path.mkdir(parents=True, exist_ok=True)
    pairs, tr, va, cache = prepare_data(job)
    log(f"pairs: {len(pairs)} from {cache.name} ({len(tr)} train / {len(va)} val, split by patient)")
    (run_path / "split.json").write_text(json.dumps(
        {"train": [pairs.path[i] for i in tr], "val": [pairs.path[i] for i in va]}, indent=0))
    (run_path / "job.json").write_text(json.dumps(job.to_dict(), indent=2, default=str))
    return launch(train_loop_per_worker, job,
                  {"x": pairs.x, "text": pairs.text, "wave": pairs.wave, "source": pairs.source},
                  {"train_idx": tr.tolist(), "val_idx": va.tolist(), "fs": float(_model_preprocess(job).fs)},
                  existing, num_workers, gpus_per_worker, address, log)
