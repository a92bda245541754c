"""The shared training loop's pieces that need no Ray: precision per amp mode, and the driver's
run plan (never overwrite a run; resume from its latest complete checkpoint; nothing left)."""
from __future__ import annotations

import json

import pytest
import torch

from ecgbatch._paths import REPO_ROOT
from ecgbatch.training.checkpointing import PROGRESS_FILE, STATE_FILE
from ecgbatch.training.job_config import load_job_config
from ecgbatch.training.loop import epoch_steps, plan_run, precision

CPU = torch.device("cpu")


def test_precision_on_cpu():
    ctx, scaler = precision("auto", CPU)
    assert scaler is None and not torch.is_autocast_enabled()     # auto = off on a CPU
    with ctx():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    ctx, scaler = precision("bf16", CPU)
    with ctx():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert scaler is None                                           # GradScaler only for fp16 on a GPU
    with pytest.raises(ValueError, match="amp must be one of"):
        precision("fp8", CPU)


def _job(tmp_path, **over):
    return load_job_config(REPO_ROOT / "configs" / "coca-tiny-test.yaml",
                           {"run_dir": str(tmp_path / "runs"), "name": "plan", **over})


def _checkpoint(run, name, epoch, step, complete=True):
    ck = run / "train" / name
    (ck / "model").mkdir(parents=True)
    (ck / STATE_FILE).write_bytes(b"x")
    if complete:
        (ck / PROGRESS_FILE).write_text(json.dumps({"epoch": epoch, "global_step": step}))
    return ck


def test_plan_run_new_resume_and_done(tmp_path):
    job = _job(tmp_path)
    assert plan_run(job, 1, resume=False) == (None, True)          # a new run
    assert plan_run(job, 1, resume=True) == (None, True)           # --resume of a run never started
    with pytest.raises(ValueError, match="--workers"):
        plan_run(job, 0, resume=False)
    first = _checkpoint(job.run_path(), "checkpoint_0", 0, 2)
    _checkpoint(job.run_path(), "checkpoint_1", 1, 4, complete=False)   # cut off while writing
    with pytest.raises(FileExistsError, match="--resume"):
        plan_run(job, 1, resume=False)
    logged = []
    assert plan_run(job, 1, resume=True, log=logged.append) == (first, True)
    assert "epoch 0, step 2" in logged[0]
    last = _checkpoint(job.run_path(), "checkpoint_2", job.optim.epochs - 1, 6)
    assert plan_run(job, 1, resume=True, log=logged.append) == (last, False)
    assert "nothing left" in logged[-1]


def test_epoch_steps(tmp_path):
    job = _job(tmp_path)
    assert epoch_steps(18, job) == 18 // job.optim.batch_size
    with pytest.raises(ValueError, match="no full batch"):
        epoch_steps(job.optim.batch_size - 1, job)
