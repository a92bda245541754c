"""Shared test helpers: where the real data is, and skips that say why."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.ray_cluster import SharedCluster
from helpers.vllm_env import VLLM_TEST_ENV

from ecgbatch._paths import SAMPLE_ARCHIVE, shared_dir
from helpers.suite_groups import FORBIDDEN, GroupNodeIds, LaneLog, RayAndEngines, lane_of, lane_reason

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")      # also for the session Ray's engine actors

SHARED = shared_dir()
HELPERS = Path(__file__).parent / "helpers"


# --- `make test` runs two xdist workers, one lane each (helpers/suite_groups: "ray", "engine") ---

@pytest.hookimpl(tryfirst=True)        # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items):
    for item in items:
        found = lane_reason(item)
        if found is not None:
            item.add_marker(pytest.mark.xdist_group(found[0]))


def pytest_configure(config):
    if getattr(config.option, "loadgroup", False):      # an xdist worker of --dist loadgroup
        config.pluginmanager.register(GroupNodeIds(), "ecgbatch-group-node-ids")
    if os.environ.get("ECGBATCH_LANE_LOG"):
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        config.pluginmanager.register(LaneLog(os.environ["ECGBATCH_LANE_LOG"], worker), "ecgbatch-lane-log")


BEFORE_SETUP = pytest.StashKey[RayAndEngines]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    if lane_of(item) in FORBIDDEN:          # a light test or an "engine" test
        item.stash[BEFORE_SETUP] = RayAndEngines.now()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A light test must not start Ray or a vLLM engine (in its fixtures or its body), an "engine"
    test not Ray: that would be a second one beside the other lane's. Such a test fails, naming
    where to classify it."""
    result = yield
    if BEFORE_SETUP in item.stash:
        lane = lane_of(item)
        started = item.stash[BEFORE_SETUP].started_since(FORBIDDEN[lane])
        if started:
            pytest.fail(f"a {lane or 'light'} test started {', '.join(started)}: mark it, or add its fixture or "
                        "file to the right lane in tests/helpers/suite_groups.py", pytrace=False)
    return result


@pytest.fixture(scope="session")
def shared():
    """Path to ../shared; skips (with the reason) when it is not beside the checkout."""
    if SHARED is None:
        pytest.skip("../shared is not present on this machine: full-data tests skipped")
    return SHARED


@pytest.fixture(scope="session")
def shared_data(shared):
    return shared / "data"


@pytest.fixture(scope="session")
def fixtures_dir(shared):
    return shared / "fixtures"


@pytest.fixture(scope="session")
def sample_archive():
    assert SAMPLE_ARCHIVE.is_dir(), f"bundled sample archive missing at {SAMPLE_ARCHIVE}"
    return SAMPLE_ARCHIVE


# --- the ecgcoca_tiny reference fixture (ECG-Chat's own outputs), shared by encoder tests ----

@pytest.fixture(scope="session")
def ecgcoca_dir(fixtures_dir):
    d = fixtures_dir / "ecgcoca_tiny"
    if not d.is_dir():
        pytest.skip(f"fixture folder missing: {d}")
    return d


@pytest.fixture(scope="session")
def ecgcoca_model(ecgcoca_dir):
    from ecgbatch.encoders import load_ecgchat_checkpoint

    d = ecgcoca_dir
    return load_ecgchat_checkpoint(d / "checkpoint.pt", d / "model_config.json", d / "text_encoder")


@pytest.fixture(scope="session")
def ecgcoca_inputs(ecgcoca_dir):
    import numpy as np
    import torch

    return (torch.from_numpy(np.load(ecgcoca_dir / "inputs_ecg.npy")),
            torch.from_numpy(np.load(ecgcoca_dir / "inputs_text_ids.npy")))


# --- real-signal stand-in embeddings for the index tests (read once per session) -----------

@pytest.fixture(scope="session")
def real_index_vectors(shared_data):
    """(table, vectors): 256-d random projections of the real PTB-XL and CinC records in
    ../shared/data with their metadata, exact-duplicate signals dropped (CinC E07509/E07510
    carry the same signal) so rankings have no ties and ids compare exactly."""
    import numpy as np

    from ecgbatch.index.random_projection import real_ecg_table
    from ecgbatch.index.store import embeddings_to_numpy

    t = real_ecg_table(shared_data, dim=256)
    v = embeddings_to_numpy(t["embedding"])
    s = v @ v.T
    np.fill_diagonal(s, 0)
    keep = ~np.triu(s > 0.9999).any(axis=0)
    return t.filter(keep), v[keep]


# --- the ecgllava_tiny reference fixture (ECG-Chat's LLaVA code), converted once per session -----

@pytest.fixture(scope="session")
def llava_fx(fixtures_dir):
    d = fixtures_dir / "ecgllava_tiny"
    if not d.is_dir() or not (fixtures_dir / "ecgcoca_tiny").is_dir():
        pytest.skip(f"fixture folders missing: {d} and its sibling ecgcoca_tiny")
    return d


