"""A rich progress bar for record-level jobs: done/total, records/s and ETA."""
from __future__ import annotations

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text


class RecordsPerSecondColumn(ProgressColumn):
    def render(self, task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed or not task.completed:
            return Text("-- rec/s", style="cyan")
        return Text(f"{task.completed / elapsed:,.1f} rec/s", style="cyan")


class TokensPerSecondColumn(ProgressColumn):
    """Generated tokens per second (the ``tokens`` field given to ``advance``)."""

    def render(self, task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        tokens = task.fields.get("tokens", 0)
        if not elapsed or not tokens:
            return Text("-- tok/s", style="magenta")
        return Text(f"{tokens / elapsed:,.1f} tok/s", style="magenta")


class RecordProgress:
    """Context manager; ``advance(n)`` after n records came back (embedded or failed);
    ``tokens=True`` adds an output tokens/s column (``advance(n, tokens=...)``)."""

    def __init__(self, total: int, description: str = "embedding", console=None, enabled: bool = True,
                 tokens: bool = False):
        self.total = total
        self._progress = None
        self._tokens = 0
        if enabled:
            extra = [TokensPerSecondColumn()] if tokens else []
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), RecordsPerSecondColumn(), *extra,
                                      TextColumn("elapsed"), TimeElapsedColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(),
                                      console=console, transient=False, speed_estimate_period=60)
            self._task = self._progress.add_task(description, total=total, tokens=0)

    def __enter__(self) -> "RecordProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def advance(self, n: int, tokens: int = 0) -> None:
        self._tokens += int(tokens)
        if self._progress is not None:
            self._progress.update(self._task, advance=n, tokens=self._tokens)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
