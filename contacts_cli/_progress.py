"""Progress on stderr: a bar with rows/s and ETA on a terminal (rich), a plain line every few
seconds otherwise (a log or a CI job keeps readable lines, no control characters)."""

from __future__ import annotations

import sys
import time


class Progress:
    """``total`` and ``done`` are in any unit (bytes of the file, rows of the service): the ETA
    comes from them; ``rows`` is what people read."""

    def __init__(self, what: str, total: int | None, stream=None, every: float = 2.0, bar: bool | None = None):
        self.what = what
        self.total = total
        self.stream = stream or sys.stderr
        self.every = every
        self.started = time.monotonic()
        self.rows = 0
        self.done = 0
        self._last_line = 0.0
        self._rich = None
        if bar if bar is not None else _is_terminal(self.stream):
            self._start_rich()

    def _start_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress as Bar, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self._rich = Bar(
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]:>9,} rows {task.fields[rate]:>7,.0f} rows/s ETA"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=False,
        )
        self._rich.start()
        self._task = self._rich.add_task(self.what, total=self.total, rows=0, rate=0.0)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.rows / elapsed if elapsed > 0 else 0.0

    def update(self, rows: int, done: int | None = None, total: int | None = None) -> None:
        self.rows = rows
        self.done = rows if done is None else done
        if total is not None:
            self.total = total
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, total=self.total, rows=rows, rate=self.rate)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every:
            self._last_line = now
            self._plain()

    def _plain(self) -> None:
        line = f"{self.what}: {self.rows:,} rows"
        if self.total:
            line += f" ({100 * self.done / self.total:.0f}%)"
        line += f", {self.rate:,.0f} rows/s"
        if self.total and self.done and self.done < self.total:
            elapsed = time.monotonic() - self.started
            line += f", ETA {elapsed * (self.total - self.done) / self.done:.0f}s"
        print(line, file=self.stream, flush=True)

    def say(self, message: str) -> None:
        """A message that stays above the bar."""
        if self._rich is not None:
            self._rich.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
