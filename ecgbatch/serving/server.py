"""``ecgbatch serve``: an OpenAI-compatible chat server with ECG input, on vLLM's AsyncLLM.

    GET  /v1/models                 the base model and each LoRA adapter (``model`` picks one)
    POST /v1/chat/completions       OpenAI chat (``stream`` with SSE chunks, ``stream_options``)
                                    + an ``{"type": "ecg", "ecg": {...}}`` content part
                                    (see ecgbatch.serving.chat_request for its two forms)
    POST /v1/ecg/preview            uploaded ECG files -> inline part, summary, 12-lead plot (the page)
    GET  /metrics                   Prometheus text format (ecgbatch.serving.metrics; vLLM's engine stats)
    GET  /health, GET /             liveness; the web page (static, no key needed to load it)

Why a small FastAPI app of our own rather than vLLM's OpenAI server with a renderer plugin: the
ECG part needs checks vLLM's server cannot express (paths confined to --ecg-dir, lead mapping and
resampling through ecgbatch's readers, 4xx for every bad ECG) and token ids built by
ecgbatch.llava.prompting (ECG-Chat's exact tokenisation, identical to ``report`` and ``chat``),
which a renderer would have to re-implement inside vLLM's message pipeline. Batching, streaming,
LoRA and scheduling stay vLLM's: every request goes to the one AsyncLLM (continuous batching).

Safety: binds loopback unless told otherwise; ``--api-key`` is checked on every /v1 route and on
/metrics (Bearer, constant-time); bodies, ECG sizes, messages and max_tokens are capped; every refusal is a
4xx JSON error in OpenAI's shape ({"error": {"message", "type", "code"}}): malformed JSON, nesting
deeper than MAX_JSON_DEPTH, numbers past Python's digit limit, invalid Unicode included. A body
must arrive within ``Limits.body_timeout_s`` (408), and a request takes an in-flight slot only once
its body is read, so slow or stalled uploads cannot hold the slots that valid requests need. A
client that goes away is logged in one line; an unexpected exception is logged once (with its
traceback, in the server log only) and answered 500 in the same JSON shape.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request   # module level: the routes' annotations are resolved from here
from starlette.requests import ClientDisconnect

from ecgbatch.llava.contradictions import report_fields
from ecgbatch.llava.errors import EcgLlavaError
from ecgbatch.llava.grounding import ground_conversation, ground_inputs, grounds_labeller
from ecgbatch.serving.chat_request import (ChatJob, Limits, RequestError, is_utf8, model_input,
                                           parse_chat_request)
from ecgbatch.serving.metrics import CONTENT_TYPE, ServeMetrics
from ecgbatch.serving.server_upload import preview

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("web") / "index.html"
MAX_JSON_DEPTH = 32     # an OpenAI chat body nests ~6 deep (messages / content / part / ecg)


class ClientGone(Exception):
    """The client disconnected before its body was read."""


@dataclass
class ServerConfig:
    model_dir: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    lora: Path | None = None              # the model's own adapter, applied to the base name
    served_name: str | None = None
    api_key: str | None = None
    ecg_dir: Path | None = None
    limits: Limits = field(default_factory=Limits)
    default_max_tokens: int = 256
    max_in_flight: int = 512              # requests beyond this get 429
    dtype: str = "auto"                   # ecgbatch.device: float32 on CPU, bfloat16 on CUDA
    max_num_seqs: int | None = None
    work_dir: str | None = None
    grounded: bool | None = None          # the grounded prompt (None: the model's config prompt.grounded)


def error_response(status: int, message: str, code: str = "invalid_request"):
    from fastapi.responses import JSONResponse

    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            413: "invalid_request_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": None}},
                        status_code=status)


async def read_json(request, limit: int, timeout_s: float = 30.0):
    """The body as JSON: refused (413) once it passes ``limit`` bytes, even without
    Content-Length; 408 when it has not arrived within ``timeout_s``; 400 when it is not JSON this
    server can hold (syntax, depth, number size, invalid Unicode). ClientGone when the client
    disconnects first."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {declared} bytes is over the limit of {limit}", 413, "too_large")
    chunks, n = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                n += len(chunk)
                if n > limit:
                    raise RequestError(f"request body is over the limit of {limit} bytes", 413, "too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(f"the request body did not arrive within {timeout_s:g} s", 408,
                           "body_timeout") from None
    except ClientDisconnect:
        raise ClientGone() from None
    return parse_json(b"".join(chunks))


def parse_json(raw: bytes):
    """JSON bytes -> value, or RequestError(400) naming what is wrong (never echoing the body)."""
    try:
        body = json.loads(raw or b"null")
    except RecursionError:
        raise RequestError(f"the body is not valid JSON: nested deeper than {MAX_JSON_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column "
                           f"{exc.colno}") from None
    except UnicodeDecodeError:
        raise RequestError("the body is not valid JSON: it is not UTF-8") from None
    except ValueError:          # an integer past Python's 4300-digit conversion limit
        raise RequestError("the body is not valid JSON this server accepts: a number is too long") from None
    check_json(body)
    return body


