"""One Ray Train loop for every training job (ECG-CoCa, ECG-LLaVA), in the shape of open_clip's
``get_autocast`` / ``train_one_epoch`` / ``evaluate``: a job supplies only its task (a
``TrainTask``: the model, its optimizer, batch -> losses, validation metrics, how its weights
are restored); the loop owns everything else, once:

- **setup** (``start_worker``): rank, world size, device, threads, the arrays the driver put in
  the object store;
- **precision** (``precision``): autocast context + GradScaler for the job's ``amp`` mode;
- **resume** (``restore``): the task's trained tensors, then optimizer, GradScaler, torch RNG,
  epoch and step counters from the latest checkpoint of the run;
- **step** (``train_one_epoch``): step-keyed torch seed, LR of the warmup + cosine schedule,
  autocast forward, (scaled) backward, gradient clipping, optimizer step, the task's post-step
  hook (logit-scale clamp), the simulated crash of resume tests;
- **validate, checkpoint, report** (``end_epoch``, ``checkpoint``): rank 0 adds the task's
  validation metrics, writes a checkpoint (``ecgbatch.training.checkpointing``), appends
  metrics.jsonl and reports both to Ray Train; the other ranks report their metrics only. With
  ``optim.checkpoint_every_steps`` a checkpoint is also taken every N steps within an epoch
  (no validation), and ``--resume`` continues from the step after it;
- **driver side**: ``plan_run`` (refuse to overwrite a run, or find where to continue) and
  ``launch`` (start or join Ray, ``TorchTrainer.fit``).

Every random draw is keyed by (seed, epoch[, step]), so a run resumed from a checkpoint, at an
epoch's end or within it, ends with the weights an uninterrupted run would have. Ray is imported inside the functions that need it.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ecgbatch.pipelines.ray_connect import init_ray, is_local
from ecgbatch.training import checkpointing as C
from ecgbatch.training.data import steps_per_epoch
from ecgbatch.training.job_config import lr_at

AMP_MODES = ("auto", "off", "bf16", "fp16")


class SimulatedCrash(RuntimeError):
    """Raised by a job's ``fail_after_steps`` (tests of resume)."""


def precision(mode: str, device: torch.device):
    """(autocast context factory, GradScaler or None) for ``mode``: "auto" is bf16 (fp16 where
    bf16 is not supported) on a GPU and off on a CPU; "fp16" on a GPU gets a GradScaler."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
    if mode == "auto":
        mode = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "off"
    if mode == "off":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if (mode == "fp16" and device.type == "cuda") else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def epoch_steps(n_samples: int, job) -> int:
    """Full global batches per epoch (capped by ``optim.max_steps_per_epoch``); none raises."""
    B = job.optim.batch_size
    steps = steps_per_epoch(n_samples, B)
    if job.optim.max_steps_per_epoch:
        steps = min(steps, job.optim.max_steps_per_epoch)
    if steps < 1:
        raise ValueError(f"{n_samples} samples per epoch give no full batch of {B}")
    return steps


# --- worker side ---------------------------------------------------------------------------

@dataclass
class Worker:
    """What every task is built from: the loop config and this worker's place in the run."""

    config: dict
    rank: int
    world: int
    device: torch.device
    arrays: dict


class TrainTask:
    """What a job supplies. Set in ``__init__``: ``job`` (with ``seed``, ``amp``, ``optim``,
    ``fail_after_steps``, ``to_dict()``), ``model`` (what the checkpoint holds), ``module`` (the
    DDP-wrapped step module), ``optimizer``, ``steps`` (per epoch), ``total_steps`` and
    ``warmup_steps``."""

    loss_names: tuple[str, ...] = ()   # loss terms averaged into "train/<name>" besides the total
    save_model = None                  # save_model(model, folder) for the checkpoint; None: ECG-CoCa's

    def begin_epoch(self, epoch: int) -> None:
        """The epoch's sample order; train mode."""
        raise NotImplementedError

    def batch(self, epoch: int, step: int):
        """This worker's share of global batch ``step``, on the device."""
        raise NotImplementedError

    def losses(self, batch) -> dict[str, torch.Tensor]:
        """The loss terms of ``batch`` (run under autocast); the loss is their sum."""
        raise NotImplementedError

    def clip_parameters(self) -> list[torch.Tensor]:
        """The parameters whose gradient norm is clipped."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimizer step."""

    def epoch_metrics(self) -> dict:
        """Metrics of the model at the end of an epoch (every rank)."""
        return {}

    def validate(self, epoch: int, last: bool) -> dict:
        """Validation metrics (rank 0, before the checkpoint is written)."""
        return {}

    def restore_model(self, folder: Path) -> None:
        """Load the trained tensors of a checkpoint's model folder."""
        raise NotImplementedError


