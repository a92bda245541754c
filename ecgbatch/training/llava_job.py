"""ECG-LLaVA training (stage "align": projector only; stage "sft": LoRA + projector) as a Ray
Train ``TorchTrainer`` job on 1..N workers.

Driver (``run_job``): reads the ECG-Instruct items, asks a seeded fraction of the report items
with diagnosis-driven prompts (``data.ddp``, ``ecgbatch.training.instruct_diagnosis_prompt``; not to be
confused with torch's DistributedDataParallel below), labels every conversation (the loss mask,
``ecgbatch.training.llava_task``), computes the frozen tower's tokens once per record
(``ecgbatch.training.ecg_tokens`` cache) and puts examples + tokens into the object store.
Worker (``train_loop_per_worker``), in named steps: ``setup`` (model, stage, DDP, optimizer),
``restore`` (latest checkpoint: trained tensors, optimizer, RNG, step), ``run_epoch`` (global
batches split over the workers; AdamW, warmup + cosine, clipping, bf16 autocast on CPU when
asked) and ``end_epoch`` (rank 0 writes a checkpoint whose model/ is the trained-only folder
``ecgbatch train export`` ships). The CoCa job's checkpoint, schedule, sampling and AMP helpers
are reused.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgbatch.training.llava_config import LlavaJobConfig


class SimulatedCrash(RuntimeError):
    """Raised by ``fail_after_steps`` (tests of resume)."""


# --- shared by driver and workers ----------------------------------------------------------

def build_model(job: LlavaJobConfig, log=None):
    """(model, tokenizer) at the start of training: the base, plus ``init``'s projector."""
    from ecgbatch.llava.assemble import base_model, load_projector
    from ecgbatch.training.checkpointing import MODEL_SUBDIR

    model, tok = base_model(job.model.base(), log)
    if job.init:
        from ecgbatch.training.checkpointing import latest_checkpoint
        from ecgbatch.training.pairs import resolve_path

        p = resolve_path(job.init)
        if not (p / "model.safetensors").is_file() and not (p / MODEL_SUBDIR).is_dir():
            p = latest_checkpoint(p) or p          # a run folder: its latest checkpoint
        if (p / MODEL_SUBDIR).is_dir():
            p = p / MODEL_SUBDIR
        if not (p / "model.safetensors").is_file():
            raise FileNotFoundError(f"init {job.init!r} holds no projector weights (model.safetensors)")
        load_projector(model, p)
    return model, tok


def save_trained(job: LlavaJobConfig):
    from ecgbatch.llava.assemble import save_trained_only

    def save(model, folder):
        return save_trained_only(model, folder, job.model.base(), extra={"trained_by": {
            "stage": job.stage, "run": job.name, "ddp": job.data.ddp}})
    return save


# --- worker side ---------------------------------------------------------------------------

@dataclass
class Worker:
    job: LlavaJobConfig
    model: object
    task: object
    optimizer: object
    amp: object
    scaler: object
    examples: list
    tokens: object          # [R, N, W] tower tokens
    rec_of: np.ndarray      # example -> row of tokens
    pad_id: int
    rank: int
    world: int
    device: object
    steps: int
    total_steps: int
    warmup: int
    start_epoch: int = 0
    global_step: int = 0


