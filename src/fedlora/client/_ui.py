"""What a client shows its operator: one-line events and progress bars (rich), apart from logic."""

from __future__ import annotations

import threading
import time
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
    def stages(self, every_s: float | None = None) -> Iterator[Stages | LineStages]:
        """Progress bars on a terminal; elsewhere (a log file, a pipe, journald), a line when a
        step starts and ends and one every ``every_s`` seconds while it runs."""
        if not self.console.is_terminal:
            stages = LineStages(self, every_s or PROGRESS_EVERY_S)
            try:
                yield stages
            finally:
                stages.close()
            return
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


PROGRESS_EVERY_S = 30.0  # a progress line this often while a step runs, when not on a terminal


class LineStages:
    """Progress as plain lines, for output that is not a terminal (see :meth:`Reporter.stages`)."""

    def __init__(self, reporter: Reporter, every_s: float) -> None:
        self._reporter, self._every_s = reporter, every_s
        self._bars: dict[str, list[float]] = {}  # description -> [done, total, started]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True, name="fedlora-progress")
        self._ticker.start()

    def bar(self, description: str, total: int) -> Callable[[int], None]:
        with self._lock:
            self._bars[description] = [0.0, float(total), time.monotonic()]
        self._reporter.info(f"{description}: started ({total:,} to do)")

        def update(done: int) -> None:
            with self._lock:
                state = self._bars.get(description)
                if state is None:
                    return
                state[0] = float(done)
                finished = done >= state[1]
                if finished:
                    del self._bars[description]
            if finished:
                took = time.monotonic() - state[2]
                self._reporter.info(f"{description}: done ({done:,}) in {took:.1f}s")

        return update

    def _tick(self) -> None:
        while not self._stop.wait(self._every_s):
            with self._lock:
                running = [(d, s[0], s[1], s[2]) for d, s in self._bars.items()]
            now = time.monotonic()
            for description, done, total, started in running:
                share = f" ({100 * done / total:.0f}%)" if total else ""
                self._reporter.info(
                    f"{description}: {done:,.0f}/{total:,.0f}{share} after {now - started:.0f}s"
                )

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=1)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
