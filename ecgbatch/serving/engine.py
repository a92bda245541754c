"""The offline vLLM engine for ECG-LLaVA: one ``vllm.LLM`` built with the right arguments, inputs
checked before they reach vLLM, results as plain dataclasses.

    engine = EcgLlavaEngine(model_dir, lora_rank=8)             # head padding, plugin, LLM
    ids = engine.prompt_ids("Please describe this ECG.")        # ECG-Chat's exact prompt ids
    [res] = engine.generate([EcgRequest(ecg, ids)], max_tokens=64, lora="path/to/adapter")
    res.text, res.n_output_tokens, res.finish_reason

vLLM spawns its engine process on CPU: create the engine under ``if __name__ == "__main__":`` (or
in a function called from one). The spawned process registers the model through the
``vllm.general_plugins`` entry point; when the installed ecgbatch does not declare it (an old
editable install), the engine runs vLLM in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) instead of
failing in the child. Same tokens either way.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ecgbatch.device import Device, ModelShape, detect, engine_settings
from ecgbatch.llava.loading import load_tokenizer
from ecgbatch.llava.prompting import prompt_ids
from ecgbatch.quiet import cpu_backend_notice, is_quiet
from ecgbatch.serving import folder as folders
from ecgbatch.serving.engine_loop import EngineLoop
from ecgbatch.serving.errors import ContextLengthError, EcgInputError, EcgPromptError

log = logging.getLogger(__name__)

# On a CPU with this many usable cores or fewer, the offline engine binds vLLM's OpenMP threads to
# every core instead of vLLM's default (all but one, that one left to the scheduler process).
# Measured by bench/report.py on 2 cores (64 prompts, SmolLM2-135M, float32; bench/RESULTS.md):
# prefill 38.9 s -> 23.9 s, decode step at 60 sequences 725 -> 456 ms. Set VLLM_CPU_OMP_THREADS_BIND
# to override.
SMALL_CPU_CORES = 4
# Seconds vLLM's engine process gets to stop when we shut it down ourselves (vLLM's own exit path
# waits 5 s, then kills it and logs "force killing"; a loaded 2-core machine needs longer), and
# the seconds its workers get inside that (vLLM's default 5 s, then SIGTERM and a warning).
SHUTDOWN_TIMEOUT_S = 60.0
WORKER_SHUTDOWN_S = 30


def graceful_shutdown_env() -> None:
    """Let vLLM's workers exit by themselves when the engine stops (set before it starts)."""
    os.environ.setdefault("VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS", str(WORKER_SHUTDOWN_S))


