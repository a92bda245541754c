"""The vLLM settings of the tests whose commands start an engine of their own in a subprocess or
a Ray actor (report --input's engine actors: kill-and-resume, two nodes, Ray jobs, RAG/DDP).

VLLM_ENABLE_V1_MULTIPROCESSING=0 runs vLLM's engine core in the process that builds the engine
(the mode the engine falls back to without the plugin entry point, ecgbatch.serving.engine; same
tokens: test_report_archive compares an in-process actor's report with the session engine's).
On 2 cores it starts in ~10 s instead of ~30 s (no second process importing torch and vLLM) and
stops in ~1 s instead of ~10 s. The default, multiprocess mode keeps its coverage where the test
is about it: the session engine (conftest ``vllm_engine``), ``ecgbatch serve`` (``ecg_server``),
`chat`, `report RECORD --ddp` in its own process (test_diagnosis_prompt: a quiet, clean
engine shutdown) and an engine actor of `report --input` (test_report_archive_overlap's
pipeline run)."""
from __future__ import annotations

from contextlib import contextmanager

import pytest

VLLM_TEST_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@contextmanager
def engine_actor_env():
    """VLLM_TEST_ENV in this process's environment while a `report --input` runs in it: the driver
    hands these variables to its engine actors (ecgbatch.pipelines.report); put back afterwards, so
    the session's own engine (multiprocess) never sees them."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in VLLM_TEST_ENV.items():
            mp.setenv(k, v)
        yield
