"""`ecgbatch report --input ARCHIVE`: a Ray Data streaming job that writes one generated report
per record of an ECG archive with an ECG-LLaVA model served by vLLM.

    scan (driver) -> blocks of record sources -> ray.data.from_items
      -> map_batches(read_task)                        CPU tasks (read_and_preprocess, at low priority), the model's PreprocessConfig (embed's)
      -> map_batches(ReportUDF, ActorPoolStrategy(N))  one vLLM engine per actor (GPUs when present);
                                                       a batch of requests per engine call, continuous
                                                       batching inside the engine; ``overlap`` batches
                                                       at once per actor: the next batch's grounding and
                                                       requests go in while the last one drains
      -> iter_batches on the driver -> one Parquet shard per block, committed atomically

The workspace machinery is embed's (ecgbatch.pipelines.workspace, ReportTable): a block is
committed iff its shard exists, failures first, reruns skip committed records, so a crash,
kill -9 or Ctrl-C loses at most the blocks in flight and never duplicates a report. One table per
model + adapter + prompt settings (report-<name>-<fingerprint>-<settings hash>).
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ecgbatch.device import (CUDA, Device, check_lora, detect, report_batch_size, table_dtype,
                             tensor_parallel_size)
from ecgbatch.io.errors import NoPhysiologicalContentError
from ecgbatch.llava.contradictions import report_fields
from ecgbatch.llava.grounding import GROUND_METHOD, LEGACY_WORDING, ground_inputs, grounds_labeller
from ecgbatch.llava.questions import DEFAULT_QUESTION
from ecgbatch.pipelines import sources as src
from ecgbatch.pipelines.blocks import consume_blocks, count_kinds, plan_blocks, split_failures
from ecgbatch.pipelines.job_progress import JobProgress
from ecgbatch.pipelines.progress import RecordProgress
from ecgbatch.pipelines.ray_common import MODEL_NICENESS, quiet_ray_data, ray_session, set_niceness
from ecgbatch.pipelines.read_ledger import run_ledger
from ecgbatch.pipelines.read_stage import (LABEL_SEP, MEASUREMENT_COLUMNS, failures_table, metadata_columns,
                                           read_stage)
from ecgbatch.pipelines.sources import list_sources
from ecgbatch.pipelines.workspace import atomic_write_table, default_workspace, model_key, ReportTable
from ecgbatch.serving.errors import EcgLlavaError
from ecgbatch.signal.content import NO_CONTENT

DEFAULT_BLOCK_SIZE = 64
DEFAULT_BATCH_SIZE = 32
DEFAULT_OVERLAP = 2      # batches in an engine actor at once (1: one after the other)
# questions whose prompt ids an engine actor keeps: a fixed question (report, question modes) is
# one; grounded, rag and ddp prompts are one per record and never come back, so a long run must
# not keep them all; a few batches' worth covers the batches in flight
PROMPT_ID_CACHE = 128
PROMPT_MODES = ("report", "question", "ddp", "rag")
ENGINE_ACTOR_RAY_ENV = {"RAY_kill_child_processes_on_worker_exit": "0"}
_VLLM_ENV = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_LOGGING_LEVEL",
             "VLLM_ENABLE_V1_MULTIPROCESSING", "OMP_NUM_THREADS")


# ---------------------------------------------------------------------------------------------
# Identity of the model, the adapter and the prompt settings (-> the table key)
# ---------------------------------------------------------------------------------------------
def folder_fingerprint(path: str | os.PathLike | None) -> str:
    """sha256 over a model/adapter folder's top-level files: small files whole, weight files by
    name, size and their first and last MiB (a changed tensor changes these or the header; hashing
    14 GB of Vicuna on every run would cost minutes)."""
    if path is None:
        return ""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= 4 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()


@dataclass
class PromptSettings:
    """How each record's question is built. ``mode``: report (the model's report prompt), question
    (``question`` for every record), ddp (diagnosis-driven), rag (K reference reports as examples)."""

    mode: str = "report"
    question: str = DEFAULT_QUESTION
    max_tokens: int = 256
    rag_k: int = 0
    reference: str = ""        # the reference embedding table's folder (rag)
    grounded: bool = False     # the grounded prompt before each question (ecgbatch.llava.grounding)
    repetition_penalty: float | None = None   # decoding; None: the model's default (its config)

    def __post_init__(self):
        if self.mode not in PROMPT_MODES:
            raise ValueError(f"prompt mode must be one of {PROMPT_MODES}, got {self.mode!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens!r}")

    def hash(self, *parts: str) -> str:
        d = asdict(self)
        if not d["grounded"]:      # the tables of runs before the grounded prompt keep their keys
            d.pop("grounded")
        if d["repetition_penalty"] is None:    # ... and those before the decoding option
            d.pop("repetition_penalty")
        blob = json.dumps([d, *parts], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Stage 2: generate (callable class: one vLLM engine per actor)
# ---------------------------------------------------------------------------------------------
_FAIL_COLS = ("stage", "error_type", "error_kind", "message")
GROUND_COLUMNS = ("findings", "contradictions")   # JSON strings in the table, lists in -o .jsonl


class ReportUDF:
    """Ray Data actor holding one EcgLlavaEngine; each call sends its batch's requests to the
    engine at once (vLLM batches them continuously). A request vLLM would refuse (context
    overflow, bad ECG) or that makes the engine fail becomes a failure row, never a lost record.

    Async, so Ray Data hands the actor several batches at once; ``overlap`` of them run at a time,
    each in a thread (grounding, checks, then its engine call: EcgLlavaEngine.generate is
    thread-safe), so the next batch's requests join the engine while the last batch's drain.
    Each row's ``engine_in_flight``: the requests of other batches in the engine when its own
    entered (> 0: overlapped). Greedy output per record does not depend on it."""

    def __init__(self, model_dir: str, fingerprint: str, engine_kwargs: dict, lora: str | None,
                 max_tokens: int, question: str, env: dict | None = None, grounded: bool = False,
                 overlap: int = DEFAULT_OVERLAP):
        for k, v in (env or {}).items():
            os.environ.setdefault(k, v)
        set_niceness(MODEL_NICENESS)    # before the engine's processes start: they inherit it
        got = folder_fingerprint(model_dir)
        if got != fingerprint:
            raise RuntimeError(f"engine actor found model folder {model_dir} with fingerprint {got[:12]}, "
                               f"the driver saw {fingerprint[:12]} (changed on disk during the run?)")
        from ecgbatch.serving.engine import EcgLlavaEngine

        self.engine = EcgLlavaEngine(model_dir, **engine_kwargs)
        self.lora, self.max_tokens, self.question = lora, int(max_tokens), question
        self.grounded, self.labeller = bool(grounded), grounds_labeller(model_dir)
        self.wording = self.engine.config.grounding_wording
        self._prompt_ids = prompt_id_cache(self.engine.prompt_ids)
        self._slots = asyncio.Semaphore(int(overlap))     # bound to the actor's loop at first use

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        async with self._slots:
            return await in_daemon_thread(self.report_batch, batch)

    def report_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ecgbatch.serving.engine import EcgRequest

        x = batch.pop("x")
        n = len(x)
        for k in ("ok", *_FAIL_COLS):
            batch[k] = np.array(batch[k], copy=True)
        questions = batch.get("question")
        if questions is None:
            questions = batch["question"] = np.array([self.question] * n, dtype=object)
        out = {"report": np.array([""] * n, dtype=object), "finish_reason": np.array([""] * n, dtype=object),
               "n_prompt_tokens": np.zeros(n, np.int64), "n_output_tokens": np.zeros(n, np.int64),
               "generation_s": np.full(n, np.nan), "findings": np.array(["[]"] * n, dtype=object),
               "contradictions": np.array(["[]"] * n, dtype=object),
               "engine_in_flight": np.zeros(n, np.int64)}
        groundings = batch_groundings(batch, x, self.labeller, self.wording)
        if self.grounded:
            questions = batch["question"] = np.array([g.question(str(q)) for g, q in zip(groundings, questions)],
                                                     dtype=object)
        todo = []
        for i in np.flatnonzero(batch["ok"]):
            if NO_CONTENT in str(batch["quality"][i] if "quality" in batch else "").split(LABEL_SEP):
                _fail(batch, i, NoPhysiologicalContentError(
                    f"no physiological content ({str(batch['quality'][i]).replace(LABEL_SEP, ', ')}); "
                    "not reported"), NO_CONTENT)
                continue
            req = EcgRequest(x[i], self._prompt_ids(str(questions[i])), id=str(batch["record_id"][i]))
            try:
                self.engine.check_request(req, self.max_tokens)
            except EcgLlavaError as exc:
                _fail(batch, i, exc, exc.kind)
                continue
            todo.append((i, req))
        for i, res in self._generate(todo, batch):
            out["report"][i], out["finish_reason"][i] = res.text, str(res.finish_reason or "")
            out["n_prompt_tokens"][i], out["n_output_tokens"][i] = res.n_prompt_tokens, res.n_output_tokens
            out["generation_s"][i] = res.generation_s if res.generation_s is not None else np.nan
            out["engine_in_flight"][i] = res.in_flight_at_submit
            fields = report_fields(res.text, groundings[i])
            out["findings"][i], out["contradictions"][i] = (json.dumps(fields[k]) for k in ("findings", "contradictions"))
        batch.update(out)
        return batch

    def _generate(self, todo, batch):
        """All requests in one engine call; when that call fails, each alone, so only the
        requests that fail by themselves become failures. When every one fails, the engine is
        broken, not the records: raise (the job stops; a rerun resumes) instead of writing good
        records off as failures."""
        if not todo:
            return []
        try:
            res = self.engine.generate([r for _, r in todo], max_tokens=self.max_tokens, lora=self.lora)
            return [(i, r) for (i, _), r in zip(todo, res)]
        except Exception as exc:  # noqa: BLE001 - isolated below, per request
            first = exc
        done, failed = [], []
        for i, req in todo:
            try:
                [r] = self.engine.generate([req], max_tokens=self.max_tokens, lora=self.lora)
                done.append((i, r))
            except Exception as exc:  # noqa: BLE001 - a failure row with the engine's message
                failed.append((i, exc))
        if not done:
            raise RuntimeError(f"the vLLM engine failed on every request of a batch of {len(todo)} "
                               f"({type(first).__name__}: {first}); committed blocks are kept, rerun to "
                               "resume") from first
        for i, exc in failed:
            _fail(batch, i, exc, getattr(exc, "kind", "engine_error"))
        return done


def prompt_id_cache(prompt_ids, maxsize: int = PROMPT_ID_CACHE):
    """``prompt_ids`` (question -> token ids) for the batches' threads: one call at a time (a fast
    tokenizer refuses concurrent use: "Already borrowed"), the last ``maxsize`` questions kept
    (least recently used out first; ``cache_info()`` says hits, misses and size)."""
    lock = threading.Lock()

    def tokenize(question: str) -> list[int]:
        with lock:
            return prompt_ids(question)

    return functools.lru_cache(maxsize=maxsize)(tokenize)


async def in_daemon_thread(fn, *args):
    """``await fn(*args)`` run in a daemon thread of its own. Not asyncio.to_thread: the
    interpreter's exit joins that executor's threads, so a batch waiting on its engine would hold
    up the actor's exit (and the clean-up that stops its vLLM engine process)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def work():
        try:
            res, err = fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            res, err = None, exc
        loop.call_soon_threadsafe(_settle, fut, res, err)

    threading.Thread(target=work, daemon=True, name="ecgbatch-report-batch").start()
    return await fut


