"""`ecgbatch status WORKSPACE`: what the jobs writing into a workspace have done (each table's
committed counts and its job's progress.json: done, failed, rate, ETA, last update). Reads files
only, so it works from any machine that sees the workspace, while a cluster job runs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ecgbatch.commands.common import fail
from ecgbatch.pipelines.job_progress import workspace_status
from ecgbatch.pipelines.workspace import default_workspace


def status_command(
    workspace: Optional[Path] = typer.Argument(None, help="Workspace folder [default: $ECGBATCH_WORKSPACE "
                                               "if set, else ~/.ecgbatch/workspace]."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON on stdout."),
) -> None:
    """Progress of `embed` and `report --input` jobs in a workspace (also while they run on a cluster)."""
    ws = workspace.expanduser() if workspace is not None else default_workspace()
    try:
        tables = workspace_status(ws)
    except FileNotFoundError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"workspace": str(ws), "tables": tables}, indent=2))
        return
    if not tables:
        typer.echo(f"{ws}: no tables yet")
        return
    for t in tables:
        typer.echo(f"{t['table']} ({t['job']}): {t['committed']} committed, {t['failed']} failed")
        p = t["progress"]
        if p is None:
            continue
        eta = "-" if p["eta_s"] is None else f"{p['eta_s']:.0f} s"
        typer.echo(f"  last job {p['state']}: {p['done']}/{p['total']} done ({p['failed']} failed), "
                   f"{p['records_per_s']:.2f} rec/s, ETA {eta}, updated {p['updated']}")


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)