def engine_env(log_stream: bool = True) -> None:
    """vLLM's defaults for the generative commands, set before vLLM is imported: its log at
    WARNING (on stderr with ``log_stream``: stdout is the report, --json), a small KV cache on CPU
    unless the user set one."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if log_stream:
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def default_cpu_thread_binding() -> str | None:
    """The VLLM_CPU_OMP_THREADS_BIND value that binds the OpenMP threads to every allowed core on a
    small CPU machine; None when it is already set, on a GPU, or on a bigger CPU."""
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        return None
    import torch

    if torch.cuda.is_available():
        return None
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cpus or len(cpus) > SMALL_CPU_CORES:
        return None
    return ",".join(map(str, cpus))


def context_length(config, max_model_len: int | None = None) -> int:
    """The engine's context: ``max_model_len`` when given, else the config's (2048 without one)."""
    return int(max_model_len or config.context_length or 2048)


def vllm_engine_args(served_dir: str | Path, config, *, dtype: str = "auto", max_model_len: int | None = None,
                     max_num_seqs: int | None = None, enforce_eager: bool | None = None, lora_rank: int | None = None,
                     max_loras: int = 1, gpus_per_engine: float | None = None, device: Device | None = None,
                     **extra) -> dict:
    """The vLLM engine arguments of an ECG-LLaVA folder (``served_dir``: its runnable copy,
    folders.runnable_model_folder), shared by the offline engine, the async engine of serve/chat
    and any other vLLM front end (bench/report_archive.py's ray.data.llm run): one ECG per prompt,
    seed 0, the config's context; dtype, eager mode, GPU share, tensor parallelism and the batch
    limit from ecgbatch.device for ``device`` (default: this process's); no weight-loading bar in
    quiet mode (ecgbatch.quiet); ``extra`` goes through."""
    device = device or detect()
    ctx = context_length(config, max_model_len)
    settings = engine_settings(device, ModelShape.of(config, ctx, served_dir), dtype=dtype,
                               gpus_per_engine=gpus_per_engine, max_num_seqs=max_num_seqs,
                               lora=lora_rank is not None, eager=enforce_eager)
    kwargs = dict(model=str(served_dir), max_model_len=ctx, limit_mm_per_prompt={"ecg": 1}, seed=0,
                  **settings.vllm_kwargs(), **extra)
    kwargs.setdefault("use_tqdm_on_load", not is_quiet())
    if lora_rank is not None:
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank, max_loras=max_loras)
    return kwargs


@dataclass
class EcgRequest:
    """One ECG [leads, samples] (already model input: ecgbatch.llava.preprocess_for_model) and the
    prompt's token ids with exactly one ``ecg_token_id`` (ecgbatch.llava.prompting.prompt_ids)."""

    ecg: np.ndarray
    prompt_ids: list[int]
    id: str = ""


@dataclass
class EcgResult:
    id: str
    text: str
    token_ids: list[int]
    n_prompt_tokens: int          # after the <ecg> placeholder became the ECG's N positions
    n_output_tokens: int
    finish_reason: str | None     # "stop" (EOS / stop string) or "length" (max_tokens)
    lora: str | None = None
    # engine-core seconds from first scheduled to last token (None unless the LLM was built with
    # llm_kwargs={"disable_log_stats": False}, which fills RequestOutput.metrics)
    generation_s: float | None = None
    # requests of other generate calls (other threads) already in the engine when this request's
    # call entered it: > 0 means its batch overlapped theirs (ecgbatch.serving.engine_loop)
    in_flight_at_submit: int = 0


def _generation_seconds(out) -> float | None:
    m = getattr(out, "metrics", None)
    t0, t1 = getattr(m, "scheduled_ts", 0.0), getattr(m, "last_token_ts", 0.0)
    return float(t1 - t0) if m is not None and t0 and t1 >= t0 else None


@dataclass
class EngineOptions:
    dtype: str = "auto"                   # ecgbatch.device: float32 on CPU, bfloat16 on CUDA
    max_model_len: int | None = None      # default: the config's context (max_length / positions)
    max_num_seqs: int | None = None       # default: on GPU sized for its memory; on CPU vLLM's
    enforce_eager: bool | None = None     # default: on CPU only (start-up ~18 s instead of ~35 s)
    gpus_per_engine: float | None = None  # > 1: tensor parallelism over that many whole GPUs
    lora_rank: int | None = None          # enable LoRA with this max rank (None: no LoRA)
    max_loras: int = 1
    work_dir: str | None = None           # where head-padded copies are cached
    llm_kwargs: dict = field(default_factory=dict)
    repetition_penalty: float | None = None  # default: the model config's generation.repetition_penalty


def stop_engine(loop: EngineLoop, llm, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
    """vLLM's own shutdown of an offline ``LLM`` (what AsyncLLM.shutdown does for the async one):
    our loop first (no step in flight), then the engine-core client (MPClient: it stops its
    process monitor before the process, so the monitor does not report a death), then the
    renderer's thread pools."""
    loop.stop()
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None:
        core.shutdown(timeout=timeout)
    renderer = getattr(engine, "renderer", None)
    if renderer is not None:
        renderer.shutdown()


class EcgLlavaEngine:
    def __init__(self, model_dir: str | Path, options: EngineOptions | None = None, **kw):
        self.options = opts = options or EngineOptions(**kw)
        self.model_dir = Path(model_dir)
        self.config = folders.check_model_folder(self.model_dir)
        self.n_ecg_tokens = self._token_count()
        if opts.lora_rank is not None:
            folders.check_rank(opts.lora_rank, None, "max_lora_rank")
        self.device = detect()
        self.served_dir = folders.runnable_model_folder(self.model_dir, self.config, opts.work_dir, self.device)
        self.max_model_len = context_length(self.config, opts.max_model_len)
        self._loras: dict[str, object] = {}
        self._lora_lock = threading.Lock()    # generate() may be called from several threads
        self.llm = self._build_llm()
        self.loop = EngineLoop(self.llm)      # generate() from any thread; calls overlap in the engine
        self._tokenizer = None
        # shutdown(), or at the latest when this object is collected or the interpreter exits:
        # finalizers run newest first there, so before vLLM's own (which race its engine-process
        # monitor: "engine core exited unexpectedly"); holds the engine, not this object
        self._stopper = weakref.finalize(self, stop_engine, self.loop, self.llm, SHUTDOWN_TIMEOUT_S)

    # -- set-up ---------------------------------------------------------------------------------
    def _token_count(self) -> int:
        from ecgbatch.serving.ecg_llava_vllm import ecg_token_count

        return ecg_token_count(self.config)

    def _build_llm(self):
        from ecgbatch.serving.plugin import entry_point_installed, register

        register()
        if not entry_point_installed():
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            log.info("ecgbatch's vllm.general_plugins entry point is not installed: running vLLM in-process")
        from vllm import LLM

        cpu_backend_notice(self.device.cuda)
        graceful_shutdown_env()
        o = self.options
        kwargs = vllm_engine_args(self.served_dir, self.config, dtype=o.dtype, max_model_len=self.max_model_len,
                                  max_num_seqs=o.max_num_seqs, enforce_eager=o.enforce_eager,
                                  lora_rank=o.lora_rank, max_loras=o.max_loras, gpus_per_engine=o.gpus_per_engine,
                                  device=self.device, **o.llm_kwargs)
        bind = default_cpu_thread_binding()
        if bind is None:
            return LLM(**kwargs)
        log.info("vLLM CPU threads bound to every core (%s); set VLLM_CPU_OMP_THREADS_BIND to change", bind)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind     # read by the worker it spawns, then put back
        try:
            return LLM(**kwargs)
        finally:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stop vLLM's engine process now and wait for it, rather than leave it to the interpreter's
        exit (where vLLM's finalizer races the other exit handlers: "engine core exited
        unexpectedly", force kills after 5 s). Idempotent; an engine nobody shut down is stopped
        the same way when it is collected or at the interpreter's exit."""
        if self._stopper.detach() is not None:
            stop_engine(self.loop, self.llm, timeout)

    # -- prompts ----------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_dir, self.config)
        return self._tokenizer

    def prompt_ids(self, question: str, history=None) -> list[int]:
        """The generation prompt for ``question`` in the model's prompt format, as token ids
        (the same ids the HF path uses)."""
        return prompt_ids(self.tokenizer, question, self.config, history)

    # -- LoRA ------------------------------------------------------------------------------------
    def lora_request(self, adapter: str | Path):
        """A LoRARequest for a peft adapter of this model (checked, head-padded when needed)."""
        from vllm.lora.request import LoRARequest

        key = str(Path(adapter).resolve())
        with self._lora_lock:        # one id per adapter, whichever thread asks first
            if key in self._loras:
                return self._loras[key]
            if self.options.lora_rank is None:
                raise folders.UnsupportedLoraRankError(
                    f"{adapter}: this engine was started without LoRA (lora_rank=None)")
            _, served = folders.served_adapter(adapter, self.config, self.options.lora_rank, self.options.work_dir,
                                               self.device)
            self._loras[key] = LoRARequest(Path(adapter).name or "adapter", len(self._loras) + 1, str(served))
            return self._loras[key]

    # -- generation -------------------------------------------------------------------------------
    @property
    def repetition_penalty(self) -> float:
        """The engine's option, else the model's decoding default (1.0: none)."""
        rp = self.options.repetition_penalty
        return float(rp) if rp is not None else self.config.default_repetition_penalty

    def check_request(self, req: EcgRequest, max_tokens: int, i: int = 0) -> int:
        """Refuse what vLLM would reject late or obscurely; returns the spliced prompt length."""
        tower = self.config.tower_cfg
        name = req.id or f"request {i}"
        ecg = np.asarray(req.ecg)
        if ecg.shape != (tower.lead_num, tower.seq_length):
            raise EcgInputError(f"{name}: the ECG must be [{tower.lead_num} leads, {tower.seq_length} samples] "
                                f"after the model's preprocessing, got shape {ecg.shape}")
        if not np.issubdtype(ecg.dtype, np.number) or not np.isfinite(ecg).all():
            raise EcgInputError(f"{name}: the ECG holds non-numeric, NaN or infinite values")
        n_ph = sum(1 for t in req.prompt_ids if t == self.config.ecg_token_id)
        if n_ph != 1:
            raise EcgPromptError(f"{name}: the prompt holds {n_ph} {self.config.ecg_token} placeholders for 1 ECG; "
                                 f"put exactly one {self.config.ecg_token} in it")
        n = len(req.prompt_ids) - 1 + self.n_ecg_tokens
        if n + max_tokens > self.max_model_len:
            raise ContextLengthError(f"{name}: the prompt is {n} positions with its ECG tokens; with max_tokens="
                                     f"{max_tokens} that exceeds the model's context of {self.max_model_len}")
        return n

    def generate(self, requests: Sequence[EcgRequest], max_tokens: int = 128,
                 lora: str | Path | None = None, ignore_eos: bool = False,
                 temperature: float = 0.0) -> list[EcgResult]:
        """Greedy (temperature 0) generation for each request, in order. Thread-safe: calls from
        several threads share the engine (the engine loop adds a call's requests while earlier
        calls' requests still generate), each returns its own results."""
        from vllm import SamplingParams

        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
        for i, r in enumerate(requests):
            self.check_request(r, max_tokens, i)
        lora_req = self.lora_request(lora) if lora is not None else None
        prompts = [{"prompt_token_ids": list(map(int, r.prompt_ids)),
                    "multi_modal_data": {"ecg": np.ascontiguousarray(r.ecg, dtype=np.float32)}}
                   for r in requests]
        sp = SamplingParams(temperature=temperature, max_tokens=max_tokens, ignore_eos=ignore_eos,
                            repetition_penalty=self.repetition_penalty)
        outs, before = self.loop.run(prompts, sp, lora_req)
        return [EcgResult(id=r.id, text=o.outputs[0].text, token_ids=list(o.outputs[0].token_ids),
                          n_prompt_tokens=len(o.prompt_token_ids or []),
                          n_output_tokens=len(o.outputs[0].token_ids),
                          finish_reason=o.outputs[0].finish_reason,
                          lora=str(lora) if lora is not None else None,
                          generation_s=_generation_seconds(o), in_flight_at_submit=before)
                for r, o in zip(requests, outs)]