def _settle(fut: asyncio.Future, res, err) -> None:
    if fut.cancelled():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(res)


def batch_groundings(batch: dict[str, np.ndarray], x, labeller=None, wording: int = LEGACY_WORDING) -> list:
    """Per row of a read-stage batch: its Grounding, from the measurement columns (NaN: left
    out) and, with ``labeller`` (grounds_labeller's), the probes on the model inputs ``x``; in the
    model's ``wording``."""
    n = len(x)
    rows = [{k: batch[k][i] for k in MEASUREMENT_COLUMNS if k in batch} for i in range(n)]
    ok = np.asarray(batch["ok"], dtype=bool)
    out = ground_inputs([None] * n, wording=wording)
    if ok.any():
        got = ground_inputs([rows[i] for i in np.flatnonzero(ok)], x[ok], labeller, wording)
        for i, g in zip(np.flatnonzero(ok), got):
            out[i] = g
    return out


def _fail(batch, i, exc, kind: str) -> None:
    batch["ok"][i] = False
    batch["stage"][i], batch["error_type"][i] = "generate", type(exc).__name__
    rid, msg = str(batch["record_id"][i]), str(exc)
    batch["error_kind"][i], batch["message"][i] = str(kind), msg if msg.startswith(rid) else f"{rid}: {msg}"


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------
def engine_kwargs(*, dtype: str = "auto", lora_rank: int | None = None, max_num_seqs: int | None = None,
                  gpus: float = 0.0, work_dir: str | None = None, max_model_len: int | None = None,
                  repetition_penalty: float | None = None) -> dict:
    """EcgLlavaEngine arguments for one actor (per-request timing on: log stats filled). The
    engine decides its platform settings on its own device (ecgbatch.device); a GPU share that
    cannot work (1.5 GPUs) is refused here, before any actor starts."""
    if gpus > 0:
        tensor_parallel_size(gpus)
    return {"dtype": dtype, "lora_rank": lora_rank, "max_num_seqs": max_num_seqs, "work_dir": work_dir,
            "max_model_len": max_model_len, "gpus_per_engine": gpus if gpus > 0 else None,
            "repetition_penalty": repetition_penalty,
            "llm_kwargs": {"disable_log_stats": False}}


