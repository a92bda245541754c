"""Prometheus metrics of ``ecgbatch serve`` (``GET /metrics``, behind ``--api-key`` like /v1).

ecgbatch's own series (one registry per app, so a second app in one process starts at zero):

    ecgbatch_http_requests_total{route,status}         answered requests (unknown paths: route="other")
    ecgbatch_http_request_duration_seconds{route}      until the last byte of the body (streams included)
    ecgbatch_prompt_tokens_total{model}                prompt positions, the ECG's tokens included
    ecgbatch_completion_tokens_total{model}            generated tokens (a stream cut short counts what it got)
    ecgbatch_requests_in_flight                        chat requests holding a slot (bodies read)
    ecgbatch_requests_queued                           of those, the ones without their first token yet
                                                       (reading the ECG, grounding, waiting for the engine)
    ecgbatch_ecg_input_seconds{stage}                  read / preprocess / grounding of a request's ECG

vLLM's engine statistics (``vllm:`` series: running and waiting requests, KV-cache use, time to
first token, inter-token latency, prefill/decode time, LoRA in use ...) are vLLM's own
PrometheusStatLogger, which AsyncLLM attaches when it is built with log stats on (serve does);
it registers in prometheus_client's global registry, which /metrics appends (with the server
process's ``process_*`` / ``python_*`` series).
"""
from __future__ import annotations

import time

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)

ROUTES = frozenset({"/v1/chat/completions", "/v1/models", "/v1/ecg/preview", "/health", "/", "/metrics"})
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)   # a CPU chat takes seconds
ECG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def route_of(path: str) -> str:
    """The route label of a request path: a known route, else "other" (no label per random URL)."""
    return path if path in ROUTES else "other"


class ServeMetrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ecgbatch_http_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("ecgbatch_http_request_duration_seconds",
                                 "request to the last byte of the response body", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("ecgbatch_prompt_tokens", "prompt positions (ECG tokens included)",
                                     ["model"], registry=r)
        self.completion_tokens = Counter("ecgbatch_completion_tokens", "generated tokens", ["model"], registry=r)
        self.in_flight = Gauge("ecgbatch_requests_in_flight", "chat requests holding a slot", registry=r)
        self.queued = Gauge("ecgbatch_requests_queued", "chat requests in flight without their first token yet",
                            registry=r)
        self.ecg_seconds = Histogram("ecgbatch_ecg_input_seconds", "time to read, preprocess and ground "
                                     "a request's ECG", ["stage"], buckets=ECG_BUCKETS, registry=r)

    def watch(self, service) -> None:
        """Read the gauges from ``service`` (its ``in_flight`` and ``queued`` counts) at scrape time."""
        self.in_flight.set_function(lambda: service.in_flight)
        self.queued.set_function(lambda: service.queued)

    def tokens(self, model: str, n_prompt: int, n_out: int) -> None:
        self.prompt_tokens.labels(model).inc(n_prompt)
        self.completion_tokens.labels(model).inc(n_out)

    def ecg_stages(self, seconds: dict[str, float]) -> None:
        for stage, s in seconds.items():
            self.ecg_seconds.labels(stage).observe(s)

    def answered(self, path: str, response, t0: float):
        """Count ``response`` and time it to its last byte (a streamed body is timed when it ends)."""
        route, status = route_of(path), str(response.status_code)

        def done() -> None:
            self.requests.labels(route, status).inc()
            self.latency.labels(route).observe(time.perf_counter() - t0)

        body = getattr(response, "body_iterator", None)
        if body is None:
            done()
            return response

        async def timed():
            try:
                async for chunk in body:
                    yield chunk
            finally:
                done()

        response.body_iterator = timed()
        return response

    def exposition(self) -> bytes:
        """The text format: ecgbatch's series, then the global registry's (vLLM's engine, process)."""
        return generate_latest(self.registry) + generate_latest(REGISTRY)
