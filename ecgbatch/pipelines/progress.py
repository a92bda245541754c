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


class RecordProgress:
    """Context manager; ``advance(n)`` after n records came back (embedded or failed)."""

    def __init__(self, total: int, description: str = "embedding", console=None, enabled: bool = True):
        self.total = total
        self._progress = None
        if enabled:
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), RecordsPerSecondColumn(),
                                      TextColumn("elapsed"), TimeElapsedColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(),
                                      console=console, transient=False, speed_estimate_period=60)
            self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> "RecordProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