def build_dataset(blocks, *, model_dir: str, fingerprint: str, preprocess: dict, ekw: dict,
                  lora: str | None, max_tokens: int, question: str, engines: int = 1,
                  gpus_per_engine: float = 0.0, cpus_per_engine: float = 1.0,
                  batch_size: int = DEFAULT_BATCH_SIZE, prompt_stage=None, grounded: bool = False,
                  overlap: int = DEFAULT_OVERLAP, ledger=None):
    """The Ray Dataset of the report job (lazy). ``prompt_stage``: an optional (fn, map_batches
    keyword arguments) stage that adds a per-record ``question`` column (rag) between reading and
    generating, one whole block per call. ``overlap``: batches each engine actor works on at once
    (ReportUDF). ``ledger``: the run's read ledger (read_ledger.run_ledger)."""
    from ray.data import ActorPoolStrategy

    if batch_size < 1 or engines < 1 or overlap < 1:
        raise ValueError(f"batch_size, engines and overlap must be >= 1, got {batch_size!r}, {engines!r}, "
                         f"{overlap!r}")
    ds = read_stage(blocks, preprocess, ledger=ledger, measure=True, measure_method=GROUND_METHOD)   # the grounds
    env = {k: os.environ[k] for k in _VLLM_ENV if k in os.environ}
    ctor = {"model_dir": model_dir, "fingerprint": fingerprint, "engine_kwargs": ekw, "lora": lora,
            "max_tokens": max_tokens, "question": question, "env": env, "grounded": grounded,
            "overlap": overlap}
    with warnings.catch_warnings():  # max_restarts goes through the deprecated **ray_remote_args
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        if prompt_stage is not None:
            fn, kw = prompt_stage
            ds = ds.map_batches(fn, batch_size=None, **kw)
        return ds.map_batches(
            # the actor's calls (Ray tasks, each of one or more batches) run on its event loop; the
            # batches of one call run up to Ray Data's async batch concurrency (4); ReportUDF lets
            # ``overlap`` batches at a time reach its engine
            ReportUDF, fn_constructor_kwargs=ctor,
            compute=ActorPoolStrategy(size=engines, max_concurrent_calls_per_actor=overlap),
            batch_size=batch_size, num_gpus=gpus_per_engine,
            num_cpus=cpus_per_engine if gpus_per_engine <= 0 else 1,
            # Ray kills a worker's child processes as the worker exits, before its Python exit
            # runs: the engine core died under its client ("engine core exited unexpectedly").
            # The engine stops itself at the actor's exit (stop_engine), and an orphaned engine
            # core stops on its own (serving.parent_watch)
            runtime_env={"env_vars": ENGINE_ACTOR_RAY_ENV},
            max_restarts=0)  # a dead engine fails the run (resume), no silent restart