@pytest.fixture(scope="session")
def llava_converted(llava_fx, tmp_path_factory):
    """The fixture's ECG-Chat LoRA run through the public converter (adapter kept in lora/)."""
    from ecgbatch.llava import convert_ecgchat_llava

    out = tmp_path_factory.mktemp("ecgllava") / "model"
    return convert_ecgchat_llava(llava_fx / "base_llm", llava_fx / "llava-lora",
                                 llava_fx.parent / "ecgcoca_tiny" / "checkpoint.pt", out)


@pytest.fixture(scope="session")
def llava_trained_only(llava_converted, tmp_path_factory):
    """What `ecgbatch train export` writes (config.json + projector + lora/, base weights named and
    hash-stamped), made from the fixture by the same save_trained_only a training checkpoint uses:
    the converted model's projector and its ECG-Chat LoRA adapter on the base folder
    ``llava_converted``. Assembled, it is the converted model again (+ the adapter), so the
    session's one vLLM engine can serve the assembled folder."""
    from ecgbatch.llava import load_ecg_llava
    from ecgbatch.llava.assemble import save_trained_only

    model, _ = load_ecg_llava(llava_converted, lora=llava_converted / "lora")
    out = tmp_path_factory.mktemp("trained-only") / "ecg-llava-tiny"
    return save_trained_only(model, out, {"folder": str(llava_converted)})


@pytest.fixture(scope="session")
def llava_cache(tmp_path_factory):
    """$ECGBATCH_CACHE of the assembled model folders (subprocess tests pass it on)."""
    return tmp_path_factory.mktemp("ecgbatch-cache")


@pytest.fixture(scope="session")
def llava_assembled(llava_trained_only, llava_cache):
    """(full folder, adapter) of ``llava_trained_only`` as every generative command resolves a
    model (ecgbatch.models.llava_model), assembled into ``llava_cache``."""
    from ecgbatch.models import llava_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ECGBATCH_CACHE", str(llava_cache))
        return llava_model(llava_trained_only, log=lambda m: None)


@pytest.fixture(scope="session")
def vllm_engine(llava_assembled, tmp_path_factory):
    """One vLLM engine (float32, LoRA rank <= 8 enabled) for the whole test session: start-up
    costs 20-100 s on 2 cores. It serves the full folder assembled from a trained-only export of
    the fixture (``llava_assembled``: the converted ECG-Chat model, so ECG-Chat parity holds).
    The fixture's head size 16 is served through a padded copy."""
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from ecgbatch.serving.engine import EcgLlavaEngine

    engine = EcgLlavaEngine(llava_assembled[0], dtype="float32", lora_rank=8,
                            work_dir=str(tmp_path_factory.mktemp("vllm-work")))
    yield engine
    type(engine).shutdown(engine)      # the class's own (a test may stub the instance's), before exit


@pytest.fixture
def record_reports_on_session_engine(vllm_engine, monkeypatch):
    """`ecgbatch report RECORD...` run in this process (CliRunner) generates on the session's one
    engine instead of starting its own (20-100 s): for this test, ecgbatch.serving.record_reports
    gets a factory in place of EcgLlavaEngine that returns ``vllm_engine`` after checking that
    the command asked for that very engine: the same full folder, the same dtype once resolved
    (float32 on CPU) and a LoRA rank it serves. Everything else (resolving and assembling the
    model, reading, prompts, generation, output) is the command's own code, except that the
    command's final engine shutdown leaves the session's engine running."""
    from ecgbatch.device import resolve_dtype
    from ecgbatch.serving import record_reports

    def session_engine(folder, dtype="auto", lora_rank=None, max_num_seqs=None, repetition_penalty=None):
        assert Path(folder).resolve() == vllm_engine.model_dir.resolve(), (folder, vllm_engine.model_dir)
        assert resolve_dtype(dtype, vllm_engine.device) == resolve_dtype(vllm_engine.options.dtype,
                                                                          vllm_engine.device)
        assert lora_rank is None or lora_rank <= vllm_engine.options.lora_rank, lora_rank
        assert max_num_seqs is None or max_num_seqs >= 1
        monkeypatch.setattr(vllm_engine.options, "repetition_penalty", repetition_penalty)
        return vllm_engine

    monkeypatch.setattr(record_reports, "EcgLlavaEngine", session_engine)
    # the command shuts its engine down when done; the session's engine outlives this test
    monkeypatch.setattr(vllm_engine, "shutdown", lambda *a, **k: None)
    return vllm_engine


# --- `ecgbatch serve`: ONE server process (one vLLM engine) for every server and browser test ---

