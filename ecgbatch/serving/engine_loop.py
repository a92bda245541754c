"""One thread owns the offline vLLM engine and takes work from a request queue, so that calls from
several threads share one engine: a call's requests join the engine as soon as the loop sees them
(between two engine steps), while the requests of earlier calls are still generating. This is
how the report job's engine actor overlaps its batches (the next batch is submitted while the last
one drains) without a second engine or vLLM's async front end.

    loop = EngineLoop(llm)                          # llm: a vllm.LLM
    outs, before = loop.run(prompts, params, lora)  # blocks; RequestOutputs in prompt order
    loop.stats                                      # what the loop saw (calls, overlap, peak)
    loop.stop()

vLLM's offline engine is not thread-safe: only the loop's thread touches it (enqueue, step,
abort). Greedy decoding per request does not depend on what else is in the engine's batch
(tests/test_report_archive_overlap.py checks the same reports with and without overlap).
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from ecgbatch.errors import EcgbatchError

log = logging.getLogger(__name__)

_STOP = object()
JOIN_TIMEOUT_S = 30.0


class EngineStoppedError(EcgbatchError):
    """A generation call reached an engine that was being shut down."""

    kind = "engine_stopped"


@dataclass
class LoopStats:
    """Counters of an EngineLoop (read them between calls; the loop's thread writes them)."""

    calls: int = 0                 # calls whose requests entered the engine
    overlapped_calls: int = 0      # ... while requests of an earlier call were still in the engine
    max_requests_in_flight: int = 0
    max_calls_in_flight: int = 0


@dataclass
class _Call:
    prompts: list
    params: object
    lora: object
    done: threading.Event = field(default_factory=threading.Event)
    ids: list[str] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    error: BaseException | None = None
    in_flight_before: int = 0     # requests of other calls in the engine when this one entered

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()


class EngineLoop:
    def __init__(self, llm):
        self._llm = llm
        self._inbox: queue.Queue = queue.Queue()
        self._owner: dict[str, _Call] = {}        # request id (LLM's) -> its call, until it finishes
        self._internal: dict[str, str] = {}       # request id -> the engine's (for aborts)
        self._calls: set[int] = set()             # id() of the calls with requests in the engine
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopped = False
        self.stats = LoopStats()

    # -- callers' side ---------------------------------------------------------------------------
    def run(self, prompts: list, params, lora=None) -> tuple[list, int]:
        """Generate ``prompts`` (vLLM prompt dicts) with ``params``; blocks until all finished.
        Returns their RequestOutputs in order and how many requests of other calls were in the
        engine when these entered it (0: nothing to overlap with)."""
        call = _Call(list(prompts), params, lora)
        if not call.prompts:
            return [], 0
        with self._start_lock:
            if self._stopped:
                raise EngineStoppedError("the vLLM engine is shut down; no more generation")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ecgbatch-engine-loop", daemon=True)
                self._thread.start()
            self._inbox.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return [call.outputs[i] for i in call.ids], call.in_flight_before

    def stop(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Fail the calls still waiting, end the loop's thread (after its current step). Idempotent."""
        with self._start_lock:
            self._stopped = True
            thread = self._thread
            if thread is not None:
                self._inbox.put(_STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the loop's thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        engine = self._llm.llm_engine
        while True:
            item = self._inbox.get() if not self._owner else _next_nowait(self._inbox)
            while item is not None:                     # every call that arrived joins before a step
                if item is _STOP:
                    self._fail_all(EngineStoppedError("the vLLM engine was shut down during generation"))
                    return
                self._add(item)
                item = _next_nowait(self._inbox)
            if not self._owner:
                continue
            try:
                outs = engine.step()
            except Exception as exc:  # noqa: BLE001 - every waiting call gets the engine's error
                self._fail_all(exc)
                continue
            for o in outs:
                call = self._owner.pop(o.request_id, None) if o.finished else None
                if call is not None:
                    self._internal.pop(o.request_id, None)
                    call.outputs[o.request_id] = o
                    if len(call.outputs) == len(call.ids):
                        self._calls.discard(id(call))
                        call.finish()
            if self._owner and not engine.has_unfinished_requests():   # never wait on nothing
                self._fail_all(RuntimeError(f"the vLLM engine has no unfinished requests but "
                                            f"{len(self._owner)} never returned"))

    def _add(self, call: _Call) -> None:
        before = len(self._owner)
        try:      # enqueue aborts what it added when one prompt fails: the call fails alone
            internal = list(self._llm.enqueue(call.prompts, call.params, lora_request=call.lora, use_tqdm=False))
        except Exception as exc:  # noqa: BLE001 - the caller gets vLLM's own error
            call.finish(exc)
            return
        # the engine's ids are the LLM's (a counter: no "-") + "-" + a random suffix; the outputs
        # carry the LLM's
        call.ids = [i.split("-", 1)[0] for i in internal]
        call.in_flight_before = before
        for rid, iid in zip(call.ids, internal):
            self._owner[rid] = call
            self._internal[rid] = iid
        self._calls.add(id(call))
        s = self.stats
        s.calls += 1
        s.overlapped_calls += before > 0
        s.max_requests_in_flight = max(s.max_requests_in_flight, len(self._owner))
        s.max_calls_in_flight = max(s.max_calls_in_flight, len(self._calls))

    def _fail_all(self, exc: BaseException) -> None:
        calls = {id(c): c for c in self._owner.values()}
        if self._owner:
            try:
                self._llm.llm_engine.abort_request([self._internal[r] for r in self._owner], internal=True)
            except Exception:  # noqa: BLE001 - a dead engine cannot abort; the calls fail anyway
                log.debug("abort after an engine failure failed", exc_info=True)
        self._owner.clear()
        self._internal.clear()
        self._calls.clear()
        for c in calls.values():
            c.finish(exc)


def _next_nowait(q: queue.Queue):
    try:
        return q.get_nowait()
    except queue.Empty:
        return None