# ---------------------------------------------------------------------------------------------
# Driver: shards, summary, run
# ---------------------------------------------------------------------------------------------
def reports_table(rows: list[dict[str, Any]], signature: dict[str, str]) -> pa.Table:
    """The shard of one block (reported rows only; the full schema even when empty)."""
    n = len(rows)
    cols: dict[str, pa.Array] = {
        "record_id": pa.array([str(r["record_id"]) for r in rows], pa.string()),
        "source": pa.array([str(r["source"]) for r in rows], pa.string()),
        "report": pa.array([str(r["report"]) for r in rows], pa.string()),
        "prompt_mode": pa.array([signature["prompt_mode"]] * n, pa.string()),
        "question": pa.array([str(r["question"]) for r in rows], pa.string()),
        "model": pa.array([signature["model"]] * n, pa.string()),
        "adapter": pa.array([signature["adapter"] or None] * n, pa.string()),
        "n_prompt_tokens": pa.array([int(r["n_prompt_tokens"]) for r in rows], pa.int64()),
        "n_output_tokens": pa.array([int(r["n_output_tokens"]) for r in rows], pa.int64()),
        "finish_reason": pa.array([str(r["finish_reason"]) for r in rows], pa.string()),
        "generation_s": pa.array([None if math.isnan(float(r["generation_s"])) else float(r["generation_s"])
                                  for r in rows], pa.float64()),
        # JSON lists (ecgbatch.llava.contradictions.report_fields); -o x.jsonl writes them as lists
        "findings": pa.array([str(r.get("findings") or "[]") for r in rows], pa.string()),
        "contradictions": pa.array([str(r.get("contradictions") or "[]") for r in rows], pa.string()),
    }
    cols.update(metadata_columns(rows))
    return pa.table(cols)


