"""ECG-LLaVA on vLLM's async engine (``AsyncLLM``): what ``ecgbatch serve`` and ``ecgbatch chat``
stream from. Continuous batching, the scheduler, LoRA and metrics are vLLM's own.

    engine = AsyncEcgLlava.start(folder, adapters={"ecg-chat": "run/lora"})
    ids = engine.prompt_ids(question, history)          # ecgbatch.llava.prompting: identical ids
    async for delta in engine.stream(ecg, ids, sampling, model="ecg-chat"): ...

Folders and adapters are checked (and head-padded where vLLM's attention on this device needs it) by
ecgbatch.serving.folder before the engine starts, exactly as the offline EcgLlavaEngine does.
"""
from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from ecgbatch.device import detect
from ecgbatch.llava.loading import load_tokenizer
from ecgbatch.llava.prompting import prompt_ids
from ecgbatch.quiet import cpu_backend_notice
from ecgbatch.serving import folder as folders
from ecgbatch.serving.engine import SHUTDOWN_TIMEOUT_S, context_length, graceful_shutdown_env, vllm_engine_args
from ecgbatch.serving.errors import ContextLengthError, ModelFolderError


@dataclass
class Delta:
    text: str                      # new text since the last delta
    n_prompt_tokens: int
    n_output_tokens: int           # so far
    finish_reason: str | None      # set on the last delta


def expose_plugin_to_children(work_dir: str | None = None) -> Path:
    """AsyncLLM always runs its engine core in a spawned process, which registers models only
    through the ``vllm.general_plugins`` entry point. When the installed ecgbatch does not declare
    it (an editable install older than the entry point), put a minimal dist-info that declares it
    on the children's PYTHONPATH (importlib.metadata finds entry points on sys.path)."""
    from ecgbatch.serving.plugin import register

    base = Path(work_dir or os.environ.get("ECGBATCH_CACHE") or Path.home() / ".cache" / "ecgbatch")
    root = base / "vllm-plugin-path"
    info = root / "ecgbatch_vllm_plugin-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ecgbatch-vllm-plugin\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        f"[vllm.general_plugins]\necgbatch_ecg_llava = {register.__module__}:register\n")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    # the children must import THIS ecgbatch (a worktree first on sys.path, not the installed one)
    pkg_root = str(Path(__file__).resolve().parents[2])
    for p in (str(root), pkg_root):
        if p not in paths:
            paths.insert(0, p)
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)     # processes started with a fresh interpreter
    if str(root) not in sys.path:                            # multiprocessing's spawn copies sys.path
        sys.path.insert(0, str(root))
    return root


class AsyncEcgLlava:
    def __init__(self, model_dir: Path, config, served_name: str, loras: dict, engine, max_model_len: int):
        self.model_dir, self.config, self.served_name = model_dir, config, served_name
        self.loras, self.engine, self.max_model_len = loras, engine, max_model_len
        from ecgbatch.serving.ecg_llava_vllm import ecg_token_count

        self.tokenizer = load_tokenizer(model_dir, config)
        self.n_ecg_tokens = ecg_token_count(config)

    # -- start-up --------------------------------------------------------------------------------
    @classmethod
    def start(cls, model_dir: str | Path, adapters: dict[str, str | Path] | None = None,
              served_name: str | None = None, lora: str | Path | None = None, dtype: str = "auto", max_model_len: int | None = None,
              max_num_seqs: int | None = None, work_dir: str | None = None, enforce_eager: bool | None = None,
              disable_log_stats: bool = True) -> "AsyncEcgLlava":
        """Check the folder and the adapters, then build vLLM's AsyncLLM (call inside a running
        event loop; the engine core is vLLM's own process). ``adapters``: {model name: peft
        adapter} served beside the base; ``lora``: an adapter applied to the base name itself
        (the model's own adapter, e.g. ecg-llava-mini's lora/)."""
        from ecgbatch.serving.plugin import entry_point_installed, register

        model_dir = Path(model_dir)
        config = folders.check_model_folder(model_dir)
        served_name = served_name or model_dir.name
        adapters = dict(adapters or {})
        if served_name in adapters:
            raise ModelFolderError(f"adapter name {served_name!r} is the base model's name; pick another")
        if lora is not None:          # the model's own adapter: applied to requests for served_name
            adapters[served_name] = lora
        device = detect()
        checked = {name: folders.served_adapter(path, config, None, work_dir, device)
                   for name, path in adapters.items()}
        served = folders.runnable_model_folder(model_dir, config, work_dir, device)
        register()
        if not entry_point_installed():
            expose_plugin_to_children(work_dir)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        max_len = context_length(config, max_model_len)
        kwargs = vllm_engine_args(served, config, dtype=dtype, max_model_len=max_len, max_num_seqs=max_num_seqs,
                                  enforce_eager=enforce_eager,
                                  lora_rank=max((r for r, _ in checked.values()), default=None),
                                  max_loras=max(1, len(checked)), device=device, served_model_name=[served_name],
                                  disable_log_stats=disable_log_stats)
        loras = {name: LoRARequest(name, i + 1, str(served)) for i, (name, (_, served)) in enumerate(checked.items())}
        cpu_backend_notice(device.cuda)
        graceful_shutdown_env()
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        return cls(model_dir, config, served_name, loras, engine, max_len)

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Stop the engine process and wait for it (see EcgLlavaEngine.shutdown)."""
        self.engine.shutdown(timeout=timeout)

    # -- requests --------------------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return [self.served_name, *(n for n in self.loras if n != self.served_name)]

    def prompt_ids(self, question: str, history=None) -> list[int]:
        return prompt_ids(self.tokenizer, question, self.config, history)

    def check_length(self, prompt_ids: list[int], max_tokens: int) -> int:
        n = len(prompt_ids) - 1 + self.n_ecg_tokens
        if n + max_tokens > self.max_model_len:
            raise ContextLengthError(f"the conversation is {n} positions with its ECG tokens; with max_tokens="
                                     f"{max_tokens} that exceeds the model's context of {self.max_model_len}")
        return n

    async def stream(self, ecg: np.ndarray, prompt_ids: list[int], sampling, model: str | None = None,
                     request_id: str | None = None) -> AsyncIterator[Delta]:
        """Generate for one ECG and prompt; yields text deltas (aborts the request if the caller
        stops iterating, e.g. a client that disconnected)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.check_length(prompt_ids, sampling.max_tokens)
        lora = self.loras.get(model or self.served_name)
        sp = SamplingParams(max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                            top_p=sampling.top_p, seed=sampling.seed, stop=sampling.stop or None,
                            repetition_penalty=(sampling.repetition_penalty if sampling.repetition_penalty
                                                is not None else self.config.default_repetition_penalty),
                            output_kind=RequestOutputKind.DELTA)
        prompt = {"prompt_token_ids": [int(t) for t in prompt_ids],
                  "multi_modal_data": {"ecg": np.ascontiguousarray(ecg, dtype=np.float32)}}
        rid = request_id or f"chatcmpl-{uuid.uuid4().hex}"
        n_out = 0
        async for out in self.engine.generate(prompt, sp, rid, lora_request=lora):
            c = out.outputs[0]
            n_out += len(c.token_ids)
            yield Delta(text=c.text, n_prompt_tokens=len(out.prompt_token_ids or []), n_output_tokens=n_out,
                        finish_reason=c.finish_reason if out.finished else None)
