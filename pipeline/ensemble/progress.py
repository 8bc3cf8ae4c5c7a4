"""Progress of an ensemble run in member-steps (one member advanced by one model step).

On a terminal (rank 0) a rich progress bar; otherwise, e.g. under Prefect or
torchrun with piped output, a log line every tenth of the work.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

logger = logging.getLogger(__name__)

LOG_EVERY = 0.1
"""Fraction of the total between two log lines when no bar is shown."""


def bar_wanted(rank: int) -> bool:
    """A bar only on rank 0 with stderr on a terminal."""
    return rank == 0 and sys.stderr.isatty()


class MemberStepProgress:
    """Count member-steps towards ``total``; show a bar or log every :data:`LOG_EVERY`.

    Parameters
    ----------
    total
        Member-steps this process will compute.
    label
        What is counted (shown before the bar and in log lines).
    show_bar
        Draw a rich bar on stderr instead of logging.
    """

    def __init__(self, total: int, label: str, show_bar: bool) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self._start = time.perf_counter()
        self._next_log = LOG_EVERY
        self._bar: Progress | None = None
        if show_bar and total > 0:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("member-steps  {task.fields[rate]:>7} /s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task(label, total=total, rate="-")
            self._bar.start()

    @property
    def rate(self) -> float:
        """Member-steps per second so far."""
        elapsed = time.perf_counter() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, member_steps: int) -> None:
        self.done += member_steps
        if self._bar is not None:
            self._bar.update(self._task, advance=member_steps, rate=f"{self.rate:.0f}")
        elif self.total and self.done / self.total >= self._next_log - 1e-12:
            logger.info("%s: %d/%d member-steps (%.0f%%, %.1f member-steps/s)",
                        self.label, self.done, self.total, 100 * self.done / self.total, self.rate)
            while self._next_log <= self.done / self.total + 1e-12:
                self._next_log += LOG_EVERY

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "MemberStepProgress":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