@dataclass
class Progress:
    start_epoch: int = 0
    global_step: int = 0
    start_step: int = 0        # steps of start_epoch already done (a checkpoint within the epoch)


def start_worker(config: dict) -> Worker:
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    torch.set_num_threads(int(config["threads"]))
    return Worker(config, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
                  ray.get(config["arrays"]))


def resume_folder(config: dict) -> str | None:
    """Ray Train's checkpoint after a worker restart, else the run's latest (``--resume``)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    return ckpt.to_directory() if ckpt is not None else config.get("resume_from")


def restore(task: TrainTask, scaler, folder: str | Path) -> Progress:
    """Trained tensors, optimizer/GradScaler state, torch RNG and counters of a checkpoint."""
    state = C.read_train_state(folder)
    task.restore_model(Path(folder) / C.MODEL_SUBDIR)
    task.optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("step_in_epoch"):
        return Progress(int(state["epoch"]), int(state["global_step"]), int(state["step_in_epoch"]))
    return Progress(int(state["epoch"]) + 1, int(state["global_step"]))


def train_one_epoch(task: TrainTask, w: Worker, amp, scaler, epoch: int, progress: Progress) -> dict:
    job, t0 = task.job, time.time()
    first, progress.start_step = progress.start_step, 0     # > 0: resumed within this epoch
    task.begin_epoch(epoch)
    sums = dict.fromkeys(("loss", *task.loss_names), 0.0)
    values: list[float] = []
    every = job.optim.checkpoint_every_steps
    for s in range(first, task.steps):
        # dropout etc.: keyed by (seed, epoch, step, rank), so a run resumed at any step (every
        # rank) draws what the uninterrupted run drew
        torch.manual_seed(job.seed * 100003 + epoch * 101 + s * 1009 + w.rank)
        batch = task.batch(epoch, s)
        for g in task.optimizer.param_groups:
            g["lr"] = lr_at(progress.global_step, job.optim.lr, task.warmup_steps, task.total_steps)
        with amp():
            terms = task.losses(batch)
            loss = sum(terms.values())
        task.optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(task.optimizer)
        else:
            loss.backward()
        if job.optim.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(task.clip_parameters(), job.optim.grad_clip_norm)
        if scaler is not None:
            scaler.step(task.optimizer)
            scaler.update()
        else:
            task.optimizer.step()
        task.after_step()
        progress.global_step += 1
        values.append(float(loss.detach()))
        sums["loss"] += values[-1]
        for k in task.loss_names:
            if k in terms:
                sums[k] += float(terms[k].detach())
        if w.rank == 0 and (s + 1) % 10 == 0:
            print(f"epoch {epoch} step {s + 1}/{task.steps}: loss {values[-1]:.4f} "
                  f"({(time.time() - t0) / (s + 1):.1f} s/step)", flush=True)
        if every and (s + 1) % every == 0 and s + 1 < task.steps:
            checkpoint(task, w, scaler, {"epoch": epoch, "step_in_epoch": s + 1, "global_step": progress.global_step,
                                         "train/loss": values[-1]})
        if job.fail_after_steps is not None and progress.global_step >= job.fail_after_steps:
            simulated_crash(progress.global_step)
    elapsed, ran = time.time() - t0, task.steps - first
    return {"epoch": epoch, "global_step": progress.global_step, "lr": task.optimizer.param_groups[0]["lr"],
            **task.epoch_metrics(), "epoch_s": elapsed, "s_per_step": elapsed / ran,
            **{f"train/{k}": v / ran for k, v in sums.items()},
            "train/first_loss": values[0], "train/last_loss": values[-1]}


def simulated_crash(step: int) -> None:
    """``fail_after_steps``: every rank raises SimulatedCrash, after the others got here. Rank 0
    returns from a checkpoint's report only once Ray has copied it; without the barrier another
    rank's error could tear the group down in the middle of that copy, and a test of "a crash after
    a checkpoint" would get a torn one instead (latest_checkpoint passes those over)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    raise SimulatedCrash(f"simulated crash after {step} steps")


