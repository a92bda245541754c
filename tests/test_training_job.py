"""The CoCa training job on a real Ray local cluster, real records (LUDB + CinC 2021) and the
ECG-Chat-shaped tiny model: 2 CPU workers, a few steps; loss falls, the checkpoint loads with
create_model, and a crash + --resume ends with the weights of an uninterrupted run.

The module's five Ray Train runs (the uninterrupted one, the crash test's two, the k-fold
test's two) are started at once by the ``runs`` fixture (tests/helpers/train_runs.py), one
thread per chain of runs; the tests assert what the runs left."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.train_runs import concurrent_runs, raised

torch = pytest.importorskip("torch")
pytest.importorskip("ray")

from ecgbatch._paths import REPO_ROOT  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "coca-tiny-test.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_data, fixtures_dir):
    if not (fixtures_dir / "ecgcoca_tiny" / "model_config.json").is_file():
        pytest.skip("tiny ECG-CoCa fixture missing")
    return tmp_path_factory.mktemp("coca-job")


def _job(workdir, **over):
    from ecgbatch.training.job_config import load_job_config

    return load_job_config(CONFIG, {"run_dir": str(workdir / "runs"), "data.cache_dir": str(workdir / "cache"),
                                    **over})


def _weights(ckpt):
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model" / "model.safetensors"))


def _straight(workdir):
    """One full 2-worker run (3 epochs x 2 steps of a global batch of 8)."""
    from ecgbatch.training.checkpointing import latest_checkpoint
    from ecgbatch.training.coca_job import run_job

    job = _job(workdir, name="straight")
    result = run_job(job, num_workers=2)
    return job, result, latest_checkpoint(job.run_path())


def _crash_and_resume(workdir):
    """The crash test's runs, in order: a run that (optim.checkpoint_every_steps) checkpoints within
    each epoch and crashes in epoch 1 after its step 1, a restart without --resume, a resume to the
    end; what each left behind. (A resume from an epoch's last checkpoint is test_training_llava's:
    the same loop, one Ray Train run fewer here.)"""
    from ecgbatch.training.checkpointing import latest_checkpoint
    from ecgbatch.training.coca_job import run_job

    within = {"optim.checkpoint_every_steps": 1}
    crashed = _job(workdir, name="crashed", fail_after_steps=3, **within)     # dies in epoch 1
    seen = {"job": crashed, "crash": raised(run_job, crashed, num_workers=2)}
    mid = latest_checkpoint(crashed.run_path())
    seen["mid"] = json.loads((mid / "progress.json").read_text())
    seen["mid_weights"] = _weights(mid)               # (later checkpoints retire it: keep_checkpoints)
    seen["restart"] = raised(run_job, _job(workdir, name="crashed", **within), num_workers=2)
    run_job(_job(workdir, name="crashed", **within), num_workers=2, resume=True)
    seen["final"] = latest_checkpoint(crashed.run_path())
    return seen


def _fold(workdir, f):
    """A 1-worker run of fold f of 2 (the job's single-worker path), one step; one torch thread
    (the other fold's worker has the other CPU)."""
    from ecgbatch.training.coca_job import run_job

    job = _job(workdir, name=f"cv{f}", **{"split.folds": 2, "split.fold": f, "optim.epochs": 1,
                                          "optim.max_steps_per_epoch": 1, "threads_per_worker": 1})
    return job, run_job(job, num_workers=1)


@pytest.fixture(scope="module")
def runs(ray_local, workdir):
    """Every run of the module, started at once (futures: crashed, straight, cv0, cv1)."""
    from ecgbatch.training.coca_job import prepare_data

    prepare_data(_job(workdir, name="straight"))     # the pair cache, built once before the runs share it
    # the longest chain first: Ray gives the CPUs to the runs in the order they ask
    with concurrent_runs(crashed=lambda: _crash_and_resume(workdir), straight=lambda: _straight(workdir),
                         cv0=lambda: _fold(workdir, 0), cv1=lambda: _fold(workdir, 1)) as futures:
        yield futures


@pytest.fixture(scope="module")
def uninterrupted(runs):
    return runs["straight"].result()


@pytest.mark.slow
@pytest.mark.ray
def test_two_worker_run_loss_falls_and_checkpoint_loads(uninterrupted):
    from ecgbatch.encoders import create_model
    from ecgbatch.training.checkpointing import read_train_state

    job, result, ckpt = uninterrupted
    hist = [json.loads(line) for line in (job.run_path() / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [0, 1, 2] and hist[-1]["global_step"] == 6
    assert hist[-1]["train/loss"] < hist[0]["train/loss"]
    assert hist[-1]["train/caption_loss"] < hist[0]["train/caption_loss"]
    assert 0.0 <= hist[-1]["val/ecg_to_text/R@1"] <= 1.0 and "val/zeroshot/af/auc" in hist[-1]
    assert result.metrics["global_step"] == 6
    state = read_train_state(ckpt)                                   # weights_only load
    assert state["epoch"] == 2 and state["world_size"] == 2 and state["optimizer"]["state"]
    model = create_model(ckpt / "model")                             # our folder format, directly
    x = torch.zeros(2, 12, 5000)
    emb = model.embed_ecgs(x)
    assert emb.shape == (2, 32) and np.isfinite(emb).all()
    assert not (ckpt / "model" / "train_state.pt").exists()          # the model folder holds weights only
    split = json.loads((job.run_path() / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["val"]) and len(split["val"]) == 6


@pytest.mark.slow
@pytest.mark.ray
def test_resume_after_crash_gives_the_uninterrupted_weights(uninterrupted, runs):
    """A crash right after a checkpoint taken within an epoch (optim.checkpoint_every_steps):
    --resume continues from that step of that epoch, and the run ends with the uninterrupted
    run's weights."""
    _, _, straight = uninterrupted
    seen = runs["crashed"].result()
    assert "simulated crash" in str(seen["crash"]), seen["crash"]
    assert seen["mid"] == {"epoch": 1, "global_step": 3, "step_in_epoch": 1}
    assert isinstance(seen["restart"], FileExistsError) and "--resume" in str(seen["restart"])   # never silently restarts
    final, mid_weights = seen["final"], seen["mid_weights"]
    assert json.loads((final / "progress.json").read_text()) == {"epoch": 2, "global_step": 6}
    a, b = _weights(straight), _weights(final)
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    changed = max(float((mid_weights[k].float() - b[k].float()).abs().max()) for k in a)
    assert changed > 1e-4   # the resumed run really trained
    hist = [json.loads(line) for line in (seen["job"].run_path() / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [0, 1, 2]      # within-epoch checkpoints add no epoch rows


@pytest.mark.slow
@pytest.mark.ray
def test_eval_commands_on_the_trained_checkpoint(uninterrupted, workdir):
    from typer.testing import CliRunner

    from ecgbatch.cli import app

    job, _, ckpt = uninterrupted
    cache = next((workdir / "cache").glob("pairs-*.npz"))
    split = job.run_path() / "split.json"
    r = CliRunner().invoke(app, ["eval", "retrieval", "--model", str(ckpt), "--data", str(cache),
                                 "--split", str(split), "--out", str(workdir / "ret.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((workdir / "ret.json").read_text())
    assert res["n"] == 6 and 0 <= res["ecg_to_text"]["R@10"] <= 1 and res["text_to_ecg"]["mean_rank"] >= 1
    r = CliRunner().invoke(app, ["eval", "zeroshot", "--model", str(ckpt), "--data", str(cache),
                                 "--labels", "af,sinus_rhythm", "--query", "atrial fibrillation", "--k", "4",
                                 "--out", str(workdir / "zs")])
    assert r.exit_code == 0, r.output
    zs = json.loads((workdir / "zs" / "zeroshot.json").read_text())
    assert set(zs["per_class"]) == {"af", "sinus_rhythm"} and zs["per_class"]["af"]["n_pos"] > 0
    assert (workdir / "zs" / "roc.png").stat().st_size > 1000
    # prevalence 0.15: 4 AF keys among 20 others (the sample archive's test-fold AF records are
    # no training pairs any more, ecgbatch.testfold)
    r = CliRunner().invoke(app, ["eval", "zeroshot", "--model", str(ckpt), "--data", str(cache), "--labels", "af",
                                 "--contrast", "--query", "atrial fibrillation", "--query-prevalence", "0.15",
                                 "--k", "2", "--out", str(workdir / "zsc")])
    assert r.exit_code == 0, r.output
    zc = json.loads((workdir / "zsc" / "zeroshot.json").read_text())
    assert zc["scoring"] == "contrast" and zc["query"]["at_prevalence"]["trials"] == 200
    r = CliRunner().invoke(app, ["eval", "zeroshot", "--model", str(ckpt), "--data", str(cache),
                                 "--labels", "nope", "--out", str(workdir / "zs2")])
    assert r.exit_code == 2 and "nope" in r.output


@pytest.mark.slow
@pytest.mark.ray
def test_kfold_one_worker_runs_and_crossval_score_every_record_once(runs, workdir):
    """Two 1-worker fold runs (the job's single-worker path: world size 1 in the checkpoint), then
    `eval crossval` over them."""
    from typer.testing import CliRunner

    from ecgbatch.cli import app
    from ecgbatch.eval.metrics import roc_auc
    from ecgbatch.training.checkpointing import latest_checkpoint, read_train_state
    from ecgbatch.training.pairs import PairSet

    folds = []
    for f in (0, 1):
        job, result = runs[f"cv{f}"].result()
        assert result.metrics["global_step"] == 1 and np.isfinite(result.metrics["train/loss"])
        assert read_train_state(latest_checkpoint(job.run_path()))["world_size"] == 1
        folds.append(job.run_path())
    cache = next((workdir / "cache").glob("pairs-*.npz"))
    pairs = PairSet.load(cache)
    out = workdir / "cv.json"
    r = CliRunner().invoke(app, ["eval", "crossval", *map(str, folds), "--data", str(cache), "--k", "2",
                                 "--prevalence", "0.2", "--pool", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert sorted(rec["path"] for rec in res["records"]) == sorted(pairs.path)     # each record once
    assert [f["n"] for f in res["folds"]] == [len(json.loads((p / "split.json").read_text())["val"]) for p in folds]
    y = np.array([rec["y"] for rec in res["records"]])
    s = np.array([rec["prompt_score"] for rec in res["records"]])
    assert res["all"]["n_pos"] == int(y.sum()) > 0
    assert res["all"]["auc_prompt"] == pytest.approx(roc_auc(y, s))
    assert all(0 <= f["retrieval_r10"] <= 1 for f in res["folds"])
    r = CliRunner().invoke(app, ["eval", "crossval", str(folds[0]), str(folds[0]), "--data", str(cache),
                                 "--out", str(workdir / "dup.json")])
    assert r.exit_code == 2 and "held out by two runs" in r.output
