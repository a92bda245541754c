"""`ecgbatch serve`: the OpenAI-compatible chat server with ECG input (ecgbatch.serving.server).
vLLM, torch and FastAPI are imported inside the command body."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import List, Optional

import typer

from ecgbatch.commands.common import VERBOSE_HELP, fail
from ecgbatch.llava.errors import EcgLlavaError
from ecgbatch.models import DEFAULT_LLAVA, llava_model
from ecgbatch.quiet import set_verbosity


def parse_adapters(specs: List[str]) -> dict[str, Path]:
    """NAME=PATH pairs -> {name: path}; refuses malformed or repeated names."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            fail(f"--lora takes NAME=PATH, got {spec!r}")
        if name in out:
            fail(f"--lora name {name!r} given twice")
        out[name.strip()] = Path(path.strip())
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (loopback by default)"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    model: str = typer.Option(DEFAULT_LLAVA, "--model", "-m", help="ECG-LLaVA model folder or zoo name"),
    lora: List[str] = typer.Option([], "--lora", help="NAME=PATH: serve a peft LoRA adapter as model NAME (repeat); "
                                   "without it the model's own adapter (its lora/) is applied to the base name"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="ECGBATCH_API_KEY",
                                          help="require 'Authorization: Bearer KEY' on /v1 routes"),
    ecg_dir: Optional[Path] = typer.Option(None, "--ecg-dir", help="allow ECG parts by path, under this folder only"),
    name: Optional[str] = typer.Option(None, "--name", help="model id of the base model (default: the --model name)"),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=1, help="most new tokens a request may ask for"),
    max_body_mb: float = typer.Option(16.0, "--max-body-mb", min=0.01, help="largest request body"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (float32 on CPU, bfloat16 on GPU), "
                                 "float32, bfloat16 or float16"),
    max_num_seqs: Optional[int] = typer.Option(None, "--max-num-seqs", min=1, help="vLLM's batch limit"),
    max_in_flight: int = typer.Option(512, "--max-in-flight", min=1,
                                      help="chat requests (bodies read) in progress at once; more get 429"),
    body_timeout: float = typer.Option(30.0, "--body-timeout", min=0.1,
                                       help="seconds a request body may take to arrive (then 408)"),
    grounded: Optional[bool] = typer.Option(None, "--grounded/--no-grounded", help="state what ecgbatch "
                                            "measured and its probes found before the first question "
                                            "[default: the model's config, prompt.grounded]"),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Serve an ECG-LLaVA model: OpenAI /v1/chat/completions (+ ECG parts), /v1/models, a web page at /,
    Prometheus metrics at /metrics."""
    set_verbosity(verbose)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from ecgbatch.encoders.checkpoint import CheckpointError
    from ecgbatch.serving.chat_request import Limits
    from ecgbatch.serving.server import ServerConfig, serve

    if ecg_dir is not None and not ecg_dir.is_dir():
        fail(f"--ecg-dir {ecg_dir} is not a folder")
    if not _is_loopback(host) and not api_key:
        typer.echo(f"warning: serving on {host} without --api-key: anyone who reaches it can use the model",
                   err=True)
    adapters = parse_adapters(lora)
    try:   # refuse a bad folder or adapter with a clear message before vLLM starts
        from ecgbatch.serving.folder import check_adapter, check_model_folder

        folder, own = llava_model(model, log=lambda m: typer.echo(m, err=True))
        own = None if adapters else own     # --lora given: the base name serves the bare model
        config = check_model_folder(folder)
        for path in [*adapters.values(), *([own] if own else [])]:
            check_adapter(path, config)
    except (EcgLlavaError, CheckpointError) as exc:
        fail(str(exc))
    name = name or Path(model).name
    cfg = ServerConfig(model_dir=folder, adapters=adapters, lora=own, served_name=name, api_key=api_key,
                       ecg_dir=ecg_dir, dtype=dtype, max_num_seqs=max_num_seqs, max_in_flight=max_in_flight,
                       limits=Limits(max_tokens=max_tokens, max_body_bytes=int(max_body_mb * 1024 * 1024),
                                     body_timeout_s=body_timeout),
                       default_max_tokens=min(256, max_tokens), grounded=grounded)
    typer.echo(f"ecgbatch serve: http://{host}:{port}/ (model {name}{' with its adapter ' + str(own) if own else ''}"
               f"{', adapters ' + ', '.join(cfg.adapters) if cfg.adapters else ''})", err=True)
    try:
        serve(cfg, host, port)
    except (EcgLlavaError, CheckpointError) as exc:
        fail(str(exc))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
