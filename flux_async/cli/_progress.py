"""Progress of a batch: a live rich bar on a terminal, plain lines elsewhere.

``rich`` comes with the ``cli`` extra and is imported here only, lazily, so the
library never needs it; without it (or when standard output is not a terminal,
as in CI logs and pipes) progress is a plain line on standard error now and then.
Notes (failures, warnings) go to standard error in both cases: rich's live
display redirects standard error above the bar, so they never garble it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol

import attrs

__all__ = ["Counts", "Reporter", "make_reporter", "spinner"]


@attrs.define
class Counts:
    """What a batch run has done so far (this run only; skipped lines are not in it)."""

    total: int = 0
    submitted: int = 0  # paid for in this run, or resumed from an earlier one
    done: int = 0
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed

    @property
    def running(self) -> int:
        return max(0, self.submitted - self.finished)


class Reporter(Protocol):
    def start(self, counts: Counts) -> None: ...
    def update(self, counts: Counts) -> None: ...
    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainReporter:
    """A status line on standard error at most every ``interval`` seconds, and at the end."""

    def __init__(self, *, interval: float = 2.0, quiet: bool = False) -> None:
        self._interval = interval
        self._quiet = quiet
        self._started = self._printed = time.monotonic()
        self._last: Counts | None = None

    def start(self, counts: Counts) -> None:
        self._started = self._printed = time.monotonic()
        self._last = attrs.evolve(counts)

    def update(self, counts: Counts) -> None:
        self._last = attrs.evolve(counts)
        now = time.monotonic()
        if now - self._printed >= self._interval:
            self._printed = now
            self._line(counts, now)

    def _line(self, counts: Counts, now: float) -> None:
        if self._quiet:
            return
        elapsed = max(now - self._started, 1e-9)
        rate = counts.finished / elapsed
        eta = _clock((counts.total - counts.finished) / rate) if rate > 0 else "?"
        note(
            f"flux-async: {counts.finished}/{counts.total}: submitted {counts.submitted}, "
            f"running {counts.running}, done {counts.done}, failed {counts.failed}, "
            f"{rate:.2f}/s, ETA {eta}"
        )

    def note(self, message: str) -> None:
        note(message)

    def close(self) -> None:
        if self._last is not None and self._last.total:
            self._line(self._last, time.monotonic())


class RichReporter:
    """A live bar: submitted / running / done / failed, rate, elapsed time and ETA."""

    def __init__(self, *, transient: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=transient,
        )
        self._task: Any = None
        self._started = time.monotonic()

    def start(self, counts: Counts) -> None:
        self._started = time.monotonic()
        self._progress.start()
        self._task = self._progress.add_task(
            "batch", total=counts.total, detail=self._detail(counts), rate=""
        )

    @staticmethod
    def _detail(counts: Counts) -> str:
        failed = f"[red]failed {counts.failed}[/]" if counts.failed else "failed 0"
        return (
            f"submitted {counts.submitted} · running {counts.running} · "
            f"[green]done {counts.done}[/] · {failed}"
        )

    def update(self, counts: Counts) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._progress.update(
            self._task,
            completed=counts.finished,
            total=counts.total,
            detail=self._detail(counts),
            rate=f"{counts.finished / elapsed:.2f}/s",
        )

    def note(self, message: str) -> None:
        self._progress.console.print(message, markup=False, highlight=False, soft_wrap=True,
                                     style="yellow")

    def close(self) -> None:
        self._progress.stop()


def make_reporter(*, quiet: bool, transient: bool = False) -> Reporter:
    """The rich bar when standard output is a terminal and rich is installed, else plain."""
    if not quiet and sys.stdout.isatty():
        try:
            return RichReporter(transient=transient)
        except ImportError:
            pass
    return PlainReporter(quiet=quiet)


@contextlib.contextmanager
def spinner(message: str, *, quiet: bool) -> Iterator[None]:
    """A spinner on standard error while a single task runs, when that is a terminal."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    try:
        from rich.console import Console
    except ImportError:
        note(message)
        yield
        return
    with Console(stderr=True).status(message):
        yield
