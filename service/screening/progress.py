"""A rich progress bar for long screenings: done / total, counts by status, rate and ETA."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Cancelled(KeyboardInterrupt):
    """A cancelled screening stops on the same clean path as Ctrl-C."""


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "-/s")


class ScreenProgress:
    """Shown on stderr; quiet when stderr is not a terminal (CI, pipes, tests)."""

    def __init__(self, enabled: bool = True) -> None:
        console = Console(stderr=True)
        self.counts: Counter[str] = Counter()
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
            console=console,
            disable=not (enabled and console.is_terminal),
        )
        self._task: TaskID | None = None
        self.stage_name = ""
        self.total: float | None = None
        self.completed = 0.0
        self.cancelled = False  # set by another thread (HTTP DELETE): stops like Ctrl-C

    def __enter__(self) -> ScreenProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def stage(self, description: str, total: float | None) -> None:
        self.stage_name, self.total, self.completed = description, total, 0.0
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total, counts=self._text())

    def advance(self, amount: float = 1, status: str | None = None) -> None:
        if self.cancelled:
            raise Cancelled
        self.completed += amount
        if status is not None:
            self.counts[status] += 1
        if self._task is not None:
            self._progress.update(self._task, advance=amount, counts=self._text())

    def _text(self) -> str:
        return "  ".join(f"{s} {n}" for s, n in sorted(self.counts.items()))