def setup(config: dict) -> Worker:
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from ecgbatch.training import data as D
    from ecgbatch.training.coca_job import _amp_context
    from ecgbatch.training.llava_task import LlavaTask, LoraConfig, configure_stage

    job = LlavaJobConfig.from_dict(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config["threads"]))
    device = ray.train.torch.get_device()
    arrays = ray.get(config["arrays"])
    torch.manual_seed(job.seed)
    model, tok = build_model(job)
    lo = job.lora
    trainable = configure_stage(model, job.stage, LoraConfig(lo.r, lo.alpha, lo.dropout, list(lo.target_modules)))
    model.to(device)
    task = ray.train.torch.prepare_model(LlavaTask(model), move_to_device=True)
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if n in set(trainable)],
                                  lr=job.optim.lr, betas=job.optim.betas, eps=job.optim.eps,
                                  weight_decay=job.optim.weight_decay)
    amp, scaler = _amp_context(job, device)
    B = job.optim.batch_size
    steps = D.steps_per_epoch(len(arrays["examples"]), B)
    if job.optim.max_steps_per_epoch:
        steps = min(steps, job.optim.max_steps_per_epoch)
    if steps < 1:
        raise ValueError(f"{len(arrays['examples'])} examples give no full batch of {B}")
    total = steps * job.optim.epochs
    warmup = job.optim.warmup_steps or math.ceil(job.warmup_ratio * total)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return Worker(job, model, task, optimizer, amp, scaler, arrays["examples"], arrays["tokens"],
                  np.asarray(arrays["rec_of"]), pad, rank, world, device, steps, total, warmup)


def restore(w: Worker, folder: str | Path) -> None:
    """Trained tensors, optimizer/scaler state, RNG and counters of a checkpoint."""
    import torch
    from safetensors.torch import load_file

    from ecgbatch.llava.assemble import LORA_SUBDIR, load_projector
    from ecgbatch.training import checkpointing as C

    state = C.read_train_state(folder)
    mdir = Path(folder) / C.MODEL_SUBDIR
    load_projector(w.model, mdir)
    if w.job.stage == "sft":
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(w.model.language_model,
                                        load_file(str(mdir / LORA_SUBDIR / "adapter_model.safetensors")))
        if getattr(res, "unexpected_keys", None):
            raise ValueError(f"checkpoint {str(folder)!r}: adapter keys do not fit: {res.unexpected_keys[:5]}")
    w.optimizer.load_state_dict(state["optimizer"])
    if w.scaler is not None and state.get("scaler"):
        w.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    w.start_epoch, w.global_step = int(state["epoch"]) + 1, int(state["global_step"])


def run_epoch(w: Worker, epoch: int) -> dict:
    import torch

    from ecgbatch.training import data as D
    from ecgbatch.training.job_config import lr_at
    from ecgbatch.training.llava_task import collate

    job, t0 = w.job, time.time()
    torch.manual_seed(job.seed * 100003 + epoch * 101 + w.rank)      # LoRA dropout: keyed by epoch
    order = D.epoch_order(len(w.examples), epoch, job.seed)
    mine = D.local_slice(job.optim.batch_size, w.rank, w.world)
    B = job.optim.batch_size
    w.task.train()
    total, losses = 0.0, []
    for s in range(w.steps):
        local = order[list(range(s * B, (s + 1) * B)[mine])]
        batch = {k: v.to(w.device) for k, v in collate([w.examples[i] for i in local], w.pad_id).items()}
        toks = w.tokens[torch.as_tensor(w.rec_of[local])].to(w.device)
        for g in w.optimizer.param_groups:
            g["lr"] = lr_at(w.global_step, job.optim.lr, w.warmup, w.total_steps)
        with w.amp():
            loss = w.task(batch["input_ids"], batch["labels"], batch["attention_mask"], toks)
        w.optimizer.zero_grad(set_to_none=True)
        if w.scaler is not None:
            w.scaler.scale(loss).backward()
            w.scaler.unscale_(w.optimizer)
        else:
            loss.backward()
        params = [p for g in w.optimizer.param_groups for p in g["params"]]
        if job.optim.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(params, job.optim.grad_clip_norm)
        if w.scaler is not None:
            w.scaler.step(w.optimizer)
            w.scaler.update()
        else:
            w.optimizer.step()
        w.global_step += 1
        losses.append(float(loss.detach()))
        total += losses[-1]
        if w.rank == 0 and (s + 1) % 10 == 0:
            print(f"epoch {epoch} step {s + 1}/{w.steps}: loss {losses[-1]:.4f} "
                  f"({(time.time() - t0) / (s + 1):.1f} s/step)", flush=True)
        if job.fail_after_steps is not None and w.global_step >= job.fail_after_steps:
            raise SimulatedCrash(f"simulated crash after {w.global_step} steps")
    return {"epoch": epoch, "global_step": w.global_step, "lr": w.optimizer.param_groups[0]["lr"],
            "train/loss": total / w.steps, "train/first_loss": losses[0], "train/last_loss": losses[-1],
            "epoch_s": time.time() - t0, "s_per_step": (time.time() - t0) / w.steps}


