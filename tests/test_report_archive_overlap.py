"""The report job's engine actor overlaps its batches (issue 19, throughput): the next batch's
requests enter the vLLM engine while the last batch's still generate, and greedy reports stay
the same record for record.

  * the engine: two threads call EcgLlavaEngine.generate on the session's one engine; the second
    call's requests enter while the first call's are in flight (the engine loop's own counters),
    and each call gets the texts the calls give one after the other;
  * the actor (ReportUDF, built by its own constructor, whose engine is the session's one: no
    engine start): two read-stage batches, the second handed over once the first's requests are in
    the engine, as Ray Data hands an actor its batches. With ``overlap=1`` the second waits (every
    row's ``engine_in_flight`` 0), with ``overlap=2`` it enters while the first generates (> 0);
    both give the engine's greedy reports;
  * the pipeline (`report --input`, in this process on the session's Ray, conftest ``ray_local``):
    the archive with the default overlap; the actor's per-row ``engine_in_flight`` counts
    (summary.overlapped_records) are > 0 and every row holds the greedy report the session's
    engine gives that record alone (copies of a record: one report). Its engine actor keeps vLLM's
    default multiprocess engine, the production path (the in-process engine of the other archive
    tests gives the same greedy tokens: test_report_archive's test_archive_report_equals_record_path).
No timing is asserted: whether batches overlapped is what the engine loop saw. How much overlap
gains is bench/report_archive.py's to measure (its `overlapped` counts, --overlap 1 against 2)."""
from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

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
def greedy(vllm_engine, sample_archive, llava_converted):
    """record name -> the session engine's greedy report of it (the fixture's own adapter, the
    job's question and max tokens), each record alone: no batch, no overlap."""
    reqs = _requests(vllm_engine, sample_archive)
    return {name: vllm_engine.generate([r], max_tokens=MAX_TOKENS, lora=llava_converted / "lora")[0]
            for name, r in zip(RECORDS, reqs)}


@pytest.fixture(scope="module")
def archive(sample_archive, tmp_path_factory):
    d = tmp_path_factory.mktemp("overlap-archive")
    for c in range(COPIES):                  # a folder per copy: WFDB headers name their signal files
        (d / f"c{c}").mkdir()
        for rid in RECORDS:
            for f in (sample_archive / "cinc2021").glob(f"{rid}.*"):
                shutil.copy(f, d / f"c{c}" / f.name)
    return d


def _read_batches(archive, config, sizes):
    """Read-stage batches (what the actor gets from Ray Data) of ``sizes`` records each."""
    from ecgbatch.llava.grounding import GROUND_METHOD
    from ecgbatch.pipelines import read_stage, sources as src

    root = src.normalize_root(archive)
    sources = sorted(src.list_sources(root), key=lambda s: s.key)
    ids = src.record_ids([s.key for s in sources], root)
    out, at = [], 0
    for k, n in enumerate(sizes):
        chunk = sources[at:at + n]
        at += n
        blk = {"block": [f"b{k}"], "sources": [[src.source_to_json(s) for s in chunk]],
               "ids": [[ids[s.key] for s in chunk]]}
        out.append(read_stage.read_and_preprocess(blk, preprocess=config.preprocess_config.to_dict(),
                                                  measure=True, measure_method=GROUND_METHOD))
    return out


def test_actor_overlap_1_waits_and_2_overlaps_with_the_same_reports(archive, vllm_engine, llava_assembled,
                                                                     llava_converted, greedy, monkeypatch):
    from ecgbatch.pipelines import report
    from ecgbatch.serving import engine as engine_module

    full, lora = llava_assembled[0], llava_converted / "lora"       # the adapter of ``greedy``
    assert vllm_engine.model_dir == full

    def session_engine(folder, **kwargs):      # the actor's engine: the session's one
        assert Path(folder) == full and kwargs["dtype"] == "float32", (folder, kwargs)
        return vllm_engine

    monkeypatch.setattr(engine_module, "EcgLlavaEngine", session_engine)
    batches = _read_batches(archive, vllm_engine.config, (3, 2))
    stats = vllm_engine.loop.stats

    async def two_batches(udf):
        """The first batch, then the second once the first's requests are in the engine."""
        calls = stats.calls
        first = asyncio.ensure_future(udf(dict(batches[0])))
        while stats.calls == calls and not first.done():
            await asyncio.sleep(0.005)
        second = asyncio.ensure_future(udf(dict(batches[1])))
        return await first, await second

    out = {}
    for overlap in (1, 2):
        udf = report.ReportUDF(str(full), report.folder_fingerprint(full), {"dtype": "float32"}, str(lora),
                               MAX_TOKENS, report.DEFAULT_QUESTION, overlap=overlap)
        out[overlap] = asyncio.run(two_batches(udf))
    (a1, b1), (a2, b2) = out[1], out[2]
    assert list(a1["engine_in_flight"]) == [0] * 3 and list(b1["engine_in_flight"]) == [0] * 2   # one at a time
    assert list(a2["engine_in_flight"]) == [0] * 3 and all(n > 0 for n in b2["engine_in_flight"])
    for seq, ovl in ((a1, a2), (b1, b2)):
        assert all(seq["ok"]) and all(ovl["ok"])
        for k in ("record_id", "report", "n_output_tokens", "question", "findings"):
            assert list(seq[k]) == list(ovl[k]), k
        for rid, text in zip(seq["record_id"], seq["report"]):
            assert text == greedy[rid.rsplit("/", 1)[1]].text, rid


def test_pipeline_overlaps_batches_with_the_engines_reports(archive, llava_converted, greedy, tmp_path, ray_local):
    from ecgbatch.pipelines import report
    from ecgbatch.pipelines.workspace import ReportTable

    s = report.run(str(archive), llava_converted, tmp_path / "ws", lora=llava_converted / "lora",
                   settings=report.PromptSettings(max_tokens=MAX_TOKENS), batch_size=BATCH, block_size=BATCH,
                   progress=False)      # the default overlap
    rows = {r["record_id"]: r for r in ReportTable(tmp_path / "ws", Path(s.table).name).read_table().to_pylist()}
    n = COPIES * len(RECORDS)
    assert (s.reported, s.failed, len(rows)) == (n, 0, n)
    assert s.overlapped_records >= BATCH, "no batch entered the engine while another one generated"
    by_record = {}
    for rid, r in rows.items():              # greedy: the report the engine gives the record alone
        name = rid.rsplit("/", 1)[1]
        ref = greedy[name]
        assert (r["report"], r["n_output_tokens"], r["question"]) == \
            (ref.text, ref.n_output_tokens, report.DEFAULT_QUESTION), rid
        by_record.setdefault(name, set()).add((r["report"], r["findings"]))
    assert all(len(v) == 1 for v in by_record.values()), by_record     # copies of a record: one report
