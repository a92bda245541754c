"""The report job's engine actor overlaps its batches (issue 19, throughput): the next batch's
requests enter the vLLM engine while the last batch's still generate, and greedy reports stay
the same record for record.

  * the engine: two threads call EcgLlavaEngine.generate on the session's one engine; the second
    call's requests enter while the first call's are in flight (the engine loop's own counters),
    and each call gets the texts the calls give one after the other;
  * the pipeline (`report --input`, in this process on the session's Ray, conftest ``ray_local``):
    the same archive with ``overlap=1`` (each batch waits for the last) and with the default
    overlap; the actor's per-row ``engine_in_flight`` counts (summary.overlapped_records) are 0
    and > 0, and the two tables hold the same reports. The sequential run's engine runs vLLM in
    the actor's own process (tests/helpers/vllm_env.py: ~10 s start and ~1 s stop instead of ~30
    s and ~10 s on 2 cores); the overlapped run, the default, keeps vLLM's default multiprocess
    engine in its actor, the production path (the same greedy tokens in both modes:
    test_report_archive's test_archive_report_equals_record_path).
No timing is asserted: whether batches overlapped is what the engine loop saw."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from helpers.vllm_env import engine_actor_env

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.slow]

RECORDS = ["A0689", "A1041", "E00271", "E07500", "HR03961"]
COPIES = 2                 # 10 records: 5 batches of 2
BATCH = 2
MAX_TOKENS = 24            # long enough that a batch still generates when the next one is ready


def _requests(engine, sample_archive):
    from ecgbatch.llava.inputs import read_for_model
    from ecgbatch.llava.questions import DEFAULT_QUESTION
    from ecgbatch.serving.engine import EcgRequest

    ecgs, failed = read_for_model([str(sample_archive / "cinc2021" / f"{r}.hea") for r in RECORDS], engine.config)
    assert not failed
    ids = engine.prompt_ids(DEFAULT_QUESTION)
    return [EcgRequest(x, ids, id=p) for p, x in ecgs]


def test_engine_calls_from_two_threads_overlap_and_keep_their_texts(vllm_engine, sample_archive):
    reqs = _requests(vllm_engine, sample_archive)
    first, second = reqs[:3], reqs[3:]
    alone = [r.text for r in vllm_engine.generate(first, max_tokens=128, ignore_eos=True)]
    alone += [r.text for r in vllm_engine.generate(second, max_tokens=8)]
    stats = vllm_engine.loop.stats
    before = (stats.calls, stats.overlapped_calls)
    got: dict[str, list] = {}
    t = threading.Thread(target=lambda: got.setdefault(
        "first", vllm_engine.generate(first, max_tokens=128, ignore_eos=True)))
    t.start()
    while stats.calls == before[0]:          # the first call's requests are in the engine
        assert t.is_alive() or "first" in got
        threading.Event().wait(0.005)
    got["second"] = vllm_engine.generate(second, max_tokens=8)
    t.join(300)
    assert not t.is_alive()
    # the second call entered while the first call's 3 requests were still in flight
    assert [r.in_flight_at_submit for r in got["second"]] == [3] * len(second)
    assert all(r.in_flight_at_submit == 0 for r in got["first"])
    assert (stats.calls, stats.overlapped_calls) == (before[0] + 2, before[1] + 1)
    assert stats.max_calls_in_flight >= 2 and stats.max_requests_in_flight >= len(reqs)
    assert [r.text for r in got["first"] + got["second"]] == alone
    assert [r.n_output_tokens for r in got["first"]] == [128] * len(first)


@pytest.fixture(scope="module")
def archive(sample_archive, tmp_path_factory):
    d = tmp_path_factory.mktemp("overlap-archive")
    for c in range(COPIES):                  # a folder per copy: WFDB headers name their signal files
        (d / f"c{c}").mkdir()
        for rid in RECORDS:
            for f in (sample_archive / "cinc2021").glob(f"{rid}.*"):
                shutil.copy(f, d / f"c{c}" / f.name)
    return d


def _run(archive, model, ws, overlap):
    from ecgbatch.pipelines import report
    from ecgbatch.pipelines.workspace import ReportTable

    s = report.run(str(archive), model, ws, lora=model / "lora", settings=report.PromptSettings(max_tokens=MAX_TOKENS),
                   batch_size=BATCH, block_size=BATCH, progress=False, overlap=overlap)
    t = ReportTable(ws, Path(s.table).name)
    return s, {r["record_id"]: r for r in t.read_table().to_pylist()}


def test_pipeline_overlaps_batches_with_the_same_reports(archive, llava_converted, tmp_path, ray_local):
    with engine_actor_env():
        seq, seq_rows = _run(archive, llava_converted, tmp_path / "sequential", overlap=1)
    ovl, ovl_rows = _run(archive, llava_converted, tmp_path / "overlapped", overlap=2)
    n = COPIES * len(RECORDS)
    assert (seq.reported, seq.failed, ovl.reported, ovl.failed) == (n, 0, n, 0)
    assert seq.overlapped_records == 0       # one batch at a time: never another batch in the engine
    assert ovl.overlapped_records >= BATCH, "no batch entered the engine while another one generated"
    assert sorted(ovl_rows) == sorted(seq_rows)
    for rid, r in seq_rows.items():          # greedy: the same report, tokens and prompt per record
        o = ovl_rows[rid]
        assert (o["report"], o["n_output_tokens"], o["question"], o["findings"]) == \
            (r["report"], r["n_output_tokens"], r["question"], r["findings"]), rid
    by_copy = {}
    for rid, r in seq_rows.items():          # and copies of one record got one report
        by_copy.setdefault(rid.split("/", 1)[1], set()).add(r["report"])
    assert all(len(v) == 1 for v in by_copy.values()), by_copy