def check_json(body) -> None:
    """Depth at most MAX_JSON_DEPTH and every key and string valid Unicode (400 otherwise);
    iterative, so a deep body cannot exhaust the stack here either."""
    stack = [(body, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise RequestError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                if isinstance(k, str) and not is_utf8(k):
                    raise RequestError("the body holds a key that is not valid Unicode (lone surrogate)")
                stack.append((x, depth + 1))
        elif isinstance(v, str) and not is_utf8(v):
            raise RequestError("the body holds a string that is not valid Unicode (lone surrogate)")


class Slot:
    """One chat request's place: in flight from its body read to its response's end, queued until
    its first token (``started``); ``release`` is idempotent."""

    def __init__(self, svc: "ChatService"):
        self.svc, self.waiting, self.held = svc, True, True
        svc.in_flight += 1
        svc.queued += 1

    def started(self) -> None:
        if self.waiting:
            self.waiting = False
            self.svc.queued -= 1

    def release(self) -> None:
        self.started()
        if self.held:
            self.held = False
            self.svc.in_flight -= 1


class ChatService:
    """The routes' logic, around one AsyncEcgLlava."""

    def __init__(self, cfg: ServerConfig, engine, metrics: ServeMetrics | None = None):
        self.cfg, self.engine, self.in_flight, self.queued = cfg, engine, 0, 0
        self.metrics = metrics or ServeMetrics()
        self.metrics.watch(self)
        self.grounded = engine.config.grounded_prompt if cfg.grounded is None else bool(cfg.grounded)
        self.labeller = grounds_labeller(cfg.model_dir)   # the tower encoder's probes, or None

    def grounding(self, ecg, measurements):
        """The request's Grounding (measurements + probe findings; in a worker thread)."""
        return ground_inputs(measurements, [ecg], self.labeller, self.engine.config.grounding_wording)[0]

    def models(self) -> dict:
        now = int(time.time())
        data = [{"id": n, "object": "model", "created": now, "owned_by": "ecgbatch",
                 "root": self.engine.served_name, "parent": None if n == self.engine.served_name
                 else self.engine.served_name} for n in self.engine.model_names]
        return {"object": "list", "data": data}

    async def prepare(self, body) -> tuple[ChatJob, object, list[int]]:
        """Parse, check the model name, build the ECG input and its grounds (in a thread) and
        the prompt ids (the grounding's lines before the first question when grounded); the
        job's ``grounding`` attribute keeps the grounds for the response's ``ecgbatch`` field."""
        job = parse_chat_request(body, self.engine.config.ecg_token, self.cfg.limits, self.cfg.default_max_tokens)
        if job.model not in self.engine.model_names:
            raise RequestError(f"model {job.model!r} is not served here; GET /v1/models lists "
                               f"{', '.join(self.engine.model_names)}", 404, "model_not_found")
        measured: list = []
        seconds: dict[str, float] = {}
        ecg = await asyncio.to_thread(model_input, job.ecg_part, self.engine.config, self.cfg.ecg_dir,
                                      self.cfg.limits, measured, seconds)
        t0 = time.perf_counter()
        job.grounding = await asyncio.to_thread(self.grounding, ecg, measured)
        self.metrics.ecg_stages({**seconds, "grounding": time.perf_counter() - t0})
        question, history = job.question, job.history
        if self.grounded:
            question, history = ground_conversation(job.grounding, question, history)
        try:
            ids = self.engine.prompt_ids(question, history)
            self.engine.check_length(ids, job.sampling.max_tokens)
        except EcgLlavaError as exc:
            raise RequestError(str(exc), 400, getattr(exc, "kind", "bad_prompt")) from None
        return job, ecg, ids

    async def generate(self, job: ChatJob, ecg, ids, rid: str, slot: Slot):
        """The engine's deltas; the slot leaves the queue at the first, the tokens are counted at
        the end (also when the client stops reading)."""
        last = None
        try:
            async for d in self.engine.stream(ecg, ids, job.sampling, job.model, rid):
                slot.started()
                last = d
                yield d
        finally:
            if last is not None:
                self.metrics.tokens(job.model, last.n_prompt_tokens, last.n_output_tokens)

    async def complete(self, job: ChatJob, ecg, ids, slot: Slot) -> dict:
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        text, last = [], None
        async for d in self.generate(job, ecg, ids, rid, slot):
            text.append(d.text)
            last = d
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": job.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                             "finish_reason": last.finish_reason, "logprobs": None}],
                "usage": _usage(last), "ecgbatch": self.grounds(job, "".join(text))}

    def grounds(self, job: ChatJob, text: str) -> dict:
        """The response's ``ecgbatch`` field: {"grounded", "findings", "contradictions"}."""
        return {"grounded": self.grounded, **report_fields(text, job.grounding)}

    async def sse(self, job: ChatJob, ecg, ids, slot: Slot):
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta, finish=None, usage=None, grounds=None):
            choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": job.model,
                   "choices": choices}
            if usage:
                obj["usage"] = usage
            if grounds is not None:
                obj["ecgbatch"] = grounds
            return f"data: {json.dumps(obj)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        last, text = None, []
        try:
            async for d in self.generate(job, ecg, ids, rid, slot):
                last = d
                text.append(d.text)
                if d.text or d.finish_reason:   # the finishing chunk carries the ecgbatch field
                    grounds = self.grounds(job, "".join(text)) if d.finish_reason else None
                    yield chunk({"content": d.text} if d.text else {}, d.finish_reason, grounds=grounds)
        except Exception as exc:   # the status line is sent already: report in-band, then end
            log.exception("stream %s failed", rid)
            err = {"message": f"the engine failed while streaming ({type(exc).__name__}; logged on "
                              "the server)", "type": "server_error"}
            yield f"data: {json.dumps({'error': err})}\n\n"
        if job.include_usage and last is not None:
            yield chunk(None, usage=_usage(last))
        yield "data: [DONE]\n\n"


