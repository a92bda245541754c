"""`ecgbatch report --input ARCHIVE` (Ray Data + vLLM engine actors) on real records with the
converted ECG-Chat fixture model. ONE interrupted run and ONE resumed run (both through the CLI,
each with its engine actor) are shared by every assert:

  1. `report --input` with one record per block and per engine call, in a subprocess attached to
     the session's Ray (conftest ``ray_local``: no second Ray start), its driver SIGKILLed after its
     first commits (Ray then ends the dead driver's engine actor);
  2. `report --resume -o reports.jsonl --html DIR --json` finishes the job, in this process on the
     session's Ray (conftest ``ray_local``).

Both runs' engines run vLLM in the actor's process (tests/helpers/vllm_env.py: ~10 s start-up
instead of ~30 s).

Then: exactly one report per readable record and one failure per bad file across both runs, the
export equals the table, a rerun does nothing, the archive report equals the `report RECORD` path's
greedy report for the same record, and the HTML pages load in a real headless Chromium.
(A driver SIGKILLed with the local Ray it started, then resumed: tests/test_pipeline_embed.py's
test_sigkill_mid_run_then_resume_is_exactly_once, on the same block commits.)"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers.vllm_env import VLLM_TEST_ENV, engine_actor_env
from typer.testing import CliRunner

from ecgbatch._paths import REPO_ROOT
from ecgbatch.cli import app

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.shared, pytest.mark.slow]

MAX_TOKENS = 8
GOOD = ["A0689", "A1041", "E00271", "E07500", "HR03961"]
BAD = {"garbage": "bad_header", "single_lead": "missing_lead", "flat_nan_absurd": "no_physiological_content"}


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), RAY_AUTH_MODE="disabled", TRANSFORMERS_VERBOSITY="error",
               **VLLM_TEST_ENV)
    return [sys.executable, "-m", "ecgbatch.cli", "report", *args], env


@pytest.fixture(scope="module")
def archive(sample_archive, tmp_path_factory):
    d = tmp_path_factory.mktemp("archive")
    (d / "cinc").mkdir()
    (d / "bad").mkdir()
    for rid in GOOD:
        for f in (sample_archive / "cinc2021").glob(f"{rid}.*"):
            shutil.copy(f, d / "cinc" / f.name)
    for name in BAD:
        for f in (sample_archive / "bad").glob(f"{name}.*"):
            shutil.copy(f, d / "bad" / f.name)
    return d


@pytest.fixture(scope="module")
def job(archive, llava_converted, tmp_path_factory, ray_local):
    """The killed run, then the resumed one: (workspace, resumed summary, killed-run counts)."""
    from ecgbatch.pipelines.workspace import ReportTable

    base = tmp_path_factory.mktemp("report-job")
    ws = base / "ws"
    cmd, env = _cli(["--input", str(archive), "-w", str(ws), "--model", str(llava_converted),   # its own lora/
                     "--max-tokens", str(MAX_TOKENS), "--address", ray_local.get_runtime_context().gcs_address,
                     "--block-size", "1", "--batch-size", "1", "--no-progress"])
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline, shards = time.time() + 900, []
        while time.time() < deadline and proc.poll() is None:
            shards = list(ws.glob("report-*/reports/part-*.parquet"))
            if len(shards) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended before it could be killed: {proc.stderr.read()[-3000:]!r}"
        assert shards, "no block committed within the time limit"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver (and anything it started itself)
        except ProcessLookupError:
            pass
        proc.wait(60)
    [root] = list(ws.glob("report-*"))
    killed = ReportTable(ws, root.name).count()
    with engine_actor_env():
        r = CliRunner().invoke(app, ["report", "--resume", "-w", str(ws), "-o", str(base / "reports.jsonl"),
                                     "--html", str(base / "html"), "--json"])
    assert r.exit_code == 0, r.output[-4000:]
    return ws, ReportTable(ws, root.name), json.loads(r.stdout[r.stdout.index("{"):]), killed, base


def test_kill_then_resume_is_exactly_once(job, archive):
    ws, table, summary, killed, _ = job
    total = len(GOOD) + len(BAD)
    assert 0 < sum(killed) < total, f"the kill did not interrupt the job: {killed}"
    assert summary["already_done"] == sum(killed) and summary["total_records"] == total
    reports = table.read_table().to_pylist()
    fails = table.read_failures().to_pylist()
    assert sorted(r["record_id"] for r in reports) == sorted(f"cinc/{g}" for g in GOOD)
    assert {f["record_id"]: f["error_kind"] for f in fails} == {f"bad/{k}": v for k, v in BAD.items()}
    assert not list(table.root.rglob("*.tmp"))


def test_report_rows(job, llava_converted):
    _, table, summary, _, _ = job
    for r in table.read_table().to_pylist():
        assert r["report"].strip() and r["n_output_tokens"] == MAX_TOKENS and r["finish_reason"] == "length"
        assert r["n_prompt_tokens"] == 145                 # 45 prompt ids - <ecg> + 101 ECG positions
        assert r["prompt_mode"] == "report" and r["question"] == "Please describe this ECG."
        assert r["model"] == llava_converted.name
        assert r["adapter"] == str((llava_converted / "lora").resolve())   # no --lora: the folder's own
        assert r["generation_s"] > 0 and r["labels"] and r["fs"] == 500.0
        found = json.loads(r["findings"])       # measured in the read stage (multilead), not stated
        assert found[0]["label"] == "heart_rate" and found[0]["value"] == pytest.approx(r["hr_bpm"], abs=0.1)
        assert all(f["source"] in ("measurement", "probe") for f in found)
        assert isinstance(json.loads(r["contradictions"]), list)
    assert summary["output_tokens"] == MAX_TOKENS * summary["reported"]


def test_export_and_rerun(job, archive, llava_converted):
    ws, table, _, _, base = job
    lines = [json.loads(x) for x in (base / "reports.jsonl").read_text().splitlines()]
    assert sorted((r["record_id"], r["report"]) for r in lines) == sorted(
        (r["record_id"], r["report"]) for r in table.read_table().to_pylist())
    assert all(isinstance(r["findings"], list) and r["findings"] and isinstance(r["contradictions"], list)
               for r in lines)                  # JSON lists in the .jsonl export
    pages = [p.read_text() for p in (base / "html").glob("*.html") if p.name != "index.html"]
    assert pages and all("<ul id=findings><li>heart rate" in p and "id=contradictions" in p for p in pages)
    from ecgbatch.pipelines import report

    s = report.run(str(archive), llava_converted, ws, lora=llava_converted / "lora",
                   settings=report.PromptSettings(max_tokens=MAX_TOKENS), progress=False)
    assert (s.already_done, s.reported, s.failed) == (len(GOOD) + len(BAD), 0, 0)   # no engine started


def test_archive_report_equals_record_path(job, archive, vllm_engine, llava_converted):
    """The same record and greedy decoding give the same report as `ecgbatch report RECORD`
    (whose steps are read_for_model + prompt_ids + EcgLlavaEngine.generate)."""
    from ecgbatch.llava.inputs import read_for_model
    from ecgbatch.llava.questions import DEFAULT_QUESTION
    from ecgbatch.serving.engine import EcgRequest

    _, table, _, _, _ = job
    got = {r["record_id"]: r["report"] for r in table.read_table().to_pylist()}
    paths = [str(archive / "cinc" / f"{g}.hea") for g in GOOD[:2]]
    ecgs, failed = read_for_model(paths, vllm_engine.config)
    assert not failed
    ids = vllm_engine.prompt_ids(DEFAULT_QUESTION)
    res = vllm_engine.generate([EcgRequest(x, ids, id=p) for p, x in ecgs], max_tokens=MAX_TOKENS,
                               lora=llava_converted / "lora")
    for g, r in zip(GOOD[:2], res):
        assert got[f"cinc/{g}"] == r.text


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extras)")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chrome or not driver_bin:
        pytest.skip("no chromium + chromedriver on this machine (`make browser` installs them as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    from selenium.webdriver.chrome.service import Service

    drv = webdriver.Chrome(options=opts, service=Service(driver_bin))
    yield drv
    drv.quit()


def test_html_pages_load_in_a_browser(job, browser):
    from selenium.webdriver.common.by import By

    _, table, _, _, base = job
    reports = {r["record_id"]: r for r in table.read_table().to_pylist()}
    browser.get((base / "html" / "index.html").as_uri())
    links = browser.find_elements(By.CSS_SELECTOR, "#records a")
    assert sorted(a.text for a in links) == sorted(reports)
    fails = browser.find_elements(By.CSS_SELECTOR, "#failures tr.failed")
    assert len(fails) == len(BAD)
    links[0].click()
    rid = browser.find_element(By.TAG_NAME, "h1").text
    img = browser.find_element(By.CSS_SELECTOR, "img#plot")
    size = browser.execute_script("return [arguments[0].complete, arguments[0].naturalWidth, "
                                  "arguments[0].naturalHeight]", img)
    assert size[0] and size[1] > 500 and size[2] > 300      # the 12-lead PNG really decoded
    assert browser.find_element(By.ID, "report").text == reports[rid]["report"].strip()
    assert reports[rid]["labels"][0] in browser.find_element(By.ID, "labels").text
    assert "heart rate" in browser.find_element(By.ID, "findings").text
