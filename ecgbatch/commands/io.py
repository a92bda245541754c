"""`ecgbatch scan ARCHIVE [-o manifest.parquet] [--failures failures.parquet]`: walk an archive of
any size (streaming), write a parquet manifest and a failures table atomically, print a summary."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecgbatch.commands.common import fail


def scan_command(
    archive: Path = typer.Argument(..., help="Directory (or single file) to scan."),
    output: Path = typer.Option(Path("manifest.parquet"), "-o", "--output", help="Manifest parquet."),
    failures: Optional[Path] = typer.Option(None, "--failures",
                                            help="Failures parquet (default: <manifest>.failures.parquet)."),
    decode: bool = typer.Option(True, "--decode/--headers-only",
                                help="Decode every signal (quality flags, corrupt data found) or read "
                                     "headers only (much faster; sizes still checked for WFDB)."),
    strict: bool = typer.Option(False, "--strict", help="Quality problems become failures."),
    fs: Optional[float] = typer.Option(None, "--fs", help="Sampling rate for arrays that do not state one."),
    units: Optional[str] = typer.Option(None, "--units", help="Units of arrays that do not state them."),
    layout: str = typer.Option("auto", "--layout", help="auto | leads_first | samples_first (arrays)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Scan an ECG archive into a parquet manifest (one row per record) and a failures table."""
    from ecgbatch.io import scan, write_manifest

    console = Console(stderr=True)
    if not archive.exists():
        fail(f"no such file or directory: {archive}")
    options = {k: v for k, v in {"fs": fs, "units": units, "layout": layout}.items() if v is not None}
    s = scan(archive, headers_only=not decode, strict=strict, **options)
    t0 = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("[bold]scanning[/bold] {task.description}"), BarColumn(),
                  TextColumn("{task.fields[records]} records, {task.fields[failures]} failures, "
                             "{task.fields[rate]:.0f}/s"), TimeElapsedColumn(),
                  console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task(str(archive), total=None, records=0, failures=0, rate=0.0)
        last = [0.0]

        def tick(_item) -> None:
            now = time.perf_counter()
            if now - last[0] > 0.1:
                last[0] = now
                st = s.stats
                bar.update(task, records=st.records, failures=st.failures,
                           rate=(st.records + st.failures) / max(now - t0, 1e-9))

        result = write_manifest(s, output, failures, on_item=tick)
    _summary(console, s.stats, result, time.perf_counter() - t0)


def _summary(console, st, result, seconds: float) -> None:
    n = st.records + st.failures
    console.print(f"[bold]{st.records}[/bold] records, [bold]{st.failures}[/bold] failures, "
                  f"{sum(st.ignored.values())} files ignored, {st.files} files in "
                  f"{st.directories} directories, {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} records/s)")
    console.print(_count_table("records by format", "format", st.by_format.most_common()))
    console.print(_count_table(
        "lead sets", "leads",
        ((" ".join(k) if len(k) <= 16 else f"{len(k)} leads: {' '.join(k[:8])} ...", v)
         for k, v in st.lead_sets.most_common(8))))
    if st.failures:
        console.print(_count_table("failures by type", "error type", st.failures_by_type.most_common()))
    if st.ignored:
        t = Table(title="ignored files")
        t.add_column("reason")
        t.add_column("files", justify="right")
        t.add_column("e.g.")
        for k, v in st.ignored.most_common():
            t.add_row(k, str(v), Path(st.ignored_examples[k][0]).name)
        console.print(t)
    if st.accounted() != st.files:  # every file must be somewhere; say so loudly if not
        console.print(f"[red]accounting error: {st.files} files seen, {st.accounted()} accounted[/red]")
    console.print(f"manifest: {result.manifest_path} ({result.n_records} rows)\n"
                  f"failures: {result.failures_path} ({result.n_failures} rows)")


def _count_table(title: str, key: str, rows) -> "Table":
    """A two-column summary table: (key, records) rows, counts right-aligned."""
    t = Table(title=title)
    t.add_column(key)
    t.add_column("records", justify="right")
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_command)
