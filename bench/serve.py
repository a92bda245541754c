"""Load test of `ecgbatch serve` on loopback: N chat requests with inline ECGs sent all at once
(the engine batches them), then the same N one at a time. Prints errors, p50/p95 latency and
output tokens/s for both. Bounded: N requests (default 200), a timeout per request, and the
server it starts is stopped at the end.

    python bench/serve.py --model FOLDER [--lora NAME=PATH] [--n 200] [--max-tokens 32]
    python bench/serve.py --url http://127.0.0.1:8000 --model-name NAME     # a running server

Each request asks about one of the readable records of sample_archive/ (inline float32 samples,
each at its own rate and lead order: the server maps and resamples them).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ecg_parts(limit: int = 24) -> list[dict]:
    """Inline ECG parts from the sample archive's readable 12-lead records in voltage units (the
    server refuses other units, e.g. an array stored 'normalized', with a 400)."""
    from ecgbatch.io import list_records, read_record
    from ecgbatch.io.errors import EcgReadError
    from ecgbatch.serving.server_upload import inline_spec

    parts = []
    for src in list_records(str(ROOT / "sample_archive")):
        if "/bad/" in src.path or src.error_kind:
            continue
        try:
            rec = read_record(src.path, index=src.index)
        except (EcgReadError, ValueError, OSError):
            continue
        if rec.n_leads == 12 and rec.n_samples <= 20_000 and rec.units in ("mV", "uV", "V"):
            parts.append(inline_spec(rec))
        if len(parts) >= limit:
            break
    if not parts:
        raise SystemExit("no readable 12-lead record under sample_archive/")
    return parts


def start_server(args) -> tuple[subprocess.Popen, str]:
    from ecgbatch.serving.server import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "ecgbatch.cli", "serve", "--model", args.model, "--name", "bench",
           "--port", str(port), "--dtype", args.dtype, "--max-tokens", str(max(64, args.max_tokens))]
    for spec in args.lora:
        cmd += ["--lora", spec]
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + args.start_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ecgbatch serve exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return proc, url
        except Exception:   # refused, or not ours yet (http.client errors are not OSErrors)
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"the server did not start within {args.start_timeout} s")


async def one(client, model: str, part: dict, max_tokens: int, timeout: float) -> tuple[float, int, str | None]:
    t0 = time.perf_counter()
    try:
        r = await asyncio.wait_for(client.chat.completions.create(
            model=model, max_tokens=max_tokens, temperature=0,
            messages=[{"role": "user", "content": [{"type": "ecg", "ecg": part},
                                                   {"type": "text", "text": "Please describe this ECG."}]}]),
            timeout)
        return time.perf_counter() - t0, r.usage.completion_tokens, None
    except Exception as exc:          # counted and shown, the run goes on
        return time.perf_counter() - t0, 0, f"{type(exc).__name__}: {str(exc)[:120]}"


async def run_mode(url, model, parts, n, max_tokens, timeout, concurrent: bool):
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=os.environ.get("ECGBATCH_API_KEY", "none"),
                                max_retries=0, timeout=timeout)
    jobs = [parts[i % len(parts)] for i in range(n)]
    t0 = time.perf_counter()
    if concurrent:
        res = await asyncio.gather(*(one(client, model, p, max_tokens, timeout) for p in jobs))
    else:
        res = [await one(client, model, p, max_tokens, timeout) for p in jobs]
    wall = time.perf_counter() - t0
    await client.close()
    return res, wall


def row(name, res, wall) -> str:
    lat = np.array([r[0] for r in res])
    errs = [r[2] for r in res if r[2]]
    toks = sum(r[1] for r in res)
    return (f"{name:<14}{len(res):>9}{len(errs):>8}{wall:>9.1f}{np.percentile(lat, 50):>9.2f}"
            f"{np.percentile(lat, 95):>9.2f}{toks:>11}{toks / wall:>11.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="ECG-LLaVA model folder to serve")
    ap.add_argument("--lora", action="append", default=[], help="NAME=PATH adapter to serve")
    ap.add_argument("--url", help="bench a running server on loopback instead")
    ap.add_argument("--model-name", default=None, help="model id to request (default: the served base)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--start-timeout", type=float, default=600.0)
    ap.add_argument("--skip-sequential", action="store_true")
    args = ap.parse_args()
    if not 1 <= args.n <= 1000:
        raise SystemExit("--n must be 1..1000")
    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("bench/serve.py sends load to loopback only")
    if not (args.url or args.model):
        raise SystemExit("give --model FOLDER (a server is started) or --url of a running one")
    parts = ecg_parts()
    proc, url = (None, args.url) if args.url else start_server(args)
    model = args.model_name or ("bench" if proc else None)
    try:
        if model is None:
            import json
            model = json.load(urllib.request.urlopen(url + "/v1/models"))["data"][0]["id"]
        asyncio.run(run_mode(url, model, parts, 2, args.max_tokens, args.timeout, False))   # warm-up
        print(f"{args.n} chat requests, {len(parts)} different inline ECGs, max_tokens {args.max_tokens}, "
              f"model {model}, {url}")
        print(f"{'mode':<14}{'requests':>9}{'errors':>8}{'wall s':>9}{'p50 s':>9}{'p95 s':>9}{'out tok':>11}{'out tok/s':>11}")
        res, wall = asyncio.run(run_mode(url, model, parts, args.n, args.max_tokens, args.timeout, True))
        print(row("concurrent", res, wall), flush=True)
        errors = [r[2] for r in res if r[2]]
        if not args.skip_sequential:
            res1, wall1 = asyncio.run(run_mode(url, model, parts, args.n, args.max_tokens, args.timeout, False))
            print(row("one at a time", res1, wall1))
            errors += [r[2] for r in res1 if r[2]]
            print(f"speed-up of concurrent over one at a time: {wall1 / wall:.1f}x")
        for e in sorted(set(errors))[:5]:
            print("error:", e)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    raise SystemExit(1 if errors else 0)


if __name__ == "__main__":
    main()