def end_epoch(w: Worker, epoch: int, metrics: dict, run_path: str) -> None:
    import ray.train

    from ecgbatch.training import checkpointing as C

    if w.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        C.write_checkpoint(tmp, w.model, w.optimizer, w.scaler,
                           {"epoch": epoch, "global_step": w.global_step, "metrics": metrics,
                            "job": w.job.to_dict(), "world_size": w.world}, save_model=save_trained(w.job))
        try:
            with open(Path(run_path) / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
        except OSError:
            pass   # the run folder is not shared with this node: metrics live in Ray's results
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    w = setup(config)
    ckpt = ray.train.get_checkpoint()
    resume_dir = ckpt.to_directory() if ckpt is not None else config.get("resume_from")
    if resume_dir is not None:
        restore(w, resume_dir)
    for epoch in range(w.start_epoch, w.job.optim.epochs):
        end_epoch(w, epoch, run_epoch(w, epoch), config["run_path"])


# --- driver side ---------------------------------------------------------------------------

def select_items(job: LlavaJobConfig):
    """The job's ECG-Instruct items (split, kinds, seeded subset)."""
    from ecgbatch.training.instruct_format import read_instruct
    from ecgbatch.training.pairs import resolve_path

    items = read_instruct(resolve_path(job.data.instruct), job.data.root, split=job.data.split)
    if job.data.kinds:
        items = [it for it in items if it.meta.get("kind") in set(job.data.kinds)]
    if job.data.max_items is not None and len(items) > job.data.max_items:
        keep = np.sort(np.random.default_rng([job.seed, 11]).permutation(len(items))[:job.data.max_items])
        items = [items[i] for i in keep]
    if not items:
        raise ValueError(f"no items of {job.data.instruct!r} match split={job.data.split!r}, kinds={job.data.kinds!r}")
    return items


def label_items(items, tokenizer, config, max_length: int, log=print):
    """[(ids, labels)] for the items; conversations whose labels are all masked (template
    mismatch, or the answer cut by max_length) are left out and counted."""
    from ecgbatch.llava.configuration_ecg_llava import IGNORE_INDEX, num_ecg_tokens
    from ecgbatch.training.llava_task import fit_length, label_conversation

    n_ecg = num_ecg_tokens(config)
    out, keep, dropped = [], [], 0
    for i, it in enumerate(items):
        ids, labels, mismatch = label_conversation(it.conversations, tokenizer, config)
        ids, labels = fit_length(ids, labels, n_ecg, max_length)
        if mismatch or all(t == IGNORE_INDEX for t in labels):
            dropped += 1
            continue
        out.append((ids, labels))
        keep.append(i)
    if dropped:
        log(f"{dropped} of {len(items)} conversations have no labelled token left (template mismatch or "
            f"max_length {max_length}) and are left out")
    return out, keep


def item_reader(job: LlavaJobConfig, config):
    """item -> the model's input [leads, samples] (the job's reader options per source)."""
    from ecgbatch.llava.inputs import preprocess_for_model

    def read(it):
        opts = job.data.read_options.get(it.meta.get("source"), {}) if job.data.read_options else {}
        return preprocess_for_model(it.read_ecg(**opts), config, record_id=it.id)
    return read


def ddp_items(job: LlavaJobConfig, items, config, log=print):
    """``data.ddp``: the chosen report items asked with their DDP findings (instruct_diagnosis_prompt)."""
    if not job.data.ddp:
        return items
    from ecgbatch.llava.diagnosis_prompt import FindingsLabeller
    from ecgbatch.training.instruct_diagnosis_prompt import apply_diagnosis_prompts

    labeller = FindingsLabeller.for_base(job.model.base(), preprocess=config.preprocess)
    read_item = item_reader(job, config)
    by_path = {str(it.ecg_path): it for it in items}
    items, _ = apply_diagnosis_prompts(items, job.data.ddp, job.seed, labeller, lambda p: read_item(by_path[p]),
                         job.data.cache_dir, config, log)
    return items


def prepare(job: LlavaJobConfig, log=print):
    """Driver-side data: labelled examples, tower tokens per record, example -> record row."""
    from ecgbatch.training.ecg_tokens import ecg_tokens

    model, tok = build_model(job, log)
    items = ddp_items(job, select_items(job), model.config, log)
    examples, keep = label_items(items, tok, model.config, job.data.max_length, log)
    items = [items[i] for i in keep]
    paths = sorted({str(it.ecg_path) for it in items})
    row = {p: i for i, p in enumerate(paths)}
    by_path = {str(it.ecg_path): it for it in items}
    read_item = item_reader(job, model.config)
    tokens = ecg_tokens(model, paths, lambda p: read_item(by_path[p]), job.data.cache_dir, log=log)
    rec_of = [row[str(it.ecg_path)] for it in items]
    return examples, tokens, rec_of, [it.id for it in items]


def init_ray(address, kwargs: dict, log=print, tries: int = 3) -> None:
    """``ray.init`` that retries a local start whose raylet missed Ray's fixed 30 s registration
    window (happens on an overloaded machine); other errors are raised at once."""
    import ray

    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True, **kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception for this case
            if "timed out during startup" not in str(exc) or attempt == tries:
                raise
            log(f"Ray did not start in time ({exc}); retrying ({attempt}/{tries - 1})")
            ray.shutdown()


def run_job(job: LlavaJobConfig, num_workers: int = 1, gpus_per_worker: float = 0.0, address: str | None = None,
            resume: bool = False, log=print):
    """Launch the TorchTrainer; returns the Ray ``Result`` (None when a resumed run is done)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ecgbatch.training.checkpointing import PROGRESS_FILE, latest_checkpoint

    if num_workers < 1:
        raise ValueError(f"--workers must be >= 1, got {num_workers!r}")
    run_path = job.run_path()
    existing = latest_checkpoint(run_path)
    if existing is not None and not resume:
        raise FileExistsError(f"run {str(run_path)!r} already has checkpoints (latest {existing.name}); "
                              "pass --resume to continue it, or choose another name")
    if resume and existing is not None:
        done = json.loads((existing / PROGRESS_FILE).read_text())
        log(f"resuming from {existing} (epoch {done['epoch']}, step {done['global_step']})")
        if done["epoch"] + 1 >= job.optim.epochs:
            log("that checkpoint is the last epoch: nothing left to train")
            return None
    run_path.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    examples, tokens, rec_of, ids = prepare(job, log)
    log(f"{len(examples)} labelled conversations on {tokens.shape[0]} records ({time.time() - t0:.0f} s)")
    (run_path / "items.json").write_text(json.dumps(ids, indent=0))
    (run_path / "job.json").write_text(json.dumps(job.to_dict(), indent=2, default=str))
    local = address in (None, "", "local")
    if local:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = False
    if not ray.is_initialized():
        init_ray(None if local else address, {"num_cpus": max(os.cpu_count() or 1, num_workers)} if local else {},
                 log)
        started = True
    try:
        cpus = max(1, (os.cpu_count() or 1) // num_workers) if local else 1
        arrays = ray.put({"examples": examples, "tokens": tokens, "rec_of": rec_of})
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"job": job.to_dict(), "arrays": arrays, "threads": job.threads_per_worker or cpus,
                               "run_path": str(run_path),
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
