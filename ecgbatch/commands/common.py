"""What every command module shares, and the only helpers they share: one way to stop with an
error (``fail``), the stderr console, the workspace folder, quiet third-party libraries, and
``key=value`` options (``--set``, ``--read-option``). Command modules import from here, never
from each other."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table
import yaml

from ecgbatch._paths import default_workspace
from ecgbatch.errors import EcgbatchError


PROBE_CONFIG_HELP = "training YAML whose data section lists the labelled records (its pair cache is reused)"
VERBOSE_HELP = ("show every vLLM, torch and Ray message (by default the ones an ecgbatch user cannot act on "
                "are dropped: ecgbatch.quiet)")


def error_text(error: str | BaseException) -> str:
    """``kind: message`` for a typed ecgbatch error, the message otherwise."""
    if isinstance(error, EcgbatchError) and error.kind != EcgbatchError.kind:
        return f"{error.kind}: {error}"
    return str(error)


def fail(error: str | BaseException, code: int = 2) -> NoReturn:
    """Print ``error: ...`` on stderr and exit with ``code`` (2: the input was refused)."""
    typer.secho(f"error: {error_text(error)}", fg="red", err=True)
    raise typer.Exit(code)


def stderr_console() -> Console:
    """The console commands print progress and tables to (stderr: stdout stays for --json)."""
    return Console(stderr=True)


def workspace_dir(ws: Optional[Path]) -> Path:
    """--workspace, else $ECGBATCH_WORKSPACE, else ~/.ecgbatch/workspace."""
    return ws.expanduser() if ws is not None else default_workspace()


def quiet_libraries() -> None:
    """Ray, transformers and tokenizers say only what matters (set before they are imported)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def key_values(items: list[str], option: str) -> dict:
    """``["a.b=3", "c=x"]`` -> ``{"a.b": 3, "c": "x"}`` (values read as YAML); a malformed item
    stops the command naming ``option``."""
    out = {}
    for item in items:
        if "=" not in item:
            fail(f"{option} needs key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def print_metrics(metrics: dict, title: str) -> None:
    """A two-column table of a run's metrics."""
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(t)