def checkpoint(task: TrainTask, w: Worker, scaler, metrics: dict, log_metrics: bool = False) -> None:
    """Rank 0 writes a checkpoint of ``metrics["epoch"]`` (within it when ``metrics`` has
    "step_in_epoch") and reports it (appending metrics.jsonl when ``log_metrics``); other ranks
    report their metrics (every rank reports, as Ray Train needs)."""
    import ray.train

    if w.rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        C.write_checkpoint(tmp, task.model, task.optimizer, scaler,
                           {"epoch": metrics["epoch"], "global_step": metrics["global_step"],
                            "step_in_epoch": metrics.get("step_in_epoch", 0), "metrics": metrics,
                            "job": task.job.to_dict(), "world_size": w.world}, save_model=task.save_model)
        if log_metrics:
            try:
                with open(Path(w.config["run_path"]) / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(metrics) + "\n")
            except OSError:
                pass   # the run folder is not shared with this node: metrics live in Ray's results
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def end_epoch(task: TrainTask, w: Worker, scaler, epoch: int, metrics: dict, progress: Progress) -> None:
    """Rank 0: validate, checkpoint, append metrics.jsonl, report with the checkpoint; other
    ranks: report their metrics."""
    if w.rank == 0:
        metrics.update(task.validate(epoch, epoch == task.job.optim.epochs - 1))
    checkpoint(task, w, scaler, {**metrics, "global_step": progress.global_step}, log_metrics=True)


def run_worker(config: dict, make_task) -> None:
    """The body of a job's ``train_loop_per_worker``: ``make_task(worker)`` builds its task."""
    w = start_worker(config)
    task = make_task(w)
    amp, scaler = precision(task.job.amp, w.device)
    folder = resume_folder(config)
    progress = restore(task, scaler, folder) if folder is not None else Progress()
    for epoch in range(progress.start_epoch, task.job.optim.epochs):
        end_epoch(task, w, scaler, epoch, train_one_epoch(task, w, amp, scaler, epoch, progress), progress)


# --- driver side ---------------------------------------------------------------------------

def plan_run(job, num_workers: int, resume: bool, log=print) -> tuple[Path | None, bool]:
    """(checkpoint to continue from or None, whether anything is left to train). A run with
    checkpoints is never overwritten: without ``resume`` it raises FileExistsError."""
    if num_workers < 1:
        raise ValueError(f"--workers must be >= 1, got {num_workers!r}")
    run_path = job.run_path()
    existing = C.latest_checkpoint(run_path)
    if existing is not None and not resume:
        raise FileExistsError(f"run {str(run_path)!r} already has checkpoints (latest {existing.name}); "
                              "pass --resume to continue it, or choose another name")
    if not resume or existing is None:
        return None, True
    done = json.loads((existing / C.PROGRESS_FILE).read_text())
    within = f", {done['step_in_epoch']} steps into the epoch" if done.get("step_in_epoch") else ""
    log(f"resuming from {existing} (epoch {done['epoch']}, step {done['global_step']}{within})")
    if done["epoch"] + 1 >= job.optim.epochs and not done.get("step_in_epoch"):
        log("that checkpoint is the last epoch: nothing left to train")
        return existing, False
    return existing, True


def launch(train_loop, job, arrays: dict, loop_config: dict, resume_from: Path | None, num_workers: int = 1,
           gpus_per_worker: float = 0.0, address: str | None = None, log=print):
    """Start (or join) Ray, put ``arrays`` in the object store and run ``train_loop`` on
    ``num_workers`` TorchTrainer workers; returns the Ray ``Result``. ``address``: None/"local"
    starts a local Ray; "auto" or "ray://host:10001" joins a cluster (the run folder must then be
    on storage every node can reach)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run_path = job.run_path()
    local = is_local(address)
    started = False
    if not ray.is_initialized():
        init_ray(address, num_cpus=max(os.cpu_count() or 1, num_workers), log_to_driver=True, log=log)
        started = True
    try:
        cpus = max(1, (os.cpu_count() or 1) // num_workers) if local else 1
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"job": job.to_dict(), "arrays": ray.put(arrays),
                               "threads": job.threads_per_worker or cpus, "run_path": str(run_path),
                               "resume_from": str(resume_from) if resume_from is not None else None,
                               **loop_config},
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