@pytest.fixture(scope="session")
def ecg_server(llava_converted, tmp_path_factory):
    """`ecgbatch serve` on a free loopback port with the fixture model, its adapter as model
    "ecg-chat", API key "test-key", a copy of sample_archive/ as --ecg-dir (the hostile tests add
    files to it and an ``outside`` folder beside it), at most 8 chat requests in flight and a 5 s
    body timeout. Yields a dict (url, key, base, adapter, log, pid, ecg_dir, outside)."""
    pytest.importorskip("vllm")
    pytest.importorskip("fastapi")
    import shutil
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from ecgbatch._paths import REPO_ROOT

    from ecgbatch.serving.server import free_port

    port = free_port()
    work = tmp_path_factory.mktemp("serve")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), VLLM_CPU_KVCACHE_SPACE="1", ECGBATCH_CACHE=str(work))
    ecg_dir, outside = work / "ecgs", work / "outside"
    shutil.copytree(REPO_ROOT / "sample_archive", ecg_dir, symlinks=True)
    outside.mkdir()
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ecgbatch.cli", "serve", "--model", str(llava_converted),
                             "--name", "tiny", "--lora", f"ecg-chat={llava_converted / 'lora'}",
                             "--api-key", "test-key", "--ecg-dir", str(ecg_dir),
                             "--port", str(port), "--max-tokens", "64", "--max-body-mb", "2",
                             "--max-in-flight", "8", "--body-timeout", "5"],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while True:
        if proc.poll() is not None:
            pytest.fail(f"ecgbatch serve exited ({proc.returncode}):\n{(work / 'server.log').read_text()[-4000:]}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except Exception:   # refused, or not ours yet (http.client errors are not OSErrors)
            if time.time() > deadline:
                proc.kill()
                pytest.fail("ecgbatch serve did not start within 600 s")
            time.sleep(1)
    yield {"url": url, "key": "test-key", "base": "tiny", "adapter": "ecg-chat", "log": work / "server.log",
           "pid": proc.pid, "ecg_dir": ecg_dir, "outside": outside}
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


# --- ONE in-process Ray for every test that runs pipelines or training jobs in this process ------

@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, no dashboard) for the whole session, started in this process: each
    start and shut-down costs 10-30 s on 2 cores, and the pipelines (ray_session) and training
    jobs (training.loop.launch) use a running session instead of starting their own. Tests that
    need a Ray of their own (`ray start` nodes: ``ray_cluster``; a SIGKILLed driver with its own
    Ray) start it in a subprocess and do not touch this one (test_pipeline_embed's SIGKILLed
    driver attaches to it: Ray ends that driver's job).

    Its workers run tests/helpers/worker_crash_hook.install (``worker_process_setup_hook``): a
    read of a path holding CRASH_MARK kills the worker with a segfault, HANG_MARK hangs it, no
    other path is touched (test_io_corrupt_archive's dead worker)."""
    import ray

    if ray.is_initialized():        # a session some test started and left: not ours, no hook
        ray.shutdown()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HELPERS), old) if p)   # the workers' hook
    try:
        for attempt in range(1, 4):
            try:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                         runtime_env={"worker_process_setup_hook": "worker_crash_hook.install"},
                         # the raylet's wait for its dashboard agent (which writes the metrics
                         # port file): the agent's imports alone took 18 s at load 7 on 2 cores
                         _system_config={"agent_register_timeout_ms": 120_000})
                break
            except Exception:    # on a busy machine a raylet can miss its start-up windows (its
                ray.shutdown()   # agents' ports file, GCS registration) and die: start again
                if attempt == 3:
                    raise
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old
    yield ray
    ray.shutdown()


# --- ONE `ray start` cluster (a head with its dashboard + a worker node) for the tests on real nodes ---

@pytest.fixture(scope="session")
def ray_cluster():
    """The SharedCluster (tests/helpers/ray_cluster.py) of test_ray_jobs and test_ray_multinode:
    started at its first ``get()``, retired by the test that kills its worker node (or here)."""
    shared = SharedCluster(env={"PYTHONPATH": "", "TRANSFORMERS_VERBOSITY": "error", **VLLM_TEST_ENV})
    yield shared
    shared.retire()


# --- the sample archive embedded ONCE (test_cli_archive, test_pipeline_embed work on copies) ---------

@pytest.fixture(scope="session")
def sample_embedded(sample_archive, tmp_path_factory, ray_local):
    """`ecgbatch embed SAMPLE_ARCHIVE --measure --json` run once in this process on ray_local (each
    embed of the archive costs 15-25 s on 2 cores): (workspace, its JSON summary). Tests do not
    write to it: each module works on its own copy (shutil.copytree: a few hundred kB)."""
    from typer.testing import CliRunner

    from ecgbatch.cli import app

    w = tmp_path_factory.mktemp("sample-ws")
    r = CliRunner().invoke(app, ["embed", str(sample_archive), "-w", str(w), "--allow-random-init",
                                 "--no-progress", "--measure", "--json"])
    assert r.exit_code == 0, r.output
    return w, json.loads(r.stdout)