def _usage(d) -> dict:
    return {"prompt_tokens": d.n_prompt_tokens, "completion_tokens": d.n_output_tokens,
            "total_tokens": d.n_prompt_tokens + d.n_output_tokens}


def build_app(cfg: ServerConfig, engine_factory=None):
    """The FastAPI app; the engine starts in the app's lifespan (before the port accepts requests)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    from ecgbatch.serving.async_engine import AsyncEcgLlava

    state: dict = {}
    metrics = ServeMetrics()

    @asynccontextmanager
    async def lifespan(app):
        factory = engine_factory or (lambda: AsyncEcgLlava.start(
            cfg.model_dir, cfg.adapters, cfg.served_name, lora=cfg.lora, dtype=cfg.dtype,
            max_num_seqs=cfg.max_num_seqs, work_dir=cfg.work_dir, disable_log_stats=False))
        engine = factory()
        state["svc"] = ChatService(cfg, engine, metrics)
        try:
            yield
        finally:
            engine.shutdown()

    app = FastAPI(title="ecgbatch serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        t0 = time.perf_counter()
        return metrics.answered(request.url.path, await answer(request, call_next), t0)

    async def answer(request: Request, call_next):
        path = request.url.path
        if (path.startswith("/v1/") or path == "/metrics") and cfg.api_key:
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), cfg.api_key.encode()):
                return error_response(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                      "invalid_api_key")
        try:
            return await call_next(request)
        except RequestError as exc:
            return error_response(exc.status, str(exc), exc.code)
        except ClientGone:
            log.warning("%s %s: the client disconnected before its request body was read",
                        request.method, request.url.path)
            return error_response(400, "the client disconnected", "client_disconnected")
        except Exception:       # noqa: BLE001 - never a traceback or a plain-text 500 to the client
            log.exception("%s %s failed unexpectedly", request.method, request.url.path)
            return error_response(500, "internal server error (logged on the server)", "internal_error")

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return error_response(exc.status, str(exc), exc.code)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        return error_response(exc.status_code, str(exc.detail), "http_error")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        errs = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return error_response(400, f"invalid request: {errs}", "invalid_request")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/metrics")
    async def metrics_text():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return state["svc"].models()

    @app.post("/v1/ecg/preview")
    async def ecg_preview(request: Request):
        body = await read_json(request, cfg.limits.max_body_bytes, cfg.limits.body_timeout_s)
        return JSONResponse(await asyncio.to_thread(preview, body, cfg.limits))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        svc: ChatService = state["svc"]
        # the body first: a slot is taken only by a request that has arrived whole (a stalled
        # upload holds a connection until body_timeout_s, never a slot)
        body = await read_json(request, cfg.limits.max_body_bytes, cfg.limits.body_timeout_s)
        if svc.in_flight >= cfg.max_in_flight:
            raise RequestError(f"the server is busy ({svc.in_flight} requests in flight); retry later",
                               429, "busy")
        slot = Slot(svc)
        streaming = False
        try:
            job, ecg, ids = await svc.prepare(body)
            if job.stream:
                streaming = True
                return StreamingResponse(_held(slot, svc.sse(job, ecg, ids, slot)), media_type="text/event-stream")
            try:
                return JSONResponse(await svc.complete(job, ecg, ids, slot))
            except ValueError as exc:      # vLLM's own input checks (it validates before queueing)
                raise RequestError(f"the engine refused the request: {exc}", 400, "engine_refused") from None
        finally:
            if not streaming:
                slot.release()

    return app


async def _held(slot: Slot, gen):
    try:
        async for item in gen:
            yield item
    finally:
        slot.release()


def serve(cfg: ServerConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(build_app(cfg), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def free_port(lo: int = 20000, hi: int = 32000) -> int:
    """A free loopback port BELOW the kernel's ephemeral range (32768+), so that the ports vLLM's
    engine picks for itself (ZMQ, torch.distributed) cannot take it between this check and bind."""
    import random
    import socket

    for port in random.Random().sample(range(lo, hi), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {lo}..{hi}")