@dataclass
class ReportSummary:
    table: str
    model: str
    prompt_mode: str
    total_records: int
    already_done: int
    reported: int = 0
    failed: int = 0
    blocks_committed: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    pipeline_seconds: float = 0.0
    first_result_s: float = 0.0
    steady_records_per_s: float = 0.0
    overlapped_records: int = 0     # reported records whose batch entered an engine busy with another batch
    failure_kinds: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    output: str | None = None

    @property
    def records_per_s(self) -> float:
        return (self.reported + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0


def _consume(ds, table: ReportTable, expected: dict[str, int], signature: dict[str, str],
             summary: ReportSummary, bar) -> None:
    def commit(key: str, rows: list[dict[str, Any]]) -> None:
        ok, bad = split_failures(rows)
        table.commit_block(key, reports_table(ok, signature), failures_table(bad))
        summary.reported += len(ok)
        summary.failed += len(bad)
        summary.blocks_committed += 1
        summary.prompt_tokens += sum(int(r["n_prompt_tokens"]) for r in ok)
        summary.output_tokens += sum(int(r["n_output_tokens"]) for r in ok)
        summary.overlapped_records += sum(int(r["engine_in_flight"]) > 0 for r in ok)
        for r in ok:
            fr = str(r["finish_reason"])
            summary.finish_reasons[fr] = summary.finish_reasons.get(fr, 0) + 1
        count_kinds(summary.failure_kinds, bad)

    def on_batch(b) -> None:
        bar.advance(len(b["block"]), tokens=int(np.asarray(b["n_output_tokens"]).sum()))

    progress = JobProgress(table, summary.total_records, summary.already_done)
    stats = consume_blocks(ds, expected, commit, progress=progress, on_batch=on_batch)
    summary.pipeline_seconds = stats.pipeline_seconds
    summary.first_result_s = stats.first_result_s
    summary.steady_records_per_s = stats.steady_records_per_s


def open_report_table(workspace, folder: Path, config, lora: str | Path | None,
                      settings: PromptSettings, dtype: str) -> tuple[ReportTable, dict[str, str]]:
    """The table of this model + adapter + prompt settings, and the signature stored in its rows."""
    fp = folder_fingerprint(folder)
    adapter_fp = folder_fingerprint(lora) if lora is not None else ""
    pre_hash = config.preprocess_config.hash()
    settings_hash = settings.hash(adapter_fp, pre_hash, dtype)
    key = "report-" + model_key(folder.name, fp, settings_hash)
    sig = {"model": folder.name, "fingerprint": fp, "adapter": str(lora) if lora is not None else "",
           "adapter_fingerprint": adapter_fp, "prompt_mode": settings.mode, "settings_hash": settings_hash,
           "preprocess_hash": pre_hash}
    return ReportTable(workspace, key), sig


def run(archive: str, model_dir: str | os.PathLike, workspace: str | os.PathLike | None = None, *,
        lora: str | os.PathLike | None = None, settings: PromptSettings | None = None,
        engines: int = 1, gpus_per_engine: float | None = None, cpus_per_engine: float = 1.0,
        batch_size: int | None = None, block_size: int = DEFAULT_BLOCK_SIZE, dtype: str = "auto",
        address: str | None = None, num_cpus: int | None = 2, work_dir: str | None = None,
        prompt_stage=None, output: str | os.PathLike | None = None, console=None, progress: bool = True,
        sources: list | None = None, overlap: int = DEFAULT_OVERLAP) -> ReportSummary:
    """Report every record of ``archive`` not yet in this table; returns the summary.

    Exactly-once and resumable as `embed`: records already committed (reported or failed) are
    skipped, the rest is cut into blocks of ``block_size`` committed one by one. ``batch_size``
    (requests per engine call) defaults to 32 on CPU and 256 on GPU, where each engine's
    max_num_seqs is sized for its memory (ecgbatch.device) instead of following the batch.
    ``overlap``: batches per engine actor at once (1: each batch waits for the last to finish)."""
    from ecgbatch.serving.folder import check_adapter, check_model_folder

    t0 = time.perf_counter()
    settings = settings or PromptSettings()
    folder = Path(model_dir).resolve()
    config = check_model_folder(folder)
    rank = check_adapter(lora, config) if lora is not None else None
    lora = str(Path(lora).resolve()) if lora is not None else None
    root = src.normalize_root(archive)
    ws = default_workspace() if workspace is None else workspace
    on_gpu = gpus_per_engine > 0 if gpus_per_engine is not None else detect().cuda
    run_dtype = table_dtype(dtype, on_gpu)
    if on_gpu and rank is not None:      # refused here, not in every engine actor
        check_lora(Device(CUDA), run_dtype)
    table, sig = open_report_table(ws, folder, config, lora, settings, run_dtype)
    by_key = {s.key: s for s in (sources if sources is not None else list_sources(root))}
    all_sources = sorted(by_key)
    ids = src.record_ids(all_sources, root)
    pre = config.preprocess_config.to_dict()
    with table:
        if table.exists() and table.read_meta().get("archive") != root:
            raise ValueError(f"{table.root} holds reports of archive {table.read_meta().get('archive')!r}, "
                             f"not {root!r}: use another --workspace for another archive")
        table.write_meta({**sig, "model_dir": str(folder), "archive": root, "preprocess": pre,
                          "settings": asdict(settings), "dtype": dtype, "block_size": block_size})
        todo, blocks = plan_blocks(all_sources, table.committed_sources(), by_key, ids, block_size)
        summary = ReportSummary(table=str(table.root), model=str(folder), prompt_mode=settings.mode,
                                total_records=len(all_sources), already_done=len(all_sources) - len(todo))
        if blocks:
            with ray_session(address, num_cpus), run_ledger() as ledger:
                import ray

                quiet_ray_data()
                if gpus_per_engine is None:
                    gpus_per_engine = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
                batch_size = report_batch_size(gpus_per_engine > 0, batch_size, DEFAULT_BATCH_SIZE)
                # CPU: vLLM's batch limit is the Ray batch (measured so); GPU: sized by the engine
                ekw = engine_kwargs(dtype=dtype, lora_rank=rank, gpus=gpus_per_engine, work_dir=work_dir,
                                    max_num_seqs=None if gpus_per_engine > 0 else batch_size,
                                    repetition_penalty=settings.repetition_penalty)
                ds = build_dataset(blocks, model_dir=str(folder), fingerprint=sig["fingerprint"],
                                   preprocess=pre, ekw=ekw, lora=lora, max_tokens=settings.max_tokens,
                                   question=settings.question, engines=engines,
                                   gpus_per_engine=gpus_per_engine, cpus_per_engine=cpus_per_engine,
                                   batch_size=batch_size, prompt_stage=prompt_stage,
                                   grounded=settings.grounded, overlap=overlap, ledger=ledger)
                expected = {k: len(chunk) for k, chunk, _ in blocks}
                with RecordProgress(len(todo), "reporting", console=console, enabled=progress,
                                    tokens=True) as bar:
                    _consume(ds, table, expected, sig, summary, bar)
    if output is not None:
        summary.output = str(export(table, output))
    summary.seconds = time.perf_counter() - t0
    return summary


def export(table: ReportTable, out: str | os.PathLike) -> Path:
    """Every committed report of ``table`` in one file (.parquet, or .jsonl one object a line),
    written atomically."""
    out = Path(out)
    t = table.read_table()
    if out.suffix == ".parquet":
        atomic_write_table(t, out)
    elif out.suffix in (".jsonl", ".json"):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            for b in t.to_batches(max_chunksize=4096):
                for r in b.to_pylist():
                    r.update({k: json.loads(r[k]) for k in GROUND_COLUMNS if r.get(k) is not None})
                    f.write(json.dumps(r, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    else:
        raise ValueError(f"-o must end in .parquet or .jsonl, got {str(out)!r}")
    return out
