"""What a client shows its operator: one-line events and progress bars (rich), apart from logic."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()

    # One event is one line, whatever the width: a log file or a pipe must not break it.
    def info(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]{_escape(message)}[/]", soft_wrap=True)

    def error(self, message: str) -> None:
        self.console.print(f"[red]{_escape(message)}[/]", soft_wrap=True)

    @contextmanager
    def stages(self) -> Iterator[Stages]:
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        with progress:
            yield Stages(progress)


class Stages:
    """Progress bars for one round's steps."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def bar(self, description: str, total: int) -> Callable[[int], None]:
        """A new bar; returns a function that sets its completed amount."""
        task = self._progress.add_task(description, total=total)
        return lambda done: self._progress.update(task, completed=done)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
